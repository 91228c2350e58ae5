//! edge-llm: private on-device fine-tuning of LLMs (Edge-LLM, DAC 2024) on WebGPU.
//!
//! The engine core is the same code natively and in the browser (wasm32): no threads,
//! blocking I/O or file-system calls outside the `cfg`-gated native parts. See
//! ARCHITECTURE.md for the layering.

pub mod adapter;
pub mod compress;
pub mod cpu;
pub mod data;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod formats;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod reference;
pub mod tokenizer;
pub mod tolerance;
pub mod train;
pub mod tune;
pub mod vote;

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
