//! The CPU engine's memory plan: the host bytes a tuning run on [`super::CpuBackend`] holds,
//! by category, computed from the configuration before anything is allocated, as the GPU
//! engine plans its buffers. The frozen weights count as held: packed as the file stores
//! them (GGUF blocks, a compressed file's projections), or f32. The page shows it beside the GPU plan, and the wasm32 module's
//! 4 GiB address space is checked against it before a run starts.

use crate::model::{LlamaConfig, ModelFile, Storage};
use crate::reference::{Lora, LoraPair};
use serde::Serialize;

/// Host memory of a CPU run, by category.
#[derive(Clone, Debug, Serialize)]
pub struct HostPlan {
    pub total_bytes: u64,
    pub by_category: Vec<HostCategory>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostCategory {
    pub category: &'static str,
    pub bytes: u64,
}

/// f32 values one block saves for its backward pass over a row of `t` tokens
/// (`reference::LayerActs`, LoRA dropout masks included when `dropout`).
fn saved_per_block(c: &LlamaConfig, lora: &Lora<f32>, t: u64, dropout: bool) -> u64 {
    let (d, f) = (c.hidden as u64, c.ffn as u64);
    let q = (c.n_heads * c.head_dim) as u64;
    let kv = (c.n_kv_heads * c.head_dim) as u64;
    let probs = c.n_heads as u64 * t * t;
    let dense = t * (4 * d + 2 + 2 * q + 2 * kv + 3 * f) + probs;
    let targets = lora.config.targets.len() as u64;
    let u = targets * t * lora.config.rank as u64;
    // A mask per adapted projection, as wide as its input (≤ the ffn width).
    let masks = if dropout { targets * t * f.max(q) } else { 0 };
    dense + u + masks
}

/// The plan of a run on `file`'s weights held as `storage` says (packed as the file stores
/// them, or f32: [`ModelFile::weight_bytes`]), training at most `window_blocks` blocks at a
/// time over rows of `seq_len` tokens with `lora` (exits included), its prefix cache capped
/// at `prefix_cache_bytes` (0 when the run trains every block). Rows run one at a time, so
/// the activations are one row's; the logits are one row's at its target positions (at
/// most every position), with their gradient.
pub fn host_plan(
    file: &ModelFile,
    storage: Storage,
    lora: &Lora<f32>,
    seq_len: usize,
    window_blocks: usize,
    prefix_cache_bytes: u64,
) -> HostPlan {
    let c = &file.config;
    let t = seq_len as u64;
    let pair = |p: &LoraPair<f32>| (p.a.len() + p.b.len()) as u64;
    let adapter: u64 = lora
        .layers
        .iter()
        .flatten()
        .flatten()
        .map(pair)
        .sum::<u64>()
        + lora.exits.iter().map(|e| pair(&e.pair)).sum::<u64>();
    let dropout = lora.config.dropout > 0.0;
    let acts =
        window_blocks as u64 * saved_per_block(c, lora, t, dropout) + 6 * t * c.hidden as u64;
    let logits = 2 * t * c.vocab as u64;
    let by_category = vec![
        HostCategory {
            category: match storage {
                Storage::File => "frozen weights (as the file stores them)",
                Storage::F32 => "frozen weights (f32)",
            },
            bytes: file.weight_bytes(storage),
        },
        // Values, accumulated gradients, a row's gradients, AdamW's two moments.
        HostCategory {
            category: "adapters, gradients and AdamW",
            bytes: 4 * 5 * adapter,
        },
        HostCategory {
            category: "activations (one row)",
            bytes: 4 * acts,
        },
        HostCategory {
            category: "logits and their gradient (one row)",
            bytes: 4 * logits,
        },
        HostCategory {
            category: "prefix cache (at most)",
            bytes: prefix_cache_bytes,
        },
    ];
    HostPlan {
        total_bytes: by_category.iter().map(|c| c.bytes).sum(),
        by_category,
    }
}

impl std::fmt::Display for HostPlan {
    /// The total and each category in MiB, a line each (`tune --device cpu`, `plan`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / 1048576.0;
        write!(f, "CPU memory plan: {:.1} MiB", mib(self.total_bytes))?;
        for c in &self.by_category {
            write!(f, "\n  {:>10.2} MiB  {}", mib(c.bytes), c.category)?;
        }
        Ok(())
    }
}
