//! Compression: packed weight formats (quantized, sparse) with their CPU reference
//! matmuls, the twins of the GPU kernels. LUC (profiling, policies, pruning) builds on
//! these (issue 5).

pub mod file;
pub mod gptq;
pub mod pipeline;
pub mod policy;
pub mod profile;
pub mod prune;
pub mod quant;
pub mod sparse;
