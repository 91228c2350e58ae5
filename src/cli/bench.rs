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

use super::compress::{
    compress_file, AllocationArg, CalibArgs, CompressArgs, MethodArg, PatternArg, QuantArg,
    SparsityRuleArg,
};
use super::progress_bar;
use super::tune::Mode;
use super::Device;
use crate::data::Dataset;
use crate::engine::{GpuModel, GpuModelOptions, GpuTrainer, TrainOptions, WeightFormat};
use crate::eval::{self, CpuExitLm, CpuLm};
use crate::kernels::GpuContext;
use crate::model::ModelFile;
use crate::reference::{Lora, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::cpu::PrefixCache;
use crate::train::{self, Backend, CpuBackend, StepReport, Trainer};
use crate::tune::{self as run, TuneOptions, TuneSettings};
use crate::vote::Vote;
use crate::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

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

/// One mode's measurements.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ModeResult {
    pub mode: &'static str,
    pub model: PathBuf,
    pub steps: u64,
    pub tokens: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// The GPU engine's memory plan for this mode (browser default limits).
    pub peak_gpu_bytes: u64,
    pub val_loss: Option<f64>,
    /// Voted (edge: max rule) or plain accuracy; None without evaluation.
    pub accuracy: Option<f64>,
    /// Edge: the deepest exit alone, and every exit.
    pub last_exit_accuracy: Option<f64>,
    pub exit_accuracies: Vec<(usize, f64)>,
    pub speedup_vs_vanilla: Option<f64>,
    pub memory_ratio_vs_vanilla: Option<f64>,
    /// Accuracy minus vanilla's, in percentage points (voted for edge).
    pub accuracy_vs_vanilla_points: Option<f64>,
    /// Prefix cache (windowed modes): rows served from it and rows computed.
    pub prefix_hits: u64,
    pub prefix_misses: u64,
    pub losses: Vec<f64>,
}

fn io(e: impl std::fmt::Display, p: &Path) -> Error {
    Error::Io(format!("{}: {e}", p.display()))
}

/// Writes each (file name, bytes) into `dir`.
fn write_outputs<const N: usize>(dir: &Path, files: [(&str, Vec<u8>); N]) -> Result<()> {
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| io(e, &p))?;
    }
    Ok(())
}

/// The first `n` (all by default) multiple-choice questions of `path`; none with `skip`.
fn questions(path: &Path, n: Option<usize>, skip: bool) -> Result<Vec<crate::data::McQuestion>> {
    if skip {
        return Ok(Vec::new());
    }
    match Dataset::load(path)? {
        Dataset::MultipleChoice(mut q) => {
            if let Some(n) = n {
                q.truncate(n);
            }
            Ok(q)
        }
        other => Err(Error::Data(format!(
            "{} holds {} data; --eval-data needs multiple-choice JSONL",
            path.display(),
            other.kind()
        ))),
    }
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
        sparsity_rule: SparsityRuleArg::LeastError,
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
    let ctx = super::pick_gpu(a.device)?;
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
                pb.set_position(done);
                pb.set_message(format!("{name} step {} loss {:.4}", rep.step, rep.loss));
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
    let table = markdown(a, &engine, &results);
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
        pb.set_position(done as u64);
        pb.set_message(format!(
            "{label} acc {:.3}",
            correct as f64 / done.max(1) as f64
        ));
    };
    let plain = |r: eval::McResult| -> Scores { (r.accuracy, None, Vec::new()) };
    let voted = |r: eval::McVoteResult| -> Scores {
        let per = r.exits.iter().map(|e| (e.after, e.accuracy)).collect();
        (r.accuracy, r.exits.last().map(|e| e.accuracy), per)
    };
    let has_exits = !lora.exits.is_empty();
    let scores = match ctx {
        Some(ctx) => {
            let mut gm = GpuModel::new(ctx, &file, &GpuModelOptions::default(), Some(&lora))?;
            if has_exits {
                let f = eval::eval_mc_vote_async(&mut gm, tok, questions, Vote::Max, &mut progress);
                voted(pollster::block_on(f)?)
            } else {
                plain(pollster::block_on(eval::eval_mc_async(
                    &mut gm,
                    tok,
                    questions,
                    &mut progress,
                ))?)
            }
        }
        None => {
            let mut m = Transformer::new(file.weights()?);
            m.lora = Some(lora);
            if has_exits {
                let mut lm = CpuExitLm::new(&m)?;
                voted(eval::eval_mc_vote(
                    &mut lm,
                    tok,
                    questions,
                    Vote::Max,
                    &mut progress,
                )?)
            } else {
                plain(eval::eval_mc(
                    &mut CpuLm::new(&m),
                    tok,
                    questions,
                    &mut progress,
                )?)
            }
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

fn markdown(a: &BenchTuneArgs, engine: &str, rs: &[ModeResult]) -> String {
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".into(), f);
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
    s += "| mode | ms/step | tokens/s | GPU MiB (plan) | val loss | accuracy | last exit | Δ accuracy | speedup | memory ratio |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in rs {
        s += &format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.step_ms,
            r.tokens_per_s,
            r.peak_gpu_bytes as f64 / 1048576.0,
            opt(r.val_loss, &|v| format!("{v:.4}")),
            opt(r.accuracy, &|v| format!("{:.2} %", 100.0 * v)),
            opt(r.last_exit_accuracy, &|v| format!("{:.2} %", 100.0 * v)),
            opt(r.accuracy_vs_vanilla_points, &|v| format!("{v:+.2} pts")),
            opt(r.speedup_vs_vanilla, &|v| format!("{v:.2}×")),
            opt(r.memory_ratio_vs_vanilla, &|v| format!("{v:.2}×")),
        );
    }
    if let Some(edge) = rs.iter().find(|r| r.mode == Mode::Edge.name()) {
        s += &targets(edge);
    }
    for r in rs.iter().filter(|r| !r.exit_accuracies.is_empty()) {
        let per: Vec<String> = r
            .exit_accuracies
            .iter()
            .map(|(l, acc)| format!("after {l}: {:.2} %", 100.0 * acc))
            .collect();
        s += &format!("\n{} per exit: {}\n", r.mode, per.join(", "));
    }
    s
}

/// The project's goals for edge mode against vanilla tuning (issue 6, docs/bench-tune.md): at least
/// 4× faster per step, at least 5× less peak GPU memory, voted accuracy within 1 point.
const TARGET_SPEEDUP: f64 = 4.0;
const TARGET_MEMORY_RATIO: f64 = 5.0;
const TARGET_ACCURACY_POINTS: f64 = -1.0;

/// Edge mode against the goals: each measured figure, met or missed and by how much (nothing
/// without a vanilla run to compare with).
fn targets(edge: &ModeResult) -> String {
    let verdict = |measured: f64, goal: f64, show: &dyn Fn(f64) -> String| {
        if measured >= goal {
            format!("{} (met)", show(measured))
        } else {
            format!("{} (missed by {})", show(measured), show(goal - measured))
        }
    };
    let times = |v: f64| format!("{v:.2}×");
    let mut lines = Vec::new();
    if let Some(v) = edge.speedup_vs_vanilla {
        let met = verdict(v, TARGET_SPEEDUP, &times);
        lines.push(format!("speed ≥ {TARGET_SPEEDUP}× vanilla's: {met}"));
    }
    if let Some(v) = edge.memory_ratio_vs_vanilla {
        let met = verdict(v, TARGET_MEMORY_RATIO, &times);
        lines.push(format!(
            "peak GPU memory ≥ {TARGET_MEMORY_RATIO}× lower: {met}"
        ));
    }
    if let Some(v) = edge.accuracy_vs_vanilla_points {
        let met = verdict(v, TARGET_ACCURACY_POINTS, &|p| format!("{p:.2} points"));
        lines.push(format!("voted accuracy within 1 point of vanilla's: {met}"));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!("\nTargets for edge: {}.\n", lines.join("; "))
}

/// Training loss per step (mean over 10-step windows) of every mode, one line each.
fn loss_svg(rs: &[ModeResult]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 50.0;
    const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let smooth = |v: &[f64]| -> Vec<f64> {
        v.chunks(10)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect()
    };
    let series: Vec<Vec<f64>> = rs.iter().map(|r| smooth(&r.losses)).collect();
    let all = series.iter().flatten().copied().filter(|x| x.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let n = series.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - lo) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{PAD}\" y=\"20\">training loss (mean of 10 steps) by \
         step: {lo:.3} … {hi:.3}</text>\n<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" \
         stroke=\"black\"/>\n",
        H - PAD,
        W - PAD,
        H - PAD
    );
    for (k, (r, v)) in rs.iter().zip(&series).enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, &l)| format!("{:.1},{:.1}", x(i), y(l)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>\n",
            pts.join(" "),
            W - PAD - 140.0,
            40.0 + 16.0 * k as f64,
            r.mode
        );
    }
    s += &format!(
        "<text x=\"{PAD}\" y=\"{}\">step 1</text><text x=\"{}\" y=\"{}\">step {}</text>\n</svg>\n",
        H - PAD + 16.0,
        W - PAD - 40.0,
        H - PAD + 16.0,
        rs.iter().map(|r| r.losses.len()).max().unwrap_or(0)
    );
    s
}

/// `edge-llm bench compress`: the uniform and LUC policies at the same mean sparsity and
/// mean bits (issue 5's table), beside the uncompressed model.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchCompressArgs {
    #[arg(long, default_value = "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Calibration text for the profile, pruning and GPTQ.
    #[arg(long, default_value = "data/shakespeare/train.txt")]
    pub calib: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub calib_rows: usize,
    #[arg(long, default_value_t = 128)]
    pub calib_seq_len: usize,
    /// Rows whose loss the profile measures per layer and level (a diagnostic: the policy
    /// reads the Fisher estimate).
    #[arg(long, default_value_t = 0)]
    pub loss_rows: usize,
    /// Rows whose loss gradients make the profile's Fisher estimate.
    #[arg(long, default_value_t = 16)]
    pub fisher_rows: usize,
    /// How the LUC rows choose per-layer sparsity (as `compress --sparsity-rule`).
    #[arg(long, value_enum, default_value_t = SparsityRuleArg::LeastError)]
    pub sparsity_rule: SparsityRuleArg,
    #[arg(long, default_value = "runs/profile")]
    pub cache_dir: PathBuf,
    /// Held-out text for perplexity, and how many of its tokens.
    #[arg(long, default_value = "data/shakespeare/validation.txt")]
    pub text: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub ppl_tokens: usize,
    #[arg(long, default_value = "data/arc-easy/validation.jsonl")]
    pub eval_data: PathBuf,
    #[arg(long)]
    pub questions: Option<usize>,
    #[arg(long)]
    pub no_eval: bool,
    /// Mean sparsity of every policy.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Mean bits, one table block each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![4.0, 3.0])]
    pub bits: Vec<f64>,
    #[arg(long, value_enum, default_value_t = MethodArg::Sparsegpt)]
    pub method: MethodArg,
    #[arg(long, value_enum, default_value_t = QuantArg::Gptq)]
    pub quant: QuantArg,
    /// Asymmetric groups (scale and minimum).
    #[arg(long)]
    pub asymmetric: bool,
    /// Tokens of the timed GPU forward pass (no GPU adapter: the timing is skipped).
    #[arg(long, default_value_t = 256)]
    pub forward_tokens: usize,
    #[arg(long, default_value_t = 3)]
    pub forward_reps: usize,
    /// Where the profile's and compression's calibration passes run (as `compress
    /// --device`).
    #[arg(long, value_enum, default_value_t = super::Device::Auto)]
    pub device: super::Device,
    #[arg(long, default_value = "runs/bench-compress")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CompressRow {
    pub policy: String,
    pub mean_sparsity: f64,
    pub mean_bits: f64,
    pub model: PathBuf,
    pub perplexity: f64,
    pub accuracy: Option<f64>,
    /// The GPU model's memory plan (weights as uploaded) and its weights alone.
    pub gpu_bytes: u64,
    pub gpu_weight_bytes: u64,
    /// Median GPU forward time of `forward_tokens` tokens, and relative to the f32 model.
    pub forward_ms: Option<f64>,
    pub forward_vs_f32: Option<f64>,
}

pub(crate) fn bench_compress(a: BenchCompressArgs) -> Result<()> {
    use crate::engine::{GpuModel, GpuModelOptions};
    std::fs::create_dir_all(&a.out).map_err(|e| io(e, &a.out))?;
    let text = std::fs::read_to_string(&a.text).map_err(|e| io(e, &a.text))?;
    let questions = questions(&a.eval_data, a.questions, a.no_eval)?;
    let ctx = super::pick_gpu(super::Device::Gpu).ok().flatten();
    if ctx.is_none() {
        eprintln!("no GPU adapter: the forward-time column is skipped");
    }
    let mut jobs: Vec<(String, f64, f64, PathBuf)> =
        vec![("f32".into(), 0.0, 32.0, a.model.clone())];
    for &bits in &a.bits {
        for alloc in [AllocationArg::Uniform, AllocationArg::Luc] {
            let name = match alloc {
                AllocationArg::Uniform => "uniform",
                AllocationArg::Luc => "luc",
            };
            let out = a
                .out
                .join(format!("{name}-s{}-b{bits}-{:?}.gguf", a.sparsity, a.quant));
            if out.exists() {
                eprintln!("{name} {bits} bits: reusing {}", out.display());
            } else {
                let args = CompressArgs {
                    model: a.model.clone(),
                    calib: CalibArgs {
                        calib: Some(a.calib.clone()),
                        calib_rows: a.calib_rows,
                        seq_len: a.calib_seq_len,
                        loss_rows: a.loss_rows,
                        fisher_rows: a.fisher_rows,
                        profile_method: MethodArg::Wanda,
                        cache_dir: a.cache_dir.clone(),
                    },
                    sparsity: a.sparsity,
                    bits,
                    allocation: alloc,
                    sparsity_rule: a.sparsity_rule,
                    policy: None,
                    method: a.method,
                    pattern: PatternArg::Unstructured,
                    quant: a.quant,
                    group: 32,
                    asymmetric: a.asymmetric,
                    out: out.clone(),
                    json: false,
                };
                let c = super::compress::compress_file_on(&args, a.device)?;
                eprintln!(
                    "{name} {bits} bits: {} in {:.0} s",
                    out.display(),
                    c.seconds
                );
            }
            jobs.push((name.into(), a.sparsity, bits, out));
        }
    }
    let mut rows: Vec<CompressRow> = Vec::new();
    let mut timed: Vec<(ModelFile, GpuModelOptions, Vec<u32>)> = Vec::new();
    for (policy, sparsity, bits, path) in jobs {
        let file = ModelFile::open(&path)?;
        let tok = Tokenizer::from_gguf(&file.gguf)?;
        let model = crate::reference::Transformer::new(file.weights()?);
        let mut ids = tok.encode(&text)?;
        ids.truncate(a.ppl_tokens);
        let ppl = eval::perplexity(&mut CpuLm::new(&model), &ids, 64, &mut |_, _| {})?;
        let accuracy = if questions.is_empty() {
            None
        } else {
            let pb = progress_bar(questions.len() as u64, "eval-mc");
            let r = eval::eval_mc(&mut CpuLm::new(&model), &tok, &questions, &mut |d, _, _| {
                pb.set_position(d as u64)
            })?;
            pb.finish_and_clear();
            Some(r.accuracy)
        };
        let opts = GpuModelOptions {
            format: if policy == "f32" {
                WeightFormat::F32
            } else {
                WeightFormat::Packed
            },
            max_len: Some(a.forward_tokens),
            max_t: a.forward_tokens,
            path: None,
        };
        let plan = GpuModel::plan(&file, &opts, None)?;
        let weights = plan
            .by_category()
            .iter()
            .find(|(c, _)| *c == crate::engine::Category::Weights)
            .map_or(0, |x| x.1);
        let row = CompressRow {
            policy,
            mean_sparsity: sparsity,
            mean_bits: bits,
            model: path,
            perplexity: ppl.perplexity,
            accuracy,
            gpu_bytes: plan.total(),
            gpu_weight_bytes: weights,
            forward_ms: None,
            forward_vs_f32: None,
        };
        eprintln!(
            "{} (s {}, b {}): perplexity {:.2}, accuracy {}, GPU weights {:.1} MiB",
            row.policy,
            row.mean_sparsity,
            row.mean_bits,
            row.perplexity,
            row.accuracy.map_or("n/a".into(), |x| format!("{x:.4}")),
            row.gpu_weight_bytes as f64 / 1048576.0,
        );
        rows.push(row);
        timed.push((file, opts, ids));
    }
    // GPU forward times, the models taking turns (the median of `forward_reps` each), so
    // the machine's load falls on all of them alike.
    if let Some(ctx) = &ctx {
        let mut models = Vec::new();
        for (file, opts, ids) in &timed {
            let tokens: Vec<u32> = ids.iter().copied().cycle().take(a.forward_tokens).collect();
            models.push((GpuModel::new(ctx, file, opts, None)?, tokens));
        }
        let mut times = vec![Vec::new(); models.len()];
        for _ in 0..a.forward_reps.max(1) {
            for (k, (gm, tokens)) in models.iter_mut().enumerate() {
                eval::CausalLm::truncate(gm, 0);
                let t0 = std::time::Instant::now();
                eval::CausalLm::append(gm, tokens)?;
                times[k].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (r, mut t) in rows.iter_mut().zip(times) {
            t.sort_by(f64::total_cmp);
            r.forward_ms = Some(t[t.len() / 2]);
        }
    }
    let base = rows.first().and_then(|r| r.forward_ms);
    for r in &mut rows {
        r.forward_vs_f32 = match (r.forward_ms, base) {
            (Some(t), Some(b)) => Some(t / b),
            _ => None,
        };
    }
    let mut table = format!(
        "Uniform vs LUC at mean sparsity {} ({:?} pruning, {:?} quantization), perplexity of \
         {} tokens of {}, accuracy on {} questions; GPU bytes from the GPU model's plan; \
         forward of {} tokens on the GPU relative to f32.\n\n\
         | policy | sparsity | bits | perplexity | accuracy | GPU weights MiB | GPU total MiB | forward ms | vs f32 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        a.sparsity,
        a.method,
        a.quant,
        a.ppl_tokens,
        a.text.display(),
        questions.len(),
        a.forward_tokens
    );
    for r in &rows {
        table += &format!(
            "| {} | {} | {} | {:.2} | {} | {:.1} | {:.1} | {} | {} |\n",
            r.policy,
            r.mean_sparsity,
            r.mean_bits,
            r.perplexity,
            r.accuracy
                .map_or("–".into(), |x| format!("{:.2} %", 100.0 * x)),
            r.gpu_weight_bytes as f64 / 1048576.0,
            r.gpu_bytes as f64 / 1048576.0,
            r.forward_ms.map_or("–".into(), |x| format!("{x:.0}")),
            r.forward_vs_f32.map_or("–".into(), |x| format!("{x:.2}×")),
        );
    }
    let files = [
        ("table.md", table.clone().into_bytes()),
        (
            "results.json",
            serde_json::to_vec_pretty(&rows).map_err(|e| Error::Io(e.to_string()))?,
        ),
    ];
    write_outputs(&a.out, files)?;
    if a.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::to_string(r).map_err(|e| Error::Io(e.to_string()))?
            );
        }
    } else {
        print!("{table}");
    }
    Ok(())
}
