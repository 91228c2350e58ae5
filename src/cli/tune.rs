//! `edge-llm tune`: LoRA tuning with the training core (src/train) on the GPU engine
//! ([`crate::engine::GpuTrainer`]) or the CPU reference ([`crate::train::CpuBackend`]),
//! built by `crate::tune`. The GPU memory is planned and fitted to `--memory-budget` before
//! anything is allocated. Writes the PEFT adapter and a checkpoint (every `--save-every`
//! steps, at the end and on Ctrl-C) to `--out`; `--resume DIR` continues a run exactly, on
//! either device.

use super::{parse_bytes, Device};
use crate::adapter;
use crate::data::Dataset;
use crate::model::ModelFile;
use crate::reference::Proj;
use crate::tokenizer::Tokenizer;
use crate::train::{self, Backend, Stop, TrainState, Trainer};
use crate::tune::{self as run, TuneOptions, TuneSettings};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// The flags of `edge-llm tune`: the tuning options ([`TuneOptions`], whose defaults they
// take) and the session's (files, device, memory). (A doc comment here would replace the
// subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct TuneArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Plain text, instruction JSONL or multiple-choice JSONL (data/README.md).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Optimizer steps (default: one epoch).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = TuneOptions::default().epochs)]
    epochs: f64,
    #[arg(long, default_value_t = TuneOptions::default().lr)]
    lr: f64,
    /// Cosine decay after warm-up (default: constant).
    #[arg(long)]
    cosine: bool,
    #[arg(long, default_value_t = TuneOptions::default().warmup)]
    warmup: f64,
    #[arg(long, default_value_t = TuneOptions::default().lora_rank)]
    lora_rank: usize,
    #[arg(long, default_value_t = TuneOptions::default().lora_alpha)]
    lora_alpha: f32,
    #[arg(long, default_value_t = TuneOptions::default().lora_dropout)]
    lora_dropout: f32,
    /// Projections to adapt: q,k,v,o,gate,up,down or all.
    // "all" is `TuneOptions::default().lora_targets`, every projection.
    #[arg(long, default_value = "all")]
    lora_targets: String,
    #[arg(long, default_value_t = TuneOptions::default().seq_len)]
    seq_len: usize,
    /// Rows per micro-batch and micro-batches per optimizer step.
    #[arg(long, default_value_t = TuneOptions::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = TuneOptions::default().accum)]
    accum: usize,
    #[arg(long, default_value_t = TuneOptions::default().clip)]
    clip: f64,
    #[arg(long, default_value_t = TuneOptions::default().val_fraction)]
    val_fraction: f64,
    /// Validation every N steps (0: only at the end).
    #[arg(long, default_value_t = TuneOptions::default().eval_every)]
    eval_every: u64,
    /// Stop after this many validations without improvement.
    #[arg(long)]
    patience: Option<u32>,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    save_every: u64,
    #[arg(long, default_value_t = TuneOptions::default().seed)]
    seed: u64,
    #[arg(long)]
    out: Option<PathBuf>,
    /// The Hugging Face model id the adapter names as its base (`base_model_name_or_path`),
    /// for loaders such as PEFT's. Default: the id of a file recognised by its sha256 (the
    /// default model: HuggingFaceTB/SmolLM2-135M-Instruct), else the file's own name.
    #[arg(long)]
    base_model: Option<String>,
    /// Continue the run saved in DIR with its saved settings.
    #[arg(long, conflicts_with_all = ["model", "data", "steps", "epochs", "lr", "lora_rank", "seq_len", "seed", "base_model"])]
    resume: Option<PathBuf>,
    /// Checkpoint and exit after N steps in this session (continue with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// auto: a hardware GPU if there is one, else the CPU engine (faster than a
    /// software adapter such as lavapipe); gpu: any WebGPU/Vulkan adapter; cpu.
    #[arg(long, value_enum, default_value_t = TuneOptions::default().device)]
    device: Device,
    /// GPU memory the run may use (bytes; K, M, G suffixes are KiB, MiB, GiB): layer
    /// recompute and narrower logits chunks are chosen to fit, or the run is refused
    /// before anything is allocated.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Keep only each layer's input and recompute the layer before its backward pass.
    #[arg(long)]
    recompute: bool,
    /// vanilla: LoRA on every block; compress-then-tune: the same on a compressed
    /// model; partial: the last --partial-layers blocks only; edge: windows of blocks
    /// between early exits, trained in turn (adaptive layer tuning).
    #[arg(long, value_enum, default_value_t = TuneOptions::default().mode)]
    mode: Mode,
    /// Edge mode: an exit after every this many blocks (and after the last).
    #[arg(long, default_value_t = TuneOptions::default().exit_stride)]
    exit_stride: usize,
    /// Edge mode: reference (equal phases, shallow to deep) or adaptive (a sweep, then
    /// the window that last lowered the whole model's loss on the probe rows most).
    #[arg(long, default_value = "reference")]
    window_schedule: String,
    /// Edge mode: a window's learning rate is --lr × (its last block ÷ the model's
    /// blocks)^this; 0 trains every window at --lr, 2 gives shallow windows much less.
    #[arg(long, default_value_t = TuneOptions::default().window_lr_power)]
    window_lr_power: f64,
    /// Edge mode, reference schedule: a window's share of the steps is ∝ (its last
    /// block ÷ the model's blocks)^this; 0 gives equal phases (the paper's).
    #[arg(long, default_value_t = TuneOptions::default().window_steps_power)]
    window_steps_power: f64,
    /// Partial mode: how many of the last blocks are tuned.
    #[arg(long, default_value_t = TuneOptions::default().partial_layers)]
    partial_layers: usize,
    #[arg(long)]
    json: bool,
}

/// `edge-llm tune`: a new run from the flags, or `--resume DIR`; returns the exit code.
pub(crate) fn tune(a: TuneArgs) -> Result<i32> {
    let window_schedule = a.window_schedule.parse()?;
    let session = Session {
        device: a.device,
        memory_budget: a.memory_budget,
        recompute: a.recompute,
        stop_after: a.stop_after,
        json: a.json,
    };
    if a.resume.is_some() {
        return run(None, a.resume, a.out, session);
    }
    let (Some(model), Some(data)) = (a.model, a.data) else {
        return Err(Error::Invalid(
            "tune needs --model and --data (or --resume DIR)".into(),
        ));
    };
    let options = TuneOptions {
        steps: a.steps,
        epochs: a.epochs,
        lr: a.lr,
        cosine: a.cosine,
        warmup: a.warmup,
        lora_rank: a.lora_rank,
        lora_alpha: a.lora_alpha,
        lora_dropout: a.lora_dropout,
        lora_targets: parse_targets(&a.lora_targets)?,
        seq_len: a.seq_len,
        batch: a.batch,
        accum: a.accum,
        clip: a.clip,
        val_fraction: a.val_fraction,
        eval_every: a.eval_every,
        patience: a.patience,
        seed: a.seed,
        memory_budget: a.memory_budget,
        recompute: a.recompute,
        device: a.device,
        mode: a.mode,
        exit_stride: a.exit_stride,
        window_schedule,
        window_lr_power: a.window_lr_power,
        window_steps_power: a.window_steps_power,
        partial_layers: a.partial_layers,
    };
    let new = NewRun {
        model,
        data,
        options,
        save_every: a.save_every,
        out: a.out.unwrap_or_else(|| PathBuf::from("runs/tune")),
        base_model: a.base_model,
    };
    run(Some(new), None, None, session)
}

/// Everything that defines a run; saved beside the checkpoint so `--resume` rebuilds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: PathBuf,
    pub data: PathBuf,
    /// The settings (LoRA, data, trainer with the layer schedule, mode, exits).
    #[serde(flatten)]
    pub run: TuneSettings,
    pub save_every: u64,
    /// `tune --base-model`: the adapter's `base_model_name_or_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
}

/// The modes live in the library (`train::modes`), shared with the page.
pub use crate::train::Mode;

pub const SPEC_FILE: &str = "tune_run.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// The checkpoint before the last, kept so that a damaged last one costs only the steps
/// between them.
pub const PREVIOUS_CHECKPOINT_FILE: &str = "checkpoint.prev.json";

fn io(e: impl std::fmt::Display, what: &Path) -> Error {
    Error::Io(format!("{}: {e}", what.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| io(e, &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| io(e, path))
}

/// Writes a checkpoint into `dir`, the one it replaces becoming the previous one when
/// `rotate`: at every moment the directory holds a whole last or previous checkpoint
/// (renames are atomic).
fn save_checkpoint(dir: &Path, bytes: &[u8], rotate: bool) -> Result<()> {
    let (last, prev) = (
        dir.join(CHECKPOINT_FILE),
        dir.join(PREVIOUS_CHECKPOINT_FILE),
    );
    if rotate && last.exists() {
        std::fs::rename(&last, &prev).map_err(|e| io(e, &prev))?;
    }
    write_atomic(&last, bytes)
}

/// The run's last checkpoint in `dir`, or its previous one (with a line saying why) when the
/// last is missing or damaged; an error naming the file when neither can be used.
fn load_checkpoint(dir: &Path) -> Result<TrainState> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p)
            .map_err(|e| {
                io(
                    format!("cannot read ({e}); is this a tune output directory?"),
                    &p,
                )
            })
            .and_then(|b| {
                TrainState::from_bytes(&b).map_err(|e| match e {
                    Error::Invalid(m) => Error::Invalid(format!("{}: {m}", p.display())),
                    e => e,
                })
            })
    };
    match read(CHECKPOINT_FILE) {
        Ok(state) => Ok(state),
        Err(last) => match read(PREVIOUS_CHECKPOINT_FILE) {
            Ok(state) => {
                eprintln!(
                    "{last}\nusing the previous checkpoint, {} (step {})",
                    dir.join(PREVIOUS_CHECKPOINT_FILE).display(),
                    state.step
                );
                Ok(state)
            }
            Err(_) => Err(last),
        },
    }
}

/// The command-line settings of a new run.
pub struct NewRun {
    pub model: PathBuf,
    pub data: PathBuf,
    pub options: TuneOptions,
    pub save_every: u64,
    pub out: PathBuf,
    pub base_model: Option<String>,
}

/// Parses the projections list ("q,k,v,o,gate,up,down" or "all").
pub fn parse_targets(s: &str) -> Result<Vec<Proj>> {
    if s == "all" {
        return Ok(Proj::ALL.to_vec());
    }
    s.split(',')
        .map(|p| match p.trim() {
            "q" => Ok(Proj::Q),
            "k" => Ok(Proj::K),
            "v" => Ok(Proj::V),
            "o" => Ok(Proj::O),
            "gate" => Ok(Proj::Gate),
            "up" => Ok(Proj::Up),
            "down" => Ok(Proj::Down),
            other => Err(Error::Invalid(format!(
                "unknown LoRA target '{other}' (use q,k,v,o,gate,up,down or all)"
            ))),
        })
        .collect()
}

/// Where and how a session runs; not part of the saved run, so a run started on one
/// device may resume on another.
pub struct Session {
    pub device: Device,
    /// GPU memory the run may use, in bytes (planned before anything is allocated).
    pub memory_budget: Option<u64>,
    /// Layer recompute on the GPU (less memory, one more forward per block).
    pub recompute: bool,
    /// Checkpoint and exit after this many steps in this session.
    pub stop_after: Option<u64>,
    pub json: bool,
}

/// Runs (or resumes) a tuning run; returns the process exit code (130 after Ctrl-C).
fn run(
    new: Option<NewRun>,
    resume: Option<PathBuf>,
    out_override: Option<PathBuf>,
    session: Session,
) -> Result<i32> {
    let (mut spec, out, state) = match (new, resume) {
        (_, Some(dir)) => {
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read(&p).map_err(|e| {
                    io(
                        format!("cannot read ({e}); is this a tune output directory?"),
                        &p,
                    )
                })
            };
            let spec: RunSpec = serde_json::from_slice(&read(SPEC_FILE)?)
                .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join(SPEC_FILE).display())))?;
            let state = load_checkpoint(&dir)?;
            (spec, out_override.unwrap_or(dir), Some(state))
        }
        (Some(n), None) => {
            let file = ModelFile::open(&n.model)?;
            let settings = n.options.settings(file.config.n_layers)?;
            mode_notes(settings.mode, &file);
            let spec = RunSpec {
                model: n.model,
                data: n.data,
                run: settings,
                save_every: n.save_every,
                base_model: n.base_model,
            };
            (spec, n.out, None)
        }
        (None, None) => return Err(Error::Invalid("nothing to run".into())),
    };
    spec.run.validate()?;
    let file = ModelFile::open(&spec.model)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let ds = Dataset::load(&spec.data)?;
    let opts = run::engine_options(&spec.run, session.recompute);
    let ctx = super::pick_gpu(session.device)?;
    let limits = ctx
        .as_ref()
        .map_or_else(wgpu::Limits::default, |c| c.limits.clone());
    // Planned (and refused when it cannot fit) before anything is allocated.
    let fit = match (&ctx, session.memory_budget) {
        (None, None) => None,
        _ => {
            let fit = run::fit_memory(&file, &spec.run, &opts, &limits, session.memory_budget)?;
            eprintln!(
                "GPU memory plan: {:.1} MiB{}",
                fit.plan.total() as f64 / 1048576.0,
                if fit.changes.is_empty() {
                    String::new()
                } else {
                    format!(" (to fit the budget: {})", fit.changes.join(", "))
                }
            );
            run::take_fit(&mut spec.run, &fit, state.is_some())?;
            Some(fit)
        }
    };
    let prepared = train::prepare(&ds, &tok, &spec.run.data_config)?;
    let stats = prepared.stats.clone();
    eprintln!(
        "data: {} {} records → {} train rows ({} targets), {} validation rows; {} truncated, {} dropped",
        stats.examples,
        ds.kind(),
        stats.train_rows,
        stats.train_targets,
        stats.val_rows,
        stats.truncated,
        stats.dropped
    );
    let prep = Prepared {
        spec,
        out,
        state,
        file: &file,
        session: &session,
    };
    match (&ctx, fit) {
        (Some(ctx), Some(fit)) => {
            let make = |s: &TuneSettings| run::gpu_backend(ctx, &file, s, &fit.options);
            let trainer = run::build(&prep.spec.run, prepared, make)?;
            drive(trainer, "gpu", prep)
        }
        _ => {
            if session.memory_budget.is_some() {
                eprintln!("note: the memory budget plans GPU memory; this run is on the CPU");
            }
            let cache = train::CpuBackend::DEFAULT_CACHE_BYTES;
            let plan = run::cpu_plan(&file, &prep.spec.run, cache);
            eprintln!("{plan}");
            let make = |s: &TuneSettings| run::cpu_backend(&file, s);
            let trainer = run::build(&prep.spec.run, prepared, make)?;
            drive(trainer, "cpu", prep)
        }
    }
}

/// Says where the model does not match what the mode is defined on.
fn mode_notes(mode: Mode, file: &ModelFile) {
    let compressed = crate::formats::packed::is_compressed(&file.gguf);
    match mode {
        Mode::Vanilla | Mode::Partial if compressed => eprintln!(
            "note: --mode {} is defined on the uncompressed model; this one is compressed",
            mode.name()
        ),
        Mode::CompressThenTune | Mode::Edge if !compressed => eprintln!(
            "note: --mode {} expects a compressed model (edge-llm compress{}); tuning this \
             uncompressed one",
            mode.name(),
            if mode == Mode::Edge {
                " --allocation luc"
            } else {
                ""
            }
        ),
        _ => {}
    }
}

/// What [`drive`] needs besides the backend and data.
struct Prepared<'a> {
    spec: RunSpec,
    out: PathBuf,
    state: Option<TrainState>,
    file: &'a ModelFile,
    session: &'a Session,
}

/// The training loop with progress, JSON reports, checkpoints and Ctrl-C, on any backend.
fn drive<B: Backend>(mut trainer: Trainer<B>, device: &str, run: Prepared<'_>) -> Result<i32> {
    let Prepared {
        spec,
        out,
        state,
        file,
        session,
    } = run;
    let json = session.json;
    if let Some(state) = &state {
        pollster::block_on(trainer.resume(state))?;
        eprintln!(
            "resumed at step {} of {}",
            trainer.step(),
            trainer.total_steps()
        );
    }
    std::fs::create_dir_all(&out).map_err(|e| io(e, &out))?;
    let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Io(e.to_string()))?;
    write_atomic(&out.join(SPEC_FILE), &spec_json)?;
    let known = adapter::known_base_id(file);
    let base_name = adapter::choose_base_model(spec.base_model.as_deref(), file, known)?;
    let cfg = file.config.clone();

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second Ctrl-C while saving falls through to the default (exit).
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    // The step of the last checkpoint this session wrote: a second one at the same step
    // (the run's end after a save-every step) replaces it instead of becoming the
    // previous one, so the previous stays a step behind.
    let saved_step = std::cell::Cell::new(None);
    let save = |trainer: &mut Trainer<B>| -> Result<()> {
        let state = pollster::block_on(trainer.checkpoint())?;
        let rotate = saved_step.replace(Some(state.step)) != Some(state.step);
        save_checkpoint(&out, &state.to_bytes()?, rotate)?;
        let lora = pollster::block_on(trainer.backend.adapters())?;
        adapter::save_dir(&out, &lora, &cfg, &base_name)
    };

    let total = trainer.total_steps();
    let pb = super::progress_bar(total, "tune");
    pb.set_position(trainer.step());
    let mut last_val = None;
    let mut session_steps = 0u64;
    let stop = loop {
        let mut report = None;
        let summary = pollster::block_on(trainer.run(1, &mut |r| report = Some(r.clone())))?;
        if let Some(r) = report {
            if r.val_loss.is_some() {
                last_val = r.val_loss;
            }
            if json {
                println!(
                    "{}",
                    json!({"step": r.step, "epoch": r.epoch, "loss": r.loss, "lr": r.lr,
                           "grad_norm": r.grad_norm, "tokens": r.tokens, "tokens_per_s": r.tokens_per_s,
                           "val_loss": r.val_loss, "device": device, "window": r.window,
                           "gpu_bytes": trainer.backend.gpu_bytes()})
                );
            }
            pb.set_message(format!("tune loss {:.4}", r.loss));
            pb.set_position(r.step);
            if spec.save_every > 0 && r.step.is_multiple_of(spec.save_every) {
                save(&mut trainer)?;
            }
        }
        session_steps += 1;
        let stop_after = session.stop_after;
        if interrupted.load(Ordering::SeqCst) || stop_after.is_some_and(|n| session_steps >= n) {
            break None;
        }
        if summary.stop != Stop::Steps {
            break Some(summary.stop);
        }
    };
    pb.finish_and_clear();
    // The final validation is of the whole model (to its last exit), not of a window.
    trainer.leave_window()?;
    let val = pollster::block_on(trainer.validation_loss())?.or(last_val);
    save(&mut trainer)?;
    let v = json!({
        "done": stop.is_some(),
        "stopped_early": stop.is_none(),
        "stop": stop.map(|s| format!("{s:?}")),
        "steps": trainer.step(),
        "val_loss": val,
        "best_val_loss": trainer.best_val(),
        "adapter": out.display().to_string(),
        "checkpoint": out.join(CHECKPOINT_FILE).display().to_string(),
        "device": device,
        "mode": spec.run.mode.name(),
        // Every GPU buffer is allocated when the backend is made, so the peak is the total.
        "peak_gpu_bytes": trainer.backend.gpu_bytes(),
    });
    if json {
        println!("{v}");
    } else {
        eprintln!(
            "{} after {} steps; validation loss {}; adapter and checkpoint in {}",
            if stop.is_some() {
                "done"
            } else {
                "interrupted (resume with --resume)"
            },
            trainer.step(),
            val.map_or("n/a".into(), |x| format!("{x:.4}")),
            out.display()
        );
    }
    let by_signal = interrupted.load(Ordering::SeqCst);
    Ok(if by_signal { 130 } else { 0 })
}
