//! No run lost to a crash: `edge-llm tune` killed with SIGKILL at random moments, many times
//! (in the middle of steps and of checkpoint writes), resumes every time and ends with the
//! losses and the adapter of an uninterrupted run; a damaged last checkpoint gives a line
//! naming it and the previous one is used; both damaged, a one-line error naming the file.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
mod common;
use common::BIN;

/// Sessions killed before the run may end on its own.
const KILLS: u32 = 20;
const STEPS: u64 = 24;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-llm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tiny model and a text, and the flags of a new run writing to `out`.
fn new_run(dir: &Path, out: &Path) -> Vec<String> {
    let (model, data) = common::tiny_tune_files(dir);
    let steps = STEPS.to_string();
    [
        "tune",
        "--model",
        &model,
        "--data",
        &data,
        "--steps",
        &steps,
        "--seq-len",
        "32",
        "--lr",
        "1e-2",
        "--eval-every",
        "8",
        "--save-every",
        "1",
        "--device",
        "cpu",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// (step, loss) of every step line a session printed.
fn step_losses(stdout: &[u8]) -> Vec<(u64, f64)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|o| Some((o.get("step")?.as_u64()?, o.get("loss")?.as_f64()?)))
        .collect()
}

fn resume_args(out: &Path) -> Vec<String> {
    ["tune", "--resume", out.to_str().unwrap(), "--json"]
        .map(String::from)
        .to_vec()
}

/// Whether `out` holds a run that `--resume` can continue (its spec and a checkpoint).
fn resumable(out: &Path) -> bool {
    out.join("tune_run.json").exists()
        && (out.join("checkpoint.json").exists() || out.join("checkpoint.prev.json").exists())
}

#[test]
fn killed_at_random_moments_resumes_to_the_losses_of_an_uninterrupted_run() {
    let dir = scratch("kill");
    let full = dir.join("full");
    let started = Instant::now();
    let o = Command::new(BIN)
        .args(new_run(&dir, &full))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let straight: BTreeMap<u64, f64> = step_losses(&o.stdout).into_iter().collect();
    assert_eq!(straight.len() as u64, STEPS);

    // Kill moments uniform over a third of the whole run's time (so that each session gets
    // a few steps done, or none), from a seed printed for a rerun.
    let seed = std::env::var("EDGE_LLM_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| started.elapsed().as_nanos() as u64 | 1);
    eprintln!("kill seed {seed} (EDGE_LLM_KILL_SEED reruns it); uninterrupted run {took:?}");
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let window = (took.as_micros() as u64 / 3).max(1);

    // Runs killed until KILLS sessions have been: a run whose last session ends on its own
    // (the machine was quick) is checked whole, and a new one starts.
    let (mut kills, mut sessions, mut runs) = (0u32, 0u32, 0u32);
    while kills < KILLS {
        let part = dir.join(format!("part{runs}"));
        runs += 1;
        let mut seen = BTreeMap::new();
        loop {
            let args = if resumable(&part) {
                resume_args(&part)
            } else {
                new_run(&dir, &part)
            };
            let mut child = Command::new(BIN)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            sessions += 1;
            if kills < KILLS {
                std::thread::sleep(Duration::from_micros(next() % window));
                if child.try_wait().unwrap().is_none() {
                    child.kill().unwrap(); // SIGKILL
                    kills += 1;
                }
            }
            let o = child.wait_with_output().unwrap();
            for (step, loss) in step_losses(&o.stdout) {
                assert_eq!(
                    loss, straight[&step],
                    "step {step} after {kills} kills (seed {seed})"
                );
                seen.insert(step, loss);
            }
            if o.status.success() {
                break;
            }
            // A killed session: nothing on stderr but what a run prints.
            assert!(
                o.status.code().is_none(),
                "session {sessions} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                sessions < 10 * KILLS,
                "no end after {sessions} sessions (seed {seed})"
            );
        }
        assert_eq!(
            seen, straight,
            "every step's loss, across the sessions (seed {seed})"
        );
        assert_eq!(
            std::fs::read(part.join("adapter_model.safetensors")).unwrap(),
            std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
            "the adapter of the killed run (seed {seed})"
        );
    }
    eprintln!("{kills} kills over {sessions} sessions in {runs} runs");
}

#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one_and_two_give_a_plain_error() {
    let dir = scratch("damaged");
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = Command::new(BIN)
        .args(new_run(&dir, &full))
        .output()
        .unwrap();
    assert!(o.status.success());
    let straight: BTreeMap<u64, f64> = step_losses(&o.stdout).into_iter().collect();

    let mut args = new_run(&dir, &part);
    args.extend(["--stop-after", "5"].map(String::from));
    assert!(Command::new(BIN)
        .args(&args)
        .output()
        .unwrap()
        .status
        .success());
    // The last checkpoint (step 5) cut short: the previous one (step 4) is used, with a line
    // saying so.
    let last = part.join("checkpoint.json");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let o = Command::new(BIN).args(resume_args(&part)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("checkpoint.json: checkpoint is"), "{err}");
    assert!(
        err.contains("using the previous checkpoint") && err.contains("(step 4)"),
        "{err}"
    );
    for (step, loss) in step_losses(&o.stdout) {
        assert_eq!(loss, straight[&step], "step {step}");
    }
    assert_eq!(step_losses(&o.stdout).first().map(|s| s.0), Some(5));

    // Both damaged (one byte changed in each): one line naming the last checkpoint.
    for name in ["checkpoint.json", "checkpoint.prev.json"] {
        let p = part.join(name);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 3;
        b[i] = if b[i] == b'1' { b'2' } else { b'1' };
        std::fs::write(&p, b).unwrap();
    }
    let o = Command::new(BIN).args(resume_args(&part)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("checkpoint")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("checkpoint.json: checkpoint is damaged"),
        "{err}"
    );
}
