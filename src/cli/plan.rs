//! `edge-llm plan`: the GPU memory plan of a tuning run on this machine's adapter (or a
//! given binding limit), fitted to a budget, and the CPU engine's host plan for the same
//! run (its frozen weights as the file stores them, or f32 with `--f32`); nothing is
//! allocated.

use super::parse_bytes;
use super::tune::parse_targets;
use crate::engine::{fit_budget, TrainOptions};
use crate::model::{ModelFile, Storage};
use crate::reference::{Lora, LoraConfig};
use crate::train::host_plan;
use crate::tune::TuneOptions;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = TuneOptions::default().seq_len)]
    seq_len: usize,
    #[arg(long, default_value_t = TuneOptions::default().lora_rank)]
    lora_rank: usize,
    #[arg(long, default_value = "all")]
    lora_targets: String,
    /// Bytes (K, M, G suffixes are KiB, MiB, GiB).
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Plan for this max_storage_buffer_binding_size instead of this machine's adapter
    /// (e.g. 128M, the WebGPU default a browser gives).
    #[arg(long, value_parser = parse_bytes)]
    binding_limit: Option<u64>,
    /// Dense f32 base weights instead of the packed quantized blocks (both engines).
    #[arg(long)]
    f32: bool,
    #[arg(long)]
    recompute: bool,
    /// How many of the largest buffers to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        model,
        seq_len,
        lora_rank,
        lora_targets,
        memory_budget,
        binding_limit,
        f32,
        recompute,
        top,
        json,
    } = a;
    let lora = LoraConfig {
        rank: lora_rank,
        targets: parse_targets(&lora_targets)?,
        ..Default::default()
    };
    let opts = TrainOptions {
        format: if f32 {
            crate::engine::WeightFormat::F32
        } else {
            crate::engine::WeightFormat::Packed
        },
        seq_len,
        recompute,
        ..Default::default()
    };
    print_plan(
        &model,
        &lora,
        &opts,
        memory_budget,
        binding_limit,
        top,
        json,
    )?;
    Ok(())
}

/// `edge-llm plan`: the training memory plan for `model` on this machine's adapter (or the
/// given binding limit), fitted to `budget`; nothing is allocated.
fn print_plan(
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
    // The CPU engine's plan for the same run (every block, one row at a time).
    let storage = match opts.format {
        crate::engine::WeightFormat::F32 => Storage::F32,
        _ => Storage::File,
    };
    let adapters = Lora::<f32>::new(&file.config, lora.clone(), 0);
    let n = file.config.n_layers;
    let cpu = host_plan(&file, storage, &adapters, fit.options.seq_len, n, 0);
    if json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Io(e.to_string()))?;
        v["adapter"] = adapter.clone().into();
        v["cpu"] = serde_json::to_value(&cpu).map_err(|e| Error::Io(e.to_string()))?;
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
    println!("{cpu}");
    Ok(())
}
