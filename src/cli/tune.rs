//! `edge-llm tune`: LoRA tuning with the training core (src/train) on the GPU engine
//! ([`GpuTrainer`]) or the CPU reference ([`CpuBackend`]). The GPU memory is planned and
//! fitted to `--memory-budget` before anything is allocated. Writes the PEFT adapter and a
//! checkpoint (every `--save-every` steps, at the end and on Ctrl-C) to `--out`;
//! `--resume DIR` continues a run exactly, on either device.

use super::Device;
use crate::adapter;
use crate::data::Dataset;
use crate::engine::train::fit_budget_windows;
use crate::engine::{fit_budget, GpuTrainer, TrainOptions};
use crate::model::ModelFile;
use crate::reference::{LoraConfig, Proj};
use crate::tokenizer::Tokenizer;
use crate::train::{
    self, Backend, CpuBackend, DataConfig, Decay, Stop, TrainConfig, TrainState, Trainer,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything that defines a run; saved beside the checkpoint so `--resume` rebuilds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: PathBuf,
    pub data: PathBuf,
    pub lora: LoraConfig,
    pub data_config: DataConfig,
    pub train: TrainConfig,
    pub save_every: u64,
    /// How the layers are tuned; the layer schedule itself is in `train.layers`.
    #[serde(default)]
    pub mode: Mode,
    /// Block counts after which early exits sit (edge mode).
    #[serde(default)]
    pub exits: Vec<usize>,
}

/// The modes live in the library (`train::modes`), shared with the page.
pub use crate::train::{Mode, ModeArgs, DEFAULT_EXIT_STRIDE};

/// Sets the run's exits and layer schedule for `m.mode` on a model of `n_layers` blocks
/// (`train::mode_layers`: a stride larger than the model is clamped to it).
pub fn apply_mode(spec: &mut RunSpec, n_layers: usize, m: &ModeArgs) -> Result<()> {
    let ml = train::mode_layers(n_layers, m)?;
    spec.mode = m.mode;
    spec.exits = ml.exits;
    spec.train.layers = ml.layers;
    Ok(())
}

pub const SPEC_FILE: &str = "tune_run.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

fn io(e: impl std::fmt::Display, what: &Path) -> Error {
    Error::Io(format!("{}: {e}", what.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| io(e, &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| io(e, path))
}

/// The command-line settings of a new run.
pub struct NewRun {
    pub spec: RunSpec,
    pub mode: ModeArgs,
    pub out: PathBuf,
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

/// Checks the settings a user can get wrong, with one message each.
pub fn validate(spec: &RunSpec) -> Result<()> {
    train::validate(&spec.lora, &spec.data_config, &spec.train)
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
pub fn run(
    new: Option<NewRun>,
    resume: Option<PathBuf>,
    out_override: Option<PathBuf>,
    session: Session,
) -> Result<i32> {
    let (spec, out, state) = match (new, resume) {
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
            let state = TrainState::from_bytes(&read(CHECKPOINT_FILE)?)?;
            (spec, out_override.unwrap_or(dir), Some(state))
        }
        (Some(n), None) => {
            let mut spec = n.spec;
            let file = ModelFile::open(&spec.model)?;
            apply_mode(&mut spec, file.config.n_layers, &n.mode)?;
            mode_notes(spec.mode, &file);
            (spec, n.out, None)
        }
        (None, None) => return Err(Error::Invalid("nothing to run".into())),
    };
    validate(&spec)?;
    let mut spec = spec;
    let file = ModelFile::open(&spec.model)?;
    let windows = spec.train.layers.as_ref().map(|ls| ls.windows.clone());
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let ds = Dataset::load(&spec.data)?;
    let opts = TrainOptions {
        seq_len: spec.data_config.seq_len,
        recompute: session.recompute,
        ..Default::default()
    };
    let ctx = super::pick_gpu(session.device)?;
    let limits = ctx
        .as_ref()
        .map_or_else(wgpu::Limits::default, |c| c.limits.clone());
    // Planned (and refused when it cannot fit) before anything is allocated.
    let fit = match (&ctx, session.memory_budget) {
        (None, None) => None,
        _ => {
            let budget = session.memory_budget;
            let w = windows.as_deref();
            let fit = fit_budget_windows(&file, &spec.lora, &opts, &limits, budget, w)?;
            eprintln!(
                "GPU memory plan: {:.1} MiB{}",
                fit.plan.total() as f64 / 1048576.0,
                if fit.changes.is_empty() {
                    String::new()
                } else {
                    format!(" (to fit the budget: {})", fit.changes.join(", "))
                }
            );
            if state.is_none() && fit.options.seq_len != spec.data_config.seq_len {
                // Sequence chunking: shorter rows, more accumulation, same tokens per step.
                spec.data_config.seq_len = fit.options.seq_len;
                spec.train.accum_steps *= fit.accum_factor;
            }
            Some(fit)
        }
    };
    if let (Some(f), true) = (&fit, state.is_some()) {
        if f.options.seq_len != spec.data_config.seq_len {
            return Err(Error::Invalid(format!(
                "this run was made with rows of {} tokens, which do not fit the memory budget \
                 ({} would); resume it with a larger --memory-budget",
                spec.data_config.seq_len, f.options.seq_len
            )));
        }
    }
    let prepared = train::prepare(&ds, &tok, &spec.data_config)?;
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
    let run = Prepared {
        spec,
        out,
        state,
        file: &file,
        session: &session,
    };
    match (&ctx, fit) {
        (Some(ctx), Some(fit)) => {
            let (lc, seed) = (run.spec.lora.clone(), run.spec.train.seed);
            let lora = train::cpu::initial_adapters(&file.config, lc, &run.spec.exits, seed);
            let backend = match &windows {
                Some(w) => GpuTrainer::with_windows(ctx, &file, &lora, &fit.options, w)?,
                None => GpuTrainer::new(ctx, &file, &lora, &fit.options)?,
            };
            drive(backend, "gpu", prepared, run)
        }
        _ => {
            if session.memory_budget.is_some() {
                eprintln!("note: the memory budget plans GPU memory; this run is on the CPU");
            }
            let backend = CpuBackend::with_exits(
                file.weights()?,
                run.spec.lora.clone(),
                &run.spec.exits,
                run.spec.train.seed,
            );
            drive(backend, "cpu", prepared, run)
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
fn drive<B: Backend>(
    backend: B,
    device: &str,
    data: train::Prepared,
    run: Prepared<'_>,
) -> Result<i32> {
    let Prepared {
        spec,
        out,
        state,
        file,
        session,
    } = run;
    let json = session.json;
    let mut trainer = Trainer::new(backend, spec.train.clone(), data)?;
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
    let base_name = adapter::gguf_model_name(&file.gguf)
        .unwrap_or("edge-llm-base")
        .to_owned();
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
    let save = |trainer: &mut Trainer<B>| -> Result<()> {
        let state = pollster::block_on(trainer.checkpoint())?;
        write_atomic(&out.join(CHECKPOINT_FILE), &state.to_bytes()?)?;
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
            pb.set_position(r.step);
            pb.set_message(format!("tune loss {:.4}", r.loss));
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
        "mode": spec.mode.name(),
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

/// `edge-llm plan`: the training memory plan for `model` on this machine's adapter (or the
/// given binding limit), fitted to `budget`; nothing is allocated.
pub fn print_plan(
    model: &Path,
    lora: &LoraConfig,
    opts: &TrainOptions,
    budget: Option<u64>,
    binding_limit: Option<u64>,
    top: usize,
    json: bool,
) -> Result<()> {
    let file = ModelFile::open(model)?;
    let (mut limits, adapter) = match crate::kernels::GpuContext::new_blocking(None) {
        Ok(ctx) => (ctx.limits.clone(), ctx.info.name.clone()),
        Err(_) => (
            wgpu::Limits::default(),
            "no adapter: WebGPU defaults".to_string(),
        ),
    };
    if let Some(b) = binding_limit {
        limits.max_storage_buffer_binding_size = b;
    }
    let fit = fit_budget(&file, lora, opts, &limits, budget)?;
    let report = fit.report(&file.config, &limits, budget, top)?;
    if json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Io(e.to_string()))?;
        v["adapter"] = adapter.clone().into();
        println!("{v}");
        return Ok(());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "tuning plan for {} on {adapter} (binding limit {:.0} MiB)",
        model.display(),
        mib(limits.max_storage_buffer_binding_size)
    );
    println!(
        "seq_len {}, LoRA rank {} on {} projections, {:?} weights, layer recompute {}",
        fit.options.seq_len,
        lora.rank,
        lora.targets.len(),
        fit.options.format,
        if fit.options.recompute { "on" } else { "off" }
    );
    println!(
        "LM head: {} chunk(s) of {} vocabulary rows as the file stores it, logits made one \
         chunk at a time",
        report.head_chunks, report.logits_chunk
    );
    println!("{}", fit.plan);
    println!("{} buffers; the largest:", fit.plan.entries.len());
    for e in &report.largest {
        println!("  {:>10.2} MiB  {}", mib(e.bytes), e.name);
    }
    if let Some(b) = budget {
        println!(
            "fits the budget of {:.1} MiB{}",
            mib(b),
            if fit.changes.is_empty() {
                String::new()
            } else {
                format!(" with {}", fit.changes.join(", "))
            }
        );
    }
    Ok(())
}

/// Default run settings (the reference's) for the flags a user leaves out.
pub fn default_decay(cosine: bool) -> Decay {
    if cosine {
        Decay::Cosine
    } else {
        Decay::Constant
    }
}
