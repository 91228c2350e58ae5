//! Tuning runs: the data checked, the memory planned and the trainer built by
//! `crate::tune` (the CLI's builder), one optimizer step per call.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::model::{peft_files, WebAdapter, WebModel};
use super::{engine_for, js_err, json_with, merged, parse_data, to_value};
use crate::data::{Dataset, LineError};
use crate::device::Choice;
use crate::engine::{Fit, GpuTrainer};
use crate::kernels::GpuContext;
use crate::model::LlamaConfig;
use crate::reference::Span;
use crate::train::{
    self, Backend, CpuBackend, LayerSchedule, Mode, TrainState, Trainer, WindowOrder,
};
use crate::tune::{self, TuneOptions, TuneSettings};
use crate::Error;

/// What the page shows about prepared data: kind, records, problems, statistics.
#[derive(Serialize)]
struct DataSummary<'a> {
    kind: &'static str,
    records: usize,
    problems: &'a [LineError],
    stats: &'a train::DataStats,
}

fn data_json(
    ds: &Dataset,
    problems: &[LineError],
    stats: &train::DataStats,
) -> Result<serde_json::Value, JsError> {
    to_value(DataSummary {
        kind: ds.kind(),
        records: ds.len(),
        problems,
        stats,
    })
}

/// What a run's plan adds to the fitted plan (`Fit::report`): where and how it trains.
#[derive(Serialize)]
struct PlanRun<'a> {
    mode: &'static str,
    /// "gpu" or "cpu", and why (the device rule's words).
    device: &'static str,
    device_reason: &'a str,
    exits: &'a [usize],
    windows: Vec<Window>,
    window_schedule: Option<WindowOrder>,
    compressed: bool,
}

/// A window of blocks for the page: blocks `layers[0]..layers[1]` (0-based), its loss read
/// at the exit after `exit_after` blocks (None: the model's head), its learning-rate scale
/// (windowed modes only).
#[derive(Serialize)]
struct Window {
    index: usize,
    layers: [usize; 2],
    exit_after: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_scale: Option<f64>,
}

#[wasm_bindgen]
impl WebModel {
    /// Parses and prepares data for tuning with `options_json`'s sequence length and split,
    /// without touching the GPU: `{kind, records, problems: [{line, message}], stats}`.
    /// Bad lines are listed, not fatal; no usable record is an error.
    pub fn check_data(
        &self,
        name: &str,
        text: &str,
        kind: &str,
        options_json: &str,
    ) -> Result<String, JsError> {
        let o = TuneOptions::from_json(options_json).map_err(js_err)?;
        let (ds, problems) = parse_data(name, text, kind).map_err(js_err)?;
        let prepared = train::prepare(&ds, &self.tokenizer, &o.data()).map_err(js_err)?;
        Ok(data_json(&ds, &problems, &prepared.stats)?.to_string())
    }

    /// The memory plan of a tuning run with `options_json` on the engine its `device` picks
    /// (`crate::device`'s rule): the GPU plan fitted to its `memory_budget`, or the CPU
    /// engine's host plan; nothing is allocated, and a run that cannot fit is an error
    /// saying what would. Windowed modes (partial, edge) plan their windows.
    pub async fn plan_tuning(&self, options_json: &str) -> Result<String, JsError> {
        let o = TuneOptions::from_json(options_json).map_err(js_err)?;
        let s = self.settings(&o).map_err(js_err)?;
        let engine = engine_for(o.device).await?;
        let (_, plan) = self.plan(&o, &s, engine)?;
        Ok(plan.to_string())
    }

    /// Prepares the data, plans memory (refusing a run that cannot fit before anything is
    /// allocated) and creates the trainer on the engine `device` picks: the GPU engine (the
    /// model is uploaded) or the CPU engine (its weights in this thread's memory).
    pub async fn tuner(
        &self,
        name: &str,
        text: &str,
        kind: &str,
        options_json: &str,
    ) -> Result<WebTuner, JsError> {
        let o = TuneOptions::from_json(options_json).map_err(js_err)?;
        let (ds, problems) = parse_data(name, text, kind).map_err(js_err)?;
        let mut s = self.settings(&o).map_err(js_err)?;
        let (choice, ctx) = engine_for(o.device).await?;
        let (fit, plan) = self.plan(&o, &s, (choice.clone(), ctx))?;
        if let Some(fit) = &fit {
            // Sequence chunking chosen for the budget: shorter rows, more accumulation.
            tune::take_fit(&mut s, fit, false).map_err(js_err)?;
        }
        let prepared = train::prepare(&ds, &self.tokenizer, &s.data_config).map_err(js_err)?;
        let data = data_json(&ds, &problems, &prepared.stats)?;
        let run = match (ctx, fit) {
            (Some(ctx), Some(fit)) => Run::Gpu(Box::new(
                tune::build(&s, prepared, |s| {
                    let mut backend = tune::gpu_backend(ctx, &self.model, s, &fit.options)?;
                    backend.cache.max_bytes = WEB_PREFIX_CACHE_BYTES;
                    Ok(backend)
                })
                .map_err(js_err)?,
            )),
            _ => Run::Cpu(Box::new(
                tune::build(&s, prepared, |s| {
                    let mut backend = tune::cpu_backend(&self.model, s)?;
                    backend.cache.max_bytes = WEB_PREFIX_CACHE_BYTES;
                    Ok(backend)
                })
                .map_err(js_err)?,
            )),
        };
        Ok(WebTuner {
            run,
            device: choice,
            config: self.model.config.clone(),
            base_name: self.base_name(),
            plan,
            data,
        })
    }
}

/// Host memory the prefix cache of a windowed run may hold in the tab: a wasm32 module has
/// 4 GiB in all, which the model file and its f32 weights already share (native: 2 GiB).
const WEB_PREFIX_CACHE_BYTES: u64 = 256 << 20;

impl WebModel {
    /// The settings of a run with `o` on this model (the CLI's mapping of the mode to exits
    /// and windows), refusing what this model cannot do.
    fn settings(&self, o: &TuneOptions) -> crate::Result<TuneSettings> {
        let compressed = crate::formats::packed::is_compressed(&self.model.gguf);
        if o.mode == Mode::CompressThenTune && !compressed {
            return Err(Error::Invalid(
                "compress-then-tune tunes a compressed model, and this one is not compressed: \
                 load a .gguf written by `edge-llm compress`, or pick vanilla"
                    .into(),
            ));
        }
        o.settings(self.model.config.n_layers)
    }

    /// The plan of a run on `engine` (the GPU's fitted plan, or the CPU engine's host
    /// plan) with its mode, exits, windows and the device rule's choice; on the GPU also
    /// the fit the trainer is built from.
    fn plan(
        &self,
        o: &TuneOptions,
        s: &TuneSettings,
        (choice, ctx): (Choice, Option<&GpuContext>),
    ) -> Result<(Option<Fit>, serde_json::Value), JsError> {
        let layers = s.train.layers.as_ref();
        let run = PlanRun {
            mode: s.mode.name(),
            device: choice.device,
            device_reason: &choice.reason,
            exits: &s.exits,
            windows: windows(layers, &s.exits, &self.model.config),
            window_schedule: layers.map(|l| l.order),
            compressed: crate::formats::packed::is_compressed(&self.model.gguf),
        };
        let Some(ctx) = ctx else {
            let plan = self.host_plan(s).map_err(js_err)?;
            // What the plan is held against: the tab's memory, the model file in it too.
            let tab = TabMemory {
                file_bytes: self.model.bytes.len() as u64,
                limit_bytes: WASM_MEMORY_BYTES,
            };
            return Ok((None, merged(merged(plan, run)?, tab)?));
        };
        let opts = tune::engine_options(s, o.recompute);
        let fit = tune::fit_memory(&self.model, s, &opts, &ctx.limits, o.memory_budget)
            .map_err(js_err)?;
        // The five largest buffers.
        let report = fit
            .report(&self.model.config, &ctx.limits, o.memory_budget, 5)
            .map_err(js_err)?;
        let plan = merged(report, run)?;
        Ok((Some(fit), plan))
    }

    /// The CPU engine's host memory for a run with `s`, refused when it would not fit in
    /// the tab: a wasm32 module addresses 4 GiB in all, the model file included.
    fn host_plan(&self, s: &TuneSettings) -> crate::Result<train::HostPlan> {
        let plan = tune::cpu_plan(&self.model, s, WEB_PREFIX_CACHE_BYTES);
        let need = plan.total_bytes + self.model.bytes.len() as u64;
        if need > WASM_MEMORY_BYTES {
            return Err(Error::Invalid(format!(
                "tuning this model on the CPU needs about {:.1} GiB of memory with rows of {} \
                 tokens, and a browser tab gives a WebAssembly module at most 4 GiB: use \
                 shorter rows or a windowed mode (partial, edge)",
                need as f64 / (1u64 << 30) as f64,
                s.data_config.seq_len
            )));
        }
        Ok(plan)
    }
}

/// What a wasm32 module can address, less room for the tokenizer, the data and the
/// allocator's slack.
const WASM_MEMORY_BYTES: u64 = (4 << 30) - (512 << 20);

/// The CPU plan's limit for the page's memory bar: the model file's bytes (held beside the
/// plan) and what the tab gives the module ([`WASM_MEMORY_BYTES`]).
#[derive(Serialize)]
struct TabMemory {
    file_bytes: u64,
    limit_bytes: u64,
}

/// The windows of a layer schedule for the page: `[{index, layers: [start, end], exit_after}]`
/// (blocks `start..end`, 0-based; `exit_after` null when the loss is read at the model's head).
fn windows(layers: Option<&LayerSchedule>, exits: &[usize], c: &LlamaConfig) -> Vec<Window> {
    let Some(ls) = layers else {
        let all = Window {
            index: 0,
            layers: [0, c.n_layers],
            exit_after: None,
            lr_scale: None,
        };
        return vec![all];
    };
    ls.windows
        .iter()
        .enumerate()
        .map(|(i, w): (usize, &Span)| Window {
            index: i,
            layers: [w.layers.start, w.layers.end],
            exit_after: w.exit.and_then(|k| exits.get(k).copied()),
            lr_scale: Some(ls.lr_multiplier(i)),
        })
        .collect()
}

/// The trainer of a run on the engine the device rule picked.
enum Run {
    Gpu(Box<Trainer<GpuTrainer<'static>>>),
    Cpu(Box<Trainer<CpuBackend>>),
}

/// `$body` with `$t` bound to the run's trainer, whichever engine it is on.
macro_rules! trainer {
    (&mut $run:expr, $t:ident => $body:expr) => {
        match &mut $run {
            Run::Gpu(boxed) => {
                let $t = &mut **boxed;
                $body
            }
            Run::Cpu(boxed) => {
                let $t = &mut **boxed;
                $body
            }
        }
    };
    (&$run:expr, $t:ident => $body:expr) => {
        match &$run {
            Run::Gpu(boxed) => {
                let $t = &**boxed;
                $body
            }
            Run::Cpu(boxed) => {
                let $t = &**boxed;
                $body
            }
        }
    };
}

/// A LoRA tuning run: the same `Trainer` that `edge-llm tune` drives, over the GPU engine
/// or the CPU engine (windowed modes through their layer windows on either), one
/// optimizer step per [`WebTuner::step`] call so the caller can pause, checkpoint and
/// report between steps.
#[wasm_bindgen]
pub struct WebTuner {
    run: Run,
    device: Choice,
    config: LlamaConfig,
    base_name: String,
    plan: serde_json::Value,
    data: serde_json::Value,
}

#[wasm_bindgen]
impl WebTuner {
    /// The memory plan the trainer was built from, with the GPU bytes it allocated (0 on
    /// the CPU engine, whose plan is of host memory).
    pub fn plan_json(&self) -> Result<String, JsError> {
        let allocated_bytes = match &self.run {
            Run::Gpu(t) => t.backend.allocated_bytes(),
            Run::Cpu(_) => 0,
        };
        json_with(&self.plan, Allocated { allocated_bytes })
    }

    /// The prepared data: `{kind, records, problems, stats}`.
    pub fn data_json(&self) -> String {
        self.data.to_string()
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> f64 {
        trainer!(&self.run, t => t.total_steps() as f64)
    }

    /// Optimizer steps done.
    pub fn current_step(&self) -> f64 {
        trainer!(&self.run, t => t.step() as f64)
    }

    /// GPU bytes held (all allocated at creation, so also the peak; 0 on the CPU engine).
    pub fn gpu_bytes(&self) -> f64 {
        trainer!(&self.run, t => t.backend.gpu_bytes() as f64)
    }

    /// Where the run trains: "gpu" or "cpu".
    pub fn device(&self) -> String {
        self.device.device.into()
    }

    /// Why it trains there, in plain words (the device rule's reason).
    pub fn device_reason(&self) -> String {
        self.device.reason.clone()
    }

    /// One optimizer step: the `StepReport` as JSON (with `window`, the index into the
    /// plan's `windows`, in windowed modes) plus `device`, `gpu_bytes`, `total_steps` and
    /// `stop` ("steps" while the run goes on, "finished" or "early_stopped" at its end,
    /// when `step` is null if no step was left to run).
    pub async fn step(&mut self) -> Result<String, JsError> {
        trainer!(&mut self.run, t => step(t, self.device.device).await)
    }

    /// Mean validation loss of the whole model (to its last exit) without dropout
    /// (undefined when there are no validation rows). It leaves the layer window, which the
    /// next step enters again (and with it resets early stopping): call it at the end.
    pub async fn validation_loss(&mut self) -> Result<Option<f64>, JsError> {
        trainer!(&mut self.run, t => {
            t.leave_window().map_err(js_err)?;
            t.validation_loss().await.map_err(js_err)
        })
    }

    /// The exact state to continue from (`TrainState::to_bytes`).
    pub async fn checkpoint(&mut self) -> Result<Vec<u8>, JsError> {
        let state = trainer!(&mut self.run, t => t.checkpoint().await.map_err(js_err)?);
        state.to_bytes().map_err(js_err)
    }

    /// Continues from [`WebTuner::checkpoint`]'s bytes; refused when they were made with
    /// another seed, other data, another LoRA shape or another mode (the checkpoint holds
    /// the layer schedule). Returns the step reached.
    pub async fn resume(&mut self, bytes: Vec<u8>) -> Result<f64, JsError> {
        let state = TrainState::from_bytes(&bytes).map_err(js_err)?;
        trainer!(&mut self.run, t => resume(t, &state).await)
    }

    /// The adapter as PEFT files: `{safetensors: Uint8Array, config: string}` for
    /// `adapter_model.safetensors` and `adapter_config.json`, and `exits: Uint8Array`
    /// (`exits.safetensors`) when the run has early exits. `base_model`: as for
    /// [`WebAdapter::files`].
    pub async fn adapter_files(
        &mut self,
        base_model: Option<String>,
    ) -> Result<js_sys::Object, JsError> {
        let lora = trainer!(&mut self.run, t => t.backend.adapters().await.map_err(js_err)?);
        peft_files(&lora, &self.config, &self.base_name, base_model)
    }

    /// The adapter's current values, to evaluate with ([`WebModel::lm_with_adapter`]) or
    /// keep after this tuner is freed.
    pub async fn adapter(&mut self) -> Result<WebAdapter, JsError> {
        let lora = trainer!(&mut self.run, t => t.backend.adapters().await.map_err(js_err)?);
        Ok(WebAdapter {
            lora,
            config: self.config.clone(),
            base_name: self.base_name.clone(),
        })
    }
}

/// One optimizer step of `t`: the `StepReport` as JSON plus what [`AfterStep`] adds.
async fn step<B: Backend>(t: &mut Trainer<B>, device: &'static str) -> Result<String, JsError> {
    let mut report = None;
    let summary = t
        .run(1, &mut |r| report = Some(r.clone()))
        .await
        .map_err(js_err)?;
    // Run(1) returns Steps after a step even when it was the last: look ahead.
    let stop = if t.step() >= t.total_steps() {
        train::Stop::Finished
    } else {
        summary.stop
    };
    let after = AfterStep {
        device,
        gpu_bytes: t.backend.gpu_bytes(),
        total_steps: t.total_steps(),
        stop,
        best_val_loss: t.best_val(),
    };
    match report {
        Some(r) => json_with(&r, after),
        None => json_with(NoStep { step: None }, after),
    }
}

/// Continues `t` from `state`, refused when it was made with another layer schedule.
async fn resume<B: Backend>(t: &mut Trainer<B>, state: &TrainState) -> Result<f64, JsError> {
    if state.layers != t.config.layers {
        let what = |l: &Option<train::LayerSchedule>| match l {
            None => "every layer (vanilla or compress-then-tune)".to_string(),
            Some(ls) => format!(
                "{} window(s) in {} order",
                ls.windows.len(),
                match ls.order {
                    WindowOrder::Reference => "reference",
                    WindowOrder::Adaptive => "adaptive",
                }
            ),
        };
        return Err(JsError::new(&format!(
            "this checkpoint was made with another mode, exit stride, partial layers or \
             window schedule (it trains {}; these settings train {}): resume it with its \
             own settings",
            what(&state.layers),
            what(&t.config.layers)
        )));
    }
    t.resume(state).await.map_err(js_err)?;
    Ok(t.step() as f64)
}

/// What [`WebTuner::plan_json`] adds to the plan.
#[derive(Serialize)]
struct Allocated {
    allocated_bytes: u64,
}

/// What [`WebTuner::step`] adds to the `StepReport`.
#[derive(Serialize)]
struct AfterStep {
    device: &'static str,
    gpu_bytes: u64,
    total_steps: u64,
    stop: train::Stop,
    best_val_loss: Option<f64>,
}

/// [`WebTuner::step`]'s report when no step was left: `step` is null.
#[derive(Serialize)]
struct NoStep {
    step: Option<u64>,
}
