//! Building [`Weights`] from a model file, dense or with every matrix kept as the file
//! stores it, and what each way holds in memory before it is built (the CPU engine's plan).

use super::{LayerWeights, Mat, ModelFile, Weights};
use crate::formats::packed as cfile;
use crate::formats::rows::{CpuWeight, GgufRows};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How the CPU engine holds a model's matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// As the file stores them: GGUF Q4_0/Q4_1/Q8_0/F16 blocks and a compressed file's
    /// packed projections read in place by the CPU GEMM; f32 tensors stay f32.
    #[default]
    File,
    /// Everything dequantized to f32 (the oracle; what compression reads).
    F32,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::File => "file",
            Storage::F32 => "f32",
        }
    }
}

impl ModelFile {
    /// Matrix `name` `[out][in]` (GGUF dims `[in, out]`), held as `storage` says.
    pub fn matrix(&self, name: &str, dims: &[usize], storage: Storage) -> Result<Mat<f32>> {
        let &[cols, rows] = dims else {
            return self.tensor_f32(name, dims).map(Mat::Dense);
        };
        if storage == Storage::F32 {
            return self.tensor_f32(name, dims).map(Mat::Dense);
        }
        if self.gguf.tensor(name).is_none() {
            if let Some(p) = cfile::read_tensor(&self.gguf, &self.bytes, name)? {
                if p.format().shape() != (rows, cols) {
                    return Err(Error::Model(format!(
                        "{name} is {:?}, expected dims {dims:?}",
                        p.format().shape()
                    )));
                }
                return Ok(Mat::Packed(Arc::new(CpuWeight::Packed(p))));
            }
        }
        match self.gguf.tensor(name) {
            Some(info) if GgufRows::reads(info.ty) && info.dims == [cols as u64, rows as u64] => {
                let raw = self.gguf.tensor_data(&self.bytes, name)?.to_vec();
                let g = GgufRows::new(info.ty, rows, cols, raw)
                    .map_err(|e| Error::Model(format!("{name}: {e}")))?;
                Ok(Mat::Packed(Arc::new(CpuWeight::Gguf(g))))
            }
            _ => self.tensor_f32(name, dims).map(Mat::Dense),
        }
    }

    /// All weights, the matrices held as `storage` says (norms always f32).
    pub fn weights_as(&self, storage: Storage) -> Result<Weights<f32>> {
        let c = &self.config;
        let (d, f, q, kv) = (c.hidden, c.ffn, c.q_dim(), c.kv_dim());
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let name = |n: &str| format!("blk.{l}.{n}.weight");
            let t = |n: &str| self.tensor_f32(&name(n), &[d]);
            let m = |n: &str, dims: &[usize]| self.matrix(&name(n), dims, storage);
            layers.push(LayerWeights {
                attn_norm: t("attn_norm")?,
                wq: m("attn_q", &[d, q])?,
                wk: m("attn_k", &[d, kv])?,
                wv: m("attn_v", &[d, kv])?,
                wo: m("attn_output", &[q, d])?,
                ffn_norm: t("ffn_norm")?,
                w_gate: m("ffn_gate", &[d, f])?,
                w_up: m("ffn_up", &[d, f])?,
                w_down: m("ffn_down", &[f, d])?,
            });
        }
        let output = if c.tied_embeddings {
            None
        } else {
            Some(self.matrix("output.weight", &[d, c.vocab], storage)?)
        };
        Ok(Weights {
            config: c.clone(),
            tok_embd: self.matrix("token_embd.weight", &[d, c.vocab], storage)?,
            layers,
            output_norm: self.tensor_f32("output_norm.weight", &[d])?,
            output,
        })
    }

    /// Bytes [`Self::weights_as`] would hold, from the tensor table alone (nothing is
    /// decoded): what the CPU engine's memory plan counts. Unreadable entries count 0
    /// (loading them fails anyway).
    pub fn weight_bytes(&self, storage: Storage) -> u64 {
        let c = &self.config;
        let mut names = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
        if !c.tied_embeddings {
            names.push("output.weight".into());
        }
        for l in 0..c.n_layers {
            for n in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.{l}.{n}.weight"));
            }
        }
        names.iter().map(|n| self.tensor_bytes(n, storage)).sum()
    }

    fn tensor_bytes(&self, name: &str, storage: Storage) -> u64 {
        if let Some(info) = self.gguf.tensor(name) {
            let elems: u64 = info.dims.iter().product();
            return match storage {
                Storage::File if info.dims.len() == 2 && GgufRows::reads(info.ty) => info.n_bytes,
                _ => 4 * elems,
            };
        }
        let Ok(Some(f)) = cfile::format_of(&self.gguf, name) else {
            return 0;
        };
        let (rows, cols) = f.shape();
        match storage {
            Storage::F32 => 4 * (rows * cols) as u64,
            Storage::File => {
                let prefix = format!("{name}.");
                let arrays = self.gguf.tensors.iter();
                arrays
                    .filter(|t| t.name.starts_with(&prefix))
                    .map(|t| t.n_bytes)
                    .sum()
            }
        }
    }
}
