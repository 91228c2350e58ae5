//! The adapters we export, loaded by the REAL Hugging Face stack (transformers' GGUF loader
//! and `peft.PeftModel.from_pretrained`, scripts/check_peft.py) onto the real
//! SmolLM2-135M-Instruct, must give our CPU reference's logits.
//!
//! Opt-in: needs .venv-peft (scripts/check-peft.sh builds it; torch is a large download, so
//! CI does not). Skipped with a note without it or without the model, unless
//! EDGE_LLM_REQUIRE_PEFT=1. The adapter is a random rank-8 one over all seven projections,
//! or the directory in EDGE_LLM_PEFT_ADAPTER (e.g. what `edge-llm tune` wrote).

mod common;
use common::{max_abs_diff, range};
use edge_llm::adapter::{load_dir, permute_rows, save_dir};
use edge_llm::model::{LlamaConfig, ModelFile};
use edge_llm::reference::{Lora, LoraConfig, Proj, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PyTorch float32 vs our float32 on the same dequantized weights: only summation order
/// differs, so the logits must agree to this absolute bound.
const PEFT_LOGIT_TOL: Tol = Tol::absolute(1e-3);
/// The adapter must move the logits by at least this much, or the check proves nothing.
const MIN_EFFECT: f32 = 1e-2;
/// Half-width of the uniform B entries of the random adapter (A is PEFT's init,
/// U(±1/√in)); chosen so the adapter moves the logits by about 1 (measured 1.08).
const B_AMP: f32 = 0.02;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("EDGE_LLM_REQUIRE_PEFT").is_ok_and(|v| v == "1")
}

fn skip(why: String) -> Option<PathBuf> {
    if required() {
        panic!("{why}");
    }
    eprintln!("note: {why}; PEFT library check skipped");
    None
}

fn peft_python() -> Option<PathBuf> {
    let py = root().join(".venv-peft/bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import torch, transformers, peft, gguf"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Some(py);
    }
    skip(format!(
        "{} absent or without torch/transformers/peft/gguf (scripts/check-peft.sh)",
        py.display()
    ))
}

fn model_path() -> Option<PathBuf> {
    let p = root().join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    skip(format!("{} absent (scripts/fetch-model.sh)", p.display()))
}

/// PEFT's A init with every B entry nonzero (a fresh adapter's B = 0 would hide any error
/// in B's layout), deterministic.
fn random_lora(cfg: &LlamaConfig, seed: u64) -> Lora<f32> {
    let lc = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Proj::ALL.to_vec(),
    };
    let mut lora = Lora::<f32>::new(cfg, lc, seed);
    let mut s = seed;
    for pair in lora.layers.iter_mut().flatten().flatten() {
        for x in &mut pair.b {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            *x = (2.0 * u - 1.0) * B_AMP;
        }
    }
    lora
}

struct PeftOut {
    logits: Vec<f32>,
    base: Option<Vec<f32>>,
}

fn flat(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of rows")
        .iter()
        .flat_map(|row| row.as_array().expect("a row").iter())
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// Runs scripts/check_peft.py: the adapter applied by PEFT to transformers' GGUF model.
fn peft_logits(py: &Path, model: &Path, adapter: &Path, ids: &[u32], base: bool) -> PeftOut {
    let mut cmd = Command::new(py);
    cmd.arg(root().join("scripts/check_peft.py"))
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .arg("--ids")
        .arg(serde_json::to_string(ids).unwrap());
    if base {
        cmd.arg("--base");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check_peft.py failed: {stderr}");
    for line in stderr.lines().filter(|l| l.starts_with("check_peft:")) {
        eprintln!("{line}");
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    PeftOut {
        logits: flat(&v["logits"]),
        base: base.then(|| flat(&v["base_logits"])),
    }
}

#[test]
fn peft_library_reproduces_our_logits() {
    let Some(py) = peft_python() else { return };
    let Some(model) = model_path() else { return };
    let f = ModelFile::open(&model).unwrap();
    let cfg = &f.config;
    let tok = Tokenizer::from_gguf(&f.gguf).unwrap();
    let mut ids = tok
        .encode("The old lighthouse keeper climbed the stairs every night to light the lamp for passing ships.")
        .unwrap();
    ids.truncate(16);
    assert_eq!(ids.len(), 16, "the sentence is too short: {ids:?}");

    let tmp = std::env::temp_dir().join(format!("edge-llm-peft-{}", std::process::id()));
    let (adapter, lora) = match std::env::var_os("EDGE_LLM_PEFT_ADAPTER") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let lora = load_dir(&dir, cfg).unwrap();
            (dir, lora)
        }
        None => {
            let lora = random_lora(cfg, 42);
            let dir = tmp.join("adapter");
            save_dir(&dir, &lora, cfg, "SmolLM2-135M-Instruct").unwrap();
            (dir, lora)
        }
    };
    eprintln!(
        "adapter {}: r {} alpha {} targets {:?}",
        adapter.display(),
        lora.config.rank,
        lora.config.alpha,
        lora.config.targets
    );

    let base = Transformer::new(f.weights().unwrap());
    let ours = Transformer {
        w: base.w.clone(),
        lora: Some(lora.clone()),
    }
    .logits(&ids, None);
    let base_ours = base.logits(&ids, None);
    let theirs = peft_logits(&py, &model, &adapter, &ids, true);
    let base_theirs = theirs.base.unwrap();

    let lo = ours.iter().fold(f32::MAX, |m, &x| m.min(x));
    let hi = ours.iter().fold(f32::MIN, |m, &x| m.max(x));
    let range = range(&ours);
    let diff = max_abs_diff(&ours, &theirs.logits);
    let base_diff = max_abs_diff(&base_ours, &base_theirs);
    let effect = max_abs_diff(&ours, &base_ours);
    let effect_theirs = max_abs_diff(&theirs.logits, &base_theirs);
    eprintln!(
        "{} positions x {} vocab: logit range [{lo:.3}, {hi:.3}] = {range:.3}",
        ids.len(),
        ours.len() / ids.len()
    );
    eprintln!(
        "base model, transformers vs ours: max |Δlogit| {base_diff:.3e} ({:.2e} of range)",
        base_diff / range
    );
    eprintln!(
        "with adapter, PEFT vs ours: max |Δlogit| {diff:.3e} ({:.2e} of range; tol {:.0e})",
        diff / range,
        PEFT_LOGIT_TOL.abs
    );
    eprintln!("adapter effect: max |Δlogit| ours {effect:.3e}, PEFT {effect_theirs:.3e}");
    assert!(
        PEFT_LOGIT_TOL.allows(base_diff, range),
        "base model: max |Δlogit| {base_diff} > {}",
        PEFT_LOGIT_TOL.abs
    );
    assert!(
        PEFT_LOGIT_TOL.allows(diff, range),
        "with adapter: max |Δlogit| {diff} > {}",
        PEFT_LOGIT_TOL.abs
    );
    assert!(
        effect > MIN_EFFECT && effect_theirs > MIN_EFFECT,
        "adapter effect {effect} / {effect_theirs} too small to test"
    );

    // q/k B left in OUR row order must be seen: otherwise a wrong layout could pass.
    let mut wrong = lora.clone();
    for l in &mut wrong.layers {
        for (p, heads) in [(Proj::Q, cfg.n_heads), (Proj::K, cfg.n_kv_heads)] {
            if let Some(pair) = l[p.index()].as_mut() {
                pair.b = permute_rows(&pair.b, heads, cfg.head_dim, pair.rank);
            }
        }
    }
    if wrong != lora {
        let dir = tmp.join("wrong");
        save_dir(&dir, &wrong, cfg, "x").unwrap();
        let bad = peft_logits(&py, &model, &dir, &ids, false).logits;
        let bad_diff = max_abs_diff(&ours, &bad);
        eprintln!("q/k rows left permuted: max |Δlogit| {bad_diff:.3e}");
        assert!(
            bad_diff > 10.0 * PEFT_LOGIT_TOL.abs,
            "a wrong q/k layout went unnoticed ({bad_diff})"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
