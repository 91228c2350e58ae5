//! `edge-llm bench`: the kernels, the tuning modes and the compression policies, each
//! measured the same way every run (one file per benchmark).

use crate::data::Dataset;
use crate::{Error, Result};
use clap::Subcommand;
use std::path::Path;

mod compress;
mod compress_report;
mod cpu;
mod cpu_report;
mod kernels;
mod tune;
mod tune_report;

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Matmul kernels (dense f32, q8/q4/q3/q2, GGUF blocks, 2:4 and 50 % sparse) on the
    /// default model's shapes, with each kernel's speed relative to dense f32.
    Kernels(kernels::Args),
    /// The CPU engine: vanilla LoRA steps on f32 weights and on the file's own packed
    /// weights, and the frozen-prefix forward on f32, packed and LUC-compressed weights:
    /// step time, tokens/s, the work counted and its rate against the machine's FMA peak
    /// (an FMA loop), and the time per op.
    Cpu(cpu::Args),
    /// The tuning modes (vanilla, compress-then-tune, partial, edge) back to back on the
    /// same data: step time, tokens/s, GPU memory plan, validation loss, accuracy, and
    /// each mode's ratios to vanilla; writes table.md, losses.svg and results.json.
    Tune(Box<tune::BenchTuneArgs>),
    /// Uniform vs LUC compression at the same budgets, calibrated on several data sets and
    /// judged on held-out texts and zero-shot tasks: the rule chosen on development texts,
    /// reported on test texts, each figure with its spread over calibration sets.
    Compress(Box<compress::BenchCompressArgs>),
}

pub(crate) fn run(what: BenchCmd) -> Result<()> {
    match what {
        BenchCmd::Kernels(a) => kernels::run(a),
        BenchCmd::Cpu(a) => cpu::run(a),
        BenchCmd::Tune(a) => tune::bench_tune(*a),
        BenchCmd::Compress(a) => compress::bench_compress(*a),
    }
}

pub(super) fn io(e: impl std::fmt::Display, p: &Path) -> Error {
    Error::Io(format!("{}: {e}", p.display()))
}

/// Writes each (file name, bytes) into `dir`.
pub(super) fn write_outputs<const N: usize>(dir: &Path, files: [(&str, Vec<u8>); N]) -> Result<()> {
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| io(e, &p))?;
    }
    Ok(())
}

/// The first `n` (all by default) multiple-choice questions of `path`; none with `skip`.
pub(super) fn questions(
    path: &Path,
    n: Option<usize>,
    skip: bool,
) -> Result<Vec<crate::data::McQuestion>> {
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
