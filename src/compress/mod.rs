//! Compression: packed weight formats (quantized, sparse) with their CPU reference
//! matmuls, the twins of the GPU kernels. LUC (profiling, policies, pruning) builds on
//! these (issue 5).

pub mod gptq;
pub mod policy;
pub mod prune;
pub mod quant;
pub mod sparse;
