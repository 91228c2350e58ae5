//! The compression pipeline, from a model and calibration rows to the compressed-model
//! file: profile (when LUC needs one and the caller has none cached), policy, Hessians,
//! per-projection compression, the file's bytes and what the formats forced (notes).
//! `edge-llm compress` and the page's `compress` both call [`compress`]; it does no I/O, so
//! each caller keeps profiles where it can (the CLI on disk, the page in IndexedDB) and
//! hands one back in.
//!
//! Progress is reported as `(stage, done, total)` with the stages "calibrate" (Hessians:
//! one forward per calibration row), "fisher" (one backward per row), "profile" (block ×
//! level) and "compress" (projections).
//!
//! The model passes (Hessians, Fisher diagonal) run on the GPU given as `gpu` (a profiling
//! [`GpuTrainer`], one pass at a time so their statistics are never resident together),
//! else on the CPU reference; the per-weight algebra after them stays on the CPU. The
//! caller picks the device (the CLI by `--device`, as `tune` does; the page: its WebGPU
//! device). The results are the same measurement either way (f32 sums on the GPU, f64 on
//! the CPU), so the profile's cache key does not name the device.

pub use super::allocation::{layer_counts, make_policy};
use super::calibration::{calibration_rows, collect_hessians, fisher_diagonal};
use super::file::{self, TensorReport};
pub use super::options::{CompressOptions, SparsityRule};
use super::policy::{Policy, PruneMethod, QuantMethod};
use super::profile::{profile, profile_key, Profile, ProfileOptions};
use crate::data::Dataset;
use crate::engine::{GpuTrainer, StatsPass};
use crate::kernels::GpuContext;
use crate::model::ModelFile;
use crate::reference::stats::{BlockFisher, LayerHessians};
use crate::reference::{Proj, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::Row;
use crate::{Error, Result};
use serde_json::json;

/// Calibration rows of `ds` by `o`'s row count and length.
pub fn calibration(ds: &Dataset, tok: &Tokenizer, o: &CompressOptions) -> Result<Vec<Row>> {
    calibration_rows(ds, tok, o.calib_rows, o.seq_len)
}

/// The longest row: what a profiling trainer's buffers are sized for.
fn longest(rows: &[Row]) -> usize {
    rows.iter()
        .map(|r| r.tokens.len())
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The GPU trainer of one statistics pass, sized for the longest of `rows`.
fn stats_trainer<'c>(
    ctx: &'c GpuContext,
    file: &ModelFile,
    rows: &[Row],
    pass: StatsPass,
) -> Result<GpuTrainer<'c>> {
    GpuTrainer::for_statistics(ctx, file, pass, &pass.options(longest(rows)))
}

/// XᵀX of every block's projection inputs over `rows`: on `gpu`
/// ([`GpuTrainer::collect_hessians`]) or the CPU ([`collect_hessians`]). `model` holds
/// `file`'s weights.
pub async fn hessians(
    file: &ModelFile,
    model: &Transformer<f32>,
    rows: &[Row],
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerHessians>> {
    match gpu {
        Some(ctx) => {
            let mut tr = stats_trainer(ctx, file, rows, StatsPass::Hessians)?;
            tr.collect_hessians(rows, progress).await
        }
        None => collect_hessians(model, rows, progress),
    }
}

/// The diagonal empirical Fisher over `rows`: on `gpu` ([`GpuTrainer::fisher_diagonal`])
/// or the CPU ([`fisher_diagonal`]).
pub async fn fisher(
    file: &ModelFile,
    model: &Transformer<f32>,
    rows: &[Row],
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<BlockFisher>> {
    match gpu {
        Some(ctx) => {
            let mut tr = stats_trainer(ctx, file, rows, StatsPass::Fisher)?;
            tr.fisher_diagonal(rows, progress).await
        }
        None => fisher_diagonal(model, rows, progress),
    }
}

/// Measures the profile of `file` (whose weights `model` holds) on `rows`: Hessians and
/// the Fisher diagonal (on `gpu` when given), then every block and level. Returns the
/// Hessians too, which compression reuses.
pub async fn measure_profile(
    file: &ModelFile,
    model: &mut Transformer<f32>,
    rows: &[Row],
    opts: &ProfileOptions,
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Profile, Vec<LayerHessians>)> {
    let t0 = web_time::Instant::now();
    let key = profile_key(&file.bytes, rows, opts);
    let hess = hessians(file, model, rows, gpu, &mut |d, t| {
        progress("calibrate", d, t)
    })
    .await?;
    // The Fisher rows in two halves (one part for a single row), each its own estimate,
    // so the profile can tell how far one half's choice holds on the other.
    let frows = &rows[..opts.fisher_rows.min(rows.len())];
    let split = if frows.len() >= 2 {
        frows.len() / 2
    } else {
        frows.len()
    };
    let mut fisher_parts = Vec::new();
    for (i, part) in [&frows[..split], &frows[split..]].into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let before = if i == 0 { 0 } else { split };
        let f = fisher(file, model, part, gpu, &mut |d, _| {
            progress("fisher", before + d, frows.len())
        })
        .await?;
        fisher_parts.push((part.len(), f));
    }
    let mut p = profile(model, &hess, &fisher_parts, rows, opts, key, &mut |d, t| {
        progress("profile", d, t)
    })?;
    p.seconds = t0.elapsed().as_secs_f64();
    Ok((p, hess))
}

/// The profile of `file` on `rows` (what [`profile_key`] keys a cache by), its model
/// passes on `gpu` when given.
pub async fn measure_file_profile(
    file: &ModelFile,
    rows: &[Row],
    opts: &ProfileOptions,
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Profile> {
    let mut model = Transformer::new(file.weights()?);
    Ok(measure_profile(file, &mut model, rows, opts, gpu, progress)
        .await?
        .0)
}

/// A compressed model and what was done to make it.
pub struct Compressed {
    /// The compressed-model file (GGUF).
    pub bytes: Vec<u8>,
    pub policy: Policy,
    /// One per projection, block by block in [`Proj::ALL`] order.
    pub reports: Vec<TensorReport>,
    /// What the formats forced (sparse values widened, GPTQ vs RTN).
    pub notes: Vec<String>,
    /// Choices made for the user (2:4 with LUC, RTN without calibration data).
    pub messages: Vec<String>,
    /// The profile LUC used (measured here when none was given), for the caller to cache.
    pub profile: Option<Profile>,
    /// Whether `profile` was measured by this call.
    pub profile_measured: bool,
    pub original_file_bytes: usize,
    /// Seconds spent compressing the projections (Hessians and profile excluded).
    pub seconds: f64,
}

impl Compressed {
    /// The summary `edge-llm compress --json` prints (without `out`).
    pub fn to_json(&self) -> serde_json::Value {
        let f32_bytes: usize = self.reports.iter().map(|r| r.f32_bytes).sum();
        let packed: usize = self.reports.iter().map(|r| r.packed_bytes).sum();
        json!({"policy": self.policy, "file_bytes": self.bytes.len(),
               "original_file_bytes": self.original_file_bytes,
               "projection_f32_bytes": f32_bytes, "projection_packed_bytes": packed,
               "seconds": self.seconds, "notes": self.notes, "tensors": self.reports})
    }

    /// Per block: the policy's sparsity and width, the stored format, bytes before and
    /// after, and the profile's sensitivities when there is one.
    pub fn layers_json(&self) -> serde_json::Value {
        let np = Proj::ALL.len();
        let sens = self
            .profile
            .as_ref()
            .map(|p| (p.prune_sensitivity(), p.quant_sensitivity()));
        let layers: Vec<_> = self
            .policy
            .layers
            .iter()
            .enumerate()
            .map(|(l, lp)| {
                let rs = self.reports.get(l * np..(l + 1) * np).unwrap_or(&[]);
                let first = rs.first();
                json!({
                    "layer": l,
                    "sparsity": lp.sparsity,
                    "bits": lp.bits,
                    "format": first.map(|r| r.format.clone()),
                    "values": first.and_then(|r| r.values.clone()),
                    "f32_bytes": rs.iter().map(|r| r.f32_bytes).sum::<usize>(),
                    "packed_bytes": rs.iter().map(|r| r.packed_bytes).sum::<usize>(),
                    "prune_sensitivity": sens.as_ref().and_then(|s| s.0.get(l)),
                    "quant_sensitivity": sens.as_ref().and_then(|s| s.1.get(l)),
                })
            })
            .collect();
        json!(layers)
    }
}

/// Compresses `file` by `o` (or by `user_policy`, which overrides the allocation and
/// method settings), calibrating on `rows` (None: magnitude pruning and round-to-nearest
/// only). LUC takes `profile` when given (a cached one) and measures it otherwise,
/// reusing the Hessians for compression. The model passes run on `gpu` when given.
pub async fn compress(
    file: &ModelFile,
    rows: Option<&[Row]>,
    o: &CompressOptions,
    user_policy: Option<Policy>,
    profile: Option<Profile>,
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Compressed> {
    if crate::formats::packed::is_compressed(&file.gguf) {
        return Err(Error::Invalid(
            "this model is already compressed; compress the original model".into(),
        ));
    }
    let c = &file.config;
    let mut model = Transformer::new(file.weights()?);
    let mut hess: Option<Vec<LayerHessians>> = None;
    let mut measured = false;
    let profile = match profile {
        Some(p) => {
            p.check(c.n_layers)?;
            let opts = o.profile_options();
            let stale = p.options != opts
                || rows.is_some_and(|r| p.key != profile_key(&file.bytes, r, &opts));
            if stale {
                return Err(Error::Invalid(
                    "the profile given was measured on another model, other calibration data or \
                     other settings: profile again"
                        .into(),
                ));
            }
            Some(p)
        }
        None if o.needs_profile(user_policy.is_some()) => {
            let rows = rows.ok_or_else(|| {
                Error::Invalid("--allocation luc needs --calib for the profile".into())
            })?;
            let opts = o.profile_options();
            let (p, h) = measure_profile(file, &mut model, rows, &opts, gpu, progress).await?;
            hess = Some(h);
            measured = true;
            Some(p)
        }
        None => None,
    };
    let luc = o.needs_profile(user_policy.is_some());
    let (policy, mut messages) = make_policy(c, o, user_policy, profile.as_ref())?;
    if rows.is_none() && policy.quant == QuantMethod::Gptq {
        messages
            .push("no --calib, so dense layers are quantized by round-to-nearest, not GPTQ".into());
    }
    // Hessians only where a stage reads them: SparseGPT/Wanda pruning or GPTQ.
    let needs_hess = policy.quant == QuantMethod::Gptq
        || (policy.prune != PruneMethod::Magnitude
            && policy.layers.iter().any(|l| l.sparsity > 0.0));
    let hess = match (rows.filter(|_| needs_hess), hess) {
        (Some(_), Some(h)) => Some(h),
        (Some(r), None) => Some(
            hessians(file, &model, r, gpu, &mut |d, t| {
                progress("calibrate", d, t)
            })
            .await?,
        ),
        (None, _) => None,
    };
    let mut c = compress_by(file, &model, hess.as_deref(), policy, progress)?;
    c.messages = messages;
    c.profile = profile.filter(|_| luc);
    c.profile_measured = measured;
    Ok(c)
}

/// Compresses `file` (whose weights `model` holds, dense) by `policy`, with the Hessians
/// its pruning and GPTQ read (None: magnitude pruning and round-to-nearest only): the step
/// after calibration, for callers that calibrate once and compress several ways
/// (`edge-llm bench compress`). Reports the "compress" stage.
pub fn compress_by(
    file: &ModelFile,
    model: &Transformer<f32>,
    hess: Option<&[LayerHessians]>,
    policy: Policy,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Compressed> {
    let t0 = web_time::Instant::now();
    let (tensors, reports) = file::compress_model(&model.w, hess, &policy, &mut |d, t| {
        progress("compress", d, t)
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let bytes = file::write(&file.gguf, &file.bytes, &policy, &tensors)?;
    let notes = notes(&policy, &reports);
    Ok(Compressed {
        bytes,
        policy,
        reports,
        notes,
        messages: Vec::new(),
        profile: None,
        profile_measured: false,
        original_file_bytes: file.bytes.len(),
        seconds,
    })
}

/// What the output should say about choices the formats forced.
pub fn notes(policy: &Policy, reports: &[TensorReport]) -> Vec<String> {
    let mut notes = Vec::new();
    let sparse_q: Vec<usize> = (0..policy.layers.len())
        .filter(|&l| policy.layers[l].sparsity > 0.0)
        .collect();
    if !sparse_q.is_empty() {
        notes.push(format!(
            "{} sparse layer(s): no kernel reads sparse and packed-quantized weights jointly, so \
             their kept values are stored in int8 (8 bits) or int4 (2/3/4 bits: a 2- or 3-bit \
             grid in 4-bit codes, so it costs 4 bits of storage) with per-64-column scales",
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

/// Where a profile was found or put, and whether it was read from the cache.
#[cfg(not(target_arch = "wasm32"))]
pub struct Cached {
    pub profile: Profile,
    pub path: std::path::PathBuf,
    pub cached: bool,
}

/// The cached profile of `file` on `calib` at `dir/<key>.json`, if there is a valid one.
#[cfg(not(target_arch = "wasm32"))]
pub fn cached_profile(
    dir: &std::path::Path,
    file: &ModelFile,
    calib: &[Row],
    opts: &ProfileOptions,
) -> Option<Cached> {
    let key = profile_key(&file.bytes, calib, opts);
    let path = dir.join(format!("{key}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    let p = serde_json::from_str::<Profile>(&text).ok()?;
    (p.key == key && p.check(file.config.n_layers).is_ok()).then_some(Cached {
        profile: p,
        path,
        cached: true,
    })
}

/// Writes `p` to `dir/<key>.json` (whole or not at all) and returns the path.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_profile(dir: &std::path::Path, p: &Profile) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{}.json", p.key));
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_string_pretty(p).map_err(|e| Error::Io(e.to_string()))?;
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// The profile of `file` on `calib`, from `dir/<key>.json` if present and valid, else
/// measured (Hessians and the Fisher diagonal, on `gpu` when given, then every block and
/// level) and written there. The key does not name the device: both measure the same.
/// `progress(stage, done, total)` reports the "calibrate", "fisher" and "profile" stages.
/// (`compress` does not call this on a miss: it measures the profile itself, so that its
/// Hessians serve the compression too, and saves it after.)
#[cfg(not(target_arch = "wasm32"))]
pub async fn profile_cached(
    dir: &std::path::Path,
    file: &ModelFile,
    calib: &[Row],
    opts: &ProfileOptions,
    gpu: Option<&GpuContext>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Cached> {
    if let Some(c) = cached_profile(dir, file, calib, opts) {
        return Ok(c);
    }
    let p = measure_file_profile(file, calib, opts, gpu, progress).await?;
    let path = save_profile(dir, &p)?;
    Ok(Cached {
        profile: p,
        path,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::policy::Allocation;
    use crate::model::tiny::{generate, TinySpec};

    /// [`super::compress`] on the CPU, waited for.
    fn compress(
        file: &ModelFile,
        rows: Option<&[Row]>,
        o: &CompressOptions,
        user: Option<Policy>,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Compressed> {
        pollster::block_on(super::compress(
            file, rows, o, user, profile, None, progress,
        ))
    }

    /// [`super::measure_file_profile`] on the CPU, waited for.
    fn measure_file_profile(
        file: &ModelFile,
        rows: &[Row],
        opts: &ProfileOptions,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Profile> {
        pollster::block_on(super::measure_file_profile(
            file, rows, opts, None, progress,
        ))
    }

    const TEXT: &str = "the quick brown fox jumps over the lazy dog while the cat sleeps on \
                        the warm mat and the bird sings in the tall green tree. ";

    fn setup() -> (ModelFile, Vec<Row>) {
        let file = ModelFile::from_bytes(generate(&TinySpec::default()).unwrap()).unwrap();
        let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
        let ds = Dataset::parse("calib.txt", &TEXT.repeat(4)).unwrap();
        let o = CompressOptions {
            calib_rows: 4,
            seq_len: 48,
            ..CompressOptions::default()
        };
        let rows = calibration(&ds, &tok, &o).unwrap();
        (file, rows)
    }

    fn luc() -> CompressOptions {
        CompressOptions {
            sparsity: 0.3,
            calib_rows: 4,
            seq_len: 48,
            ..CompressOptions::default()
        }
    }

    #[test]
    fn a_given_profile_compresses_as_a_measured_one() {
        let (file, rows) = setup();
        let mut stages = Vec::new();
        let a = compress(&file, Some(&rows), &luc(), None, None, &mut |s, _, _| {
            if stages.last().is_none_or(|l| l != s) {
                stages.push(s.to_owned());
            }
        })
        .unwrap();
        // The profile's Hessians are reused: one calibration pass.
        assert_eq!(stages, ["calibrate", "fisher", "profile", "compress"]);
        assert!(a.profile_measured);
        let p = a.profile.clone().unwrap();
        assert_eq!(
            p.key,
            profile_key(&file.bytes, &rows, &luc().profile_options())
        );
        let b = compress(&file, Some(&rows), &luc(), None, Some(p), &mut |_, _, _| {}).unwrap();
        assert!(!b.profile_measured);
        assert_eq!(a.policy, b.policy);
        assert!(a.bytes == b.bytes, "the same file from a cached profile");
        assert_eq!(a.policy.allocation, Allocation::Luc);
        let mean = a.policy.mean_sparsity();
        assert!((mean - 0.3).abs() < 1e-9, "mean sparsity {mean}");
    }

    /// The profile measures the Fisher rows in two halves, and its whole estimate is the
    /// one made from all rows at once (the estimate is linear in F).
    #[test]
    fn the_fisher_halves_make_the_whole_estimate() {
        let (file, rows) = setup();
        let opts = CompressOptions {
            fisher_rows: 4,
            ..luc()
        }
        .profile_options();
        let p = measure_file_profile(&file, &rows, &opts, &mut |_, _, _| {}).unwrap();
        assert!(p.layers.iter().all(|l| l.fisher_halves.len() == 2));
        let (a, b) = (p.half(0).unwrap(), p.half(1).unwrap());
        assert_ne!(a.layers[0].prune_fisher, b.layers[0].prune_fisher);
        let mut model = Transformer::new(file.weights().unwrap());
        let hess = collect_hessians(&model, &rows, &mut |_, _| {}).unwrap();
        let all = fisher_diagonal(&model, &rows[..4], &mut |_, _| {}).unwrap();
        let one = profile(
            &mut model,
            &hess,
            &[(4, all)],
            &rows,
            &opts,
            p.key.clone(),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(one.layers.iter().all(|l| l.fisher_halves.is_empty()));
        for (x, y) in p.layers.iter().zip(&one.layers) {
            let pairs = x
                .prune_fisher
                .iter()
                .zip(&y.prune_fisher)
                .chain(x.quant_fisher.iter().zip(&y.quant_fisher))
                .chain(
                    x.joint_fisher
                        .iter()
                        .flatten()
                        .zip(y.joint_fisher.iter().flatten()),
                );
            for (u, v) in pairs {
                assert!((u - v).abs() <= 1e-5 * v.abs().max(1e-12), "{u} vs {v}");
            }
        }
    }

    #[test]
    fn a_profile_of_other_data_or_settings_is_refused() {
        let (file, rows) = setup();
        let p = measure_file_profile(
            &file,
            &rows[..2],
            &luc().profile_options(),
            &mut |_, _, _| {},
        )
        .unwrap();
        let e = compress(
            &file,
            Some(&rows),
            &luc(),
            None,
            Some(p.clone()),
            &mut |_, _, _| {},
        );
        assert!(e.is_err_and(|e| e.to_string().contains("profile again")));
        let other = CompressOptions {
            loss_rows: 1,
            ..luc()
        };
        let e = compress(
            &file,
            Some(&rows[..2]),
            &other,
            None,
            Some(p),
            &mut |_, _, _| {},
        );
        assert!(e.is_err_and(|e| e.to_string().contains("profile again")));
    }

    #[test]
    fn options_are_checked() {
        assert!(CompressOptions::from_json("").is_ok());
        let e = |j: &str| CompressOptions::from_json(j).unwrap_err().to_string();
        assert!(e(r#"{"allocation": "manual"}"#).contains("policy file"));
        assert!(e(r#"{"sparsty": 0.5}"#).contains("unknown field"));
        assert!(e(r#"{"calib_rows": 0}"#).contains("calib_rows"));
        let (file, rows) = setup();
        let uniform = CompressOptions {
            allocation: Allocation::Uniform,
            bits: 3.5,
            ..luc()
        };
        let e = compress(&file, Some(&rows), &uniform, None, None, &mut |_, _, _| {});
        assert!(e.is_err_and(|e| e.to_string().contains("must be 2, 3, 4 or 8")));
        // A user's policy must fit the model.
        let bad = super::super::policy::uniform(3, 0.0, 4).unwrap();
        let e = compress(
            &file,
            Some(&rows),
            &luc(),
            Some(bad),
            None,
            &mut |_, _, _| {},
        );
        assert!(e.is_err_and(|e| e.to_string().contains("3 layer entries")));
        let e = CompressOptions::from_json(r#"{"sparsity_rule": "least_error"}"#);
        assert!(e.is_err_and(|e| e.to_string().contains("unknown variant")));
    }

    /// Both sparsity rules read the same profile and meet the mean; the least-error rule's
    /// allocation is, by the profile's own estimate, no worse than the reference rule's.
    #[test]
    fn sparsity_rules_meet_the_mean_and_least_error_wins_by_its_estimate() {
        let (file, rows) = setup();
        let p = measure_file_profile(&file, &rows, &luc().profile_options(), &mut |_, _, _| {})
            .unwrap();
        let (grid, err) = p.prune_errors(Some(4));
        let estimate = |s: &[f64]| -> f64 {
            s.iter()
                .zip(&err)
                .map(|(&v, e)| super::super::policy::interpolate(&grid, e, v))
                .sum()
        };
        let mut got = Vec::new();
        for rule in [SparsityRule::LeastError, SparsityRule::Reference] {
            let o = CompressOptions {
                sparsity_rule: rule,
                ..luc()
            };
            let (policy, _) = make_policy(&file.config, &o, None, Some(&p)).unwrap();
            let s: Vec<f64> = policy.layers.iter().map(|l| l.sparsity).collect();
            assert!(
                (policy.mean_sparsity() - 0.3).abs() < 1e-9,
                "{rule:?}: {s:?}"
            );
            got.push(estimate(&s));
        }
        let uniform = estimate(&vec![0.3; file.config.n_layers]);
        assert!(
            got[0] <= got[1] + 1e-12 && got[0] <= uniform + 1e-12,
            "{got:?} {uniform}"
        );
        let o = CompressOptions::from_json(r#"{"sparsity_rule": "reference"}"#).unwrap();
        assert_eq!(o.sparsity_rule, SparsityRule::Reference);
    }

    /// No block gets a width below the target's, even where the estimate says that
    /// would pay: here 2 bits look free in block 0 and 4 bits worth much in block 1.
    #[test]
    fn no_width_below_the_targets() {
        use super::super::profile::FISHER_SPARSITIES;
        let (file, rows) = setup();
        let mut p = measure_file_profile(&file, &rows, &luc().profile_options(), &mut |_, _, _| {})
            .unwrap();
        for (l, lp) in p.layers.iter_mut().enumerate() {
            let row = match l {
                0 => vec![1.0, 1.0, 1.0, 0.0],
                1 => vec![100.0, 50.0, 1.0, 0.0],
                _ => vec![100.0, 10.0, 1.0, 0.0],
            };
            lp.quant_fisher = row.clone();
            lp.joint_fisher = vec![row; FISHER_SPARSITIES.len()];
        }
        let o = CompressOptions { bits: 3.0, ..luc() };
        let (policy, _) = make_policy(&file.config, &o, None, Some(&p)).unwrap();
        let bits: Vec<u32> = policy.layers.iter().map(|l| l.bits).collect();
        assert!(bits.iter().all(|&b| b == 3), "{bits:?}");
        // With a target of 2.5 the narrow width is allowed, and taken where it is cheap.
        let o = CompressOptions { bits: 2.5, ..luc() };
        let (policy, _) = make_policy(&file.config, &o, None, Some(&p)).unwrap();
        assert_eq!(policy.layers[0].bits, 2, "{:?}", policy.layers);
    }
}
