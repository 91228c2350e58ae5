//! The engine: the model on the GPU, built from the kernel library: inference with a KV
//! cache ([`GpuModel`], a [`crate::eval::Lm`]), LoRA training ([`GpuTrainer`], a
//! [`crate::train::Backend`]), and their memory plans, made before anything is allocated.

mod block;
mod gpu_lora;
pub mod gpu_model;
pub mod plan;
pub mod train;
mod weights;

pub use gpu_model::{
    default_path, GpuModel, GpuModelOptions, WeightFormat, DEFAULT_MAX_LEN, DEFAULT_MAX_T,
};
pub use plan::{Category, MemoryPlan, PlanEntry};
pub use train::{fit_budget, Fit, GpuTrainer, StatsPass, TrainOptions, DEFAULT_VOCAB_CHUNK};
