//! `edge-llm bench cpu`: the CPU engine's vanilla LoRA step against the machine's FMA peak.
//!
//! Runs `--warmup` steps (not counted), then `--steps` optimizer steps of vanilla LoRA on
//! the CPU backend with the per-op profile on, and reports: mean step time and tokens/s;
//! the floating-point work of a step as the ops counted it (matrix products and attention,
//! from their shapes) and the rate it was done at; the FMA peak measured by an FMA loop on
//! every thread; each rate's share of that peak; and where the step's time went, per op.

use crate::cli::progress_bar;
use crate::cpu::{par, peak, profile};
use crate::data::Dataset;
use crate::model::ModelFile;
use crate::tokenizer::Tokenizer;
use crate::train::{self, StepReport};
use crate::tune::{self as run, TuneOptions};
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long, default_value = "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value = "data/arc-easy/train.jsonl")]
    data: PathBuf,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 6)]
    steps: u64,
    /// Steps run first and not timed (thread pool, allocator and caches warm up).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Seconds of FMA loop for the peak.
    #[arg(long, default_value_t = 1.0)]
    peak_s: f64,
    #[arg(long)]
    json: bool,
}

/// One op's part of the timed steps.
#[derive(Serialize)]
struct OpShare {
    op: &'static str,
    ms_per_step: f64,
    share_of_step: f64,
    gflops: Option<f64>,
    share_of_peak: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    gemm_kernel: &'static str,
    steps: u64,
    tokens_per_step: f64,
    step_ms: f64,
    tokens_per_s: f64,
    /// Work counted by the ops (matrix products, attention) per step.
    gflop_per_step: f64,
    gflops: f64,
    peak_gflops: f64,
    peak_isa: &'static str,
    share_of_peak: f64,
    /// Tokens/s the step would reach at the FMA peak (same counted work).
    tokens_per_s_at_peak: f64,
    ops: Vec<OpShare>,
}

pub(crate) fn run(a: Args) -> Result<()> {
    if a.steps == 0 {
        return Err(Error::Invalid("--steps must be positive".into()));
    }
    let file = ModelFile::open(&a.model)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let options = TuneOptions {
        steps: Some(a.warmup + a.steps),
        eval_every: 0,
        accum: 1,
        ..TuneOptions::default()
    };
    let settings = options.settings(file.config.n_layers)?;
    settings.validate()?;
    let data = train::prepare(&Dataset::load(&a.data)?, &tok, &settings.data_config)?;
    let mut trainer = run::build(&settings, data, |s| run::cpu_backend(&file, s))?;
    let pb = progress_bar(a.warmup + a.steps, "bench cpu");
    let mut reports: Vec<StepReport> = Vec::new();
    let mut done = 0;
    let mut step = |n: u64, keep: bool, reports: &mut Vec<StepReport>| -> Result<()> {
        pollster::block_on(trainer.run(n, &mut |rep| {
            if keep {
                reports.push(rep.clone());
            }
            done += 1;
            pb.set_position(done);
        }))
        .map(|_| ())
    };
    step(a.warmup, false, &mut reports)?;
    profile::reset();
    profile::enable(true);
    step(a.steps, true, &mut reports)?;
    profile::enable(false);
    pb.finish_and_clear();
    if reports.is_empty() {
        return Err(Error::Data("no step ran (too little data?)".into()));
    }
    let n = reports.len() as f64;
    let secs: f64 = reports
        .iter()
        .map(|r| r.tokens as f64 / r.tokens_per_s.max(1e-12))
        .sum();
    let tokens: f64 = reports.iter().map(|r| r.tokens as f64).sum();
    let totals = profile::totals();
    let flops: f64 = totals.iter().map(|t| t.3 as f64).sum();
    let (peak, isa) = peak::fma_peak(a.peak_s);
    let gflops = flops / secs / 1e9;
    let ops = totals
        .iter()
        .map(|&(op, s, _, f)| {
            let g = (f > 0 && s > 0.0).then(|| f as f64 / s / 1e9);
            OpShare {
                op: op.name(),
                ms_per_step: 1e3 * s / n,
                share_of_step: s / secs,
                gflops: g,
                share_of_peak: g.map(|g| g / peak),
            }
        })
        .collect();
    let r = Report {
        threads: par::threads(),
        gemm_kernel: crate::cpu::gemm::best_kernel().name,
        steps: reports.len() as u64,
        tokens_per_step: tokens / n,
        step_ms: 1e3 * secs / n,
        tokens_per_s: tokens / secs,
        gflop_per_step: flops / n / 1e9,
        gflops,
        peak_gflops: peak,
        peak_isa: isa,
        share_of_peak: gflops / peak,
        tokens_per_s_at_peak: tokens / secs * peak / gflops.max(1e-12),
        ops,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::Io(e.to_string()))?
        );
    } else {
        print_table(&r);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "CPU engine, vanilla LoRA: {} steps of {:.0} tokens on {} threads (GEMM kernel {})",
        r.steps, r.tokens_per_step, r.threads, r.gemm_kernel
    );
    println!(
        "step {:.0} ms, {:.1} tokens/s; {:.1} GFLOP/step counted, {:.1} GFLOP/s = {:.1} % of \
         the FMA peak {:.1} GFLOP/s ({}; at the peak: {:.0} tokens/s)",
        r.step_ms,
        r.tokens_per_s,
        r.gflop_per_step,
        r.gflops,
        100.0 * r.share_of_peak,
        r.peak_gflops,
        r.peak_isa,
        r.tokens_per_s_at_peak
    );
    println!(
        "{:<24} {:>9} {:>7} {:>9} {:>7}",
        "op", "ms/step", "% step", "GFLOP/s", "% peak"
    );
    let rest = 1.0 - r.ops.iter().map(|o| o.share_of_step).sum::<f64>();
    for o in &r.ops {
        let g = o.gflops.map_or("".into(), |g| format!("{g:.1}"));
        let p = o
            .share_of_peak
            .map_or("".into(), |p| format!("{:.1}", 100.0 * p));
        println!(
            "{:<24} {:>9.1} {:>7.1} {:>9} {:>7}",
            o.op,
            o.ms_per_step,
            100.0 * o.share_of_step,
            g,
            p
        );
    }
    println!(
        "{:<24} {:>9.1} {:>7.1}",
        "other (allocation, adds, optimizer)",
        rest * r.step_ms,
        100.0 * rest
    );
}
