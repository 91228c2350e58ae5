//! LUC sensitivity profiling (EDGE-LLM.md §1): for each transformer block alone, how much
//! pruning it at each sparsity of [`SPARSITIES`] and quantizing it at each width of
//! [`BITS`] hurts, measured three ways on calibration rows:
//!
//! * output MSE: Σ over the block's 7 projections of [`Hessian::output_mse`] (the mean
//!   squared error of the projection's output over every calibration token, from XᵀX, so
//!   no output is recomputed; computed as [`output_mse_gemm`]);
//! * Δloss: the model's mean cross-entropy on the first `loss_rows` calibration rows with
//!   only that block compressed, minus the uncompressed loss (one full forward per block
//!   and level: L × 11 forwards per row, which is why `loss_rows` is small and may be 0);
//! * Fisher estimate of Δloss: ½ Σ F ⊙ (W − Ŵ)² with F the diagonal empirical Fisher of
//!   the block's weights (the mean squared loss gradient of each of the first
//!   `fisher_rows` calibration rows, `fisher_diagonal`: one backward per row, then no
//!   forward per level). It is the second-order term of the loss change (the first-order
//!   term averages out at a trained minimum), comparable across blocks (unlike the output
//!   MSE, which grows with the residual stream's scale through depth) and smooth (unlike
//!   Δloss on one or two rows). It is also measured on the finer sparsity grid
//!   [`FISHER_SPARSITIES`], which the sparsity allocator needs, and jointly: pruned at
//!   each grid sparsity, then the kept weights stored at each width as compression stores
//!   a sparse layer (`joint_fisher`), since a sparse block loses more to a narrow width.
//!
//! Pruning uses the chosen method (Wanda by default: calibration-aware and about 20× cheaper
//! than SparseGPT's sweeps, which matters with 30 blocks × 7 levels × 7 projections);
//! quantization is round-to-nearest with the policy's groups. The policies read the Fisher
//! estimate when it was made, else Δloss, else the output MSE ([`Profile::error_source`]);
//! the per-block sensitivity S_l of the reference rules is the mean over levels.
//!
//! The Hessians (XᵀX of each projection input: n1 for q/k/v, attn for o, n2 for gate/up,
//! act for down) are collected once (`super::calibration` on the CPU, the GPU engine's
//! statistics pass otherwise; [`super::pipeline`] picks one by device) and are what
//! SparseGPT/GPTQ need to compress, so `compress` reuses them. Natively,
//! `pipeline::profile_cached` keys a JSON cache file by a hash of the model bytes, the
//! calibration tokens and the settings, so a second run with the same inputs is instant.

use super::policy::PruneMethod;
use super::prune::{prune_magnitude, prune_sparsegpt, prune_wanda, ObsOptions, Sparsity};
use crate::formats::quant::{quantize, BITS};
use crate::formats::sparse::{UnstructuredMatrix, ValueType};
use crate::model::LayerWeights;
use crate::reference::stats::{BlockFisher, Hessian, LayerHessians};
use crate::reference::{ops, Proj, Real, Transformer};
use crate::train::Row;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Sparsity levels measured per block (EDGE-LLM.md §1).
pub const SPARSITIES: [f64; 7] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9];
/// The finer sparsity grid of the Fisher estimate (every 0.05 up to
/// [`super::policy::MAX_LAYER_SPARSITY`]; it contains [`SPARSITIES`]).
pub const FISHER_SPARSITIES: [f64; 18] = [
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85,
    0.9,
];
/// Version of the cached profile JSON; a different version is recomputed.
pub const PROFILE_VERSION: u32 = 4;
/// OWL's outlier threshold: a weight is an outlier of its block when its Wanda score
/// |W_ij|·‖X_j‖ exceeds this many times the block's mean score (Yin et al. 2023, "Outlier
/// Weighed Layerwise Sparsity"; their default).
pub const OUTLIER_M: f64 = 5.0;

/// Projection `p`'s weight `[out][in]` in a block: borrowed when dense (compression
/// loads the model dense), dequantized when the CPU engine holds it packed.
pub fn weight_of(l: &LayerWeights<f32>, p: Proj) -> std::borrow::Cow<'_, [f32]> {
    p.weight(l).values()
}

/// The Fisher estimate of the loss change from replacing `w` by `w_hat`:
/// ½ Σ F ⊙ (W − Ŵ)².
pub fn fisher_error(f: &[f32], w: &[f32], w_hat: &[f32]) -> f64 {
    f.iter()
        .zip(w.iter().zip(w_hat))
        .map(|(&fi, (&a, &b))| {
            let d = a as f64 - b as f64;
            fi as f64 * d * d
        })
        .sum::<f64>()
        / 2.0
}

/// How a profile is measured (part of the cache key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileOptions {
    /// Pruning method for the sparsity levels (unstructured pattern).
    pub method: PruneMethod,
    /// Quantization group (RTN) for the width levels.
    pub group: usize,
    pub symmetric: bool,
    /// Calibration rows whose loss is measured per block and level (0: no Δloss).
    pub loss_rows: usize,
    /// Calibration rows whose loss gradients make the Fisher diagonal (0: no Fisher
    /// estimate).
    pub fisher_rows: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            method: PruneMethod::Wanda,
            group: 32,
            symmetric: true,
            loss_rows: 0,
            fisher_rows: 16,
        }
    }
}

/// One block's measurements; index i of a `prune_*` vector is `SPARSITIES[i]`, of a
/// `quant_*` vector `BITS[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    pub prune_mse: Vec<f64>,
    pub quant_mse: Vec<f64>,
    /// Empty when `loss_rows` is 0.
    pub prune_dloss: Vec<f64>,
    pub quant_dloss: Vec<f64>,
    /// Fisher estimate of the loss change at each sparsity of [`FISHER_SPARSITIES`]
    /// (empty when `fisher_rows` is 0).
    #[serde(default)]
    pub prune_fisher: Vec<f64>,
    /// Fisher estimate at each width of [`BITS`] (empty when `fisher_rows` is 0).
    #[serde(default)]
    pub quant_fisher: Vec<f64>,
    /// Fisher estimate of pruning at each sparsity of [`FISHER_SPARSITIES`] and then
    /// storing the kept weights at each width of [`BITS`], as compression stores a sparse
    /// layer (`[sparsity][width]`; empty when `fisher_rows` is 0). A sparse layer's width
    /// costs more than a dense one's (at 2 bits its kept weights round to ±1 or 0 of a
    /// scale per 64 columns), which the dense `quant_fisher` does not see.
    #[serde(default)]
    pub joint_fisher: Vec<Vec<f64>>,
    /// The same three Fisher estimates from each half of the Fisher rows (two entries
    /// when `fisher_rows` ≥ 2, else none): `prune_fisher` and the rest are their
    /// row-weighted mean (the estimate is linear in F). What tells signal from noise:
    /// a choice made on one half is judged on the other ([`super::allocation`]).
    #[serde(default)]
    pub fisher_halves: Vec<FisherLevels>,
    /// Fraction of the block's weights whose Wanda score |W_ij|·‖X_j‖ exceeds
    /// [`OUTLIER_M`] × the block's mean score (OWL's layerwise outlier ratio).
    #[serde(default)]
    pub outlier_ratio: f64,
}

/// One Fisher estimate of a block at every level (as `LayerProfile`'s `*_fisher`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FisherLevels {
    pub prune: Vec<f64>,
    pub quant: Vec<f64>,
    pub joint: Vec<Vec<f64>>,
}

/// A whole model's sensitivity profile (what the cache file holds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    /// Hex hash of (model bytes, calibration tokens, options): the cache key.
    pub key: String,
    pub options: ProfileOptions,
    pub calib_rows: usize,
    pub calib_tokens: usize,
    pub sparsities: Vec<f64>,
    pub bits: Vec<u32>,
    /// Uncompressed loss on the loss rows (None when `loss_rows` is 0).
    pub base_loss: Option<f64>,
    pub layers: Vec<LayerProfile>,
    /// Wall time of the measurement (with the Hessians when made by [`profile_cached`]).
    pub seconds: f64,
}

/// Errors at the widths of [`BITS`], at least 0 and never below a wider width's.
fn monotone_widths(src: &[f64]) -> [f64; 4] {
    let mut e = [0.0; 4];
    for (d, s) in e.iter_mut().zip(src) {
        *d = s.max(0.0);
    }
    for i in (0..e.len() - 1).rev() {
        e[i] = e[i].max(e[i + 1]);
    }
    e
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Which measurement of a [`Profile`] the policies read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The Fisher estimate of the loss change (when `fisher_rows` > 0).
    Fisher,
    /// The measured loss change (when `loss_rows` > 0).
    Dloss,
    /// The block's output MSE (always measured; not comparable across depth).
    Mse,
}

impl Profile {
    /// Whether the loss change was measured for every block (`loss_rows` > 0).
    pub fn has_dloss(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.prune_dloss.len() == SPARSITIES.len() && l.quant_dloss.len() == BITS.len())
    }

    /// Whether the Fisher estimate was made for every block (`fisher_rows` > 0).
    pub fn has_fisher(&self) -> bool {
        self.layers.iter().all(|l| {
            l.prune_fisher.len() == FISHER_SPARSITIES.len()
                && l.quant_fisher.len() == BITS.len()
                && l.joint_fisher.len() == FISHER_SPARSITIES.len()
                && l.joint_fisher.iter().all(|r| r.len() == BITS.len())
        })
    }

    /// What the policies read: the Fisher estimate where made, else the measured loss
    /// change, else the output MSE. The loss change is what the policy should spare: a
    /// block's output MSE grows with the residual stream's scale through depth
    /// (SmolLM2-135M: 0.2 at block 0, 7.8 at block 29), so ranking by it prunes the first
    /// blocks hardest although their loss change is the largest; on the real model at mean
    /// sparsity 0.5 and 4 bits the MSE ranking gave perplexity 88.3 against uniform's
    /// 62.9. Δloss on one or two rows is mostly noise at mild levels (a 2-bit change
    /// measured −0.34 … +1.7 on ARC rows), which the Fisher estimate is not.
    pub fn error_source(&self) -> ErrorSource {
        if self.has_fisher() {
            ErrorSource::Fisher
        } else if self.has_dloss() {
            ErrorSource::Dloss
        } else {
            ErrorSource::Mse
        }
    }

    /// This profile with half `h` (0 or 1) of the Fisher rows as its Fisher estimate
    /// (None unless it has two halves).
    pub fn half(&self, h: usize) -> Option<Profile> {
        if !self.layers.iter().all(|l| l.fisher_halves.len() == 2) || h > 1 {
            return None;
        }
        let mut p = self.clone();
        for l in &mut p.layers {
            let f = l.fisher_halves.swap_remove(h);
            (l.prune_fisher, l.quant_fisher, l.joint_fisher) = (f.prune, f.quant, f.joint);
            l.fisher_halves.clear();
        }
        Some(p)
    }

    /// Block `l`'s pruning errors from [`Self::error_source`], on the grid it was measured
    /// on ([`FISHER_SPARSITIES`] for the Fisher estimate, else [`SPARSITIES`]).
    fn prune_source(&self, l: &LayerProfile) -> (&'static [f64], Vec<f64>) {
        match self.error_source() {
            ErrorSource::Fisher => (&FISHER_SPARSITIES, l.prune_fisher.clone()),
            ErrorSource::Dloss => (&SPARSITIES, l.prune_dloss.clone()),
            ErrorSource::Mse => (&SPARSITIES, l.prune_mse.clone()),
        }
    }

    pub(super) fn quant_source<'a>(&self, l: &'a LayerProfile) -> &'a [f64] {
        match self.error_source() {
            ErrorSource::Fisher => &l.quant_fisher,
            ErrorSource::Dloss => &l.quant_dloss,
            ErrorSource::Mse => &l.quant_mse,
        }
    }

    /// Block `l`'s pruning errors from [`Self::error_source`] at the levels of
    /// [`SPARSITIES`].
    pub(super) fn prune_levels(&self, l: &LayerProfile) -> Vec<f64> {
        let (grid, e) = self.prune_source(l);
        SPARSITIES
            .iter()
            .filter_map(|s| grid.iter().position(|g| g == s).and_then(|i| e.get(i)))
            .copied()
            .collect()
    }

    /// S_l for pruning (the reference's per-layer sensitivity): the mean error over the
    /// levels of [`SPARSITIES`], from [`Self::error_source`].
    pub fn prune_sensitivity(&self) -> Vec<f64> {
        self.layers
            .iter()
            .map(|l| mean(&self.prune_levels(l)))
            .collect()
    }

    /// S_l for quantization: the mean error over the widths of [`BITS`].
    pub fn quant_sensitivity(&self) -> Vec<f64> {
        self.layers
            .iter()
            .map(|l| mean(self.quant_source(l)))
            .collect()
    }

    /// Per-block pruning error as [`super::policy::allocate_sparsity`] takes it: the
    /// grid (starting at sparsity 0) and each block's errors on it, from
    /// [`Self::error_source`], made non-negative and non-decreasing in the sparsity (a
    /// sparser block never looks better, whatever the noise). With `width` and the Fisher
    /// estimate, each level's error is that of the block pruned and stored at `width`
    /// (`joint_fisher`; dense at `width` for sparsity 0), since the kept weights of a
    /// sparser block lose more to a narrow width; else the pruning alone (0 at sparsity 0).
    pub fn prune_errors(&self, width: Option<u32>) -> (Vec<f64>, Vec<Vec<f64>>) {
        let wi = width.and_then(|b| BITS.iter().position(|&x| x == b));
        let joint = self.error_source() == ErrorSource::Fisher;
        let mut grid = vec![0.0];
        let errs = self
            .layers
            .iter()
            .map(|l| {
                let (g, mut e) = self.prune_source(l);
                if grid.len() == 1 {
                    grid.extend_from_slice(g);
                }
                let mut out = vec![0.0];
                if let (Some(i), true) = (wi, joint) {
                    out[0] = l.quant_fisher[i].max(0.0);
                    e = l.joint_fisher.iter().map(|r| r[i]).collect();
                }
                for v in e {
                    let last = out.last().copied().unwrap_or(0.0);
                    out.push(v.max(last));
                }
                out
            })
            .collect();
        (grid, errs)
    }

    /// Per-block error at each width of [`BITS`], as [`super::policy::allocate_bits`]
    /// takes it, from [`Self::error_source`]; made monotone, so a width never looks
    /// better than a wider one (each entry is at least the next wider one's) and never
    /// below 0. Why: taken as it is, a noisy Δloss that came out ≤ 0 at 2 bits made 2 bits
    /// look free (LUC at a mean of 4 bits then made a model of NLL 9.3 where every block at
    /// 4 bits is exact). (A fitted loss-per-MSE slope was tried and lost: perplexity 123 vs
    /// 60 at 4 bits and sparsity 0.5, since it underrates the blocks with outlier outputs.)
    pub fn quant_errors(&self) -> Vec<[f64; 4]> {
        self.layers
            .iter()
            .map(|l| monotone_widths(self.quant_source(l)))
            .collect()
    }

    /// Per-block error at each width of [`BITS`] once block l is pruned to `sparsity[l]`:
    /// with the Fisher estimate, the joint estimate (prune, then store the kept weights)
    /// less the pruning's own, interpolated linearly between the grid's sparsities (the
    /// dense `quant_fisher` at 0); without it, [`Self::quant_errors`]. Made monotone in
    /// the width as there. Why: at a mean of 3 bits, LUC read the dense errors and gave 2
    /// bits to a block it had pruned to 0.65, whose kept weights then mostly rounded to 0
    /// (Shakespeare perplexity 379 against uniform's 268).
    pub fn quant_errors_at(&self, sparsity: &[f64]) -> Vec<[f64; 4]> {
        if !self.has_fisher() || sparsity.len() != self.layers.len() {
            return self.quant_errors();
        }
        self.layers
            .iter()
            .zip(sparsity)
            .map(|(l, &s)| {
                // Increments over the pruning alone at 0 and at every grid sparsity.
                let row = |i: Option<usize>| -> Vec<f64> {
                    match i {
                        None => l.quant_fisher.clone(),
                        Some(i) => l.joint_fisher[i]
                            .iter()
                            .map(|e| e - l.prune_fisher[i])
                            .collect(),
                    }
                };
                let hi = FISHER_SPARSITIES.iter().position(|&g| g >= s);
                let e = match hi {
                    _ if s <= 0.0 => row(None),
                    None => row(Some(FISHER_SPARSITIES.len() - 1)),
                    Some(i) => {
                        let (g0, r0) = match i {
                            0 => (0.0, row(None)),
                            _ => (FISHER_SPARSITIES[i - 1], row(Some(i - 1))),
                        };
                        let t = ((s - g0) / (FISHER_SPARSITIES[i] - g0)).clamp(0.0, 1.0);
                        r0.iter()
                            .zip(row(Some(i)))
                            .map(|(a, b)| a + t * (b - a))
                            .collect()
                    }
                };
                monotone_widths(&e)
            })
            .collect()
    }

    /// Checks the shape against a model of `n_layers` blocks (a cache file may be stale
    /// or edited).
    pub fn check(&self, n_layers: usize) -> Result<()> {
        let ok = self.version == PROFILE_VERSION
            && self.layers.len() == n_layers
            && self.sparsities == SPARSITIES
            && self.bits == BITS
            && self.layers.iter().all(|l| {
                l.prune_mse.len() == SPARSITIES.len()
                    && l.quant_mse.len() == BITS.len()
                    && l.prune_mse
                        .iter()
                        .chain(&l.quant_mse)
                        .chain(&l.prune_fisher)
                        .chain(&l.quant_fisher)
                        .chain(l.joint_fisher.iter().flatten())
                        .chain(l.fisher_halves.iter().flat_map(|h| {
                            h.prune
                                .iter()
                                .chain(&h.quant)
                                .chain(h.joint.iter().flatten())
                        }))
                        .all(|v| v.is_finite() && *v >= 0.0)
                    && (0.0..=1.0).contains(&l.outlier_ratio)
                    && matches!(l.fisher_halves.len(), 0 | 2)
                    && l.fisher_halves.iter().all(|h| {
                        h.prune.len() == l.prune_fisher.len()
                            && h.quant.len() == l.quant_fisher.len()
                            && h.joint.len() == l.joint_fisher.len()
                            && h.joint.iter().all(|r| r.len() == BITS.len())
                    })
            });
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "profile: does not match this build or a model of {n_layers} layers"
            )))
        }
    }
}

/// Mean cross-entropy of `rows` under the model.
fn loss_on(model: &Transformer<f32>, rows: &[Row]) -> f64 {
    let vocab = model.w.config.vocab;
    let mut total = 0.0;
    for r in rows {
        let logits = model.logits(&r.tokens, None);
        total += ops::cross_entropy_forward(&logits, &r.targets, vocab).0 as f64;
    }
    total / rows.len().max(1) as f64
}

/// [`Hessian::output_mse`] by one matrix product: tr(D·H·Dᵀ)/(2n) with D = W − Ŵ `[n][k]`
/// and `h` = H = 2XᵀX/m from [`Hessian::matrix`]. The same number (tested), but the
/// product runs in the tuned, threaded gemm: the profile makes 77 such calls per block.
pub fn output_mse_gemm(h: &[f64], k: usize, w: &[f32], w_hat: &[f32], n: usize) -> f64 {
    assert_eq!(h.len(), k * k, "output_mse_gemm: H is not {k}×{k}");
    assert!(
        w.len() == n * k && w_hat.len() == n * k,
        "output_mse_gemm: W is not {n}×{k}"
    );
    let d: Vec<f64> = w
        .iter()
        .zip(w_hat)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect();
    let mut dh = vec![0.0f64; n * k];
    let (ki, one) = (k as isize, 1);
    f64::gemm(n, k, k, 1.0, &d, ki, one, h, ki, one, 0.0, &mut dh, ki, one);
    d.iter().zip(&dh).map(|(a, b)| a * b).sum::<f64>() / (2.0 * n.max(1) as f64)
}

/// Projection `p` of block `lw` pruned by `method` at `sparsity` (unstructured).
pub fn prune_proj(
    lw: &LayerWeights<f32>,
    p: Proj,
    c: &crate::model::LlamaConfig,
    hess: &Hessian,
    method: PruneMethod,
    s: Sparsity,
) -> Result<Vec<f32>> {
    let (k, n) = p.shape(c);
    let w = weight_of(lw, p);
    let w = &*w;
    Ok(match method {
        PruneMethod::Magnitude => prune_magnitude(w, n, k, s)?.w,
        PruneMethod::Wanda => prune_wanda(w, n, k, &hess.column_norms(), s)?.w,
        PruneMethod::SparseGpt => prune_sparsegpt(w, n, k, hess, s, ObsOptions::default())?.w,
    })
}

/// Measures every block at every level (see the module doc). `progress(done, total)`
/// counts (block, level) pairs. `model`'s weights are modified while a block is measured
/// and restored before returning (also on error).
pub fn profile(
    model: &mut Transformer<f32>,
    hess: &[LayerHessians],
    fisher: &[(usize, Vec<BlockFisher>)],
    calib: &[Row],
    opts: &ProfileOptions,
    key: String,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Profile> {
    let t0 = web_time::Instant::now();
    let c = model.w.config.clone();
    if hess.len() != c.n_layers {
        return Err(Error::Invalid(format!(
            "profile: {} Hessians for {} layers",
            hess.len(),
            c.n_layers
        )));
    }
    if let Some((_, f)) = fisher.iter().find(|(_, f)| f.len() != c.n_layers) {
        return Err(Error::Invalid(format!(
            "profile: Fisher diagonals of {} layers for {} layers",
            f.len(),
            c.n_layers
        )));
    }
    if fisher.len() > 2 || fisher.iter().any(|(n, _)| *n == 0) {
        return Err(Error::Invalid(
            "profile: the Fisher estimate comes in one or two parts of at least one row".into(),
        ));
    }
    let loss_rows = &calib[..opts.loss_rows.min(calib.len())];
    let base_loss = (!loss_rows.is_empty()).then(|| loss_on(model, loss_rows));
    let levels = SPARSITIES.len() + BITS.len();
    let fisher_levels = if fisher.is_empty() {
        0
    } else {
        FISHER_SPARSITIES.len()
    };
    let per_layer = levels + fisher_levels;
    let total = c.n_layers * per_layer;
    let mut layers = Vec::with_capacity(c.n_layers);
    for (l, hl) in hess.iter().enumerate() {
        let orig = model.w.layers[l].clone();
        let hm = [&hl.n1, &hl.attn, &hl.n2, &hl.act].map(|h| h.matrix());
        let h_of = |p: Proj| match p {
            Proj::Q | Proj::K | Proj::V => &hm[0],
            Proj::O => &hm[1],
            Proj::Gate | Proj::Up => &hm[2],
            Proj::Down => &hm[3],
        };
        let mut lp = LayerProfile {
            prune_mse: Vec::new(),
            quant_mse: Vec::new(),
            prune_dloss: Vec::new(),
            quant_dloss: Vec::new(),
            prune_fisher: Vec::new(),
            quant_fisher: Vec::new(),
            joint_fisher: Vec::new(),
            fisher_halves: Vec::new(),
            outlier_ratio: outlier_ratio(&orig, &c, hl),
        };
        // This block's Fisher diagonal from each part of the Fisher rows.
        let fl: Vec<&BlockFisher> = fisher.iter().map(|(_, f)| &f[l]).collect();
        let mut parts = vec![FisherLevels::default(); fl.len()];
        for i in 0..levels {
            let mut mse = 0.0;
            let mut fe = vec![0.0; fl.len()];
            for (pi, p) in Proj::ALL.into_iter().enumerate() {
                let (k, n) = p.shape(&c);
                let h = hl.of(p);
                let w = weight_of(&orig, p);
                let w = &*w;
                let w_hat = if i < SPARSITIES.len() {
                    let s = Sparsity::Unstructured(SPARSITIES[i]);
                    prune_proj(&orig, p, &c, h, opts.method, s)
                } else {
                    let b = BITS[i - SPARSITIES.len()];
                    quantize(w, n, k, b, opts.group, opts.symmetric).map(|q| q.dequantize())
                };
                let w_hat = match w_hat {
                    Ok(v) => v,
                    Err(e) => {
                        model.w.layers[l] = orig;
                        return Err(e);
                    }
                };
                mse += output_mse_gemm(h_of(p), k, w, &w_hat, n);
                if i >= SPARSITIES.len() {
                    for (e, f) in fe.iter_mut().zip(&fl) {
                        *e += fisher_error(&f[pi], w, &w_hat);
                    }
                }
                *p.weight_mut(&mut model.w.layers[l]) = w_hat.into();
            }
            let dloss = base_loss.map(|b| loss_on(model, loss_rows) - b);
            if i < SPARSITIES.len() {
                lp.prune_mse.push(mse);
                lp.prune_dloss.extend(dloss);
            } else {
                lp.quant_mse.push(mse);
                lp.quant_dloss.extend(dloss);
                for (part, e) in parts.iter_mut().zip(fe) {
                    part.quant.push(e);
                }
            }
            progress(l * per_layer + i + 1, total);
        }
        model.w.layers[l] = orig;
        if !fl.is_empty() {
            // Every grid sparsity: pruned alone, then each width as compression stores a
            // sparse layer.
            for (j, &sp) in FISHER_SPARSITIES.iter().enumerate() {
                let mut fe = vec![0.0; fl.len()];
                let mut joint = vec![vec![0.0; BITS.len()]; fl.len()];
                for (pi, p) in Proj::ALL.into_iter().enumerate() {
                    let (k, n) = p.shape(&c);
                    let lw = &model.w.layers[l];
                    let w = weight_of(lw, p);
                    let w = &*w;
                    let s = Sparsity::Unstructured(sp);
                    let w_hat = prune_proj(lw, p, &c, hl.of(p), opts.method, s)?;
                    for (e, f) in fe.iter_mut().zip(&fl) {
                        *e += fisher_error(&f[pi], w, &w_hat);
                    }
                    for (bi, &b) in BITS.iter().enumerate() {
                        let ty = ValueType::for_bits(b);
                        let kept =
                            UnstructuredMatrix::pack_bits(&w_hat, n, k, ty, b.min(ty.bits()))?;
                        let kept = kept.to_dense();
                        for (d, f) in joint.iter_mut().zip(&fl) {
                            d[bi] += fisher_error(&f[pi], w, &kept);
                        }
                    }
                }
                for ((part, e), jt) in parts.iter_mut().zip(fe).zip(joint) {
                    part.prune.push(e);
                    part.joint.push(jt);
                }
                progress(l * per_layer + levels + j + 1, total);
            }
        }
        // The whole estimate: the parts' mean weighted by their rows (linear in F).
        let rows: Vec<f64> = fisher.iter().map(|(n, _)| *n as f64).collect();
        if let Some(whole) = weighted_mean(&parts, &rows) {
            lp.prune_fisher = whole.prune;
            lp.quant_fisher = whole.quant;
            lp.joint_fisher = whole.joint;
        }
        if parts.len() == 2 {
            lp.fisher_halves = parts;
        }
        layers.push(lp);
    }
    Ok(Profile {
        version: PROFILE_VERSION,
        key,
        options: opts.clone(),
        calib_rows: calib.len(),
        calib_tokens: calib.iter().map(|r| r.tokens.len()).sum(),
        sparsities: SPARSITIES.to_vec(),
        bits: BITS.to_vec(),
        base_loss,
        layers,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The row-weighted mean of Fisher estimates of the same levels (None without any).
fn weighted_mean(parts: &[FisherLevels], rows: &[f64]) -> Option<FisherLevels> {
    let total: f64 = rows.iter().sum();
    let first = parts.first()?;
    let mix = |get: &dyn Fn(&FisherLevels) -> f64| -> f64 {
        parts.iter().zip(rows).map(|(p, n)| n * get(p)).sum::<f64>() / total
    };
    Some(FisherLevels {
        prune: (0..first.prune.len())
            .map(|i| mix(&|p| p.prune[i]))
            .collect(),
        quant: (0..first.quant.len())
            .map(|i| mix(&|p| p.quant[i]))
            .collect(),
        joint: (0..first.joint.len())
            .map(|i| (0..BITS.len()).map(|b| mix(&|p| p.joint[i][b])).collect())
            .collect(),
    })
}

/// OWL's layerwise outlier ratio of block `lw` (see [`LayerProfile::outlier_ratio`]): over
/// all 7 projections, the share of Wanda scores |W_ij|·‖X_j‖ above [`OUTLIER_M`] × their
/// mean, ‖X_j‖ from the block's Hessians.
pub fn outlier_ratio(
    lw: &LayerWeights<f32>,
    c: &crate::model::LlamaConfig,
    h: &LayerHessians,
) -> f64 {
    let mut scores = Vec::new();
    for p in Proj::ALL {
        let (k, _) = p.shape(c);
        let norms = h.of(p).column_norms();
        let w = weight_of(lw, p);
        scores.extend(
            w.iter()
                .enumerate()
                .map(|(i, &x)| x.abs() as f64 * norms[i % k]),
        );
    }
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    let over = scores.iter().filter(|&&s| s > OUTLIER_M * mean).count();
    over as f64 / scores.len().max(1) as f64
}

/// 64-bit FNV-1a, continued from `h` (stable across builds, unlike `DefaultHasher`).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a's offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The cache key of a profile: model bytes, calibration tokens and targets, options.
pub fn profile_key(model_bytes: &[u8], calib: &[Row], opts: &ProfileOptions) -> String {
    let m = fnv1a(FNV_START, model_bytes);
    let mut d = FNV_START;
    for r in calib {
        d = fnv1a(d, &(r.tokens.len() as u64).to_le_bytes());
        for t in &r.tokens {
            d = fnv1a(d, &t.to_le_bytes());
        }
        for t in &r.targets {
            d = fnv1a(d, &t.map_or(u32::MAX, |v| v).to_le_bytes());
        }
    }
    let o = fnv1a(
        FNV_START,
        serde_json::to_string(opts).unwrap_or_default().as_bytes(),
    );
    format!("{m:016x}-{d:016x}-{o:08x}", o = o as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(layers: Vec<LayerProfile>) -> Profile {
        Profile {
            version: PROFILE_VERSION,
            key: String::new(),
            options: ProfileOptions::default(),
            calib_rows: 1,
            calib_tokens: 1,
            sparsities: SPARSITIES.to_vec(),
            bits: BITS.to_vec(),
            base_loss: Some(1.0),
            layers,
            seconds: 0.0,
        }
    }

    /// A 2-bit change measured ≤ 0 (noise) does not make 2 bits free: errors never fall
    /// as the width narrows, and never go below 0.
    #[test]
    fn quant_errors_are_monotone_in_the_width() {
        let layer = |quant_dloss: Vec<f64>| LayerProfile {
            prune_mse: vec![1.0; SPARSITIES.len()],
            quant_mse: vec![3.0, 0.5, 0.1, 0.001],
            prune_dloss: vec![0.1; SPARSITIES.len()],
            quant_dloss,
            prune_fisher: Vec::new(),
            quant_fisher: Vec::new(),
            joint_fisher: Vec::new(),
            fisher_halves: Vec::new(),
            outlier_ratio: 0.0,
        };
        let p = profile(vec![
            layer(vec![-0.34, 0.08, 0.0, -0.0001]),
            layer(vec![0.9, 0.3, 0.05, 0.01]),
        ]);
        let e = p.quant_errors();
        assert_eq!(e[0], [0.08, 0.08, 0.0, 0.0]);
        assert_eq!(e[1], [0.9, 0.3, 0.05, 0.01]);
        // Without Δloss: the MSE itself.
        let mut q = p.clone();
        q.layers.iter_mut().for_each(|l| l.quant_dloss.clear());
        assert_eq!(q.quant_errors()[0], [3.0, 0.5, 0.1, 0.001]);
    }

    /// A sparse block's width errors are the joint estimate less the pruning's own, at
    /// the block's sparsity (interpolated), and the dense ones at 0.
    #[test]
    fn width_errors_follow_the_blocks_sparsity() {
        let g = FISHER_SPARSITIES.len();
        let layer = LayerProfile {
            prune_mse: vec![1.0; SPARSITIES.len()],
            quant_mse: vec![3.0, 0.5, 0.1, 0.001],
            prune_dloss: Vec::new(),
            quant_dloss: Vec::new(),
            // Pruning alone costs 10·s; each width adds (1 + 10·s)·[8, 2, 1, 0].
            prune_fisher: FISHER_SPARSITIES.iter().map(|s| 10.0 * s).collect(),
            quant_fisher: vec![4.0, 1.0, 0.5, 0.0],
            joint_fisher: FISHER_SPARSITIES
                .iter()
                .map(|s| {
                    [8.0, 2.0, 1.0, 0.0]
                        .map(|w| 10.0 * s + (1.0 + 10.0 * s) * w)
                        .to_vec()
                })
                .collect(),
            fisher_halves: Vec::new(),
            outlier_ratio: 0.0,
        };
        let mut p = profile(vec![layer.clone(); 4]);
        p.base_loss = None;
        assert!(p.has_fisher() && p.error_source() == ErrorSource::Fisher);
        let e = p.quant_errors_at(&[0.0, 0.5, 0.525, 0.025]);
        let near = |a: [f64; 4], b: [f64; 4]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9);
        assert_eq!(e[0], [4.0, 1.0, 0.5, 0.0]);
        assert!(near(e[1], [48.0, 12.0, 6.0, 0.0]), "{:?}", e[1]);
        assert!(near(e[2], [50.0, 12.5, 6.25, 0.0]), "{:?}", e[2]);
        // Halfway from the dense row (4, 1, .5) to 0.05's (12, 3, 1.5).
        assert!(near(e[3], [8.0, 2.0, 1.0, 0.0]), "{:?}", e[3]);
        assert_eq!(p.quant_errors()[0], [4.0, 1.0, 0.5, 0.0]);
        // The pruning errors on the Fisher grid, from 0.
        let (grid, errs) = p.prune_errors(None);
        assert_eq!(grid.len(), g + 1);
        assert!((errs[0][g] - 9.0).abs() < 1e-9);
        // At a width: the joint estimate, dense at 0 (layer: 10·s + (1 + 10·s)·1 at 4 bits).
        let (_, errs) = p.prune_errors(Some(4));
        assert!((errs[0][0] - 0.5).abs() < 1e-9 && (errs[0][g] - 19.0).abs() < 1e-9);
        // Without the joint estimate: the dense errors whatever the sparsity.
        let mut q = p.clone();
        q.layers.iter_mut().for_each(|l| l.joint_fisher.clear());
        assert_eq!(q.error_source(), ErrorSource::Mse);
        assert_eq!(q.quant_errors_at(&[0.5; 4])[0], [3.0, 0.5, 0.1, 0.001]);
    }
}
