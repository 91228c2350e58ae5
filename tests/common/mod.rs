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

/// Multiple-choice questions for exit-voting tests on the tiny model (choices of different
/// token lengths, answers at every position).
pub fn mc_questions() -> Vec<edge_llm::data::McQuestion> {
    let q = |question: &str, choices: &[&str], answer| edge_llm::data::McQuestion {
        question: question.into(),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        answer,
    };
    vec![
        q("what is the sky", &["blue", "a green thing", "red"], 0),
        q("the cat sat on", &["the mat", "a hat", "wet rats", "it"], 1),
        q("where is the water", &["in the sea", "on the stone"], 1),
        q(
            "who wrote this",
            &["a man", "the other one there", "no one"],
            2,
        ),
        q("when does it rain", &["in autumn", "at night", "soon"], 0),
        q("which is heavier", &["stone", "feather"], 0),
        q("the sun is", &["hot", "a cold wet rock", "green"], 0),
        q("a bird can", &["fly", "swim under the sea", "read"], 0),
    ]
}

/// Layer adapters and exits after `exits` (rank 4, α 8, no dropout) with every value, B
/// included, nonzero and seeded: adapters that change every exit's output.
pub fn random_lora(
    cfg: &edge_llm::model::LlamaConfig,
    exits: &[usize],
    seed: u64,
) -> edge_llm::reference::Lora<f32> {
    use edge_llm::reference::{Lora, LoraConfig};
    let lc = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    };
    let mut lora = Lora::<f32>::new(cfg, lc, seed).with_exits(exits, cfg.hidden, seed + 1);
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    for t in lora.tensors_mut() {
        for x in t.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            *x = (u - 0.5) * 0.4;
        }
    }
    lora
}

/// Rows `(length, seed, positions with a target)` of made-up tokens and targets in the tiny
/// model's vocabulary: for checking that only the positions with a target reach the head.
pub fn rows_with_targets_at(spec: &[(usize, u32, &[usize])]) -> Vec<edge_llm::train::Row> {
    spec.iter()
        .map(|&(n, k, at)| edge_llm::train::Row {
            tokens: (0..n as u32).map(|i| (i * 37 + k) % 250 + 3).collect(),
            targets: (0..n)
                .map(|i| at.contains(&i).then_some((i as u32 * 11 + k) % 260 + 3))
                .collect(),
        })
        .collect()
}
