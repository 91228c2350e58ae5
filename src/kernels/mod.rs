//! GPU kernels (wgpu: Vulkan natively, WebGPU in the browser).
//!
//! Each kernel is a WGSL file under `shaders/` mirrored by a small Rust file here that owns
//! its bind group layout and dispatch, and has a CPU twin of the same name in
//! [`crate::reference::ops`] that tests compare it against.

pub mod bench;
pub mod context;
pub mod matmul;
pub mod ops;
pub mod program;
pub mod qmatmul;
pub mod roofline;
pub mod spmatmul;
pub mod weights;

pub use context::{GpuContext, Kernel};
pub use matmul::{matmul_nt, MatmulNt};
pub use program::{grid, Bind, KernelSpec};
