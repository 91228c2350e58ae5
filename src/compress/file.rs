//! The compressed-model file, written: a GGUF holding the original metadata (config,
//! tokenizer) and every tensor the policy leaves alone as it was, plus each compressed
//! projection's packed arrays and format record (the layout and its reader are
//! [`crate::formats::packed`]).
//!
//! [`compress_model`] makes the tensors from f32 weights, a policy and the calibration
//! Hessians, block by block; [`write`] lays them out.

use super::gptq::{gptq_or_rtn, GptqOptions};
use super::policy::{Pattern, Policy, QuantMethod};
use super::profile::{output_mse_gemm, prune_proj, weight_of};
use super::prune::{ObsOptions, Sparsity};
use crate::formats::packed::{
    bad, CompressedTensor, Packed, TensorFormat, FILE_VERSION, KEY_FORMAT, KEY_POLICY, KEY_VERSION,
};
use crate::formats::quant::quantize;
use crate::formats::sparse::{Sparse24Matrix, UnstructuredMatrix, ValueType};
use crate::gguf::{GgmlType, Gguf, GgufWriter, Value};
use crate::model::{LlamaConfig, Weights};
use crate::reference::stats::LayerHessians;
use crate::reference::Proj;
use crate::{Error, Result};
use serde::Serialize;

/// The GGUF tensor name of projection `p` of block `l`.
pub fn proj_name(l: usize, p: Proj) -> String {
    let n = match p {
        Proj::Q => "attn_q",
        Proj::K => "attn_k",
        Proj::V => "attn_v",
        Proj::O => "attn_output",
        Proj::Gate => "ffn_gate",
        Proj::Up => "ffn_up",
        Proj::Down => "ffn_down",
    };
    format!("blk.{l}.{n}.weight")
}

/// The compressed file: `original`'s metadata and untouched tensors, the policy, and
/// `tensors` in place of the dense projections they name.
pub fn write(
    original: &Gguf,
    original_bytes: &[u8],
    policy: &Policy,
    tensors: &[CompressedTensor],
) -> Result<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in &original.metadata {
        if k.starts_with("edge_llm.") {
            continue;
        }
        w.kv(k, v.clone());
    }
    w.kv(KEY_VERSION, Value::U32(FILE_VERSION));
    w.kv(KEY_POLICY, Value::String(policy.to_json()));
    for t in tensors {
        let f = serde_json::to_string(&t.packed.format()).map_err(|e| bad(e.to_string()))?;
        w.kv(&format!("{KEY_FORMAT}{}", t.name), Value::String(f));
    }
    for info in &original.tensors {
        if tensors.iter().any(|t| t.name == info.name) {
            continue;
        }
        let data = original.tensor_data(original_bytes, &info.name)?;
        w.tensor(&info.name, &info.dims, info.ty, data.to_vec());
    }
    for t in tensors {
        if original.tensor(&t.name).is_none() {
            return Err(bad(format!("{} is not a tensor of the model", t.name)));
        }
        for (suffix, words) in t.packed.arrays() {
            let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.tensor(
                &format!("{}.{suffix}", t.name),
                &[words.len() as u64],
                GgmlType::F32,
                bytes,
            );
        }
    }
    Ok(w.to_bytes())
}

/// The policy stored in a compressed file (None for a plain GGUF).
pub fn policy_of(g: &Gguf, n_layers: usize) -> Result<Option<Policy>> {
    match g.get(KEY_POLICY) {
        None => Ok(None),
        Some(v) => {
            let text = v
                .as_str()
                .ok_or_else(|| bad(format!("{KEY_POLICY} is not a string")))?;
            Policy::from_json(text, n_layers).map(Some)
        }
    }
}

/// What compressing one projection did (for the report).
#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    /// "quant", "2:4" or "unstructured".
    pub format: String,
    /// Sparse value type when sparse ("f32", "int8", "int4").
    pub values: Option<String>,
    pub bits: u32,
    pub sparsity: f64,
    /// For dense quantization: whether GPTQ beat round-to-nearest.
    pub gptq: Option<bool>,
    /// Calibration output MSE of the stored weight vs the original (None without a
    /// Hessian).
    pub output_mse: Option<f64>,
    pub f32_bytes: usize,
    pub packed_bytes: usize,
}

/// Compresses every projection of `w` by `policy`, block by block: pruned (policy's
/// method and pattern; SparseGPT and Wanda need `hess`) then packed sparse with int8/int4
/// values, or, in a dense layer, quantized (GPTQ with `hess`, keeping RTN where it wins,
/// else RTN) into [`QuantMatrix`]. `progress(done, total)` counts projections.
pub fn compress_model(
    w: &Weights<f32>,
    hess: Option<&[LayerHessians]>,
    policy: &Policy,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<CompressedTensor>, Vec<TensorReport>)> {
    let c: &LlamaConfig = &w.config;
    policy.validate(c.n_layers)?;
    if let Some(h) = hess {
        if h.len() != c.n_layers {
            return Err(Error::Invalid(format!(
                "compress: {} Hessians for {} layers",
                h.len(),
                c.n_layers
            )));
        }
    }
    let needs_hess = policy.prune != super::policy::PruneMethod::Magnitude
        && policy.layers.iter().any(|l| l.sparsity > 0.0);
    if needs_hess && hess.is_none() {
        return Err(Error::Invalid(
            "compress: SparseGPT and Wanda need calibration data".into(),
        ));
    }
    let total = c.n_layers * Proj::ALL.len();
    let mut out = Vec::with_capacity(total);
    let mut reports = Vec::with_capacity(total);
    for (l, lp) in policy.layers.iter().enumerate() {
        let lw = &w.layers[l];
        for (pi, p) in Proj::ALL.into_iter().enumerate() {
            let (k, n) = p.shape(c);
            let orig = weight_of(lw, p);
            let orig = &*orig;
            let h = hess.map(|h| h[l].of(p));
            let name = proj_name(l, p);
            let (packed, gptq) = match Sparsity::from_policy(policy.pattern, lp.sparsity) {
                Some(s) => {
                    let pruned = match h {
                        Some(h) => prune_proj(lw, p, c, h, policy.prune, s)?,
                        None => prune_proj(
                            lw,
                            p,
                            c,
                            &crate::reference::stats::Hessian::new(k),
                            super::policy::PruneMethod::Magnitude,
                            s,
                        )?,
                    };
                    // The policy's grid in the container's codes (3 bits in int4 nibbles).
                    let ty = ValueType::for_bits(lp.bits);
                    let bits = lp.bits.min(ty.bits());
                    let packed = match policy.pattern {
                        Pattern::TwoOfFour => {
                            Packed::Sparse24(Sparse24Matrix::pack_bits(&pruned, n, k, ty, bits)?)
                        }
                        Pattern::Unstructured => Packed::Unstructured(
                            UnstructuredMatrix::pack_bits(&pruned, n, k, ty, bits)?,
                        ),
                    };
                    (packed, None)
                }
                None => match (policy.quant, h) {
                    (QuantMethod::Gptq, Some(h)) => {
                        let opts = GptqOptions {
                            bits: lp.bits,
                            group: policy.group,
                            symmetric: policy.symmetric,
                            obs: ObsOptions::default(),
                        };
                        let (q, won, _) = gptq_or_rtn(orig, n, k, h, opts)?;
                        (Packed::Quant(q), Some(won))
                    }
                    _ => (
                        Packed::Quant(quantize(
                            orig,
                            n,
                            k,
                            lp.bits,
                            policy.group,
                            policy.symmetric,
                        )?),
                        None,
                    ),
                },
            };
            let fmt = packed.format();
            let (format, values) = match fmt {
                TensorFormat::Quant { .. } => ("quant", None),
                TensorFormat::Sparse24 { values, .. } => ("2:4", Some(values)),
                TensorFormat::Unstructured { values, .. } => ("unstructured", Some(values)),
            };
            let output_mse =
                h.map(|h| output_mse_gemm(&h.matrix(), k, orig, &packed.to_dense(), n));
            reports.push(TensorReport {
                name: name.clone(),
                format: format.into(),
                values: values.map(|v| {
                    serde_json::to_value(v)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                }),
                bits: lp.bits,
                sparsity: lp.sparsity,
                gptq,
                output_mse,
                f32_bytes: 4 * n * k,
                packed_bytes: packed.bytes(),
            });
            out.push(CompressedTensor { name, packed });
            progress(l * Proj::ALL.len() + pi + 1, total);
        }
    }
    Ok((out, reports))
}
