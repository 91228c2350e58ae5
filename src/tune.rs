//! Tuning runs, built one way for every front-end (`edge-llm tune`, `edge-llm bench tune`
//! and the wasm API): [`TuneOptions`] → [`TuneSettings`] for the model (its mode's exits and
//! layer schedule) → the GPU memory plan fitted to a budget ([`fit_memory`]) → a backend
//! ([`gpu_backend`] or [`cpu_backend`]) → the [`Trainer`] ([`build`]).
//!
//! It sits above the engine and the training core, which it joins; the front-ends only add
//! what is theirs (files and progress for the CLI, JSON for the page).

use crate::engine::train::fit_budget_windows;
use crate::engine::{Fit, GpuTrainer, TrainOptions};
use crate::kernels::GpuContext;
use crate::model::{ModelFile, Storage};
use crate::train::cpu::initial_adapters;
use crate::train::{Backend, CpuBackend, HostPlan, Prepared, Trainer};
use crate::{Error, Result};

pub use crate::train::{TuneOptions, TuneSettings};

/// The engine options of a run with `s`'s row length, and layer recompute as asked.
pub fn engine_options(s: &TuneSettings, recompute: bool) -> TrainOptions {
    TrainOptions {
        seq_len: s.data_config.seq_len,
        recompute,
        ..Default::default()
    }
}

/// Plans the GPU memory of a run with `s`'s settings (its windows in windowed modes) under
/// `limits` and fits it to `budget` before anything is allocated; the fitted engine options
/// are in `Fit::options`. [`take_fit`] applies what the fit changed to the settings.
pub fn fit_memory(
    file: &ModelFile,
    s: &TuneSettings,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    budget: Option<u64>,
) -> Result<Fit> {
    let windows = s.train.layers.as_ref().map(|ls| ls.windows.as_slice());
    fit_budget_windows(file, &s.lora, opts, limits, budget, windows)
}

/// Where `fit` shortened the rows (sequence chunking), a new run takes the shorter rows
/// with more accumulation (the same tokens per step); a run `resuming` from a checkpoint
/// keeps its rows, so it is refused.
pub fn take_fit(s: &mut TuneSettings, fit: &Fit, resuming: bool) -> Result<()> {
    if fit.options.seq_len == s.data_config.seq_len {
        return Ok(());
    }
    if resuming {
        return Err(Error::Invalid(format!(
            "this run was made with rows of {} tokens, which do not fit the memory budget \
             ({} would); resume it with a larger --memory-budget",
            s.data_config.seq_len, fit.options.seq_len
        )));
    }
    s.data_config.seq_len = fit.options.seq_len;
    s.train.accum_steps *= fit.accum_factor;
    Ok(())
}

/// The GPU engine as a run's backend: the initial adapters (with the mode's exits) on
/// `ctx`, trained in the mode's windows when it has some.
pub fn gpu_backend<'a>(
    ctx: &'a GpuContext,
    file: &ModelFile,
    s: &TuneSettings,
    opts: &TrainOptions,
) -> Result<GpuTrainer<'a>> {
    let lora = initial_adapters(&file.config, s.lora.clone(), &s.exits, s.train.seed);
    match &s.train.layers {
        Some(ls) => GpuTrainer::with_windows(ctx, file, &lora, opts, &ls.windows),
        None => GpuTrainer::new(ctx, file, &lora, opts),
    }
}

/// The CPU engine as a run's backend, with the same initial adapters, its frozen weights
/// held as the file stores them ([`Storage::File`]: GGUF blocks and compressed projections
/// read in place by the CPU GEMM).
pub fn cpu_backend(file: &ModelFile, s: &TuneSettings) -> Result<CpuBackend> {
    cpu_backend_as(file, s, Storage::File)
}

/// [`cpu_backend`] with the frozen weights held as `storage` says (f32: the oracle's).
pub fn cpu_backend_as(file: &ModelFile, s: &TuneSettings, storage: Storage) -> Result<CpuBackend> {
    Ok(CpuBackend::with_exits(
        file.weights_as(storage)?,
        s.lora.clone(),
        &s.exits,
        s.train.seed,
    ))
}

/// The CPU engine's host memory plan for a run with `s` ([`cpu_backend`]'s weights), its
/// prefix cache (windowed runs only) capped at `cache_bytes`.
pub fn cpu_plan(file: &ModelFile, s: &TuneSettings, cache_bytes: u64) -> HostPlan {
    let c = &file.config;
    let lora = initial_adapters(c, s.lora.clone(), &s.exits, s.train.seed);
    let (window, cache) = match &s.train.layers {
        Some(ls) => {
            let longest = ls.windows.iter().map(|w| w.layers.len()).max();
            (longest.unwrap_or(c.n_layers), cache_bytes)
        }
        None => (c.n_layers, 0),
    };
    let seq = s.data_config.seq_len;
    crate::train::host_plan(file, Storage::File, &lora, seq, window, cache)
}

/// A run: the backend `make` builds for `s` (e.g. [`gpu_backend`]) under the trainer with
/// `s`'s settings and layer schedule, over `data` (prepared with `s.data_config`, so that
/// the caller can report it first).
pub fn build<B: Backend>(
    s: &TuneSettings,
    data: Prepared,
    make: impl FnOnce(&TuneSettings) -> Result<B>,
) -> Result<Trainer<B>> {
    let backend = make(s)?;
    Trainer::new(backend, s.train.clone(), data)
}
