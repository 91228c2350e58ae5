//! The engine: the model on the GPU, built from the kernel library. Today: inference with
//! a KV cache ([`GpuModel`], a [`crate::eval::CausalLm`]) and its memory plan. Planned
//! here: the GPU training step and the scheduler (issue 4).

pub mod gpu_model;
pub mod plan;

pub use gpu_model::{
    default_path, GpuModel, GpuModelOptions, WeightFormat, DEFAULT_MAX_LEN, DEFAULT_MAX_T,
};
pub use plan::{Category, MemoryPlan, PlanEntry};
