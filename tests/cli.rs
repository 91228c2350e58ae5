//! The CLI end to end on the tiny model, and its error behaviour on bad input: every bad
//! file gives a one-line `error: …` naming the problem and exit code 1, never a panic.

use edge_llm::gguf::{GgmlType, GgufWriter, Value};
use edge_llm::model::tiny;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-llm");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-llm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tiny_model() -> PathBuf {
    // One file per test thread: tests run in parallel and must not see a half-written file.
    let p = scratch(&format!("tiny-{:?}.gguf", std::thread::current().id()));
    std::fs::write(&p, tiny::generate(&tiny::TinySpec::default()).unwrap()).unwrap();
    p
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run edge-llm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command expected to fail and checks the error is one line containing `needle`.
fn expect_error(args: &[&str], needle: &str) {
    let (code, _, err) = run(args);
    assert_eq!(code, 1, "exit code for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one-line error expected for {args:?}, got: {err}"
    );
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].to_lowercase().contains(needle),
        "{args:?}: '{}' lacks '{needle}'",
        lines[0]
    );
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn commands_work_on_the_tiny_model() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let (code, out, err) = run(&["info", "--model", m, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["config"]["n_layers"], 2);
    assert_eq!(v["config"]["n_kv_heads"], 2);
    assert_eq!(v["tensor_types"]["Q4_1"], 14);

    let (code, out, err) = run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "the cat",
        "--max-tokens",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(json(&out)["tokens"].as_u64().unwrap() <= 5);

    let text = scratch("text.txt");
    let t = write(
        &text,
        b"the quick brown fox jumps over the lazy dog. "
            .repeat(20)
            .as_slice(),
    );
    let (code, out, err) = run(&[
        "perplexity",
        "--model",
        m,
        "--text",
        &t,
        "--max-tokens",
        "100",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["tokens"], 100);
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");

    let mc = scratch("mc.jsonl");
    let d = write(
        &mc,
        b"{\"question\": \"What is 2+2?\", \"choices\": [\"four\", \"five\", \"six\"], \"answer\": 0}\n{\"question\": \"Sky?\", \"choices\": [\"blue\", \"green\"], \"answer\": 0}\n",
    );
    let (code, out, err) = run(&["eval-mc", "--model", m, "--data", &d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["n"], 2);
    assert!((0.0..=1.0).contains(&v["accuracy"].as_f64().unwrap()));
    // One chosen index per question, within its choices, agreeing with "correct".
    let preds: Vec<u64> = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(preds.len(), 2);
    assert!(preds[0] < 3 && preds[1] < 2, "{preds:?}");
    assert_eq!(
        preds.iter().filter(|&&p| p == 0).count() as u64,
        v["correct"].as_u64().unwrap()
    );
    // acc is `accuracy`; acc_norm picks the highest log-likelihood per byte of choice text.
    assert_eq!(v["acc"], v["accuracy"]);
    let scores: Vec<Vec<f64>> = serde_json::from_value(v["scores"].clone()).unwrap();
    let choices = [vec!["four", "five", "six"], vec!["blue", "green"]];
    let norm: Vec<usize> = scores
        .iter()
        .zip(&choices)
        .map(|(s, c)| {
            let per_byte: Vec<f64> = s.iter().zip(c).map(|(s, c)| s / c.len() as f64).collect();
            (0..per_byte.len())
                .max_by(|&a, &b| per_byte[a].total_cmp(&per_byte[b]).then(b.cmp(&a)))
                .unwrap()
        })
        .collect();
    let preds_norm: Vec<usize> = serde_json::from_value(v["predictions_norm"].clone()).unwrap();
    assert_eq!(preds_norm, norm);
    let correct_norm = norm.iter().filter(|&&p| p == 0).count();
    assert_eq!(v["acc_norm"].as_f64().unwrap(), correct_norm as f64 / 2.0);

    // --prompt-format raw scores a question that carries its own wrapper as written: the
    // same scores as the plain question wrapped by eval-mc.
    let raw = scratch("mc-raw.jsonl");
    let d = write(
        &raw,
        b"{\"question\": \"Question: What is 2+2?\\nAnswer:\", \"choices\": [\"four\", \"five\", \"six\"], \"answer\": 0}\n{\"question\": \"Question: Sky?\\nAnswer:\", \"choices\": [\"blue\", \"green\"], \"answer\": 0}\n",
    );
    let (code, out, err) = run(&[
        "eval-mc",
        "--model",
        m,
        "--data",
        &d,
        "--prompt-format",
        "raw",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(r["prompt_format"], "raw");
    assert_eq!(r["scores"], v["scores"]);
    // ... and wrapped again, a different context (so different scores).
    let (code, out, err) = run(&["eval-mc", "--model", m, "--data", &d, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(json(&out)["scores"], v["scores"]);
}

#[test]
fn bad_model_files_give_one_line_errors() {
    let good = tiny::generate(&tiny::TinySpec::default()).unwrap();

    let p = write(&scratch("m1.gguf"), &good[..good.len() / 3]);
    expect_error(&["info", "--model", &p], "truncated: the file has");

    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    let p = write(&scratch("m2.gguf"), &bad);
    expect_error(
        &["generate", "--model", &p, "--prompt", "x"],
        "not a gguf model file",
    );

    // Corrupted: the tensor count (bytes 8..16) says 2^61 tensors.
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&(1u64 << 61).to_le_bytes());
    let p = write(&scratch("m3.gguf"), &bad);
    expect_error(&["info", "--model", &p], "absurd");

    // Absurd dimension: a 2^40 × 2^40 tensor in a tiny file.
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()));
    w.tensor(
        "token_embd.weight",
        &[1 << 40, 1 << 40],
        GgmlType::F32,
        vec![0; 64],
    );
    let p = write(&scratch("m4.gguf"), &w.to_bytes());
    expect_error(&["info", "--model", &p], "absurd dims");

    // Valid GGUF, but not a model this project runs.
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("whisper".into()));
    let p = write(&scratch("m5.gguf"), &w.to_bytes());
    expect_error(&["info", "--model", &p], "not supported");

    expect_error(
        &["info", "--model", "/nonexistent/model.gguf"],
        "cannot read",
    );
}

#[test]
fn bad_data_files_give_one_line_errors() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let empty = write(&scratch("d1.jsonl"), b"");
    expect_error(&["eval-mc", "--model", m, "--data", &empty], "empty");
    let e = write(&scratch("d2.txt"), b"\n\n");
    expect_error(&["perplexity", "--model", m, "--text", &e], "empty");
    let bad = write(
        &scratch("d3.jsonl"),
        b"{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 1}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"\n",
    );
    expect_error(
        &["eval-mc", "--model", m, "--data", &bad],
        "d3.jsonl:2: not valid json",
    );
    let wrong = write(
        &scratch("d4.jsonl"),
        b"{\"prompt\": \"p\", \"response\": \"r\"}\n",
    );
    expect_error(
        &["eval-mc", "--model", m, "--data", &wrong],
        "multiple-choice",
    );
    let range = write(
        &scratch("d5.jsonl"),
        b"{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}\n",
    );
    expect_error(&["eval-mc", "--model", m, "--data", &range], "out of range");
}

#[test]
fn tiny_generator_is_deterministic() {
    let a = tiny::generate(&tiny::TinySpec::default()).unwrap();
    let b = tiny::generate(&tiny::TinySpec::default()).unwrap();
    assert_eq!(a, b);
    let c = tiny::generate(&tiny::TinySpec {
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(a, c);
    assert!(tiny::generate(&tiny::TinySpec {
        hidden: 48,
        ..Default::default()
    })
    .is_err());
}

/// The GPU model and the CPU reference behind the same commands agree.
#[test]
fn gpu_and_cpu_devices_agree() {
    if std::env::var("EDGE_LLM_ALLOW_NO_GPU").is_ok_and(|v| v == "1")
        && edge_llm::kernels::GpuContext::new_blocking(None).is_err()
    {
        eprintln!("note: no GPU adapter; skipped (EDGE_LLM_ALLOW_NO_GPU=1)");
        return;
    }
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let text = scratch("devices.txt");
    let t = write(
        &text,
        b"she sells sea shells by the sea shore. "
            .repeat(10)
            .as_slice(),
    );
    let ppl = |device: &str| {
        let (code, out, err) = run(&[
            "perplexity",
            "--model",
            m,
            "--text",
            &t,
            "--max-tokens",
            "80",
            "--json",
            "--device",
            device,
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(if device == "gpu" {
                "device: GPU"
            } else {
                "device: CPU"
            }),
            "{err}"
        );
        json(&out)["perplexity"].as_f64().unwrap()
    };
    let (g, c) = (ppl("gpu"), ppl("cpu"));
    assert!((g - c).abs() <= 1e-4 * c, "gpu {g} vs cpu {c}");
    let gen = |device: &str| {
        let (code, out, err) = run(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "the sea",
            "--max-tokens",
            "8",
            "--json",
            "--device",
            device,
        ]);
        assert_eq!(code, 0, "{err}");
        json(&out)["text"].as_str().unwrap().to_owned()
    };
    assert_eq!(gen("gpu"), gen("cpu"));
}

/// `edge-llm … | head`: output into a pipe the reader has closed ends the process quietly
/// (no "failed printing to stdout" panic). The output is several times a pipe's buffer, so
/// the writer is still writing when the reader goes.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let model = tiny_model();
    let text = scratch("long.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog ".repeat(20_000),
    )
    .unwrap();
    let args = ["tokenize", "--model", model.to_str().unwrap()];
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--file", text.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edge-llm");
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The reader is dropped here: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    // The same command into an open pipe writes far more than one pipe buffer (64 KiB).
    let full = Command::new(BIN)
        .args(args)
        .args(["--file", text.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(full.status.success());
    assert!(full.stdout.len() > 4 << 16, "{} bytes", full.stdout.len());
}
