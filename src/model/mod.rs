//! A model file (GGUF) and its weights in f32 (or f64 for gradient checks).

pub mod config;
pub mod tiny;

pub use config::{LlamaConfig, RopeStyle};

use crate::gguf::Gguf;
use crate::{Error, Result};
use num_traits::Float;

/// A parsed GGUF model: the header plus the file's bytes.
pub struct ModelFile {
    pub gguf: Gguf,
    pub bytes: Vec<u8>,
    pub config: LlamaConfig,
}

impl ModelFile {
    /// From the bytes of a GGUF file (the browser's path).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let gguf = Gguf::parse(&bytes)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        Ok(Self {
            gguf,
            bytes,
            config,
        })
    }

    /// From a file on disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(bytes).map_err(|e| match e {
            Error::Gguf(g) => Error::Model(format!("{}: {g}", path.display())),
            other => other,
        })
    }

    /// A tensor dequantized to f32, checked to have `dims` (GGUF order).
    pub fn tensor_f32(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        // A compressed-model file stores some projections packed (crate::compress::file).
        if self.gguf.tensor(name).is_none() {
            let packed = crate::formats::packed::dense_f32(&self.gguf, &self.bytes, name, dims)?;
            if let Some(w) = packed {
                return Ok(w);
            }
        }
        let info = self
            .gguf
            .tensor(name)
            .ok_or_else(|| Error::Model(format!("missing tensor {name}")))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != want {
            return Err(Error::Model(format!(
                "tensor {name} has dims {:?}, expected {want:?}",
                info.dims
            )));
        }
        Ok(self.gguf.tensor_f32(&self.bytes, name)?)
    }

    /// All weights dequantized to f32.
    pub fn weights(&self) -> Result<Weights<f32>> {
        let c = &self.config;
        let (d, f, q, kv) = (c.hidden, c.ffn, c.q_dim(), c.kv_dim());
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let t = |n: &str, dims: &[usize]| self.tensor_f32(&format!("blk.{l}.{n}.weight"), dims);
            layers.push(LayerWeights {
                attn_norm: t("attn_norm", &[d])?,
                wq: t("attn_q", &[d, q])?,
                wk: t("attn_k", &[d, kv])?,
                wv: t("attn_v", &[d, kv])?,
                wo: t("attn_output", &[q, d])?,
                ffn_norm: t("ffn_norm", &[d])?,
                w_gate: t("ffn_gate", &[d, f])?,
                w_up: t("ffn_up", &[d, f])?,
                w_down: t("ffn_down", &[f, d])?,
            });
        }
        let output = if c.tied_embeddings {
            None
        } else {
            Some(self.tensor_f32("output.weight", &[d, c.vocab])?)
        };
        Ok(Weights {
            config: c.clone(),
            tok_embd: self.tensor_f32("token_embd.weight", &[d, c.vocab])?,
            layers,
            output_norm: self.tensor_f32("output_norm.weight", &[d])?,
            output,
        })
    }
}

/// One transformer block. Every matrix is `[out][in]` row-major (y = x·Wᵀ).
#[derive(Clone, Debug)]
pub struct LayerWeights<T> {
    pub attn_norm: Vec<T>,
    pub wq: Vec<T>,
    pub wk: Vec<T>,
    pub wv: Vec<T>,
    pub wo: Vec<T>,
    pub ffn_norm: Vec<T>,
    pub w_gate: Vec<T>,
    pub w_up: Vec<T>,
    pub w_down: Vec<T>,
}

#[derive(Clone, Debug)]
pub struct Weights<T> {
    pub config: LlamaConfig,
    /// `[vocab][hidden]`; also the LM head when tied.
    pub tok_embd: Vec<T>,
    pub layers: Vec<LayerWeights<T>>,
    pub output_norm: Vec<T>,
    /// `[vocab][hidden]` when the head is not tied.
    pub output: Option<Vec<T>>,
}

impl<T: Float> Weights<T> {
    /// Every tensor mapped through `f`, keeping the structure (casts, zeroed gradients).
    pub fn map<U>(&self, f: impl Fn(&[T]) -> Vec<U>) -> Weights<U> {
        Weights {
            config: self.config.clone(),
            tok_embd: f(&self.tok_embd),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    attn_norm: f(&l.attn_norm),
                    wq: f(&l.wq),
                    wk: f(&l.wk),
                    wv: f(&l.wv),
                    wo: f(&l.wo),
                    ffn_norm: f(&l.ffn_norm),
                    w_gate: f(&l.w_gate),
                    w_up: f(&l.w_up),
                    w_down: f(&l.w_down),
                })
                .collect(),
            output_norm: f(&self.output_norm),
            output: self.output.as_deref().map(&f),
        }
    }

    /// The same weights in another precision (f64 for finite-difference checks).
    pub fn cast<U: Float>(&self) -> Weights<U> {
        let cast = |x: T| U::from(x.to_f64().unwrap_or(f64::NAN)).unwrap_or_else(U::nan);
        self.map(|v| v.iter().map(|&x| cast(x)).collect())
    }

    /// The LM head matrix `[vocab][hidden]`.
    pub fn head(&self) -> &[T] {
        self.output.as_deref().unwrap_or(&self.tok_embd)
    }
}
