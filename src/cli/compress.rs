//! `edge-llm profile` (LUC sensitivity per layer, cached) and `edge-llm compress` (a
//! policy → the compressed-model file): flags, the profile's disk cache and the output
//! around `compress::pipeline`, which the page calls too.
//!
//! Calibration defaults to 128 rows × 256 tokens (the Hessians; the Fisher diagonal takes
//! the first `--fisher-rows`, 16): minutes on a GPU, about ten on two CPU cores for
//! SmolLM2-135M, once per model and data (the profile is cached). The benchmarks use
//! 16 × 128, enough for the per-layer ranking, to keep their runs short.

use super::{pick_gpu, progress_bar, Device};
use crate::compress::file::TensorReport;
use crate::compress::pipeline::{self, CompressOptions, SparsityRule};
use crate::compress::policy::{Allocation, Pattern, Policy, PruneMethod, QuantMethod};
use crate::data::Dataset;
use crate::kernels::GpuContext;
use crate::model::ModelFile;
use crate::reference::Proj;
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
pub(crate) enum SparsityRuleArg {
    Shrunk,
    LeastError,
    Owl,
    Reference,
}

impl SparsityRuleArg {
    pub(crate) fn rule(self) -> SparsityRule {
        match self {
            SparsityRuleArg::Shrunk => SparsityRule::Shrunk,
            SparsityRuleArg::LeastError => SparsityRule::LeastError,
            SparsityRuleArg::Owl => SparsityRule::Owl,
            SparsityRuleArg::Reference => SparsityRule::Reference,
        }
    }
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
    /// Calibration rows, spread evenly over the data.
    #[arg(long, default_value_t = 128)]
    pub calib_rows: usize,
    /// Tokens per calibration row.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Rows whose loss is measured per layer and level (11 full forwards per layer each):
    /// shown in the profile's table, read by the policy only without the Fisher estimate
    /// (--fisher-rows 0); 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub loss_rows: usize,
    /// Rows whose loss gradients make the Fisher estimate of each layer's loss change (one
    /// backward each; what the LUC policy reads when present); 0 skips it.
    #[arg(long, default_value_t = 16)]
    pub fisher_rows: usize,
    /// Pruning method for the sensitivity levels (Wanda: calibration-aware, far cheaper
    /// than SparseGPT over 7 levels × every layer).
    #[arg(long, value_enum, default_value_t = MethodArg::Wanda)]
    pub profile_method: MethodArg,
    /// Directory of cached profiles (keyed by model, calibration tokens and settings).
    #[arg(long, default_value = "runs/profile")]
    pub cache_dir: PathBuf,
}

/// Where the calibration passes run (`profile` and `compress`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct DeviceArg {
    /// Where the calibration passes (Hessians, Fisher diagonal) run. auto: a hardware GPU
    /// if there is one, else the CPU reference (faster than a software Vulkan); gpu: wgpu
    /// on whatever adapter exists; cpu: reference. The profile cache does not depend on it.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
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
    /// How luc chooses per-layer sparsity: shrunk (least-error moved toward uniform as far
    /// as its estimated gain fails to hold on held-out calibration rows), least-error (least
    /// estimated loss change at the target mean), owl (outlier-weighted: blocks with more
    /// outlier weights pruned less) or reference (the paper's rule: linear in 1 −
    /// normalised sensitivity). See src/compress/allocation.rs.
    #[arg(long, value_enum, default_value_t = SparsityRuleArg::Shrunk)]
    pub sparsity_rule: SparsityRuleArg,
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

pub(super) fn io(e: impl std::fmt::Display, p: &Path) -> Error {
    Error::Io(format!("{}: {e}", p.display()))
}

/// The general text calibrated on when no `--calib` is given (fetched by scripts/setup.sh).
pub(crate) const GENERAL_CALIB: &str = "data/shakespeare/train.txt";

pub(super) fn calib_rows(file: &ModelFile, a: &CalibArgs) -> Result<Vec<Row>> {
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
    let rows = pipeline::calibration(&ds, &tok, &a.options())?;
    eprintln!(
        "calibration: {} rows, {} tokens from {}",
        rows.len(),
        rows.iter().map(|r| r.tokens.len()).sum::<usize>(),
        path.display()
    );
    Ok(rows)
}

/// Progress bars on stderr, one per stage ("calibrate", "fisher", "profile", "compress"), each
/// cleared when the next stage starts or when dropped, leaving a line with its time.
#[derive(Default)]
pub(crate) struct StageBars(Option<(String, super::Progress, web_time::Instant, usize)>);

impl StageBars {
    pub(crate) fn update(&mut self, stage: &str, done: usize, total: usize) {
        if self.0.as_ref().is_none_or(|(s, ..)| s != stage) {
            self.finish();
            let bar = progress_bar(total as u64, stage);
            self.0 = Some((stage.to_owned(), bar, web_time::Instant::now(), 0));
        }
        if let Some((_, b, _, d)) = &mut self.0 {
            b.set_position(done as u64);
            *d = done;
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some((stage, b, t0, done)) = self.0.take() {
            b.finish_and_clear();
            eprintln!("{stage}: {done} in {:.1} s", t0.elapsed().as_secs_f64());
        }
    }
}

impl Drop for StageBars {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The cached or freshly measured profile (`runs/profile/<key>.json`), with a progress
/// bar per stage.
pub(super) fn get_profile(
    file: &ModelFile,
    rows: &[Row],
    cache_dir: &Path,
    o: &CompressOptions,
    gpu: Option<&GpuContext>,
) -> Result<pipeline::Cached> {
    let opts = o.profile_options();
    let mut bars = StageBars::default();
    let r = pollster::block_on(pipeline::profile_cached(
        cache_dir,
        file,
        rows,
        &opts,
        gpu,
        &mut |stage, d, t| bars.update(stage, d, t),
    ));
    bars.finish();
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

impl CalibArgs {
    /// The calibration half of the library's options (the rest at their defaults).
    pub(super) fn options(&self) -> CompressOptions {
        CompressOptions {
            calib_rows: self.calib_rows,
            seq_len: self.seq_len,
            loss_rows: self.loss_rows,
            fisher_rows: self.fisher_rows,
            profile_method: self.profile_method.method(),
            ..CompressOptions::default()
        }
    }
}

impl CompressArgs {
    /// The library's options for these flags.
    pub(super) fn options(&self) -> CompressOptions {
        CompressOptions {
            sparsity: self.sparsity,
            bits: self.bits,
            allocation: match self.allocation {
                AllocationArg::Uniform => Allocation::Uniform,
                AllocationArg::Luc => Allocation::Luc,
            },
            method: self.method.method(),
            pattern: match self.pattern {
                PatternArg::Unstructured => Pattern::Unstructured,
                PatternArg::TwoOfFour => Pattern::TwoOfFour,
            },
            quant: match self.quant {
                QuantArg::Gptq => QuantMethod::Gptq,
                QuantArg::Rtn => QuantMethod::Rtn,
            },
            group: self.group,
            symmetric: !self.asymmetric,
            sparsity_rule: self.sparsity_rule.rule(),
            ..self.calib.options()
        }
    }
}

/// What [`compress_file`] wrote.
pub(crate) struct Compressed {
    pub policy: Policy,
    pub reports: Vec<TensorReport>,
    pub notes: Vec<String>,
    pub file_bytes: usize,
    pub original_file_bytes: usize,
    pub seconds: f64,
    /// `edge-llm compress --json`'s object (without `out`).
    pub json: serde_json::Value,
}

/// `edge-llm compress`: the compression flags and the device.
#[derive(clap::Args, Debug)]
pub(crate) struct CompressCmd {
    #[command(flatten)]
    pub args: CompressArgs,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub(crate) fn compress_cmd(cmd: CompressCmd) -> Result<()> {
    let a = cmd.args;
    let c = compress_file_on(&a, cmd.device.device)?;
    if a.json {
        let mut v = c.json;
        v["out"] = json!(a.out);
        println!("{v}");
    } else {
        let Compressed {
            policy,
            reports,
            notes,
            file_bytes,
            original_file_bytes,
            seconds: secs,
            ..
        } = c;
        let f32_bytes: usize = reports.iter().map(|r| r.f32_bytes).sum();
        let packed: usize = reports.iter().map(|r| r.packed_bytes).sum();
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

/// Compresses `a.model` by the policy the arguments give (`compress::pipeline::compress`,
/// the page's path too) and writes `a.out`; progress on stderr only. The profile LUC needs
/// comes from the disk cache (`--cache-dir`), measured and saved there on a miss. The
/// calibration passes run where `--device auto` puts them.
pub(crate) fn compress_file(a: &CompressArgs) -> Result<Compressed> {
    compress_file_on(a, Device::Auto)
}

/// [`compress_file`] with its calibration passes on `device` (picked as `tune` picks).
pub(crate) fn compress_file_on(a: &CompressArgs, device: Device) -> Result<Compressed> {
    let file = ModelFile::open(&a.model)?;
    if crate::formats::packed::is_compressed(&file.gguf) {
        return Err(Error::Invalid(format!(
            "{} is already compressed; compress the original model",
            a.model.display()
        )));
    }
    let o = a.options();
    let user = match &a.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| io(e, path))?;
            Some(
                Policy::from_json(&text, file.config.n_layers)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    // LUC profiles, so it calibrates even without --calib (on the general text).
    let luc = o.needs_profile(user.is_some());
    let rows = if a.calib.calib.is_some() || luc {
        Some(calib_rows(&file, &a.calib)?)
    } else {
        None
    };
    // The device only matters where there is calibration to run.
    let gpu = match rows {
        Some(_) => pick_gpu(device)?,
        None => None,
    };
    // A cached profile if there is one; on a miss the pipeline measures it and its
    // Hessians serve the compression too (one calibration pass), and it is saved after.
    let profile = match rows.as_deref().filter(|_| luc) {
        Some(r) => {
            let c = pipeline::cached_profile(&a.calib.cache_dir, &file, r, &o.profile_options());
            if let Some(c) = &c {
                eprintln!("profile: cached ({})", c.path.display());
            }
            c.map(|c| c.profile)
        }
        None => None,
    };
    let mut bars = StageBars::default();
    let c = pollster::block_on(pipeline::compress(
        &file,
        rows.as_deref(),
        &o,
        user,
        profile,
        gpu.as_ref(),
        &mut |s, d, t| bars.update(s, d, t),
    ));
    bars.finish();
    let c = c?;
    if let (Some(p), true) = (&c.profile, c.profile_measured) {
        let path = pipeline::save_profile(&a.calib.cache_dir, p)?;
        eprintln!(
            "profile: measured in {:.1} s, saved to {}",
            p.seconds,
            path.display()
        );
    }
    for m in &c.messages {
        eprintln!("note: {m}");
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    }
    std::fs::write(&a.out, &c.bytes).map_err(|e| io(e, &a.out))?;
    Ok(Compressed {
        json: c.to_json(),
        file_bytes: c.bytes.len(),
        original_file_bytes: c.original_file_bytes,
        seconds: c.seconds,
        policy: c.policy,
        reports: c.reports,
        notes: c.notes,
    })
}
