//! `edge-llm profile` (LUC sensitivity per layer, cached) and `edge-llm compress` (a
//! policy → the compressed-model file). See src/compress/profile.rs and file.rs.
//!
//! Calibration defaults are small on purpose: the 128 rows × 256 tokens costs
//! about 128 training forwards plus 12 TFLOP of Hessian products on SmolLM2-135M, tens of
//! minutes on two CPU cores; 16 × 128 keeps a profile to minutes and is enough for the
//! per-layer ranking LUC needs. `--calib-rows 128 --seq-len 256` gives the setting.

use super::progress_bar;
use crate::compress::file::{self, TensorReport};
use crate::compress::policy::{
    allocate_bits, sparsity_from_sensitivity, Allocation, Pattern, Policy, PruneMethod,
    QuantMethod, MAX_LAYER_SPARSITY, MIN_LAYER_SPARSITY,
};
use crate::compress::profile::{self, calibration_rows, collect_hessians, ProfileOptions};
use crate::data::Dataset;
use crate::model::ModelFile;
use crate::reference::{Proj, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::Row;
use crate::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MethodArg {
    Sparsegpt,
    Wanda,
    Magnitude,
}

impl MethodArg {
    fn method(self) -> PruneMethod {
        match self {
            MethodArg::Sparsegpt => PruneMethod::SparseGpt,
            MethodArg::Wanda => PruneMethod::Wanda,
            MethodArg::Magnitude => PruneMethod::Magnitude,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PatternArg {
    Unstructured,
    #[value(name = "2:4")]
    TwoOfFour,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AllocationArg {
    Uniform,
    Luc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum QuantArg {
    Gptq,
    Rtn,
}

/// Calibration settings shared by both commands.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct CalibArgs {
    /// Calibration text (plain text, instruction or multiple-choice JSONL): the user's
    /// training data (default: the general text data/shakespeare/train.txt).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration rows, spread evenly over the data (the default is 128; see the
    /// module doc for why the default is smaller).
    #[arg(long, default_value_t = 16)]
    pub calib_rows: usize,
    /// Tokens per calibration row (the default is 256).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Rows whose loss is measured per layer and level (11 full forwards per layer each);
    /// 0 skips Δloss.
    #[arg(long, default_value_t = 2)]
    pub loss_rows: usize,
    /// Pruning method for the sensitivity levels (Wanda: calibration-aware, far cheaper
    /// than SparseGPT over 7 levels × every layer).
    #[arg(long, value_enum, default_value_t = MethodArg::Wanda)]
    pub profile_method: MethodArg,
    /// Directory of cached profiles (keyed by model, calibration tokens and settings).
    #[arg(long, default_value = "runs/profile")]
    pub cache_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ProfileArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Write the per-layer plot here (default: beside the cached JSON, .svg).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CompressArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Target mean sparsity (2:4: 0.5 or 0).
    #[arg(long, default_value_t = 0.0)]
    pub sparsity: f64,
    /// Code width (uniform) or target mean bits per weight (luc): 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4.0)]
    pub bits: f64,
    /// luc: per-layer sparsity and width from the profile (calibrated on --calib, or the
    /// general text when none is given); uniform: every layer alike.
    #[arg(long, value_enum, default_value_t = AllocationArg::Luc)]
    pub allocation: AllocationArg,
    /// A policy JSON file (overrides --sparsity, --bits, --allocation and the method
    /// flags; see src/compress/policy.rs).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = MethodArg::Sparsegpt)]
    pub method: MethodArg,
    #[arg(long, value_enum, default_value_t = PatternArg::Unstructured)]
    pub pattern: PatternArg,
    /// Dense-layer quantization: GPTQ (RTN kept where it is better) or round-to-nearest.
    #[arg(long, value_enum, default_value_t = QuantArg::Gptq)]
    pub quant: QuantArg,
    /// Columns per quantization scale: 32, 64 or 128.
    #[arg(long, default_value_t = 32)]
    pub group: usize,
    /// Asymmetric groups (scale and minimum, 2^b levels) instead of symmetric (scale only,
    /// 2^b − 1 levels). From a Q4_1 model, 4-bit asymmetric groups of 32 hold its grid
    /// exactly.
    #[arg(long)]
    pub asymmetric: bool,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn io(e: impl std::fmt::Display, p: &Path) -> Error {
    Error::Io(format!("{}: {e}", p.display()))
}

/// The general text calibrated on when no `--calib` is given (fetched by scripts/setup.sh).
pub(crate) const GENERAL_CALIB: &str = "data/shakespeare/train.txt";

fn calib_rows(file: &ModelFile, a: &CalibArgs) -> Result<Vec<Row>> {
    let general = PathBuf::from(GENERAL_CALIB);
    let path = match &a.calib {
        Some(p) => p,
        None if general.exists() => {
            eprintln!("calibration: no --calib given; using the general text {GENERAL_CALIB}");
            &general
        }
        None => {
            return Err(Error::Invalid(format!(
                "calibration text needed: --calib FILE (e.g. your training data; \
                 {GENERAL_CALIB}, the default, is missing: run scripts/setup.sh), or \
                 --allocation uniform"
            )))
        }
    };
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let ds = Dataset::load(path)?;
    let rows = calibration_rows(&ds, &tok, a.calib_rows, a.seq_len)?;
    eprintln!(
        "calibration: {} rows, {} tokens from {}",
        rows.len(),
        rows.iter().map(|r| r.tokens.len()).sum::<usize>(),
        path.display()
    );
    Ok(rows)
}

/// The cached or freshly measured profile, with a progress bar per stage.
fn get_profile(file: &ModelFile, rows: &[Row], a: &CalibArgs) -> Result<profile::Cached> {
    let opts = ProfileOptions {
        method: a.profile_method.method(),
        loss_rows: a.loss_rows,
        ..ProfileOptions::default()
    };
    let mut bar: Option<(String, super::Progress)> = None;
    let r = profile::profile_cached(&a.cache_dir, file, rows, &opts, &mut |stage, d, t| {
        if bar.as_ref().is_none_or(|(s, _)| s != stage) {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
            bar = Some((stage.to_owned(), progress_bar(t as u64, stage)));
        }
        if let Some((_, b)) = &bar {
            b.set_position(d as u64);
        }
    });
    if let Some((_, b)) = bar {
        b.finish_and_clear();
    }
    let c = r?;
    if c.cached {
        eprintln!("profile: cached ({})", c.path.display());
    } else {
        eprintln!(
            "profile: measured in {:.1} s, saved to {}",
            c.profile.seconds,
            c.path.display()
        );
    }
    Ok(c)
}

pub(crate) fn profile_cmd(a: ProfileArgs) -> Result<()> {
    let file = ModelFile::open(&a.model)?;
    let rows = calib_rows(&file, &a.calib)?;
    let c = get_profile(&file, &rows, &a.calib)?;
    let svg = a.svg.unwrap_or_else(|| c.path.with_extension("svg"));
    std::fs::write(&svg, c.profile.to_svg()).map_err(|e| io(e, &svg))?;
    if a.json {
        println!(
            "{}",
            json!({"cached": c.cached, "cache": c.path, "svg": svg, "profile": c.profile,
                   "prune_sensitivity": c.profile.prune_sensitivity(),
                   "quant_sensitivity": c.profile.quant_sensitivity()})
        );
    } else {
        print!("{}", c.profile.table());
        if let Some(b) = c.profile.base_loss {
            println!(
                "base loss {b:.4} on {} rows; dL = loss change with only that layer compressed",
                c.profile.options.loss_rows.min(c.profile.calib_rows)
            );
        }
        println!("plot: {}", svg.display());
    }
    Ok(())
}

/// Weights per layer (all 7 projections), for the bit budget.
fn layer_counts(c: &crate::model::LlamaConfig) -> Vec<usize> {
    let per: usize = Proj::ALL
        .iter()
        .map(|p| {
            let (k, n) = p.shape(c);
            k * n
        })
        .sum();
    vec![per; c.n_layers]
}

fn make_policy(a: &CompressArgs, file: &ModelFile, rows: Option<&[Row]>) -> Result<Policy> {
    let n = file.config.n_layers;
    if let Some(path) = &a.policy {
        let text = std::fs::read_to_string(path).map_err(|e| io(e, path))?;
        return Policy::from_json(&text, n)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())));
    }
    let pattern = match a.pattern {
        PatternArg::Unstructured => Pattern::Unstructured,
        PatternArg::TwoOfFour => Pattern::TwoOfFour,
    };
    let (sparsity, bits) = match a.allocation {
        AllocationArg::Uniform => {
            if a.bits.fract() != 0.0 {
                return Err(Error::Invalid(format!(
                    "--bits {} with uniform allocation must be 2, 3, 4 or 8",
                    a.bits
                )));
            }
            (vec![a.sparsity; n], vec![a.bits as u32; n])
        }
        AllocationArg::Luc => {
            let rows = rows.ok_or_else(|| {
                Error::Invalid("--allocation luc needs --calib for the profile".into())
            })?;
            let p = get_profile(file, rows, &a.calib)?.profile;
            let sparsity = if pattern == Pattern::TwoOfFour {
                eprintln!("2:4: every layer at 0.5 sparsity; LUC allocates bits only");
                vec![a.sparsity; n]
            } else {
                sparsity_from_sensitivity(
                    &p.prune_sensitivity(),
                    a.sparsity,
                    MIN_LAYER_SPARSITY,
                    MAX_LAYER_SPARSITY,
                )?
            };
            let bits = allocate_bits(&p.quant_errors(), &layer_counts(&file.config), a.bits)?;
            (sparsity, bits)
        }
    };
    let mut p = Policy::from_layers(
        &sparsity,
        &bits,
        match a.allocation {
            AllocationArg::Uniform => Allocation::Uniform,
            AllocationArg::Luc => Allocation::Luc,
        },
    )?;
    p.pattern = pattern;
    p.prune = a.method.method();
    p.quant = match a.quant {
        QuantArg::Gptq => QuantMethod::Gptq,
        QuantArg::Rtn => QuantMethod::Rtn,
    };
    p.group = a.group;
    p.symmetric = !a.asymmetric;
    p.validate(n)?;
    Ok(p)
}

/// What [`compress_file`] wrote.
pub(crate) struct Compressed {
    pub policy: Policy,
    pub reports: Vec<TensorReport>,
    pub file_bytes: usize,
    pub original_file_bytes: usize,
    pub seconds: f64,
}

pub(crate) fn compress_cmd(a: CompressArgs) -> Result<()> {
    let Compressed {
        policy,
        reports,
        file_bytes,
        original_file_bytes,
        seconds: secs,
    } = compress_file(&a)?;
    let f32_bytes: usize = reports.iter().map(|r| r.f32_bytes).sum();
    let packed: usize = reports.iter().map(|r| r.packed_bytes).sum();
    let notes = notes(&policy, &reports);
    if a.json {
        println!(
            "{}",
            json!({"out": a.out, "policy": policy, "file_bytes": file_bytes,
                   "original_file_bytes": original_file_bytes, "projection_f32_bytes": f32_bytes,
                   "projection_packed_bytes": packed, "seconds": secs, "notes": notes,
                   "tensors": reports})
        );
    } else {
        println!("{}", policy.to_json());
        println!("layer sparsity bits format");
        for (l, lp) in policy.layers.iter().enumerate() {
            let r = &reports[l * Proj::ALL.len()];
            let fmt = match &r.values {
                Some(v) => format!("{} ({v} values)", r.format),
                None => format!("{} {}-bit", r.format, lp.bits),
            };
            println!("{l:>5} {:>8.3} {:>4} {fmt}", lp.sparsity, lp.bits);
        }
        for n in &notes {
            println!("note: {n}");
        }
        println!(
            "projections: {:.1} MiB f32 → {:.1} MiB packed ({:.1} %); file {:.1} MiB (original {:.1} MiB); {:.1} s",
            f32_bytes as f64 / 1048576.0,
            packed as f64 / 1048576.0,
            100.0 * packed as f64 / f32_bytes as f64,
            file_bytes as f64 / 1048576.0,
            original_file_bytes as f64 / 1048576.0,
            secs
        );
        println!("wrote {}", a.out.display());
    }
    Ok(())
}

/// Compresses `a.model` by the policy the arguments give and writes `a.out`; progress on
/// stderr only.
pub(crate) fn compress_file(a: &CompressArgs) -> Result<Compressed> {
    let file = ModelFile::open(&a.model)?;
    if file::is_compressed(&file.gguf) {
        return Err(Error::Invalid(format!(
            "{} is already compressed; compress the original model",
            a.model.display()
        )));
    }
    // LUC profiles, so it calibrates even without --calib (on the general text).
    let luc = a.policy.is_none() && a.allocation == AllocationArg::Luc;
    let rows = if a.calib.calib.is_some() || luc {
        Some(calib_rows(&file, &a.calib)?)
    } else {
        None
    };
    let policy = make_policy(a, &file, rows.as_deref())?;
    if rows.is_none() && policy.quant == QuantMethod::Gptq {
        eprintln!("note: no --calib, so dense layers are quantized by round-to-nearest, not GPTQ");
    }
    let model = Transformer::new(file.weights()?);
    // Hessians only where a stage reads them: SparseGPT/Wanda pruning or GPTQ.
    let needs_hess = policy.quant == QuantMethod::Gptq
        || (policy.prune != PruneMethod::Magnitude
            && policy.layers.iter().any(|l| l.sparsity > 0.0));
    let hess = match rows.as_ref().filter(|_| needs_hess) {
        Some(r) => {
            let pb = progress_bar(r.len() as u64, "calibrate");
            let h = collect_hessians(&model, r, &mut |d, _| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            Some(h)
        }
        None => None,
    };
    let total = (file.config.n_layers * Proj::ALL.len()) as u64;
    let pb = progress_bar(total, "compress");
    let t0 = std::time::Instant::now();
    let (tensors, reports) =
        file::compress_model(&model.w, hess.as_deref(), &policy, &mut |d, _| {
            pb.set_position(d as u64)
        })?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let bytes = file::write(&file.gguf, &file.bytes, &policy, &tensors)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    }
    std::fs::write(&a.out, &bytes).map_err(|e| io(e, &a.out))?;
    Ok(Compressed {
        policy,
        reports,
        file_bytes: bytes.len(),
        original_file_bytes: file.bytes.len(),
        seconds: secs,
    })
}

/// What the output should say about choices the formats forced.
fn notes(policy: &Policy, reports: &[TensorReport]) -> Vec<String> {
    let mut notes = Vec::new();
    let sparse_q: Vec<usize> = (0..policy.layers.len())
        .filter(|&l| policy.layers[l].sparsity > 0.0)
        .collect();
    if !sparse_q.is_empty() {
        notes.push(format!(
            "{} sparse layer(s): no kernel reads sparse and packed-quantized weights jointly, so \
             their kept values are stored int8 (8 bits) or int4 (2/3/4 bits; 2 and 3 round up \
             to 4) with per-64-column scales",
            sparse_q.len()
        ));
    }
    let g: Vec<bool> = reports.iter().filter_map(|r| r.gptq).collect();
    if !g.is_empty() && policy.quant == QuantMethod::Gptq {
        let won = g.iter().filter(|&&w| w).count();
        notes.push(format!(
            "GPTQ beat round-to-nearest on {won} of {} dense projections (RTN kept on the rest)",
            g.len()
        ));
    }
    notes
}
