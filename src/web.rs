//! The browser shell (wasm32 only): the wasm-bindgen API that www/app.js and www/worker.js
//! call. It converts between JS values and the engine's types and does nothing else; the
//! engine below it is the same code that runs natively (`edge-llm tune` drives the same
//! `Trainer` over the same `GpuTrainer`).
//!
//! One GPU device per page or worker: the first call that needs it creates a
//! [`GpuContext`] and leaks it, so a [`WebTuner`]'s `GpuTrainer<'static>` and a [`WebLm`]'s
//! `GpuModel<'static>` can borrow it.
//!
//! Evaluation and chat ([`WebLm`]) call the same `eval::*_async` functions as the CLI's
//! blocking wrappers, awaiting the GPU's readbacks instead of blocking on them.
//!
//! Every tuning mode trains on the GPU engine, windowed ones (partial, edge: adaptive
//! layer tuning) through `GpuTrainer::with_windows`, planned by `plan_windows`. Exit
//! voting at evaluation runs on the same GPU model (`eval::*_vote_async`), which computes
//! every exit's logits in one pass.

use std::cell::OnceCell;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::adapter;
use crate::compress::pipeline::{self, CompressOptions};
use crate::compress::policy::Policy;
use crate::compress::profile::{profile_key, Profile};
use crate::data::{Dataset, LineError};
use crate::engine::{Fit, GpuModel, GpuModelOptions, GpuTrainer};
use crate::eval::{self, Sampling};
use crate::kernels::GpuContext;
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, Span};
use crate::tokenizer::Tokenizer;
use crate::train::{self, Backend, LayerSchedule, Mode, Row, TrainState, Trainer, WindowOrder};
use crate::tune::{self, TuneOptions, TuneSettings};
use crate::vote::Vote;
use crate::Error;

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// Runs once when the module is instantiated: panics go to the console with their message.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

thread_local! {
    static GPU: OnceCell<&'static GpuContext> = const { OnceCell::new() };
}

/// This thread's GPU device, created on first use (WebGPU baseline limits).
async fn shared_gpu() -> Result<&'static GpuContext, JsError> {
    if let Some(ctx) = GPU.with(|g| g.get().copied()) {
        return Ok(ctx);
    }
    let ctx = GpuContext::new(None).await.map_err(js_err)?;
    // Another call may have finished first while this one awaited: keep the first.
    Ok(GPU.with(|g| *g.get_or_init(|| Box::leak(Box::new(ctx)))))
}

fn gpu_ready() -> Result<&'static GpuContext, JsError> {
    GPU.with(|g| g.get().copied())
        .ok_or_else(|| JsError::new("no GPU device yet: await gpu_info() first"))
}

/// A model loaded from GGUF bytes: its header, configuration and tokenizer.
#[wasm_bindgen]
pub struct WebModel {
    model: ModelFile,
    /// Shared with the [`WebLm`]s built from this model.
    tokenizer: Rc<Tokenizer>,
}

/// Parses a GGUF file (the bytes of `models/default.gguf` or of a file the user picked).
#[wasm_bindgen]
pub fn load_model(bytes: Vec<u8>) -> Result<WebModel, JsError> {
    let model = ModelFile::from_bytes(bytes).map_err(js_err)?;
    let tokenizer = Rc::new(Tokenizer::from_gguf(&model.gguf).map_err(js_err)?);
    Ok(WebModel { model, tokenizer })
}

/// Parses data leniently as `kind` ("text", "instruct", "mc", or "auto": by the name's
/// extension, else by content, as `Dataset::parse_lenient` does).
fn parse_data(name: &str, text: &str, kind: &str) -> crate::Result<(Dataset, Vec<LineError>)> {
    let as_name = match kind {
        "auto" => name.to_owned(),
        "text" => "data.txt".to_owned(),
        "instruct" | "mc" => "data.jsonl".to_owned(),
        other => {
            return Err(Error::Invalid(format!(
                "data kind '{other}' (use text, instruct, mc or auto)"
            )))
        }
    };
    let parsed = Dataset::parse_lenient(&as_name, text).map_err(|e| match e {
        Error::Data(m) => Error::Data(m.replacen(&as_name, name, 1)),
        e => e,
    })?;
    let got = parsed.dataset.kind();
    let want = match kind {
        "instruct" => Some("instruct"),
        "mc" => Some("multiple-choice"),
        _ => None,
    };
    if want.is_some_and(|w| w != got && !parsed.dataset.is_empty()) {
        return Err(Error::Data(format!(
            "{name} holds {got} records, not {}",
            want.unwrap_or_default()
        )));
    }
    if parsed.dataset.is_empty() {
        let first = parsed
            .errors
            .first()
            .map(|e| format!(" (line {}: {})", e.line, e.message))
            .unwrap_or_default();
        return Err(Error::Data(format!("{name} has no usable records{first}")));
    }
    Ok((parsed.dataset, parsed.errors))
}

/// What the page shows about prepared data: kind, records, problems, statistics.
fn data_json(ds: &Dataset, problems: &[LineError], stats: &train::DataStats) -> serde_json::Value {
    json!({
        "kind": ds.kind(),
        "records": ds.len(),
        "problems": problems,
        "stats": stats,
    })
}

/// A [`Fit`] as the page shows it.
/// The fitted plan as the page shows it (`Fit::report`, the five largest buffers).
fn fit_json(
    fit: &Fit,
    c: &LlamaConfig,
    budget: Option<u64>,
    limits: &wgpu::Limits,
) -> crate::Result<serde_json::Value> {
    let report = fit.report(c, limits, budget, 5)?;
    serde_json::to_value(report).map_err(|e| Error::Invalid(e.to_string()))
}

#[wasm_bindgen]
impl WebModel {
    /// The model configuration (`LlamaConfig`) as JSON.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.model.config)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The size of the GGUF file in bytes.
    pub fn file_bytes(&self) -> usize {
        self.model.bytes.len()
    }

    /// Whether the file is a compressed model (`edge-llm compress`), which
    /// compress-then-tune needs.
    pub fn is_compressed(&self) -> bool {
        crate::compress::file::is_compressed(&self.model.gguf)
    }

    /// Token ids of `text` (no special tokens added).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.tokenizer.encode(text).map_err(js_err)
    }

    /// The text of each token, one string per id.
    pub fn token_strings(&self, ids: Vec<u32>) -> Result<Vec<String>, JsError> {
        ids.iter()
            .map(|&id| self.tokenizer.decode(&[id]).map_err(js_err))
            .collect()
    }

    /// `text` as the user turn of the model's ChatML template, ready for generation.
    pub fn chat_prompt(&self, text: &str) -> String {
        self.tokenizer.chat_prompt(text)
    }

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
        Ok(data_json(&ds, &problems, &prepared.stats).to_string())
    }

    /// The GPU memory plan of a tuning run with `options_json`, fitted to its
    /// `memory_budget` on this thread's device (`gpu_info` must have run); nothing is
    /// allocated, and a budget that cannot fit is an error saying what would. Windowed
    /// modes (partial, edge) plan their windows (`GpuTrainer::plan_windows`).
    pub fn plan_tuning(&self, options_json: &str) -> Result<String, JsError> {
        let o = TuneOptions::from_json(options_json).map_err(js_err)?;
        let s = self.settings(&o).map_err(js_err)?;
        let (_, plan) = self.plan(&o, &s).map_err(js_err)?;
        Ok(plan.to_string())
    }

    /// Prepares the data, plans GPU memory (refusing a budget that cannot fit before
    /// anything is allocated) and creates the trainer on the GPU (the model is uploaded).
    pub fn tuner(
        &self,
        name: &str,
        text: &str,
        kind: &str,
        options_json: &str,
    ) -> Result<WebTuner, JsError> {
        let o = TuneOptions::from_json(options_json).map_err(js_err)?;
        let (ds, problems) = parse_data(name, text, kind).map_err(js_err)?;
        let mut s = self.settings(&o).map_err(js_err)?;
        let (fit, plan) = self.plan(&o, &s).map_err(js_err)?;
        // Sequence chunking chosen for the budget: shorter rows, more accumulation.
        tune::take_fit(&mut s, &fit, false).map_err(js_err)?;
        let prepared = train::prepare(&ds, &self.tokenizer, &s.data_config).map_err(js_err)?;
        let data = data_json(&ds, &problems, &prepared.stats);
        let ctx = gpu_ready()?;
        let trainer = tune::build(&s, prepared, |s| {
            let mut backend = tune::gpu_backend(ctx, &self.model, s, &fit.options)?;
            backend.cache.max_bytes = WEB_PREFIX_CACHE_BYTES;
            Ok(backend)
        })
        .map_err(js_err)?;
        Ok(WebTuner {
            trainer,
            config: self.model.config.clone(),
            base_name: self.base_name(),
            plan,
            data,
        })
    }
}

#[wasm_bindgen]
impl WebModel {
    /// A copy of the GGUF file's bytes (to hand to another worker, or to download).
    pub fn bytes(&self) -> Vec<u8> {
        self.model.bytes.clone()
    }

    /// The policy a compressed model was made with (`edge_llm.policy`), as JSON; None for
    /// an uncompressed model.
    pub fn policy_json(&self) -> Result<Option<String>, JsError> {
        let p = crate::compress::file::policy_of(&self.model.gguf, self.model.config.n_layers)
            .map_err(js_err)?;
        Ok(p.map(|p| p.to_json()))
    }

    /// Checks a policy document against this model (the library's validation, whose
    /// error names the first problem); returns it as pretty JSON.
    pub fn check_policy(&self, policy_json: &str) -> Result<String, JsError> {
        let p = Policy::from_json(policy_json, self.model.config.n_layers).map_err(js_err)?;
        Ok(p.to_json())
    }

    /// The cache key of the profile that [`WebModel::profile`] would measure on this data
    /// with `options_json` (`CompressOptions`): a hash of the model bytes, the calibration
    /// tokens and the profile settings, as `edge-llm profile` keys its cache files.
    pub fn profile_key(
        &self,
        name: &str,
        text: &str,
        kind: &str,
        options_json: &str,
    ) -> Result<String, JsError> {
        let o = CompressOptions::from_json(options_json).map_err(js_err)?;
        let rows = self.calibration(name, text, kind, &o).map_err(js_err)?;
        Ok(profile_key(&self.model.bytes, &rows, &o.profile_options()))
    }

    /// Measures the LUC sensitivity profile on `text` (the user's data, or any text):
    /// `{key, profile, prune_sensitivity, quant_sensitivity, seconds, device}`. Calls
    /// `progress(stage, done, total)` ("calibrate", "fisher", then "profile"). The
    /// calibration passes run where `device` says ("auto", the default: this thread's WebGPU
    /// device unless it is a software adapter; "gpu"; "cpu": the CPU reference), reported
    /// as `device` ("gpu" or "cpu"); the rest is CPU work in this thread.
    pub async fn profile(
        &self,
        name: String,
        text: String,
        kind: String,
        options_json: String,
        device: Option<String>,
        progress: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let o = CompressOptions::from_json(&options_json).map_err(js_err)?;
        let rows = self.calibration(&name, &text, &kind, &o).map_err(js_err)?;
        let gpu = profiling_gpu(device.as_deref()).await?;
        let p = pipeline::measure_file_profile(
            &self.model,
            &rows,
            &o.profile_options(),
            gpu,
            &mut |stage, done, total| notify_stage(&progress, stage, done, total),
        )
        .await
        .map_err(js_err)?;
        let mut v = profile_json(&p);
        v["device"] = json!(if gpu.is_some() { "gpu" } else { "cpu" });
        Ok(v.to_string())
    }

    /// Compresses this model (`edge-llm compress`: the same `compress::pipeline`),
    /// calibrating on `text`. `options_json`: `CompressOptions` (sparsity, bits,
    /// allocation, method, pattern, quant, group, symmetric, calib_rows, seq_len,
    /// loss_rows, fisher_rows, profile_method, sparsity_rule). `policy_json`: a policy document that overrides the
    /// allocation and methods (refused with the reason when it does not fit this model).
    /// `cached_profile`: a profile from [`WebModel::profile`] (cached by the caller under
    /// its `key`); without one LUC measures it. Returns `{bytes: Uint8Array, summary:
    /// string, profile?: string}`: the compressed file, the summary (the CLI's `--json`
    /// plus `layers`, `messages`, `calibration`, `profile_info`, `total_seconds`), and the
    /// profile JSON when this call measured one. `device`: where the calibration passes
    /// run, as for [`WebModel::profile`].
    #[allow(clippy::too_many_arguments)]
    pub async fn compress(
        &self,
        name: String,
        text: String,
        kind: String,
        options_json: String,
        policy_json: Option<String>,
        cached_profile: Option<String>,
        device: Option<String>,
        progress: Option<js_sys::Function>,
    ) -> Result<js_sys::Object, JsError> {
        let t0 = web_time::Instant::now();
        let o = CompressOptions::from_json(&options_json).map_err(js_err)?;
        let n = self.model.config.n_layers;
        let user = policy_json
            .as_deref()
            .map(|t| Policy::from_json(t, n))
            .transpose()
            .map_err(js_err)?;
        let profile = match cached_profile.as_deref() {
            Some(t) => {
                let v: serde_json::Value = serde_json::from_str(t)
                    .map_err(|e| JsError::new(&format!("cached profile: {e}")))?;
                let p: Profile = serde_json::from_value(v.get("profile").cloned().unwrap_or(v))
                    .map_err(|e| JsError::new(&format!("cached profile: {e}")))?;
                Some(p)
            }
            None => None,
        };
        let rows = self.calibration(&name, &text, &kind, &o).map_err(js_err)?;
        let gpu = profiling_gpu(device.as_deref()).await?;
        let c = pipeline::compress(
            &self.model,
            Some(&rows),
            &o,
            user,
            profile,
            gpu,
            &mut |stage, done, total| notify_stage(&progress, stage, done, total),
        )
        .await
        .map_err(js_err)?;
        let mut v = c.to_json();
        v["layers"] = c.layers_json();
        v["messages"] = json!(c.messages);
        v["options"] = json!(o);
        v["user_policy"] = json!(policy_json.is_some());
        v["calibration"] = json!({
            "name": name,
            "rows": rows.len(),
            "tokens": rows.iter().map(|r| r.tokens.len()).sum::<usize>(),
            "device": if gpu.is_some() { "gpu" } else { "cpu" },
        });
        v["profile_info"] = match &c.profile {
            Some(p) => json!({"key": p.key, "measured": c.profile_measured,
                              "seconds": p.seconds, "base_loss": p.base_loss,
                              "dloss": p.has_dloss()}),
            None => serde_json::Value::Null,
        };
        v["total_seconds"] = json!(t0.elapsed().as_secs_f64());
        let out = js_sys::Object::new();
        let set = |k: &str, val: &JsValue| js_set(&out, k, val, "the compression result");
        set(
            "bytes",
            &js_sys::Uint8Array::from(c.bytes.as_slice()).into(),
        )?;
        set("summary", &JsValue::from_str(&v.to_string()))?;
        if let Some(p) = c.profile.as_ref().filter(|_| c.profile_measured) {
            set("profile", &JsValue::from_str(&profile_json(p).to_string()))?;
        }
        Ok(out)
    }
}

impl WebModel {
    /// Calibration rows from the user's data (parsed leniently, as for tuning).
    fn calibration(
        &self,
        name: &str,
        text: &str,
        kind: &str,
        o: &CompressOptions,
    ) -> crate::Result<Vec<Row>> {
        let (ds, _) = parse_data(name, text, kind)?;
        pipeline::calibration(&ds, &self.tokenizer, o)
    }
}

/// The device of profiling's calibration passes, picked as the CLI's `--device` picks it:
/// "auto" (or none given) this thread's WebGPU device unless it is a software adapter
/// (SwiftShader; the CPU reference is faster there) or there is none; "gpu" the WebGPU
/// device whatever it is; "cpu" the CPU reference.
async fn profiling_gpu(device: Option<&str>) -> Result<Option<&'static GpuContext>, JsError> {
    match device.unwrap_or("auto") {
        "auto" => Ok(shared_gpu().await.ok().filter(|c| !c.is_software())),
        "gpu" => Ok(Some(shared_gpu().await?)),
        "cpu" => Ok(None),
        other => Err(JsError::new(&format!(
            "device '{other}': profiling runs on 'auto', 'gpu' or 'cpu'"
        ))),
    }
}

/// A profile as the page keeps it: the profile and its per-block sensitivities.
fn profile_json(p: &Profile) -> serde_json::Value {
    json!({"key": p.key, "profile": p, "prune_sensitivity": p.prune_sensitivity(),
           "quant_sensitivity": p.quant_sensitivity(), "seconds": p.seconds})
}

/// Calls a JS progress callback with `(stage, done, total)`.
fn notify_stage(f: &Option<js_sys::Function>, stage: &str, done: usize, total: usize) {
    notify(
        f,
        &[
            JsValue::from_str(stage),
            (done as f64).into(),
            (total as f64).into(),
        ],
    )
}

/// Host memory the prefix cache of a windowed run may hold in the tab: a wasm32 module has
/// 4 GiB in all, which the model file and its f32 weights already share (native: 2 GiB).
const WEB_PREFIX_CACHE_BYTES: u64 = 256 << 20;

impl WebModel {
    /// The settings of a run with `o` on this model (the CLI's mapping of the mode to exits
    /// and windows), refusing what this model cannot do.
    fn settings(&self, o: &TuneOptions) -> crate::Result<TuneSettings> {
        let compressed = crate::compress::file::is_compressed(&self.model.gguf);
        if o.mode == Mode::CompressThenTune && !compressed {
            return Err(Error::Invalid(
                "compress-then-tune tunes a compressed model, and this one is not compressed: \
                 load a .gguf written by `edge-llm compress`, or pick vanilla"
                    .into(),
            ));
        }
        o.settings(self.model.config.n_layers)
    }

    /// The plan of a run (`fit_json` plus its mode, exits and windows) and the fit the
    /// trainer is built from.
    fn plan(&self, o: &TuneOptions, s: &TuneSettings) -> crate::Result<(Fit, serde_json::Value)> {
        let ctx = gpu_ready()
            .map_err(|_| Error::Gpu("no GPU device yet: await gpu_info() first".into()))?;
        let opts = tune::engine_options(s, o.recompute);
        let fit = tune::fit_memory(&self.model, s, &opts, &ctx.limits, o.memory_budget)?;
        let layers = s.train.layers.as_ref();
        let mut v = fit_json(&fit, &self.model.config, o.memory_budget, &ctx.limits)?;
        v["mode"] = json!(s.mode.name());
        v["device"] = json!("gpu");
        v["exits"] = json!(s.exits);
        v["windows"] = windows_json(layers, &s.exits, &self.model.config);
        v["window_schedule"] = json!(layers.map(|l| l.order));
        v["compressed"] = json!(crate::compress::file::is_compressed(&self.model.gguf));
        Ok((fit, v))
    }
}

/// The windows of a layer schedule for the page: `[{index, layers: [start, end], exit_after}]`
/// (blocks `start..end`, 0-based; `exit_after` null when the loss is read at the model's head).
fn windows_json(
    layers: Option<&LayerSchedule>,
    exits: &[usize],
    c: &LlamaConfig,
) -> serde_json::Value {
    let Some(ls) = layers else {
        return json!([{"index": 0, "layers": [0, c.n_layers], "exit_after": null}]);
    };
    let windows: Vec<_> = ls
        .windows
        .iter()
        .enumerate()
        .map(|(i, w): (usize, &Span)| {
            json!({"index": i, "layers": [w.layers.start, w.layers.end],
                   "exit_after": w.exit.and_then(|k| exits.get(k)),
                   "lr_scale": ls.lr_multiplier(i)})
        })
        .collect();
    json!(windows)
}

#[wasm_bindgen]
impl WebModel {
    /// Reads a PEFT adapter (`adapter_model.safetensors` bytes and `adapter_config.json`
    /// text) for this model, with its early exits (`exits.safetensors` bytes) if given;
    /// refused when its shapes or settings do not fit.
    pub fn import_adapter(
        &self,
        safetensors: &[u8],
        config_json: &str,
        exits: Option<Vec<u8>>,
    ) -> Result<WebAdapter, JsError> {
        let mut lora =
            adapter::import_peft(safetensors, config_json, &self.model.config).map_err(js_err)?;
        if let Some(bytes) = exits {
            lora.exits = adapter::import_exits(&bytes, lora.config.rank, &self.model.config)
                .map_err(js_err)?;
        }
        Ok(WebAdapter {
            lora,
            config: self.model.config.clone(),
            base_name: self.base_name(),
        })
    }

    /// The base model on this thread's GPU for evaluation and generation (`gpu_info` must
    /// have run). `options_json`: `{max_len?}` (KV-cache positions).
    pub fn lm(&self, options_json: &str) -> Result<WebLm, JsError> {
        self.build_lm(None, options_json)
    }

    /// The model with `adapter`'s LoRA (tuned or imported) on this thread's GPU.
    pub fn lm_with_adapter(
        &self,
        adapter: &WebAdapter,
        options_json: &str,
    ) -> Result<WebLm, JsError> {
        self.build_lm(Some(&adapter.lora), options_json)
    }
}

impl WebModel {
    fn base_name(&self) -> String {
        adapter::gguf_model_name(&self.model.gguf)
            .unwrap_or("edge-llm-base")
            .to_owned()
    }

    fn build_lm(&self, lora: Option<&Lora<f32>>, options_json: &str) -> Result<WebLm, JsError> {
        let ctx = gpu_ready()?;
        let o: LmOptions = parse_json("model options", options_json).map_err(js_err)?;
        let opts = GpuModelOptions {
            max_len: o.max_len,
            ..Default::default()
        };
        // With exits the same model also gives every exit's logits (voted accuracy and
        // chat); perplexity reads the model's own head.
        let gm = GpuModel::new(ctx, &self.model, &opts, lora).map_err(js_err)?;
        Ok(WebLm {
            gm,
            tokenizer: Rc::clone(&self.tokenizer),
            with_adapter: lora.is_some(),
        })
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> crate::Result<T> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Options of [`WebModel::lm`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LmOptions {
    max_len: Option<usize>,
}

/// Generation settings from the page (the CLI's `generate` defaults).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GenerateOptions {
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    /// Wrap the prompt as the user turn of the model's ChatML template.
    chat: bool,
    /// With early exits: sample the exits' distributions combined by this rule (default
    /// max).
    vote: Option<Vote>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            chat: true,
            vote: None,
        }
    }
}

/// Adapter values (tuned or imported) to build a [`WebLm`] with, or to export.
#[wasm_bindgen]
pub struct WebAdapter {
    lora: Lora<f32>,
    config: LlamaConfig,
    base_name: String,
}

#[wasm_bindgen]
impl WebAdapter {
    /// The LoRA rank.
    pub fn rank(&self) -> usize {
        self.lora.config.rank
    }

    /// The block counts after which its early exits sit (empty: plain LoRA).
    pub fn exits(&self) -> Vec<u32> {
        exit_afters(&self.lora)
    }

    /// The adapter as PEFT files: `{safetensors: Uint8Array, config: string}`, and
    /// `exits: Uint8Array` (`exits.safetensors`) when it has early exits.
    pub fn files(&self) -> Result<js_sys::Object, JsError> {
        peft_files(&self.lora, &self.config, &self.base_name)
    }
}

/// Sets `obj[k] = v`, naming `what` was being built if that fails.
fn js_set(obj: &js_sys::Object, k: &str, v: &JsValue, what: &str) -> Result<(), JsError> {
    js_sys::Reflect::set(obj, &JsValue::from_str(k), v)
        .map(|_| ())
        .map_err(|_| JsError::new(&format!("could not build {what}")))
}

fn peft_files(
    lora: &Lora<f32>,
    config_of: &LlamaConfig,
    base_name: &str,
) -> Result<js_sys::Object, JsError> {
    let (bytes, config) = adapter::export_peft(lora, config_of, base_name).map_err(js_err)?;
    let out = js_sys::Object::new();
    let set = |k: &str, v: &JsValue| js_set(&out, k, v, "the adapter object");
    set(
        "safetensors",
        &js_sys::Uint8Array::from(bytes.as_slice()).into(),
    )?;
    set("config", &JsValue::from_str(&config))?;
    if !lora.exits.is_empty() {
        let exits = adapter::export_exits(lora, config_of).map_err(js_err)?;
        set("exits", &js_sys::Uint8Array::from(exits.as_slice()).into())?;
    }
    Ok(out)
}

fn exit_afters(lora: &Lora<f32>) -> Vec<u32> {
    lora.exits.iter().map(|e| e.after as u32).collect()
}

/// Calls a JS progress callback, ignoring what it returns or throws (progress is advisory).
fn notify(f: &Option<js_sys::Function>, args: &[JsValue]) {
    if let Some(f) = f {
        let arr: js_sys::Array = args.iter().collect();
        let _ = f.apply(&JsValue::NULL, &arr);
    }
}

/// The model on this thread's GPU with a KV cache, for perplexity, multiple-choice accuracy
/// and generation: the engine's `GpuModel` behind the same `eval` functions as the CLI.
#[wasm_bindgen]
pub struct WebLm {
    gm: GpuModel<'static>,
    tokenizer: Rc<Tokenizer>,
    with_adapter: bool,
}

impl WebLm {
    /// The voting rule for `asked` (default max with exits); asking without exits is an
    /// error.
    fn vote_rule(&self, asked: Option<Vote>) -> crate::Result<Option<Vote>> {
        match (asked, self.gm.exits().is_empty()) {
            (Some(r), true) => Err(Error::Invalid(format!(
                "voting ({r}) needs an adapter with early exits: tune in edge mode, or load \
                 the adapter with its {}",
                adapter::EXITS_FILE
            ))),
            (asked, false) => Ok(Some(asked.unwrap_or(Vote::Max))),
            (None, true) => Ok(None),
        }
    }
}

#[wasm_bindgen]
impl WebLm {
    /// GPU bytes this model holds (weights, KV cache, scratch).
    pub fn gpu_bytes(&self) -> f64 {
        self.gm.allocated_bytes() as f64
    }

    /// Positions the KV cache holds: the longest prompt plus reply, or text evaluated.
    pub fn max_len(&self) -> usize {
        eval::AsyncLm::max_len(&self.gm)
    }

    /// Whether a LoRA adapter is applied.
    pub fn has_adapter(&self) -> bool {
        self.with_adapter
    }

    /// The block counts after which the adapter's early exits sit (empty: none).
    pub fn exits(&self) -> Vec<u32> {
        self.gm.exits().into_iter().map(|a| a as u32).collect()
    }

    /// Perplexity of the first `max_tokens` tokens of `text` (at most the cache length):
    /// `{perplexity, mean_nll, tokens, seconds}`. Calls `progress(done, total)`.
    pub async fn perplexity(
        &mut self,
        text: String,
        max_tokens: usize,
        progress: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let mut ids = self.tokenizer.encode(&text).map_err(js_err)?;
        ids.truncate(max_tokens.min(eval::AsyncLm::max_len(&self.gm)));
        let t0 = web_time::Instant::now();
        let chunk = self.gm.max_t();
        let r = eval::perplexity_async(&mut self.gm, &ids, chunk, &mut |done, total| {
            notify(&progress, &[(done as f64).into(), (total as f64).into()])
        })
        .await
        .map_err(js_err)?;
        let mut v = serde_json::to_value(&r).map_err(|e| JsError::new(&e.to_string()))?;
        v["seconds"] = json!(t0.elapsed().as_secs_f64());
        Ok(v.to_string())
    }

    /// Zero-shot accuracy on the first `limit` questions of multiple-choice JSONL:
    /// `{accuracy, n, correct, seconds, device, questions: [{question, choices, answer,
    /// predicted, scores}]}`. With early exits the answer is voted by `vote`
    /// (max, mean, majority, last; default max) and the result adds `vote`, `exits: [{after,
    /// accuracy, correct}]`, `votes: [{rule, accuracy, correct}]` and per question
    /// `exit_predictions`. Calls `progress(done, total, correct)` after each question.
    pub async fn eval_mc(
        &mut self,
        jsonl: String,
        limit: usize,
        progress: Option<js_sys::Function>,
        vote: Option<String>,
    ) -> Result<String, JsError> {
        let (ds, _) = parse_data("questions.jsonl", &jsonl, "mc").map_err(js_err)?;
        let Dataset::MultipleChoice(mut qs) = ds else {
            return Err(JsError::new("the questions are not multiple-choice JSONL"));
        };
        qs.truncate(limit.max(1));
        let asked = vote
            .map(|v| v.parse::<Vote>())
            .transpose()
            .map_err(js_err)?;
        let t0 = web_time::Instant::now();
        if let Some(rule) = self.vote_rule(asked).map_err(js_err)? {
            let r = eval::eval_mc_vote_async(
                &mut self.gm,
                &self.tokenizer,
                &qs,
                rule,
                &mut |done, total, correct| {
                    notify(
                        &progress,
                        &[
                            (done as f64).into(),
                            (total as f64).into(),
                            (correct as f64).into(),
                        ],
                    )
                },
            )
            .await
            .map_err(js_err)?;
            let argmax = |s: &[f64]| {
                (0..s.len())
                    .max_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))
                    .unwrap_or(0)
            };
            let questions: Vec<_> = qs
                .iter()
                .zip(r.predictions.iter().zip(&r.scores))
                .map(|(q, (p, s))| {
                    let by_exit: Vec<usize> = s.iter().map(|e| argmax(e)).collect();
                    json!({"question": q.question, "choices": q.choices, "answer": q.answer,
                           "predicted": p, "scores": s.last(), "exit_predictions": by_exit})
                })
                .collect();
            return Ok(json!({
                "accuracy": r.accuracy,
                "n": r.n,
                "correct": r.correct,
                "seconds": t0.elapsed().as_secs_f64(),
                "device": "gpu",
                "vote": r.rule,
                "exits": r.exits,
                "votes": r.votes,
                "questions": questions,
            })
            .to_string());
        }
        let r = eval::eval_mc_async(
            &mut self.gm,
            &self.tokenizer,
            &qs,
            &mut |done, total, correct| {
                notify(
                    &progress,
                    &[
                        (done as f64).into(),
                        (total as f64).into(),
                        (correct as f64).into(),
                    ],
                )
            },
        )
        .await
        .map_err(js_err)?;
        let questions: Vec<_> = qs
            .iter()
            .zip(r.predictions.iter().zip(&r.scores))
            .map(|(q, (p, s))| {
                json!({"question": q.question, "choices": q.choices, "answer": q.answer,
                       "predicted": p, "scores": s})
            })
            .collect();
        Ok(json!({
            "accuracy": r.accuracy,
            "n": r.n,
            "correct": r.correct,
            "seconds": t0.elapsed().as_secs_f64(),
            "device": "gpu",
            "questions": questions,
        })
        .to_string())
    }

    /// Generates a reply to `prompt` (`options_json`: `{max_tokens, temperature, top_p,
    /// seed, chat}`; temperature 0 is greedy), calling `on_text(piece)` with the new text
    /// as whole characters arrive. Returns `{text, tokens, prompt_tokens, seconds,
    /// tokens_per_s, prefill_seconds}`.
    pub async fn generate(
        &mut self,
        prompt: String,
        options_json: String,
        on_text: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let o: GenerateOptions = parse_json("generation options", &options_json).map_err(js_err)?;
        let ok = (o.top_p > 0.0 && o.top_p <= 1.0) && o.temperature >= 0.0;
        if !ok {
            return Err(JsError::new("need 0 < top_p <= 1 and temperature >= 0"));
        }
        let tok = Rc::clone(&self.tokenizer);
        let text = if o.chat {
            tok.chat_prompt(&prompt)
        } else {
            prompt
        };
        let ids = tok.encode(&text).map_err(js_err)?;
        let mut stop: Vec<u32> = tok.eos.into_iter().collect();
        stop.extend(
            tok.encode("<|im_end|>")
                .ok()
                .filter(|v| v.len() == 1)
                .unwrap_or_default(),
        );
        let sampling = Sampling {
            temperature: o.temperature,
            top_p: o.top_p,
            seed: o.seed,
        };
        let rule = self.vote_rule(o.vote).map_err(js_err)?;
        let t0 = web_time::Instant::now();
        let mut first: Option<f64> = None;
        let mut so_far = Vec::new();
        let mut shown = String::new();
        let mut on_token = |id| {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            so_far.push(id);
            if let Ok(s) = tok.decode(&so_far) {
                // Whole characters only: a multi-byte character may span tokens.
                if s.len() > shown.len() && !s.ends_with('\u{FFFD}') {
                    notify(&on_text, &[JsValue::from_str(&s[shown.len()..])]);
                    shown = s;
                }
            }
        };
        let out = match rule {
            Some(rule) => {
                eval::generate_voted_async(
                    &mut self.gm,
                    &ids,
                    o.max_tokens,
                    &sampling,
                    rule,
                    &stop,
                    &mut on_token,
                )
                .await
            }
            None => {
                eval::generate_async(
                    &mut self.gm,
                    &ids,
                    o.max_tokens,
                    &sampling,
                    &stop,
                    &mut on_token,
                )
                .await
            }
        }
        .map_err(js_err)?;
        let secs = t0.elapsed().as_secs_f64();
        let text = tok.decode(&out).map_err(js_err)?;
        if text.len() > shown.len() && text.starts_with(&shown) {
            notify(&on_text, &[JsValue::from_str(&text[shown.len()..])]);
        }
        // Decoding speed after the first token (the prompt's prefill excluded).
        let prefill = first.unwrap_or(secs);
        let decode_tps = if out.len() > 1 && secs > prefill {
            (out.len() - 1) as f64 / (secs - prefill)
        } else {
            0.0
        };
        Ok(json!({
            "text": text,
            "tokens": out.len(),
            "prompt_tokens": ids.len(),
            "seconds": secs,
            "prefill_seconds": prefill,
            "tokens_per_s": out.len() as f64 / secs.max(1e-9),
            "decode_tokens_per_s": decode_tps,
            "device": "gpu",
            "vote": rule,
        })
        .to_string())
    }
}

/// A LoRA tuning run: the same `Trainer` that `edge-llm tune` drives, over the GPU engine
/// (windowed modes through its layer windows), one optimizer step per
/// [`WebTuner::step`] call so the caller can pause, checkpoint and report between steps.
#[wasm_bindgen]
pub struct WebTuner {
    trainer: Trainer<GpuTrainer<'static>>,
    config: LlamaConfig,
    base_name: String,
    plan: serde_json::Value,
    data: serde_json::Value,
}

#[wasm_bindgen]
impl WebTuner {
    /// The memory plan the trainer was built from, with the bytes it allocated.
    pub fn plan_json(&self) -> String {
        let mut v = self.plan.clone();
        v["allocated_bytes"] = json!(self.trainer.backend.allocated_bytes());
        v.to_string()
    }

    /// The prepared data: `{kind, records, problems, stats}`.
    pub fn data_json(&self) -> String {
        self.data.to_string()
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> f64 {
        self.trainer.total_steps() as f64
    }

    /// Optimizer steps done.
    pub fn current_step(&self) -> f64 {
        self.trainer.step() as f64
    }

    /// GPU bytes held (all allocated at creation, so also the peak).
    pub fn gpu_bytes(&self) -> f64 {
        self.trainer.backend.gpu_bytes() as f64
    }

    /// Where the run trains: "gpu" (every mode runs on the GPU engine).
    pub fn device(&self) -> String {
        "gpu".into()
    }

    /// One optimizer step: the `StepReport` as JSON (with `window`, the index into the
    /// plan's `windows`, in windowed modes) plus `device`, `gpu_bytes`, `total_steps` and
    /// `stop` ("steps" while the run goes on, "finished" or "early_stopped" at its end,
    /// when `step` is null if no step was left to run).
    pub async fn step(&mut self) -> Result<String, JsError> {
        let mut report = None;
        let summary = self
            .trainer
            .run(1, &mut |r| report = Some(r.clone()))
            .await
            .map_err(js_err)?;
        // Run(1) returns Steps after a step even when it was the last: look ahead.
        let stop = if self.trainer.step() >= self.trainer.total_steps() {
            train::Stop::Finished
        } else {
            summary.stop
        };
        let mut v = match report {
            Some(r) => serde_json::to_value(&r).map_err(|e| JsError::new(&e.to_string()))?,
            None => json!({"step": null}),
        };
        v["device"] = json!("gpu");
        v["gpu_bytes"] = json!(self.trainer.backend.gpu_bytes());
        v["total_steps"] = json!(self.trainer.total_steps());
        v["stop"] = json!(stop);
        v["best_val_loss"] = json!(self.trainer.best_val());
        Ok(v.to_string())
    }

    /// Mean validation loss of the whole model (to its last exit) without dropout
    /// (undefined when there are no validation rows). It leaves the layer window, which the
    /// next step enters again (and with it resets early stopping): call it at the end.
    pub async fn validation_loss(&mut self) -> Result<Option<f64>, JsError> {
        self.trainer.leave_window().map_err(js_err)?;
        self.trainer.validation_loss().await.map_err(js_err)
    }

    /// The exact state to continue from (`TrainState::to_bytes`).
    pub async fn checkpoint(&mut self) -> Result<Vec<u8>, JsError> {
        let state = self.trainer.checkpoint().await.map_err(js_err)?;
        state.to_bytes().map_err(js_err)
    }

    /// Continues from [`WebTuner::checkpoint`]'s bytes; refused when they were made with
    /// another seed, other data, another LoRA shape or another mode (the checkpoint holds
    /// the layer schedule). Returns the step reached.
    pub async fn resume(&mut self, bytes: Vec<u8>) -> Result<f64, JsError> {
        let state = TrainState::from_bytes(&bytes).map_err(js_err)?;
        if state.layers != self.trainer.config.layers {
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
                what(&self.trainer.config.layers)
            )));
        }
        self.trainer.resume(&state).await.map_err(js_err)?;
        Ok(self.trainer.step() as f64)
    }

    /// The adapter as PEFT files: `{safetensors: Uint8Array, config: string}` for
    /// `adapter_model.safetensors` and `adapter_config.json`, and `exits: Uint8Array`
    /// (`exits.safetensors`) when the run has early exits.
    pub async fn adapter_files(&mut self) -> Result<js_sys::Object, JsError> {
        let lora = self.trainer.backend.adapters().await.map_err(js_err)?;
        peft_files(&lora, &self.config, &self.base_name)
    }

    /// The adapter's current values, to evaluate with ([`WebModel::lm_with_adapter`]) or
    /// keep after this tuner is freed.
    pub async fn adapter(&mut self) -> Result<WebAdapter, JsError> {
        let lora = self.trainer.backend.adapters().await.map_err(js_err)?;
        Ok(WebAdapter {
            lora,
            config: self.config.clone(),
            base_name: self.base_name.clone(),
        })
    }
}

/// Destroys this thread's GPU device, as a driver reset would lose it: for the tests of
/// what the page does then (a plain message, the saved checkpoint kept). Nothing else
/// calls it.
#[wasm_bindgen]
pub fn debug_lose_gpu() -> Result<(), JsError> {
    gpu_ready()?.device.destroy();
    Ok(())
}

/// The WebGPU adapter and its limits as JSON (`GpuContext::describe`), or an error that
/// says what to do when the browser has no WebGPU. Creates this thread's device, which
/// tuning then uses.
#[wasm_bindgen]
pub async fn gpu_info() -> Result<String, JsError> {
    let ctx = shared_gpu().await?;
    Ok(ctx.describe().to_string())
}
