//! CPU kernels: the f32 matrix product the reference transformer runs on, and the thread
//! helpers around it. The lowest layer of the crate: it imports nothing from it, so the
//! reference (and through it the CPU trainer) and any later CPU code can build on it.
//!
//! One packed GEMM ([`gemm::sgemm`]) with a micro-kernel per target: AVX-512 or AVX2+FMA
//! picked at run time on x86-64, SIMD128 on wasm32 built with `+simd128`, and a portable
//! one everywhere else. The B operand may also be a weight stored packed
//! ([`source::RowSource`]), decoded while its panels are packed ([`sgemm_rows`]). Natively the work is split over rayon's threads; wasm32 runs on
//! one thread (no threads without cross-origin isolation and an atomics build).

pub mod alloc;
pub mod gemm;
mod kernels;
pub mod mask;
mod narrow;
mod pack;
pub mod par;
pub mod peak;
pub mod profile;
pub mod rows;
pub mod source;
mod sparse;
pub mod vmath;

pub use alloc::keep_freed_memory;
pub use gemm::{sgemm, Kernel};
pub use source::{sgemm_rows, DenseRows, Op, RowSource};
