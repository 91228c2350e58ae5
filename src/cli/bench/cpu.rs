//! `edge-llm bench cpu`: the CPU engine against the machine's FMA peak, in one run:
//!
//! * vanilla LoRA steps on the model dequantized to f32 (the top-level figures, as before)
//!   and on the file's own weights held packed (Q4_1/Q8_0 blocks read in place), one step
//!   of each in turn so that the machine's load falls on both alike;
//! * the frozen-prefix forward (every block, no head) over the same rows on the f32
//!   model, on its packed file weights, and on a LUC-compressed model (mean sparsity 0.5,
//!   4 bits; made and cached as `bench tune` makes its edge model when absent);
//! * token-by-token decoding with the KV cache (every block, the final norm and the head:
//!   what chat and the choices of `eval-mc` run) on the same three models.
//!
//! The vanilla runs take `--warmup` steps each (not counted), then `--steps` optimizer steps
//! with the per-op profile on; the forward passes run in rounds (the best counts). Reports: mean step time and tokens/s; the floating-point work as the ops
//! counted it (matrix products and attention from their shapes, dense-equivalent for the
//! sparse formats) and the rate it was done at; the FMA peak measured by an FMA loop on
//! every thread; each rate's share of that peak; and, for the f32 step, the time per op.

use super::cpu_report::{print_table, Decode, Forward, OpShare, Report, Vanilla};
use crate::cli::compress::{
    compress_file, AllocationArg, CalibArgs, CompressArgs, MethodArg, PatternArg, QuantArg,
    SparsityRuleArg,
};
use crate::cli::progress_bar;
use crate::cpu::{par, peak, profile};
use crate::data::Dataset;
use crate::model::{ModelFile, Storage, Weights};
use crate::reference::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::{self, Prepared, StepReport};
use crate::tune::{self as run, TuneOptions, TuneSettings};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long, default_value = "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value = "data/arc-easy/train.jsonl")]
    data: PathBuf,
    /// Timed optimizer steps (each vanilla run).
    #[arg(long, default_value_t = 6)]
    steps: u64,
    /// Steps run first and not timed (thread pool, allocator and caches warm up).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Rows of the forward comparison (each model runs them once untimed, then in turn
    /// with the others for --forward-rounds rounds; the best round counts).
    #[arg(long, default_value_t = 4)]
    forward_rows: usize,
    #[arg(long, default_value_t = 3)]
    forward_rounds: usize,
    /// Tokens decoded one at a time (after a prompt of as many) per model and round of
    /// the decoding comparison.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// The LUC-compressed model of the forward comparison; made from --model (LUC, mean
    /// sparsity 0.5, 4 bits, RTN, as `bench tune` makes its edge model) when absent.
    #[arg(long, default_value = "runs/bench-tune/luc-s0.5-b4-Rtn.gguf")]
    luc_model: PathBuf,
    /// Skip the forward comparison (and making the LUC model).
    #[arg(long)]
    no_forward: bool,
    /// Seconds of FMA loop for the peak.
    #[arg(long, default_value_t = 1.0)]
    peak_s: f64,
    #[arg(long)]
    json: bool,
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
    let (peak, isa) = peak::fma_peak(a.peak_s);
    let (f32_run, file_run, ops) = vanilla(&a, &file, &settings, &data, peak)?;
    let (forward, decode) = if a.no_forward {
        (Vec::new(), Vec::new())
    } else {
        let luc = luc_model(&a)?;
        let rows: Vec<&[u32]> = data
            .train
            .iter()
            .take(a.forward_rows.max(1))
            .map(|r| r.tokens.as_slice())
            .collect();
        let models = [
            ("f32", &file, Storage::F32),
            ("file", &file, Storage::File),
            ("luc", &luc, Storage::File),
        ];
        let built: Vec<Transformer<f32>> = models
            .iter()
            .map(|(_, f, s)| f.weights_as(*s).map(Transformer::new))
            .collect::<Result<_>>()?;
        let names: Vec<&str> = models.iter().map(|m| m.0).collect();
        let rounds = a.forward_rounds.max(1);
        (
            forward_passes(&names, &built, &rows, rounds, peak)?,
            decode_passes(&names, &built, rows[0], a.decode_tokens.max(1), rounds)?,
        )
    };
    let r = Report {
        threads: par::threads(),
        gemm_kernel: crate::cpu::gemm::best_kernel().name,
        steps: f32_run.steps,
        tokens_per_step: f32_run.tokens_per_step,
        step_ms: f32_run.step_ms,
        tokens_per_s: f32_run.tokens_per_s,
        gflop_per_step: f32_run.gflop_per_step,
        gflops: f32_run.gflops,
        peak_gflops: peak,
        peak_isa: isa,
        share_of_peak: f32_run.share_of_peak,
        tokens_per_s_at_peak: f32_run.tokens_per_s * peak / f32_run.gflops.max(1e-12),
        ops,
        weight_bytes: f32_run.weight_bytes,
        file_weights: Vanilla {
            speed_vs_f32: file_run.tokens_per_s / f32_run.tokens_per_s,
            ..file_run
        },
        forward,
        decode,
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

/// The formats a model's matrices are held in, with counts ("Q4_1 ×186, Q8_0 ×25").
fn formats(w: &Weights<f32>) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for m in w.matrices() {
        let name = m.packed().map_or("f32".into(), |p| p.describe());
        match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => seen.push((name, 1)),
        }
    }
    let parts: Vec<String> = seen.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
    parts.join(", ")
}

/// Per-op totals of the profile (seconds, flops), added into `into`.
fn add_profile(into: &mut Vec<(profile::Op, f64, u64)>) {
    for (i, (op, secs, _, flops)) in profile::totals().into_iter().enumerate() {
        match into.get_mut(i) {
            Some(t) => {
                t.1 += secs;
                t.2 += flops;
            }
            None => into.push((op, secs, flops)),
        }
    }
}

/// Vanilla LoRA steps on the CPU backend with the weights in f32 and as the file stores
/// them, the two runs' steps interleaved (one f32 step, one packed step, …) so that a
/// change in the machine's load falls on both alike; the per-op shares of the f32 run.
fn vanilla(
    a: &Args,
    file: &ModelFile,
    settings: &TuneSettings,
    data: &Prepared,
    peak: f64,
) -> Result<(Vanilla, Vanilla, Vec<OpShare>)> {
    let mut runs = Vec::new();
    for storage in [Storage::F32, Storage::File] {
        let make = |s: &TuneSettings| run::cpu_backend_as(file, s, storage);
        runs.push(run::build(settings, data.clone(), make)?);
    }
    let pb = progress_bar(2 * (a.warmup + a.steps), "bench cpu (f32 and packed steps)");
    let mut reports: [Vec<StepReport>; 2] = [Vec::new(), Vec::new()];
    let mut totals: [Vec<(profile::Op, f64, u64)>; 2] = [Vec::new(), Vec::new()];
    let mut done = 0;
    for s in 0..a.warmup + a.steps {
        let timed = s >= a.warmup;
        for (i, trainer) in runs.iter_mut().enumerate() {
            profile::reset();
            profile::enable(timed);
            pollster::block_on(trainer.run(1, &mut |rep| {
                if timed {
                    reports[i].push(rep.clone());
                }
            }))?;
            profile::enable(false);
            if timed {
                add_profile(&mut totals[i]);
            }
            done += 1;
            pb.set_position(done);
        }
    }
    pb.finish_and_clear();
    let mut rows = Vec::new();
    for (i, trainer) in runs.iter().enumerate() {
        let reports = &reports[i];
        if reports.is_empty() {
            return Err(Error::Data("no step ran (too little data?)".into()));
        }
        let n = reports.len() as f64;
        let secs: f64 = reports
            .iter()
            .map(|r| r.tokens as f64 / r.tokens_per_s.max(1e-12))
            .sum();
        let tokens: f64 = reports.iter().map(|r| r.tokens as f64).sum();
        let flops: f64 = totals[i].iter().map(|t| t.2 as f64).sum();
        let gflops = flops / secs / 1e9;
        rows.push(Vanilla {
            weights: formats(&trainer.backend.model.w),
            weight_bytes: trainer.backend.model.w.bytes() as u64,
            steps: reports.len() as u64,
            tokens_per_step: tokens / n,
            step_ms: 1e3 * secs / n,
            tokens_per_s: tokens / secs,
            gflop_per_step: flops / n / 1e9,
            gflops,
            share_of_peak: gflops / peak,
            speed_vs_f32: 1.0,
        });
    }
    let (n, step_s) = (rows[0].steps as f64, rows[0].step_ms / 1e3);
    let ops = totals[0]
        .iter()
        .map(|&(op, s, f)| {
            let g = (f > 0 && s > 0.0).then(|| f as f64 / s / 1e9);
            OpShare {
                op: op.name(),
                ms_per_step: 1e3 * s / n,
                share_of_step: s / n / step_s,
                gflops: g,
                share_of_peak: g.map(|g| g / peak),
            }
        })
        .collect();
    let file_row = rows.pop().expect("two runs");
    let f32_row = rows.pop().expect("two runs");
    Ok((f32_row, file_row, ops))
}

/// The frozen-prefix forward (every block, no final norm or head) over `rows` on each
/// model: one untimed pass each, then `rounds` rounds of one timed
/// pass per model in turn; each model's best round is reported (the one least disturbed
/// by other work on the machine), its speed relative to the first model's.
fn forward_passes(
    names: &[&str],
    built: &[Transformer<f32>],
    rows: &[&[u32]],
    rounds: usize,
    peak: f64,
) -> Result<Vec<Forward>> {
    let pass = |m: &Transformer<f32>| {
        let n = m.w.config.n_layers;
        for r in rows {
            std::hint::black_box(m.forward_blocks(r, None, 0, n));
        }
    };
    built.iter().for_each(pass);
    let mut best = vec![(f64::INFINITY, 0f64); built.len()];
    let pb = progress_bar((rounds * built.len()) as u64, "bench cpu (forward)");
    for round in 0..rounds {
        for (i, m) in built.iter().enumerate() {
            profile::reset();
            profile::enable(true);
            let t0 = web_time::Instant::now();
            pass(m);
            let secs = t0.elapsed().as_secs_f64();
            profile::enable(false);
            let flops: f64 = profile::totals().iter().map(|t| t.3 as f64).sum();
            if secs < best[i].0 {
                best[i] = (secs, flops);
            }
            pb.set_position((round * built.len() + i + 1) as u64);
        }
    }
    pb.finish_and_clear();
    let tokens: usize = rows.iter().map(|r| r.len()).sum();
    let mut out: Vec<Forward> = names
        .iter()
        .zip(built)
        .zip(&best)
        .map(|((name, m), &(secs, flops))| {
            let gflops = flops / secs / 1e9;
            Forward {
                model: name.to_string(),
                weights: formats(&m.w),
                weight_bytes: m.w.bytes() as u64,
                rows: rows.len(),
                tokens,
                ms: 1e3 * secs,
                tokens_per_s: tokens as f64 / secs,
                gflop: flops / 1e9,
                gflops,
                share_of_peak: gflops / peak,
                speed_vs_f32: 1.0,
            }
        })
        .collect();
    let base = out[0].tokens_per_s;
    for f in &mut out {
        f.speed_vs_f32 = f.tokens_per_s / base;
    }
    Ok(out)
}

/// Decoding one token at a time with the KV cache, through the head, on each model: the
/// first `tokens` of `row` as the prompt (untimed), then its next `tokens` one by one
/// (timed; tokens of the row, not sampled, so every model decodes the same). Models take
/// turns for `rounds` rounds; each one's best round counts.
fn decode_passes(
    names: &[&str],
    built: &[Transformer<f32>],
    row: &[u32],
    tokens: usize,
    rounds: usize,
) -> Result<Vec<Decode>> {
    if row.len() < 2 * tokens {
        return Err(Error::Data(format!(
            "decoding {tokens} tokens after a prompt of as many needs a row of {} tokens; \
             the first has {}",
            2 * tokens,
            row.len()
        )));
    }
    let (prompt, next) = (&row[..tokens], &row[tokens..2 * tokens]);
    let mut best = vec![f64::INFINITY; built.len()];
    let pb = progress_bar((rounds * built.len()) as u64, "bench cpu (decoding)");
    for round in 0..rounds {
        for (i, m) in built.iter().enumerate() {
            let mut cache = KvCache::new(m.w.config.n_layers);
            std::hint::black_box(m.logits(prompt, Some(&mut cache)));
            let t0 = web_time::Instant::now();
            for &t in next {
                std::hint::black_box(m.logits(&[t], Some(&mut cache)));
            }
            best[i] = best[i].min(t0.elapsed().as_secs_f64());
            pb.set_position((round * built.len() + i + 1) as u64);
        }
    }
    pb.finish_and_clear();
    let base = tokens as f64 / best[0];
    Ok(names
        .iter()
        .zip(built)
        .zip(&best)
        .map(|((name, m), &secs)| {
            let tokens_per_s = tokens as f64 / secs;
            let bytes = m.w.bytes() as u64;
            Decode {
                model: name.to_string(),
                weight_bytes: bytes,
                tokens,
                ms_per_token: 1e3 * secs / tokens as f64,
                tokens_per_s,
                weight_gbps: bytes as f64 * tokens_per_s / 1e9,
                speed_vs_f32: tokens_per_s / base,
            }
        })
        .collect())
}

/// The LUC model of the forward comparison: `--luc-model` when it exists, else made from
/// `--model` with `bench tune`'s edge settings (calibrated on `--data`) and kept there.
fn luc_model(a: &Args) -> Result<ModelFile> {
    let out = &a.luc_model;
    if !out.exists() {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        }
        eprintln!(
            "LUC model: making {} (mean sparsity 0.5, 4 bits)",
            out.display()
        );
        let args = CompressArgs {
            model: a.model.clone(),
            calib: CalibArgs {
                calib: Some(a.data.clone()),
                calib_rows: 16,
                seq_len: 128,
                loss_rows: 0,
                fisher_rows: 16,
                profile_method: MethodArg::Wanda,
                cache_dir: PathBuf::from("runs/profile"),
            },
            sparsity: 0.5,
            bits: 4.0,
            allocation: AllocationArg::Luc,
            sparsity_rule: SparsityRuleArg::Shrunk,
            policy: None,
            method: MethodArg::Sparsegpt,
            pattern: PatternArg::Unstructured,
            quant: QuantArg::Rtn,
            group: 32,
            asymmetric: true,
            out: out.clone(),
            json: false,
        };
        compress_file(&args)?;
    }
    open_compressed(out)
}

fn open_compressed(p: &Path) -> Result<ModelFile> {
    let f = ModelFile::open(p)?;
    if !crate::formats::packed::is_compressed(&f.gguf) {
        return Err(Error::Invalid(format!(
            "{} is not a compressed model (edge-llm compress makes one)",
            p.display()
        )));
    }
    Ok(f)
}
