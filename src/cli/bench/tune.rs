//! `edge-llm bench tune`: the tuning modes back to back on the same data, steps, sequence
//! length and LoRA rank, each measured the same way, with every ratio taken against
//! vanilla in the same run.
//!
//! The modes take turns, `--chunk` steps each, so a shared machine's changing load falls on
//! all of them alike. Per mode: mean optimizer-step time and tokens per second (training steps only, no
//! validation inside the timed part), the GPU memory plan of the mode (the engine's
//! accounting, [`GpuTrainer::plan`] / [`GpuTrainer::plan_windows`]: at the browser's default
//! limits on the CPU backend, at the adapter's on the GPU, where it is what is allocated),
//! the final validation loss (whole model, last exit), and multiple-choice accuracy (edge:
//! voted and last exit). `--device` picks the engine the steps run on, as `tune` does:
//! `auto` takes the GPU unless it is a software adapter (then the CPU backend, the faster
//! one on such a machine).

use crate::cli::compress::{
    compress_file, AllocationArg, CalibArgs, CompressArgs, MethodArg, PatternArg, QuantArg,
    SparsityRuleArg,
};
use crate::cli::progress_bar;
use crate::cli::tune::Mode;
use crate::cli::Device;
use crate::data::Dataset;
use crate::engine::{GpuModel, GpuModelOptions, GpuTrainer, TrainOptions, WeightFormat};
use crate::eval::{self, CpuLm, Lm};
use crate::kernels::GpuContext;
use crate::model::ModelFile;
use crate::reference::{Lora, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::cpu::PrefixCache;
use crate::train::{self, Backend, CpuBackend, StepReport, Trainer};
use crate::tune::{self as run, TuneOptions, TuneSettings};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

use super::tune_report::{loss_svg, markdown, ModeResult};
use super::{io, questions, write_outputs};

#[derive(clap::Args, Debug)]
pub(crate) struct BenchTuneArgs {
    /// The uncompressed model (compressed copies are made from it for the modes that
    /// need them).
    #[arg(long, default_value = "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Training data (any format `tune` takes).
    #[arg(long, default_value = "data/arc-easy/train.jsonl")]
    pub data: PathBuf,
    /// Multiple-choice questions for the accuracy column (none: skip it).
    #[arg(long, default_value = "data/arc-easy/validation.jsonl")]
    pub eval_data: PathBuf,
    /// Evaluate only the first N questions (default: all).
    #[arg(long)]
    pub questions: Option<usize>,
    /// Skip the accuracy column.
    #[arg(long)]
    pub no_eval: bool,
    /// Modes, comma-separated, in order.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = Mode::ALL.to_vec())]
    pub modes: Vec<Mode>,
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Steps each mode runs per turn: the modes take turns so that the machine's load
    /// falls on all of them alike.
    #[arg(long, default_value_t = 10)]
    pub chunk: u64,
    #[arg(long, default_value_t = TuneOptions::default().seq_len)]
    pub seq_len: usize,
    #[arg(long, default_value_t = TuneOptions::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = TuneOptions::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = TuneOptions::default().lora_rank)]
    pub lora_rank: usize,
    #[arg(long, default_value_t = TuneOptions::default().val_fraction)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = TuneOptions::default().exit_stride)]
    pub exit_stride: usize,
    /// reference or adaptive.
    #[arg(long, default_value = "reference")]
    pub window_schedule: String,
    /// Edge mode: a window's learning rate is --lr × (its depth ÷ the model's)^this.
    #[arg(long, default_value_t = TuneOptions::default().window_lr_power)]
    pub window_lr_power: f64,
    /// Edge mode, reference schedule: a window's share of the steps is ∝ (its depth ÷ the
    /// model's)^this (0: equal phases).
    #[arg(long, default_value_t = TuneOptions::default().window_steps_power)]
    pub window_steps_power: f64,
    #[arg(long, default_value_t = TuneOptions::default().partial_layers)]
    pub partial_layers: usize,
    /// Compression of compress-then-tune (uniform) and edge (LUC): mean sparsity.
    #[arg(long, default_value_t = 0.0)]
    pub sparsity: f64,
    /// ... and bits (uniform: the width; LUC: the mean bits per weight).
    #[arg(long, default_value_t = 4.0)]
    pub bits: f64,
    /// Quantizer of the compressed modes (RTN needs no Hessians).
    #[arg(long, value_enum, default_value_t = QuantArg::Rtn)]
    pub quant: QuantArg,
    /// Symmetric groups instead of asymmetric ones.
    #[arg(long)]
    pub symmetric: bool,
    /// LUC's profile: calibration text (default: --data), rows and tokens per row.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub calib_rows: usize,
    #[arg(long, default_value_t = 128)]
    pub calib_seq_len: usize,
    /// Directory of cached profiles.
    #[arg(long, default_value = "runs/profile")]
    pub cache_dir: PathBuf,
    #[arg(long, default_value_t = TuneOptions::default().seed)]
    pub seed: u64,
    /// Where the compressed models, table.md, losses.svg and results.json go.
    #[arg(long, default_value = "runs/bench-tune")]
    pub out: PathBuf,
    /// One JSON object per mode on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where the steps and the evaluation run (auto: the GPU unless it is a software
    /// adapter such as lavapipe, where the CPU backend is faster).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
}

/// What the report says was run: the settings paragraph above its table.
fn settings(a: &BenchTuneArgs, engine: &str) -> String {
    let mut s = format!(
        "Tuning modes, {} steps × {} row(s) of ≤ {} tokens, LoRA r {}, LR {}, on {engine}. \
         GPU MiB = the GPU engine's memory plan for the mode (what it allocates; at the \
         browser's default limits when the steps run on the CPU); ratios are vanilla ÷ mode \
         (higher is better).\n\n",
        a.steps,
        a.batch * a.accum,
        a.seq_len,
        a.lora_rank,
        a.lr
    );
    if a.modes.contains(&Mode::Edge) {
        s += &format!(
            "Edge: exits every {} blocks, {} window order, window LR × (depth)^{}{}.\n\n",
            a.exit_stride,
            a.window_schedule,
            a.window_lr_power,
            if a.window_steps_power != 0.0 {
                format!(", steps ∝ (depth)^{}", a.window_steps_power)
            } else {
                String::new()
            }
        );
    }
    s
}

/// Makes (or reuses, when present from an earlier run of the same settings) the
/// compressed model a mode tunes.
fn compressed_model(a: &BenchTuneArgs, allocation: AllocationArg) -> Result<PathBuf> {
    let name = match allocation {
        AllocationArg::Uniform => "uniform",
        AllocationArg::Luc => "luc",
    };
    let out = a.out.join(format!(
        "{name}-s{}-b{}-{:?}{}.gguf",
        a.sparsity,
        a.bits,
        a.quant,
        if a.symmetric { "-sym" } else { "" }
    ));
    if out.exists() {
        eprintln!("{name} model: reusing {}", out.display());
        return Ok(out);
    }
    // Uniform RTN without pruning reads no calibration data.
    let calibrate =
        allocation == AllocationArg::Luc || a.sparsity > 0.0 || a.quant == QuantArg::Gptq;
    let calib = CalibArgs {
        calib: calibrate.then(|| a.calib.clone().unwrap_or_else(|| a.data.clone())),
        calib_rows: a.calib_rows,
        seq_len: a.calib_seq_len,
        loss_rows: 0,
        fisher_rows: a.calib_rows,
        profile_method: MethodArg::Wanda,
        cache_dir: a.cache_dir.clone(),
    };
    let args = CompressArgs {
        model: a.model.clone(),
        calib,
        sparsity: a.sparsity,
        bits: a.bits,
        allocation,
        sparsity_rule: SparsityRuleArg::Shrunk,
        policy: None,
        method: MethodArg::Sparsegpt,
        pattern: PatternArg::Unstructured,
        quant: a.quant,
        group: 32,
        asymmetric: !a.symmetric,
        out: out.clone(),
        json: false,
    };
    let c = compress_file(&args)?;
    eprintln!(
        "{name} model: {} ({:.1} MiB, {:.1} s)",
        out.display(),
        c.file_bytes as f64 / 1048576.0,
        c.seconds
    );
    Ok(out)
}

pub(crate) fn bench_tune(a: BenchTuneArgs) -> Result<()> {
    if a.modes.is_empty() {
        return Err(Error::Invalid("--modes lists no mode".into()));
    }
    let ctx = crate::cli::pick_gpu(a.device)?;
    match &ctx {
        Some(ctx) => bench_modes(&a, Some(ctx), |file, s, opts| {
            run::gpu_backend(ctx, file, s, opts)
        }),
        None => bench_modes(&a, None, |file, s, _| run::cpu_backend(file, s)),
    }
}

/// What the benchmark reads from a backend besides the [`Backend`] trait.
trait Benched: Backend {
    fn prefix_cache(&self) -> &PrefixCache;
}

impl Benched for CpuBackend {
    fn prefix_cache(&self) -> &PrefixCache {
        &self.cache
    }
}

impl Benched for GpuTrainer<'_> {
    fn prefix_cache(&self) -> &PrefixCache {
        &self.cache
    }
}

/// Runs every mode on backends made by `make` (the GPU engine when `ctx` is given, which
/// also evaluates), then writes and prints the table.
fn bench_modes<B: Benched>(
    a: &BenchTuneArgs,
    ctx: Option<&GpuContext>,
    make: impl Fn(&ModelFile, &TuneSettings, &TrainOptions) -> Result<B>,
) -> Result<()> {
    let window_schedule = a.window_schedule.parse()?;
    std::fs::create_dir_all(&a.out).map_err(|e| io(e, &a.out))?;
    let ds = Dataset::load(&a.data)?;
    let questions = questions(&a.eval_data, a.questions, a.no_eval)?;
    let limits = ctx.map_or_else(wgpu::Limits::default, |c| c.limits.clone());
    let mut runs: Vec<ModeRun<B>> = Vec::new();
    for &mode in &a.modes {
        let model = match mode {
            Mode::Vanilla | Mode::Partial => a.model.clone(),
            Mode::CompressThenTune => compressed_model(a, AllocationArg::Uniform)?,
            Mode::Edge => compressed_model(a, AllocationArg::Luc)?,
        };
        // The reference settings but for these flags (eval_every 0: no validation inside
        // the timed steps).
        let options = TuneOptions {
            steps: Some(a.steps),
            lr: a.lr,
            lora_rank: a.lora_rank,
            lora_alpha: 2.0 * a.lora_rank as f32,
            seq_len: a.seq_len,
            batch: a.batch,
            accum: a.accum,
            val_fraction: a.val_fraction,
            eval_every: 0,
            seed: a.seed,
            mode,
            exit_stride: a.exit_stride,
            window_schedule,
            window_lr_power: a.window_lr_power,
            window_steps_power: a.window_steps_power,
            partial_layers: a.partial_layers,
            ..TuneOptions::default()
        };
        runs.push(prepare_mode(a, &model, &options, &ds, &limits, &make)?);
    }
    // Round robin, `--chunk` steps per mode per turn: a shared machine's load changes over
    // an hour, and interleaving spreads it over every mode alike instead of over whichever
    // ran at a busy time.
    let chunk = a.chunk.max(1);
    let total = a.steps * runs.len() as u64;
    let pb = progress_bar(total, "bench tune");
    let mut done = 0;
    while runs.iter().any(|r| r.steps_left(a.steps) > 0) {
        for r in &mut runs {
            let n = r.steps_left(a.steps).min(chunk);
            if n == 0 {
                continue;
            }
            let name = r.mode.name();
            let reports = &mut r.reports;
            pollster::block_on(r.trainer.run(n, &mut |rep| {
                reports.push(rep.clone());
                done += 1;
                pb.set_message(format!("{name} step {} loss {:.4}", rep.step, rep.loss));
                pb.set_position(done);
            }))?;
        }
    }
    pb.finish_and_clear();
    let mut results: Vec<ModeResult> = Vec::new();
    for r in runs {
        results.push(finish_mode(r, ctx, &questions)?);
    }
    let base = results
        .iter()
        .find(|r| r.mode == Mode::Vanilla.name())
        .map(|r| (r.step_ms, r.peak_gpu_bytes, r.accuracy));
    for r in &mut results {
        if let Some((ms, bytes, accuracy)) = base {
            r.speedup_vs_vanilla = Some(ms / r.step_ms);
            r.memory_ratio_vs_vanilla = Some(bytes as f64 / r.peak_gpu_bytes as f64);
            r.accuracy_vs_vanilla_points = accuracy
                .zip(r.accuracy)
                .map(|(base, mine)| 100.0 * (mine - base));
        }
    }
    let engine = match ctx {
        Some(c) => format!("the GPU engine on {} ({})", c.info.name, c.info.backend),
        None => "the CPU backend".to_string(),
    };
    let table = markdown(&settings(a, &engine), &results);
    let svg = loss_svg(&results);
    let files = [
        ("table.md", table.clone().into_bytes()),
        ("losses.svg", svg.into_bytes()),
        (
            "results.json",
            serde_json::to_vec_pretty(&results).map_err(|e| Error::Io(e.to_string()))?,
        ),
    ];
    write_outputs(&a.out, files)?;
    if a.json {
        for r in &results {
            let mut v = serde_json::to_value(r).map_err(|e| Error::Io(e.to_string()))?;
            if let Some(o) = v.as_object_mut() {
                o.remove("losses");
            }
            println!("{v}");
        }
    } else {
        print!("{table}");
    }
    eprintln!(
        "wrote {}, {} and {}",
        a.out.join("table.md").display(),
        a.out.join("losses.svg").display(),
        a.out.join("results.json").display()
    );
    Ok(())
}

/// One mode's run in progress.
struct ModeRun<B> {
    mode: Mode,
    model: PathBuf,
    tok: Tokenizer,
    plan_bytes: u64,
    trainer: Trainer<B>,
    reports: Vec<StepReport>,
}

impl<B: Backend> ModeRun<B> {
    /// Steps still to run (0 also when the trainer finished early).
    fn steps_left(&self, steps: u64) -> u64 {
        if self.trainer.step() >= self.trainer.total_steps() {
            0
        } else {
            steps.saturating_sub(self.reports.len() as u64)
        }
    }
}

fn prepare_mode<B: Backend>(
    a: &BenchTuneArgs,
    model: &Path,
    options: &TuneOptions,
    ds: &Dataset,
    limits: &wgpu::Limits,
    make: &impl Fn(&ModelFile, &TuneSettings, &TrainOptions) -> Result<B>,
) -> Result<ModeRun<B>> {
    let mode = options.mode;
    let file = ModelFile::open(model)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let settings = options.settings(file.config.n_layers)?;
    settings.validate()?;

    // The GPU plan of this mode: f32 weights for the uncompressed modes, as vanilla is
    // defined; packed for the compressed ones.
    let opts = TrainOptions {
        seq_len: a.seq_len,
        format: match mode {
            Mode::Vanilla | Mode::Partial => WeightFormat::F32,
            Mode::CompressThenTune | Mode::Edge => WeightFormat::Packed,
        },
        ..TrainOptions::default()
    };
    let lora = &settings.lora;
    let plan = match &settings.train.layers {
        None => GpuTrainer::plan(&file, lora, &opts, limits)?,
        Some(ls) => GpuTrainer::plan_windows(&file, lora, &opts, limits, &ls.windows)?,
    };
    let data = train::prepare(ds, &tok, &settings.data_config)?;
    let trainer = run::build(&settings, data, |s| make(&file, s, &opts))?;
    // The CPU profile (EDGE_LLM_CPU_PROFILE=1) covers the steps only.
    crate::cpu::profile::reset();
    Ok(ModeRun {
        mode,
        model: model.to_path_buf(),
        tok,
        plan_bytes: plan.total(),
        trainer,
        reports: Vec::new(),
    })
}

/// Voted (or plain) accuracy, the last exit's, and every exit's (block count, accuracy).
type Scores = (f64, Option<f64>, Vec<(usize, f64)>);

/// Accuracy of the tuned model (adapters `lora`, exits when it has some: max vote, last
/// exit, every exit) on the GPU when `ctx` is given, else on the CPU reference.
fn score(
    ctx: Option<&GpuContext>,
    model: &Path,
    lora: Lora<f32>,
    tok: &Tokenizer,
    questions: &[crate::data::McQuestion],
    label: &str,
) -> Result<Scores> {
    let file = ModelFile::open(model)?;
    let pb = progress_bar(questions.len() as u64, "eval-mc");
    let mut progress = |done: usize, _: usize, correct: usize| {
        pb.set_message(format!(
            "{label} acc {:.3}",
            correct as f64 / done.max(1) as f64
        ));
        pb.set_position(done as u64);
    };
    let plain = |r: eval::McResult| -> Scores { (r.accuracy, None, Vec::new()) };
    let voted = |r: eval::McVoteResult| -> Scores {
        let per = r.exits.iter().map(|e| (e.after, e.accuracy)).collect();
        (r.accuracy, r.exits.last().map(|e| e.accuracy), per)
    };
    let has_exits = !lora.exits.is_empty();
    let mut score = |lm: &mut dyn Lm| -> Result<Scores> {
        Ok(if has_exits {
            let f = pollster::block_on(eval::eval_mc_vote(
                lm,
                tok,
                questions,
                crate::vote::DEFAULT,
                &mut progress,
            ));
            voted(f?)
        } else {
            plain(pollster::block_on(eval::eval_mc(
                lm,
                tok,
                questions,
                &mut progress,
            ))?)
        })
    };
    let scores = match ctx {
        Some(ctx) => score(&mut GpuModel::new(
            ctx,
            &file,
            &GpuModelOptions::default(),
            Some(&lora),
        )?)?,
        None => {
            let mut m = Transformer::new(file.weights_as(crate::model::Storage::File)?);
            m.lora = Some(lora);
            score(&mut CpuLm::new(&m))?
        }
    };
    pb.finish_and_clear();
    Ok(scores)
}

fn finish_mode<B: Benched>(
    run: ModeRun<B>,
    ctx: Option<&GpuContext>,
    questions: &[crate::data::McQuestion],
) -> Result<ModeResult> {
    let ModeRun {
        mode,
        model,
        tok,
        plan_bytes,
        mut trainer,
        reports,
    } = run;
    let secs: f64 = reports
        .iter()
        .map(|r| r.tokens as f64 / r.tokens_per_s.max(1e-12))
        .sum();
    let tokens: usize = reports.iter().map(|r| r.tokens).sum();
    let steps = reports.len() as u64;
    if crate::cpu::profile::on() {
        eprintln!(
            "{}: where the {steps} steps' time went (wall time per op)",
            mode.name()
        );
        crate::cpu::profile::report();
        crate::cpu::profile::reset();
    }
    trainer.leave_window()?;
    let val_loss = pollster::block_on(trainer.validation_loss())?;
    let (hits, misses) = {
        let c = trainer.backend.prefix_cache();
        (c.hits, c.misses)
    };
    let lora = pollster::block_on(trainer.backend.adapters())?;
    // The trainer's GPU memory is given back before the evaluation model is made.
    drop(trainer);
    let (mut accuracy, mut last_exit_accuracy, mut exit_accuracies) = (None, None, Vec::new());
    if !questions.is_empty() {
        let (acc, last, per) = score(ctx, &model, lora, &tok, questions, mode.name())?;
        accuracy = Some(acc);
        last_exit_accuracy = last;
        exit_accuracies = per;
    }
    let r = ModeResult {
        mode: mode.name(),
        model,
        steps,
        tokens,
        step_ms: 1e3 * secs / steps.max(1) as f64,
        tokens_per_s: tokens as f64 / secs.max(1e-12),
        peak_gpu_bytes: plan_bytes,
        val_loss,
        accuracy,
        last_exit_accuracy,
        exit_accuracies,
        speedup_vs_vanilla: None,
        memory_ratio_vs_vanilla: None,
        accuracy_vs_vanilla_points: None,
        prefix_hits: hits,
        prefix_misses: misses,
        losses: reports.iter().map(|r| r.loss).collect(),
    };
    eprintln!(
        "{}: {:.0} ms/step, {:.1} tokens/s, plan {:.1} MiB, val loss {}, accuracy {}",
        r.mode,
        r.step_ms,
        r.tokens_per_s,
        r.peak_gpu_bytes as f64 / 1048576.0,
        r.val_loss.map_or("n/a".into(), |v| format!("{v:.4}")),
        r.accuracy.map_or("n/a".into(), |v| format!("{v:.4}"))
    );
    Ok(r)
}
