//! The browser shell (wasm32 only): the wasm-bindgen API that www/app.js and www/worker.js
//! call. It converts between JS values and the engine's types and does nothing else; the
//! engine below it is the same code that runs natively (`edge-llm tune` drives the same
//! `Trainer` over the same `GpuTrainer`).
//!
//! One GPU device per page or worker: the first call that needs it creates a
//! [`GpuContext`] and leaks it, so a [`WebTuner`]'s `GpuTrainer<'static>` and a [`WebLm`]'s
//! `GpuModel<'static>` can borrow it.
//!
//! Evaluation and chat ([`WebLm`]) call the same `eval` functions as the CLI, awaiting
//! the GPU's readbacks where the CLI blocks on them.
//!
//! Every tuning mode trains on the GPU engine, windowed ones (partial, edge: adaptive
//! layer tuning) through `GpuTrainer::with_windows`, planned by `plan_windows`. Exit
//! voting at evaluation runs on the same GPU model (`eval::eval_mc_vote`, `eval::generate_voted`), which computes
//! every exit's logits in one pass.

//!
//! One file per thing served: [`model`] (a loaded GGUF, its tokenizer, adapters),
//! [`tuner`] (tuning runs), [`lm`] (evaluation and chat), [`compress`] (profiling and
//! compression); this file holds the shared GPU device and the JS plumbing.

use std::cell::OnceCell;

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::data::{Dataset, LineError};
use crate::device::{choose, Adapter, Choice, Device};
use crate::kernels::GpuContext;
use crate::Error;

mod compress;
mod lm;
mod model;
mod tuner;

pub use lm::WebLm;
pub use model::{load_model, WebAdapter, WebModel};
pub use tuner::WebTuner;

pub(super) fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// The threaded build's worker pool (`initThreadPool(n)` in JS): called once, before any
/// work, by www/worker.js where the page is cross-origin isolated.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// How many threads the CPU engine splits its work over in this module: the pool's size
/// in the threaded build, 1 in the plain one.
#[wasm_bindgen(js_name = cpuThreads)]
pub fn cpu_threads() -> usize {
    crate::cpu::par::threads()
}

/// Switches the CPU engine's per-op profile on (zeroing its totals) or off
/// (`cpu::profile`; for benchmarks: scripts/bench-browser.sh --profile).
#[wasm_bindgen(js_name = cpuProfile)]
pub fn cpu_profile(on: bool) {
    crate::cpu::profile::reset();
    crate::cpu::profile::enable(on);
}

/// The per-op totals since `cpuProfile(true)`, as JSON: `[{op, seconds, calls, gflops}]`.
#[wasm_bindgen(js_name = cpuProfileTotals)]
pub fn cpu_profile_totals() -> String {
    let rows: Vec<_> = crate::cpu::profile::totals()
        .into_iter()
        .map(|(op, s, calls, flops)| {
            serde_json::json!({
                "op": op.name(), "seconds": s, "calls": calls,
                "gflops": if s > 0.0 { flops as f64 / s * 1e-9 } else { 0.0 },
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The CPU's floating-point peak as this module reaches it (`cpu::peak`: about `seconds` of
/// multiply-add chains on every thread), as JSON `{gflops, isa, threads}`.
#[wasm_bindgen(js_name = cpuPeak)]
pub fn cpu_peak(seconds: f64) -> String {
    let (gflops, isa) = crate::cpu::peak::fma_peak(seconds);
    serde_json::json!({ "gflops": gflops, "isa": isa, "threads": crate::cpu::par::threads() })
        .to_string()
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
pub(super) async fn shared_gpu() -> Result<&'static GpuContext, JsError> {
    gpu_context().await.map_err(js_err)
}

async fn gpu_context() -> crate::Result<&'static GpuContext> {
    if let Some(ctx) = GPU.with(|g| g.get().copied()) {
        return Ok(ctx);
    }
    let ctx = GpuContext::new(None).await?;
    // Another call may have finished first while this one awaited: keep the first.
    Ok(GPU.with(|g| *g.get_or_init(|| Box::leak(Box::new(ctx)))))
}

/// The engine for `asked` by the one device rule (`crate::device`): this thread's GPU
/// device (created on first use) when the rule takes it, else None for the CPU engine;
/// with the rule's reason in plain words.
pub(super) async fn engine_for(
    asked: Device,
) -> Result<(Choice, Option<&'static GpuContext>), JsError> {
    let found = match asked {
        Device::Cpu => None,
        _ => Some(gpu_context().await),
    };
    let (choice, ctx) = match found {
        None => (choose(asked, &Adapter::NotAsked), None),
        Some(Err(e)) => (choose(asked, &Adapter::Missing(&e.to_string())), None),
        Some(Ok(ctx)) => {
            let name = adapter_name(ctx);
            let adapter = Adapter::Found {
                name: &name,
                software: ctx.is_software(),
            };
            (choose(asked, &adapter), Some(ctx))
        }
    };
    let choice = choice.map_err(js_err)?;
    let ctx = ctx.filter(|_| choice.is_gpu());
    Ok((choice, ctx))
}

/// The adapter as the page names it: its name, driver or driver details, whichever the
/// browser gives.
fn adapter_name(ctx: &GpuContext) -> String {
    let i = &ctx.info;
    match [&i.name, &i.driver, &i.driver_info]
        .into_iter()
        .find(|s| !s.is_empty())
    {
        Some(name) => format!("{name} (WebGPU)"),
        None => "the browser's WebGPU adapter".into(),
    }
}

pub(super) fn gpu_ready() -> Result<&'static GpuContext, JsError> {
    GPU.with(|g| g.get().copied())
        .ok_or_else(|| JsError::new("no GPU device yet: await gpu_info() first"))
}

/// A result for the page as JSON text: `base` (a serialized object) with `extra`'s fields
/// added, replacing any of the same name.
pub(super) fn json_with(base: impl Serialize, extra: impl Serialize) -> Result<String, JsError> {
    Ok(merged(base, extra)?.to_string())
}

/// [`json_with`] as a value.
pub(super) fn merged(
    base: impl Serialize,
    extra: impl Serialize,
) -> Result<serde_json::Value, JsError> {
    let mut v = to_value(base)?;
    if let (Some(o), serde_json::Value::Object(add)) = (v.as_object_mut(), to_value(extra)?) {
        o.extend(add);
    }
    Ok(v)
}

/// A serialized value (a result the page reads).
pub(super) fn to_value(x: impl Serialize) -> Result<serde_json::Value, JsError> {
    serde_json::to_value(x).map_err(|e| JsError::new(&e.to_string()))
}

/// A result for the page as JSON text.
pub(super) fn to_json(x: impl Serialize) -> Result<String, JsError> {
    serde_json::to_string(&x).map_err(|e| JsError::new(&e.to_string()))
}

/// Parses data leniently as `kind` ("text", "instruct", "mc", or "auto": by the name's
/// extension, else by content, as `Dataset::parse_lenient` does).
pub(super) fn parse_data(
    name: &str,
    text: &str,
    kind: &str,
) -> crate::Result<(Dataset, Vec<LineError>)> {
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

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> crate::Result<T> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// A result with bytes as a plain JS object (`serde-wasm-bindgen`): its byte fields
/// (`#[serde(with = "serde_bytes")]`) become Uint8Arrays, its strings JS strings.
pub(super) fn to_js_object(x: &impl Serialize) -> Result<js_sys::Object, JsError> {
    let v = serde_wasm_bindgen::to_value(x).map_err(|e| JsError::new(&e.to_string()))?;
    Ok(v.unchecked_into())
}

/// Calls a JS progress callback, ignoring what it returns or throws (progress is advisory).
pub(super) fn notify(f: &Option<js_sys::Function>, args: &[JsValue]) {
    if let Some(f) = f {
        let arr: js_sys::Array = args.iter().collect();
        let _ = f.apply(&JsValue::NULL, &arr);
    }
}

/// Calls a JS progress callback with `(stage, done, total)`.
pub(super) fn notify_stage(f: &Option<js_sys::Function>, stage: &str, done: usize, total: usize) {
    notify(
        f,
        &[
            JsValue::from_str(stage),
            (done as f64).into(),
            (total as f64).into(),
        ],
    )
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
