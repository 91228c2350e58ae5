//! Helpers shared by the native GPU tests.
#![allow(dead_code)] // each test crate uses what it needs

use edge_llm::kernels::context::GpuContext;
use std::path::PathBuf;

/// A GPU context with `limits` (None: `wgpu::Limits::default()`, the WebGPU baseline).
/// Without an adapter the test fails loudly, unless EDGE_LLM_ALLOW_NO_GPU=1 makes it skip.
pub fn context(limits: Option<wgpu::Limits>) -> Option<GpuContext> {
    match GpuContext::new_blocking(limits) {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var("EDGE_LLM_ALLOW_NO_GPU").as_deref() == Ok("1") => {
            eprintln!("note: skipping the GPU test (EDGE_LLM_ALLOW_NO_GPU=1): {e}");
            None
        }
        Err(e) => {
            panic!("{e}\n(set EDGE_LLM_ALLOW_NO_GPU=1 to skip GPU tests on a machine without one)")
        }
    }
}

/// The default real model, if fetched; EDGE_LLM_REQUIRE_MODEL=1 makes its absence fail.
pub fn model_path() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("EDGE_LLM_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!("{} is missing: run scripts/fetch-model.sh", p.display());
    }
    eprintln!("note: {} absent; real-model test skipped", p.display());
    None
}
