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

/// `orig` with its projections in turn 2:4 (sparsity 0.5), unstructured (0.6) and quantized
/// (projection i = 7·layer + p takes kind i mod 3), kept values int8 / 8 bits in even layers
/// and int4 / 4 bits in odd ones: every compressed format in one small file.
pub fn mixed_sparse_file(orig: &edge_llm::model::ModelFile) -> edge_llm::model::ModelFile {
    use edge_llm::compress::file;
    use edge_llm::compress::policy::{Allocation, Pattern, Policy, PruneMethod, QuantMethod};
    let w = orig.weights().unwrap();
    let n = orig.config.n_layers;
    let bits: Vec<u32> = (0..n).map(|l| if l % 2 == 0 { 8 } else { 4 }).collect();
    let make = |sparsity: f64, pattern: Pattern| {
        let mut p = Policy::from_layers(&vec![sparsity; n], &bits, Allocation::Manual).unwrap();
        p.pattern = pattern;
        p.prune = PruneMethod::Magnitude;
        p.quant = QuantMethod::Rtn;
        let (t, _) = file::compress_model(&w, None, &p, &mut |_, _| {}).unwrap();
        (p, t)
    };
    let kinds = [
        make(0.5, Pattern::TwoOfFour),
        make(0.6, Pattern::Unstructured),
        make(0.0, Pattern::Unstructured),
    ];
    let tensors: Vec<_> = (0..kinds[0].1.len())
        .map(|i| kinds[i % 3].1[i].clone())
        .collect();
    let bytes = file::write(&orig.gguf, &orig.bytes, &kinds[2].0, &tensors).unwrap();
    edge_llm::model::ModelFile::from_bytes(bytes).unwrap()
}

/// `orig` with its LM head (the tied `token_embd.weight`) re-encoded as `ty` (F32, Q8_0,
/// Q4_0, Q4_1) from its dequantized values by the crate's GGUF quantizer; everything else
/// byte for byte. The CPU reference reads the new blocks, so GPU and CPU see one head.
pub fn with_head_type(
    orig: &edge_llm::model::ModelFile,
    ty: edge_llm::gguf::GgmlType,
) -> edge_llm::model::ModelFile {
    use edge_llm::gguf::{quant, GgufWriter};
    let (g, bytes) = (&orig.gguf, &orig.bytes);
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for info in &g.tensors {
        if info.name == "token_embd.weight" {
            let vals = g.tensor_f32(bytes, &info.name).unwrap();
            w.tensor(
                &info.name,
                &info.dims,
                ty,
                quant::quantize(ty, &vals).unwrap(),
            );
        } else {
            let data = g.tensor_data(bytes, &info.name).unwrap().to_vec();
            w.tensor(&info.name, &info.dims, info.ty, data);
        }
    }
    edge_llm::model::ModelFile::from_bytes(w.to_bytes()).unwrap()
}
