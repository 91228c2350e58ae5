//! `edge-llm bench compress`: the uniform and LUC policies at the same mean sparsity and
//! mean bits, beside the uncompressed model.

use super::{io, questions, write_outputs};
use crate::cli::compress::{
    AllocationArg, CalibArgs, CompressArgs, MethodArg, PatternArg, QuantArg, SparsityRuleArg,
};
use crate::cli::progress_bar;
use crate::engine::{GpuModel, GpuModelOptions, WeightFormat};
use crate::eval::{self, CpuLm, Lm, Readout};
use crate::model::ModelFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

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
    #[arg(long, value_enum, default_value_t = crate::cli::Device::Auto)]
    pub device: crate::cli::Device,
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
    std::fs::create_dir_all(&a.out).map_err(|e| io(e, &a.out))?;
    let text = std::fs::read_to_string(&a.text).map_err(|e| io(e, &a.text))?;
    let questions = questions(&a.eval_data, a.questions, a.no_eval)?;
    let ctx = crate::cli::pick_gpu(crate::cli::Device::Gpu).ok().flatten();
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
                let c = crate::cli::compress::compress_file_on(&args, a.device)?;
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
        let ppl = pollster::block_on(eval::perplexity(
            &mut CpuLm::new(&model),
            &ids,
            64,
            &mut |_, _| {},
        ))?;
        let accuracy = if questions.is_empty() {
            None
        } else {
            let pb = progress_bar(questions.len() as u64, "eval-mc");
            let r = pollster::block_on(eval::eval_mc(
                &mut CpuLm::new(&model),
                &tok,
                &questions,
                &mut |d, _, _| pb.set_position(d as u64),
            ))?;
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
                Lm::truncate(gm, 0);
                let t0 = std::time::Instant::now();
                pollster::block_on(gm.append(tokens, Readout::Head))?;
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
