//! The native CLI: a thin shell over the library, one file per command (its flags and its
//! run function); this file only dispatches. Results go to stdout (one JSON object with
//! `--json`), progress and diagnostics to stderr; any error is one line and exit 1.

use crate::Result;
use clap::{Parser, Subcommand};

mod bench;
mod compress;
mod eval_mc;
mod generate;
mod gpu_info;
mod info;
mod make_tiny;
mod perplexity;
mod plan;
mod profile;
mod progress;
mod shared;
mod tokenize;
mod tune;

pub(crate) use progress::{progress_bar, Progress};
pub(crate) use shared::{parse_bytes, pick_gpu, Device};

#[derive(Parser)]
#[command(
    name = "edge-llm",
    version,
    about = "Private on-device LLM fine-tuning (Edge-LLM) — native CLI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's configuration, tensors and tokenizer.
    Info(info::Args),
    /// Token ids of a text (no BOS added; special tokens in the text are recognised).
    Tokenize(tokenize::Args),
    /// Generate text after a prompt (greedy unless --temperature > 0).
    Generate(generate::Args),
    /// Perplexity over the first N tokens of a text file (no BOS; predicts tokens 2..N).
    Perplexity(perplexity::Args),
    /// Zero-shot multiple-choice accuracy (summed log-likelihood of each choice).
    EvalMc(eval_mc::Args),
    /// Tune LoRA adapters on a data file, on the GPU engine or the CPU backend (--device),
    /// in any mode (--mode). Writes a PEFT adapter and a checkpoint to --out.
    Tune(Box<tune::TuneArgs>),
    /// Print the GPU memory plan of a tuning run (every buffer, by category) without
    /// allocating anything, and whether it fits --memory-budget.
    Plan(plan::Args),
    /// Show the GPU adapter (WebGPU/Vulkan) and its limits.
    GpuInfo(gpu_info::Args),
    /// Benchmarks on the GPU.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
    /// LUC sensitivity profile: per layer, output MSE and loss change when only that layer
    /// is pruned (7 sparsities) or quantized (2/3/4/8 bits); cached, with an SVG plot.
    Profile(profile::ProfileArgs),
    /// Compress a model (pruning + quantization by a uniform, LUC or given policy) into a
    /// compressed-model file that the other commands load in place of the GGUF.
    Compress(compress::CompressCmd),
    /// Write the seeded tiny test model (same GGUF layout as the default model).
    MakeTiny(make_tiny::Args),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Info(a) => info::run(a)?,
        Cmd::Tokenize(a) => tokenize::run(a)?,
        Cmd::Generate(a) => generate::run(a)?,
        Cmd::Perplexity(a) => perplexity::run(a)?,
        Cmd::EvalMc(a) => eval_mc::run(a)?,
        Cmd::GpuInfo(a) => gpu_info::run(a)?,
        Cmd::Bench { what } => bench::run(what)?,
        Cmd::Profile(a) => profile::run(a)?,
        Cmd::Compress(a) => compress::compress_cmd(a)?,
        Cmd::MakeTiny(a) => make_tiny::run(a)?,
        Cmd::Tune(a) => return tune::tune(*a),
        Cmd::Plan(a) => plan::run(a)?,
    }
    Ok(0)
}
