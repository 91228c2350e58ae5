//! Compression: layer-wise unified compression (LUC) of a model into the packed formats of
//! [`crate::formats`]: calibration statistics, the per-layer profile, policies, pruning
//! (magnitude, Wanda, SparseGPT), GPTQ, the compressed file, and the whole run
//! (`pipeline`). It sits above the engine, whose statistics pass it drives.

pub mod allocation;
pub mod calibration;
pub mod file;
pub mod gptq;
pub mod options;
pub mod pipeline;
pub mod policy;
pub mod profile;
mod profile_report;
pub mod prune;
