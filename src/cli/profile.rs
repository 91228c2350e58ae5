//! `edge-llm profile`: the LUC sensitivity profile, cached under `--cache-dir`, with its plot.

use super::compress::{calib_rows, get_profile, io, CalibArgs, DeviceArg};
use super::pick_gpu;
use crate::compress::pipeline::CompressOptions;
use crate::compress::{allocation, profile};
use crate::model::ModelFile;
use crate::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub(crate) struct ProfileArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Quantization group of the width levels: give `compress`'s --group, so that its
    /// LUC finds this profile in the cache.
    #[arg(long, default_value_t = 32)]
    pub group: usize,
    /// Asymmetric width levels, as `compress --asymmetric` quantizes.
    #[arg(long)]
    pub asymmetric: bool,
    /// The budget at which the expected gain of LUC over uniform is reported (mean
    /// sparsity, mean bits), as `compress` would be given.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    #[arg(long, default_value_t = 4.0)]
    pub bits: f64,
    /// Write the per-layer plot here (default: beside the cached JSON, .svg).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(a: ProfileArgs) -> Result<()> {
    let file = ModelFile::open(&a.model)?;
    let rows = calib_rows(&file, &a.calib)?;
    let o = CompressOptions {
        group: a.group,
        symmetric: !a.asymmetric,
        ..a.calib.options()
    };
    let gpu = pick_gpu(a.device.device)?;
    let c = get_profile(&file, &rows, &a.calib.cache_dir, &o, gpu.as_ref())?;
    let svg = a.svg.unwrap_or_else(|| c.path.with_extension("svg"));
    std::fs::write(&svg, c.profile.to_svg()).map_err(|e| io(e, &svg))?;
    let gain = (a.sparsity > 0.0)
        .then(|| allocation::expected_gain(&c.profile, a.sparsity, a.bits))
        .transpose()?;
    if a.json {
        println!(
            "{}",
            json!({"cached": c.cached, "cache": c.path, "svg": svg, "profile": c.profile,
                   "prune_sensitivity": c.profile.prune_sensitivity(),
                   "quant_sensitivity": c.profile.quant_sensitivity(),
                   "expected_gain": gain})
        );
    } else {
        print!("{}", c.profile.table());
        if let Some(b) = c.profile.base_loss {
            println!(
                "base loss {b:.4} on {} rows; dL = loss change with only that layer compressed",
                c.profile.options.loss_rows.min(c.profile.calib_rows)
            );
        }
        let source = match c.profile.error_source() {
            profile::ErrorSource::Fisher => format!(
                "the Fisher estimate of the loss change (F columns; {} rows)",
                c.profile.options.fisher_rows.min(c.profile.calib_rows)
            ),
            profile::ErrorSource::Dloss => "the measured loss change".into(),
            profile::ErrorSource::Mse => "the output MSE".into(),
        };
        println!("columns p*/q*: output MSE; S_prune, S_quant and LUC read {source}");
        if let Some(g) = &gain {
            println!(
                "at mean sparsity {} and {} bits: {}",
                a.sparsity,
                a.bits,
                g.summary()
            );
        }
        println!("plot: {}", svg.display());
    }
    Ok(())
}
