//! LLaMA-family configuration, read from GGUF metadata.

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Rotate pairs (0,1), (2,3), … inside each head. llama.cpp's converter permuted the
    /// rows of attn_q/attn_k so that this form, applied to the stored weights, equals the
    /// original model's half-split form: GGUF llama models use this.
    Interleaved,
    /// Rotate (i, i + d/2) pairs (Hugging Face `rotate_half`) on un-permuted weights.
    HalfSplit,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub norm_eps: f32,
    pub vocab: usize,
    pub context_length: usize,
    /// No separate `output.weight`: logits = norm(h) · token_embdᵀ.
    pub tied_embeddings: bool,
}

/// Upper bounds that keep a hostile header from asking for absurd allocations.
const MAX_LAYERS: u64 = 1024;
const MAX_DIM: u64 = 1 << 20;

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Model("missing general.architecture".into()))?
            .to_string();
        if !matches!(arch.as_str(), "llama" | "smollm" | "mistral") {
            return Err(Error::Model(format!(
                "architecture '{arch}' is not supported (LLaMA family only)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str, max: u64| -> Result<usize> {
            let v = g
                .get(&key(k))
                .ok_or_else(|| Error::Model(format!("missing {}", key(k))))?
                .as_u64()
                .ok_or_else(|| Error::Model(format!("{} is not a non-negative integer", key(k))))?;
            if v == 0 || v > max {
                return Err(Error::Model(format!(
                    "{} = {v} is out of range 1..={max}",
                    key(k)
                )));
            }
            Ok(v as usize)
        };
        let n_layers = int("block_count", MAX_LAYERS)?;
        let hidden = int("embedding_length", MAX_DIM)?;
        let ffn = int("feed_forward_length", MAX_DIM)?;
        let n_heads = int("attention.head_count", MAX_DIM)?;
        let n_kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => int("attention.head_count_kv", MAX_DIM)?,
            None => n_heads,
        };
        let context_length = match g.get(&key("context_length")) {
            Some(_) => int("context_length", 1 << 24)?,
            None => 2048,
        };
        if hidden % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::Model(format!(
                "hidden {hidden} / heads {n_heads} / kv heads {n_kv_heads} do not divide"
            )));
        }
        let head_dim = hidden / n_heads;
        if head_dim % 2 != 0 {
            return Err(Error::Model(format!(
                "head_dim {head_dim} is odd; RoPE needs pairs"
            )));
        }
        let float = |k: &str, default: f64| -> Result<f32> {
            match g.get(&key(k)) {
                None => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or_else(|| Error::Model(format!("{} is not a positive number", key(k)))),
            }
        };
        let rope_theta = float("rope.freq_base", 10000.0)?;
        let norm_eps = float("attention.layer_norm_rms_epsilon", 1e-5)?;
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Model("missing tensor token_embd.weight".into()))?;
        if embd.dims.len() != 2 || embd.dims[0] != hidden as u64 {
            return Err(Error::Model(format!(
                "token_embd.weight has dims {:?}, expected [{hidden}, vocab]",
                embd.dims
            )));
        }
        let vocab = embd.dims[1] as usize;
        let tied_embeddings = g.tensor("output.weight").is_none();
        Ok(Self {
            architecture: arch,
            n_layers,
            hidden,
            ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
            rope_style: RopeStyle::Interleaved,
            norm_eps,
            vocab,
            context_length,
            tied_embeddings,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Number of parameters (the tied head counted once).
    pub fn n_params(&self) -> usize {
        let (d, f) = (self.hidden, self.ffn);
        let layer = d * self.q_dim() * 2 + d * self.kv_dim() * 2 + 3 * d * f + 2 * d;
        let head = if self.tied_embeddings {
            0
        } else {
            self.vocab * d
        };
        self.vocab * d + self.n_layers * layer + d + head
    }
}
