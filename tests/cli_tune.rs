//! `edge-llm tune` end to end on the tiny model: outputs, a run stopped and resumed equals
//! the uninterrupted run, and the saved PEFT adapter changes what `--adapter` evaluates.

use std::path::{Path, PathBuf};
mod common;
use common::run_lines;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-llm-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn setup(dir: &Path) -> (String, String) {
    common::tiny_tune_files(dir)
}

#[test]
fn stopped_and_resumed_equals_uninterrupted() {
    let dir = scratch();
    let (model, data) = setup(&dir);
    let common = [
        "--model",
        &model,
        "--data",
        &data,
        "--steps",
        "8",
        "--seq-len",
        "32",
        "--lr",
        "1e-2",
        "--eval-every",
        "4",
        "--json",
    ];
    let full = dir.join("full");
    let mut args = common.to_vec();
    args.extend(["--out", full.to_str().unwrap()]);
    let (code, objs, err) = run_lines(&[&["tune"], args.as_slice()].concat());
    assert_eq!(code, 0, "{err}");
    let steps: Vec<&serde_json::Value> = objs.iter().filter(|o| o.get("step").is_some()).collect();
    assert_eq!(steps.len(), 8);
    let last = objs.last().unwrap();
    assert_eq!(last["done"], true);
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "checkpoint.json",
        "tune_run.json",
    ] {
        assert!(full.join(f).exists(), "{f} missing");
    }
    // A file not recognised names itself (its general.name) as the adapter's base.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        config["base_model_name_or_path"],
        "edge-llm tiny test model"
    );
    let first_loss = steps[0]["loss"].as_f64().unwrap();
    let last_loss = steps[7]["loss"].as_f64().unwrap();
    assert!(
        last_loss < first_loss,
        "loss did not fall: {first_loss} → {last_loss}"
    );

    let part = dir.join("part");
    let mut args = common.to_vec();
    args.extend(["--out", part.to_str().unwrap(), "--stop-after", "3"]);
    let (code, objs_a, err) = run_lines(&[&["tune"], args.as_slice()].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(objs_a.last().unwrap()["stopped_early"], true);
    let (code, objs_b, err) = run_lines(&["tune", "--resume", part.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let resumed: Vec<f64> = objs_a
        .iter()
        .chain(&objs_b)
        .filter_map(|o| o.get("step").map(|_| o["loss"].as_f64().unwrap()))
        .collect();
    let straight: Vec<f64> = steps.iter().map(|o| o["loss"].as_f64().unwrap()).collect();
    assert_eq!(resumed, straight, "resumed losses differ");
    assert_eq!(objs_b.last().unwrap()["val_loss"], last["val_loss"]);
    assert_eq!(
        std::fs::read(part.join("adapter_config.json")).unwrap(),
        std::fs::read(full.join("adapter_config.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(part.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(full.join("adapter_model.safetensors")).unwrap()
    );

    // --base-model names the adapter's base, and a resumed run keeps it.
    let named = dir.join("named");
    let mut args = common.to_vec();
    args.extend([
        "--out",
        named.to_str().unwrap(),
        "--stop-after",
        "2",
        "--base-model",
        "someone/their-model",
    ]);
    let (code, _, err) = run_lines(&[&["tune"], args.as_slice()].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_lines(&["tune", "--resume", named.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(named.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], "someone/their-model");
    // An id a loader cannot resolve is refused in plain words, before any step.
    let bad = dir.join("bad");
    let mut args = common.to_vec();
    args.extend(["--out", bad.to_str().unwrap(), "--base-model", "my model"]);
    let (code, lines, err) = run_lines(&[&["tune"], args.as_slice()].concat());
    assert_ne!(code, 0, "a base model id with a space");
    assert!(err.contains("not of the form owner/name"), "{err}");
    assert!(
        !lines.iter().any(|l| l.get("loss").is_some()),
        "no step ran"
    );

    // The adapter is used by the other commands.
    let (code, base, err) = run_lines(&[
        "perplexity",
        "--model",
        &model,
        "--text",
        &data,
        "--max-tokens",
        "64",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, tuned, err) = run_lines(&[
        "perplexity",
        "--model",
        &model,
        "--text",
        &data,
        "--max-tokens",
        "64",
        "--json",
        "--adapter",
        full.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (b, t) = (
        base[0]["perplexity"].as_f64().unwrap(),
        tuned[0]["perplexity"].as_f64().unwrap(),
    );
    assert!(t < b, "tuned perplexity {t} not below base {b}");
}

#[test]
fn bad_tune_settings_are_refused() {
    let dir = scratch();
    let (model, data) = setup(&dir);
    let (code, _, err) = run_lines(&[
        "tune",
        "--model",
        &model,
        "--data",
        &data,
        "--lora-rank",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("LoRA rank must be between 1 and 1024"),
        "{err}"
    );
    let (code, _, err) = run_lines(&[
        "tune",
        "--model",
        &model,
        "--data",
        &data,
        "--lora-targets",
        "qq",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown LoRA target"), "{err}");
    let (code, _, err) = run_lines(&["tune", "--resume", dir.join("nope").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("tune output directory"), "{err}");
    let (code, _, err) = run_lines(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "x",
        "--adapter",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.lines().count() == 1 && err.starts_with("error:"),
        "{err}"
    );
}

#[test]
fn gpu_tuning_matches_the_cpu_and_reports_its_memory() {
    let dir = scratch().join("gpu");
    std::fs::create_dir_all(&dir).unwrap();
    let (model, data) = setup(&dir);
    let losses = |device: &str| {
        let out = dir.join(device);
        let (code, objs, err) = run_lines(&[
            "tune",
            "--model",
            &model,
            "--data",
            &data,
            "--steps",
            "4",
            "--seq-len",
            "32",
            "--lr",
            "1e-2",
            "--device",
            device,
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]);
        (code, objs, err)
    };
    let (code, gpu, err) = losses("gpu");
    if code != 0 && std::env::var("EDGE_LLM_ALLOW_NO_GPU").as_deref() == Ok("1") {
        eprintln!("note: skipping the GPU tune (EDGE_LLM_ALLOW_NO_GPU=1): {err}");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let (code, cpu, err) = losses("cpu");
    assert_eq!(code, 0, "{err}");
    let steps = |objs: &[serde_json::Value]| -> Vec<f64> {
        objs.iter()
            .filter_map(|o| o.get("step").map(|_| o["loss"].as_f64().unwrap()))
            .collect()
    };
    let (g, c) = (steps(&gpu), steps(&cpu));
    assert_eq!(g.len(), 4);
    for (a, b) in g.iter().zip(&c) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "GPU loss {a} vs CPU {b}");
    }
    for o in gpu.iter().filter(|o| o.get("step").is_some()) {
        assert_eq!(o["device"], "gpu");
        assert!(o["gpu_bytes"].as_u64().unwrap() > 0, "{o}");
        assert!(o["tokens_per_s"].as_f64().unwrap() > 0.0, "{o}");
    }
    let last = gpu.last().unwrap();
    let peak = last["peak_gpu_bytes"].as_u64().unwrap();
    assert!(peak > 0 && last["val_loss"].as_f64().is_some(), "{last}");

    // The plan command prints the same total the run allocated, without allocating.
    let (code, plan, err) = run_lines(&["plan", "--model", &model, "--seq-len", "32", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(plan[0]["total_bytes"].as_u64().unwrap(), peak);
    // A budget that cannot fit is refused before anything is made, saying what would.
    let refused = dir.join("refused");
    let (code, _, err) = run_lines(&[
        "tune",
        "--model",
        &model,
        "--data",
        &data,
        "--steps",
        "4",
        "--seq-len",
        "32",
        "--device",
        "gpu",
        "--memory-budget",
        "200K",
        "--out",
        refused.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("memory budget of 204800 bytes"), "{err}");
    assert!(err.contains("needs"), "{err}");
    assert!(
        !refused.exists(),
        "a refused run created its output directory"
    );
}
