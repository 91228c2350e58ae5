//! `edge-llm tune --mode …` and `edge-llm bench tune` end to end on a 4-block tiny model:
//! an edge run trains its windows in order, resumes exactly and leaves an adapter with
//! exits that `eval-mc` votes with; the benchmark reports every mode with its ratios to
//! vanilla and writes its table, plot and JSON.

use edge_llm::model::tiny;
use std::path::Path;
mod common;
use common::{run_lines, scratch_dir};

/// The tiny model with 4 blocks, and 40 made-up multiple-choice questions.
fn setup(dir: &Path) -> (String, String) {
    let model = dir.join("tiny4.gguf");
    let spec = tiny::TinySpec {
        n_layers: 4,
        ..Default::default()
    };
    std::fs::write(&model, tiny::generate(&spec).unwrap()).unwrap();
    let words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"];
    let mut lines = String::new();
    for i in 0..40 {
        let choices: Vec<&str> = (0..4).map(|k| words[(i + 3 * k) % words.len()]).collect();
        lines += &serde_json::json!({
            "question": format!("Which word is number {}?", i % 4),
            "choices": choices,
            "answer": i % 4,
        })
        .to_string();
        lines.push('\n');
    }
    let data = dir.join("mc.jsonl");
    std::fs::write(&data, lines).unwrap();
    (model.display().to_string(), data.display().to_string())
}

#[test]
fn edge_mode_trains_windows_resumes_and_votes() {
    let dir = scratch_dir("edge-mode");
    let (model, data) = setup(&dir);
    let out = dir.join("run").display().to_string();
    let common = [
        "tune",
        "--model",
        &model,
        "--data",
        &data,
        "--steps",
        "8",
        "--seq-len",
        "48",
        "--lr",
        "1e-2",
        "--eval-every",
        "4",
        "--mode",
        "edge",
        "--exit-stride",
        "2",
        "--json",
    ];
    let whole = dir.join("whole").display().to_string();
    let (code, want, err) = run_lines(&[&common[..], &["--out", &whole]].concat());
    assert_eq!(code, 0, "{err}");
    let windows: Vec<u64> = want
        .iter()
        .filter_map(|o| o.get("window").and_then(|w| w.as_u64()))
        .collect();
    assert_eq!(windows, [0, 0, 0, 0, 1, 1, 1, 1], "{want:?}");
    let last = want.last().unwrap();
    assert_eq!(last["mode"], "edge");

    // Stopped after 3 steps (inside the first window) and resumed: the same run.
    let (code, mut got, err) =
        run_lines(&[&common[..], &["--out", &out, "--stop-after", "3"]].concat());
    assert_eq!(code, 0, "{err}");
    got.pop();
    let (code, rest, err) = run_lines(&["tune", "--resume", &out, "--json"]);
    assert_eq!(code, 0, "{err}");
    got.extend(rest);
    let key = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .filter(|o| o.get("step").is_some())
            .map(|o| format!("{} {} {}", o["step"], o["loss"], o["window"]))
            .collect()
    };
    assert_eq!(key(&got), key(&want));

    // The adapter carries its exits; eval-mc votes with them by default.
    assert!(Path::new(&out).join("exits.safetensors").exists());
    let (code, objs, err) = run_lines(&[
        "eval-mc",
        "--model",
        &model,
        "--adapter",
        &out,
        "--data",
        &data,
        "--limit",
        "12",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = &objs[0];
    assert_eq!(r["vote"], "last", "{r}");
    assert_eq!(r["exits"].as_array().unwrap().len(), 2);
    assert_eq!(r["predictions"].as_array().unwrap().len(), 12, "{r}");

    // The GPU engine runs the same windows: the same steps, windows and losses (within
    // f32 rounding of another summation order).
    let on_gpu = dir.join("gpu").display().to_string();
    let (code, got, err) =
        run_lines(&[&common[..], &["--out", &on_gpu, "--device", "gpu"]].concat());
    assert_eq!(code, 0, "{err}");
    let steps = |v: &[serde_json::Value]| -> Vec<(u64, f64, u64)> {
        v.iter()
            .filter(|o| o.get("step").is_some() && o.get("loss").is_some())
            .map(|o| {
                let f = |k: &str| o[k].as_f64().unwrap_or(f64::NAN);
                (
                    o["step"].as_u64().unwrap(),
                    f("loss"),
                    o["window"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (g, w) = (steps(&got), steps(&want));
    assert_eq!(g.len(), w.len(), "{got:?}");
    for ((gs, gl, gw), (ws, wl, ww)) in g.iter().zip(&w) {
        assert_eq!((gs, gw), (ws, ww));
        assert!(
            (gl - wl).abs() <= 1e-3 * wl,
            "step {gs}: GPU loss {gl} vs CPU {wl}"
        );
    }
    let last = got.last().unwrap();
    assert_eq!(last["device"], "gpu", "{last}");
    assert!(last["peak_gpu_bytes"].as_u64().unwrap() > 0, "{last}");
    assert!(Path::new(&on_gpu).join("exits.safetensors").exists());
}

#[test]
fn bench_tune_reports_every_mode_against_vanilla() {
    let dir = scratch_dir("bench-tune");
    let (model, data) = setup(&dir);
    let out = dir.join("bench");
    let out_s = out.display().to_string();
    let args = [
        "bench",
        "tune",
        "--device",
        "cpu",
        "--modes",
        "vanilla,compress-then-tune,partial,edge",
        "--model",
        &model,
        "--data",
        &data,
        "--eval-data",
        &data,
        "--questions",
        "8",
        "--steps",
        "6",
        "--seq-len",
        "96",
        "--exit-stride",
        "2",
        "--partial-layers",
        "2",
        "--calib-rows",
        "2",
        "--calib-seq-len",
        "96",
        "--cache-dir",
        &dir.join("profile").display().to_string(),
        "--out",
        &out_s,
        "--json",
    ];
    let (code, objs, err) = run_lines(&args);
    assert_eq!(code, 0, "{err}");
    let modes: Vec<&str> = objs.iter().map(|o| o["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["vanilla", "compress-then-tune", "partial", "edge"]);
    for o in &objs {
        for k in [
            "step_ms",
            "tokens_per_s",
            "peak_gpu_bytes",
            "val_loss",
            "accuracy",
            "speedup_vs_vanilla",
            "memory_ratio_vs_vanilla",
        ] {
            assert!(o[k].is_number(), "{k} of {o}");
        }
        assert_eq!(o["steps"], 6);
    }
    let f = |i: usize, k: &str| objs[i][k].as_f64().unwrap();
    assert_eq!(f(0, "speedup_vs_vanilla"), 1.0);
    assert_eq!(f(0, "memory_ratio_vs_vanilla"), 1.0);
    // Ratios are vanilla ÷ mode of the reported figures.
    for i in 1..4 {
        let m = f(0, "peak_gpu_bytes") / f(i, "peak_gpu_bytes");
        assert!((f(i, "memory_ratio_vs_vanilla") - m).abs() < 1e-9);
        let s = f(0, "step_ms") / f(i, "step_ms");
        assert!((f(i, "speedup_vs_vanilla") - s).abs() < 1e-9);
    }
    // The plans: packed weights and one window hold less than f32 at full depth.
    assert!(f(1, "memory_ratio_vs_vanilla") > 1.0);
    assert!(f(3, "memory_ratio_vs_vanilla") > f(1, "memory_ratio_vs_vanilla"));
    // Edge: voted and last-exit accuracy, one per exit, prefix cache used.
    assert!(objs[3]["last_exit_accuracy"].is_number());
    assert_eq!(objs[3]["exit_accuracies"].as_array().unwrap().len(), 2);
    assert!(
        objs[3]["prefix_hits"].as_u64().unwrap() + objs[3]["prefix_misses"].as_u64().unwrap() > 0
    );
    for name in ["table.md", "losses.svg", "results.json"] {
        let p = out.join(name);
        assert!(
            std::fs::metadata(&p).unwrap().len() > 100,
            "{}",
            p.display()
        );
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| edge |"), "{table}");
    assert!(table.contains("on the CPU backend"), "{table}");
    // Accuracy against vanilla's, in points, and edge against the targets, by how much.
    for i in 0..4 {
        let d = 100.0 * (f(i, "accuracy") - f(0, "accuracy"));
        assert!((f(i, "accuracy_vs_vanilla_points") - d).abs() < 1e-9);
    }
    let speed = f(3, "speedup_vs_vanilla");
    let expect = if speed >= 4.0 {
        format!("speed ≥ 4× vanilla's: {speed:.2}× (met)")
    } else {
        format!(
            "speed ≥ 4× vanilla's: {speed:.2}× (missed by {:.2}×)",
            4.0 - speed
        )
    };
    assert!(table.contains(&expect), "{expect} in {table}");
    assert!(
        table.contains("voted accuracy within 1 point of vanilla's: "),
        "{table}"
    );

    // The same bench on the GPU engine (lavapipe here): the same steps, losses and answers.
    let gpu_out = dir.join("bench-gpu");
    let gpu_args: Vec<&str> = args
        .iter()
        .map(|a| match *a {
            "cpu" => "gpu",
            "vanilla,compress-then-tune,partial,edge" => "vanilla,edge",
            a if a == out_s => gpu_out.to_str().unwrap(),
            a => a,
        })
        .collect();
    let (code, gpu, err) = run_lines(&gpu_args);
    assert_eq!(code, 0, "{err}");
    let modes: Vec<&str> = gpu.iter().map(|o| o["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["vanilla", "edge"]);
    let losses = |dir: &Path, mode: &str| -> Vec<f64> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        let r = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mode"] == mode)
            .unwrap();
        r["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for (g, c) in [(0, 0), (1, 3)] {
        let mode = gpu[g]["mode"].as_str().unwrap();
        let (lg, lc) = (losses(&gpu_out, mode), losses(&out, mode));
        assert_eq!(lg.len(), 6);
        for (a, b) in lg.iter().zip(&lc) {
            assert!(
                (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                "{mode}: {lg:?} vs {lc:?}"
            );
        }
        let (vg, vc) = (gpu[g]["val_loss"].as_f64().unwrap(), f(c, "val_loss"));
        assert!((vg - vc).abs() <= 1e-3 * vc.abs(), "{mode}: {vg} vs {vc}");
        for k in ["accuracy", "last_exit_accuracy"] {
            assert_eq!(gpu[g][k], objs[c][k], "{mode} {k}");
        }
    }
    let table = std::fs::read_to_string(gpu_out.join("table.md")).unwrap();
    assert!(table.contains("on the GPU engine on"), "{table}");
}
