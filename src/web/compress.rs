//! LUC profiling and compression of a loaded model (`compress::pipeline`, as the CLI).

use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::model::WebModel;
use super::{engine_for, js_err, json_with, notify_stage, parse_data, to_js_object, to_json};
use crate::compress::allocation::{expected_gain, ExpectedGain};
use crate::compress::pipeline::{self, CompressOptions};
use crate::compress::policy::Policy;
use crate::compress::profile::{profile_key, Profile};
use crate::device::Device;
use crate::kernels::GpuContext;
use crate::train::Row;

#[wasm_bindgen]
impl WebModel {
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
        json_with(
            profile_json(&p, &o),
            Ran {
                device: device_name(gpu),
            },
        )
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
        let more = CompressSummary {
            layers: c.layers_json(),
            messages: &c.messages,
            options: &o,
            user_policy: policy_json.is_some(),
            calibration: Calibration {
                name: &name,
                rows: rows.len(),
                tokens: rows.iter().map(|r| r.tokens.len()).sum(),
                device: device_name(gpu),
            },
            profile_info: c.profile.as_ref().map(|p| ProfileInfo {
                key: &p.key,
                measured: c.profile_measured,
                seconds: p.seconds,
                base_loss: p.base_loss,
                dloss: p.has_dloss(),
            }),
            total_seconds: t0.elapsed().as_secs_f64(),
        };
        let summary = json_with(c.to_json(), more)?;
        let profile = match c.profile.as_ref().filter(|_| c.profile_measured) {
            Some(p) => Some(to_json(profile_json(p, &o))?),
            None => None,
        };
        to_js_object(&Compressed {
            bytes: &c.bytes,
            summary,
            profile,
        })
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

/// The device of profiling's calibration passes, by the one device rule (`crate::device`):
/// "auto" (or none given), "gpu" or "cpu".
async fn profiling_gpu(device: Option<&str>) -> Result<Option<&'static GpuContext>, JsError> {
    let asked: Device = device.unwrap_or("auto").parse().map_err(js_err)?;
    Ok(engine_for(asked).await?.1)
}

/// Where calibration ran, as the page names it.
fn device_name(gpu: Option<&GpuContext>) -> &'static str {
    if gpu.is_some() {
        "gpu"
    } else {
        "cpu"
    }
}

/// A profile as the page keeps it: the profile and its per-block sensitivities.
#[derive(Serialize)]
struct ProfileJson<'a> {
    key: &'a str,
    profile: &'a Profile,
    prune_sensitivity: Vec<f64>,
    quant_sensitivity: Vec<f64>,
    seconds: f64,
    /// At the options' budget (mean sparsity above 0): what LUC's per-layer choice is
    /// expected to gain over uniform and how far that held across the Fisher halves, and
    /// the same in plain words.
    expected_gain: Option<ExpectedGain>,
    expected_gain_summary: Option<String>,
}

fn profile_json<'a>(p: &'a Profile, o: &CompressOptions) -> ProfileJson<'a> {
    let gain = (o.sparsity > 0.0)
        .then(|| expected_gain(p, o.sparsity, o.bits).ok())
        .flatten();
    ProfileJson {
        key: &p.key,
        profile: p,
        prune_sensitivity: p.prune_sensitivity(),
        quant_sensitivity: p.quant_sensitivity(),
        seconds: p.seconds,
        expected_gain_summary: gain.as_ref().map(ExpectedGain::summary),
        expected_gain: gain,
    }
}

/// What [`WebModel::profile`] adds to the profile.
#[derive(Serialize)]
struct Ran {
    device: &'static str,
}

/// What [`WebModel::compress`]'s summary adds to the CLI's `--json` summary.
#[derive(Serialize)]
struct CompressSummary<'a> {
    layers: serde_json::Value,
    messages: &'a [String],
    options: &'a CompressOptions,
    user_policy: bool,
    calibration: Calibration<'a>,
    profile_info: Option<ProfileInfo<'a>>,
    total_seconds: f64,
}

/// The calibration data of a compression and where its passes ran.
#[derive(Serialize)]
struct Calibration<'a> {
    name: &'a str,
    rows: usize,
    tokens: usize,
    device: &'static str,
}

/// The profile LUC read: its cache key, whether this call measured it, and what it holds.
#[derive(Serialize)]
struct ProfileInfo<'a> {
    key: &'a str,
    measured: bool,
    seconds: f64,
    base_loss: Option<f64>,
    dloss: bool,
}

/// [`WebModel::compress`]'s result: the compressed file, the summary (JSON) and the
/// profile (JSON) when this call measured one.
#[derive(Serialize)]
struct Compressed<'a> {
    #[serde(with = "serde_bytes")]
    bytes: &'a [u8],
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
}
