//! The memory plan of the GPU model: every buffer it will allocate, sized from the model
//! file's header and the options before any allocation (size first, allocate once).

use crate::{Error, Result};
use serde::Serialize;

/// What a planned buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Weights,
    KvCache,
    /// Kept from the forward pass for the backward pass (or, at inference, per chunk).
    Activations,
    /// Reused by every layer: projection outputs, backward temporaries.
    Scratch,
    Lora,
    /// LoRA gradient accumulators and the norm reduction.
    Gradients,
    /// AdamW's two moments per LoRA tensor.
    Optimizer,
    /// Mapped buffers results are copied into for readback.
    Readback,
    /// Calibration statistics of profiling (Hessians or the Fisher diagonal).
    Statistics,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::Weights,
        Category::KvCache,
        Category::Activations,
        Category::Scratch,
        Category::Lora,
        Category::Gradients,
        Category::Optimizer,
        Category::Readback,
        Category::Statistics,
    ];
}

/// One GPU buffer: its name and size in bytes. `storage` buffers are checked against the
/// binding limit; the readback buffer only against the buffer-size limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanEntry {
    pub name: String,
    pub category: Category,
    pub bytes: u64,
    pub storage: bool,
}

/// Every buffer the model allocates, with the byte counts wgpu will be asked for
/// (storage buffers rounded up to whole words). Uniform buffers (a few dozen bytes per
/// dispatch, dropped after submission) are not part of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub entries: Vec<PlanEntry>,
}

/// The size `GpuContext::storage`/`storage_zeroed` allocate for `bytes`.
pub(crate) fn storage_size(bytes: u64) -> u64 {
    bytes.next_multiple_of(4).max(4)
}

impl MemoryPlan {
    pub(crate) fn storage(&mut self, name: impl Into<String>, category: Category, bytes: u64) {
        self.entries.push(PlanEntry {
            name: name.into(),
            category,
            bytes: storage_size(bytes),
            storage: true,
        });
    }

    pub(crate) fn other(&mut self, name: impl Into<String>, category: Category, bytes: u64) {
        self.entries.push(PlanEntry {
            name: name.into(),
            category,
            bytes,
            storage: false,
        });
    }

    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Bytes per category, in [`Category::ALL`] order.
    pub fn by_category(&self) -> Vec<(Category, u64)> {
        Category::ALL
            .iter()
            .map(|&c| {
                let b = self
                    .entries
                    .iter()
                    .filter(|e| e.category == c)
                    .map(|e| e.bytes)
                    .sum();
                (c, b)
            })
            .collect()
    }

    /// Refuses the plan if one buffer exceeds what the device can bind or allocate, naming
    /// the buffer, before anything is allocated.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        let bind = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        for e in &self.entries {
            let max = if e.storage {
                bind
            } else {
                limits.max_buffer_size
            };
            if e.bytes > max {
                return Err(Error::Gpu(format!(
                    "{} needs a {}-byte buffer, over this device's limit of {max} bytes{}",
                    e.name,
                    e.bytes,
                    if e.storage {
                        " (max_storage_buffer_binding_size)"
                    } else {
                        " (max_buffer_size)"
                    }
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for (c, b) in self.by_category().into_iter().filter(|&(_, b)| b > 0) {
            writeln!(f, "{:<12} {:>10.2} MiB", format!("{c:?}"), mib(b))?;
        }
        write!(f, "{:<12} {:>10.2} MiB", "total", mib(self.total()))
    }
}
