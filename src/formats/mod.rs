//! Packed weight formats: the quantized ([`quant`]) and sparse ([`sparse`]) matrices with
//! their CPU reference matmuls (the twins of the GPU kernels), and their storage in a
//! compressed-model file ([`packed`]). The model loader, the GPU engine and the compression
//! pipeline all build on this layer; it depends on nothing above `gguf` (and `cpu`, whose
//! GEMM reads every format in place through [`rows`]).

#[cfg(target_arch = "x86_64")]
pub mod expand;
pub mod packed;
pub mod quant;
pub mod rows;
pub mod sparse;
