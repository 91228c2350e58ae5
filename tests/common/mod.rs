//! Tolerances, fixtures and helpers shared by the native tests.
#![allow(dead_code)] // each test crate uses what it needs

use edge_llm::data::Dataset;
use edge_llm::kernels::context::GpuContext;
use edge_llm::model::tiny::{self, TinySpec};
use edge_llm::model::ModelFile;
use edge_llm::reference::{LoraConfig, Proj};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use edge_llm::train::{prepare, Backend, DataConfig, Row, StepReport, Trainer};
use std::path::PathBuf;
use std::process::Command;

// ---- Tolerances (the rule: edge_llm::tolerance) ----

/// GPU logits agree with the CPU's when max |gpu − cpu| ≤ rel · (max − min of the CPU
/// logits): f32 sums in another order, the same weights.
pub const LOGIT_TOL: Tol = Tol::relative(1e-3);
/// GPU gradients agree with the CPU's when max |gpu − cpu| ≤ rel · max |cpu| over all LoRA
/// gradients: f32 sums in another order through the same weights.
pub const GRAD_TOL: Tol = Tol::relative(1e-3);
/// Losses (a sum or a mean over targets) agree when |gpu − cpu| ≤ rel · |cpu|.
pub const LOSS_TOL: Tol<f64> = Tol::relative(1e-4);
/// A training run's per-step losses (and validation losses) agree when
/// |gpu − cpu| ≤ rel · |cpu|: the parameters drift apart by rounding from step to step.
pub const RUN_TOL: Tol<f64> = Tol::relative(1e-3);

/// max |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max |x| over a slice.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// max − min of a slice: the scale of [`LOGIT_TOL`].
pub fn range(a: &[f32]) -> f32 {
    let hi = a.iter().cloned().fold(f32::MIN, f32::max);
    let lo = a.iter().cloned().fold(f32::MAX, f32::min);
    hi - lo
}

/// GPU logits within [`LOGIT_TOL`] of the CPU's.
pub fn assert_logits_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let (d, range) = (max_abs_diff(gpu, cpu), range(cpu));
    assert!(
        d.is_finite() && LOGIT_TOL.allows(d, range),
        "{what}: max |gpu − cpu| = {d:e} over a logit range of {range} (allowed {} × range)",
        LOGIT_TOL.rel
    );
}

/// Two runs' per-step losses and validation losses within `tol` of `b`'s.
pub fn assert_same_losses(what: &str, a: &[StepReport], b: &[StepReport], tol: Tol<f64>) {
    assert_eq!(a.len(), b.len(), "{what}: step counts");
    for (x, y) in a.iter().zip(b) {
        assert!(
            tol.close_to(x.loss, y.loss),
            "{what}: step {} loss {} vs {} (rel {:e})",
            x.step,
            x.loss,
            y.loss,
            (x.loss - y.loss).abs() / y.loss.abs()
        );
        if let (Some(u), Some(v)) = (x.val_loss, y.val_loss) {
            assert!(
                tol.close_to(u, v),
                "{what}: step {} val loss {u} vs {v}",
                x.step
            );
        }
    }
}

// ---- Fixtures ----

/// The edge-llm binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_edge-llm");
/// The exits of the 4-block tiny model.
pub const EXITS: [usize; 2] = [2, 4];
/// A short text for calibration rows.
pub const TEXT: &str = "the quick brown fox jumps over the lazy dog while the cat sleeps on \
    the warm mat and the bird sings in the tall tree near the river where the water runs \
    over stones and the wind moves the grass on the hill under the wide blue sky at noon";

/// Runs the binary: (exit code, the last JSON object line of stdout, stdout and stderr).
pub fn run(args: &[&str]) -> (i32, Option<serde_json::Value>, String) {
    let out = Command::new(BIN).args(args).output().expect("run edge-llm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let obj = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap());
    (
        out.status.code().unwrap_or(-1),
        obj,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// Runs the binary: (exit code, every JSON object line of stdout, stderr).
pub fn run_lines(args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(BIN).args(args).output().expect("run edge-llm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let objs = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        objs,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch directory of this test process, named `name`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-llm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An `eval-mc --vote --json` report against the library's result: every exit's and every
/// rule's count of correct answers.
pub fn assert_vote_report(obj: &serde_json::Value, want: &edge_llm::eval::McVoteResult) {
    let exits: Vec<(u64, u64)> = obj["exits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["after"].as_u64().unwrap(), e["correct"].as_u64().unwrap()))
        .collect();
    let want_exits: Vec<(u64, u64)> = want
        .exits
        .iter()
        .map(|e| (e.after as u64, e.correct as u64))
        .collect();
    assert_eq!(exits, want_exits);
    let votes = obj["votes"].as_array().unwrap();
    assert_eq!(votes.len(), want.votes.len());
    for (v, w) in votes.iter().zip(&want.votes) {
        assert_eq!(v["rule"], w.rule.name());
        assert_eq!(
            v["correct"].as_u64().unwrap(),
            w.correct as u64,
            "{}",
            w.rule
        );
    }
    assert_eq!(
        obj["fitted"]["correct"].as_u64().unwrap(),
        want.fitted.correct as u64
    );
}

/// The generated tiny model (default spec: 2 blocks).
pub fn tiny_file() -> ModelFile {
    ModelFile::from_bytes(tiny::generate(&TinySpec::default()).unwrap()).unwrap()
}

/// The generated tiny model with `n_layers` blocks.
pub fn tiny_file_with_layers(n_layers: usize) -> ModelFile {
    let spec = TinySpec {
        n_layers,
        ..Default::default()
    };
    ModelFile::from_bytes(tiny::generate(&spec).unwrap()).unwrap()
}

/// Made-up tokens in the tiny model's vocabulary.
pub fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 5) % 250 + 3).collect()
}

/// The GPU training tests' adapters: rank 4, α 8, dropout 0.1, every projection.
pub fn train_lora_config() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: Proj::ALL.to_vec(),
    }
}

/// Two rows of made-up tokens with targets at two positions of three.
pub fn training_rows() -> Vec<Row> {
    let row = |n: usize, k: u32| Row {
        tokens: (0..n as u32).map(|i| (i * 37 + k) % 250 + 3).collect(),
        targets: (0..n as u32)
            .map(|i| (i % 3 != 0).then_some((i * 11 + k) % 260 + 3))
            .collect(),
    };
    vec![row(24, 5), row(17, 9)]
}

/// A Dickens sentence, repeated, prepared in rows of 32 tokens with a fifth for validation.
pub fn text_data(tok: &Tokenizer) -> edge_llm::train::Prepared {
    let text = "It was the best of times, it was the worst of times, it was the age of \
                wisdom, it was the age of foolishness, it was the epoch of belief. "
        .repeat(4);
    let cfg = DataConfig {
        seq_len: 32,
        val_fraction: 0.2,
        seed: 0,
    };
    prepare(&Dataset::Text(text), tok, &cfg).unwrap()
}

/// The step reports of `steps` more steps of `trainer`.
pub fn losses<B: Backend>(trainer: &mut Trainer<B>, steps: u64) -> Vec<StepReport> {
    let mut out = Vec::new();
    pollster::block_on(trainer.run(steps, &mut |r| out.push(r.clone()))).unwrap();
    out
}

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

/// Runs a check body (edge_llm::kernels::*::checks) to its end; its error, which names the
/// kernel, the shape and the worst error, fails the test.
pub fn check<T>(body: impl std::future::Future<Output = edge_llm::Result<T>>) -> T {
    pollster::block_on(body).unwrap_or_else(|e| panic!("{e}"))
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
        format: Default::default(),
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

/// The tiny model and a repetitive text written into `dir` for `edge-llm tune` runs:
/// (the model's path, the text's path).
pub fn tiny_tune_files(dir: &std::path::Path) -> (String, String) {
    let model = dir.join("tiny.gguf");
    std::fs::write(
        &model,
        edge_llm::model::tiny::generate(&edge_llm::model::tiny::TinySpec::default()).unwrap(),
    )
    .unwrap();
    let data = dir.join("text.txt");
    std::fs::write(
        &data,
        "the quick brown fox jumps over the lazy dog. ".repeat(120),
    )
    .unwrap();
    (model.display().to_string(), data.display().to_string())
}
