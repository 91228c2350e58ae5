//! Per-layer compression policies for layer-wise unified compression (LUC,
//! /work/shared/EDGE-LLM.md §1): how sparse and how many bits each transformer block gets,
//! as a small JSON document a user can read and edit:
//!
//! ```json
//! {
//!   "version": 1,
//!   "layers": [ { "sparsity": 0.6, "bits": 4 }, { "sparsity": 0.3, "bits": 8 } ],
//!   "pattern": "unstructured",
//!   "prune": "sparsegpt",
//!   "quant": "gptq",
//!   "group": 32,
//!   "symmetric": true,
//!   "allocation": "luc"
//! }
//! ```
//!
//! `pattern` is `"unstructured"` or `"2:4"`; `prune` is `"magnitude"`, `"wanda"` or
//! `"sparsegpt"`; `quant` is `"rtn"` (round to nearest, [`super::quant::quantize`]) or
//! `"gptq"`; `group` is the scale group along k (32, 64 or 128, as [`super::quant::GROUPS`]);
//! `allocation` records how the per-layer numbers were made (`"luc"`, `"uniform"` or
//! `"manual"`; informative only). Unknown fields are refused so a typo is not silently
//! ignored.
//!
//! The rules that fill `layers` from per-layer sensitivities are plain functions:
//! [`sparsity_from_sensitivity`] (the reference formula with a clamp),
//! [`bits_from_sensitivity`] (the paper's rule), [`allocate_bits`] (a bits-per-weight
//! budget, by dynamic programming) and [`allocate_sparsity`] (a mean-sparsity budget at
//! least estimated error, likewise).

use crate::formats::quant::{BITS, GROUPS};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The policy format this code reads and writes.
pub const POLICY_VERSION: u32 = 1;
/// Default lower clamp of a layer's sparsity: a layer may stay dense.
pub const MIN_LAYER_SPARSITY: f64 = 0.0;
/// Default upper clamp of a layer's sparsity: 0.9 is the highest level the sensitivity
/// profile measures (EDGE-LLM.md §1), so beyond it the profile says nothing.
pub const MAX_LAYER_SPARSITY: f64 = 0.9;
/// The dynamic programme of [`allocate_bits`] keeps at most this many (layer, budget)
/// states; above it the budget is discretised more coarsely (still never over budget).
pub const MAX_DP_STATES: usize = 1 << 22;

/// One transformer block's compression.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPolicy {
    /// Fraction of each projection's weights set to zero, in [0, 1).
    pub sparsity: f64,
    /// Code width of the kept weights: 2, 3, 4 or 8.
    pub bits: u32,
}

/// Where the zeros may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    /// Any weights of a row (the row's count is exact: `round(sparsity·k)`).
    #[serde(rename = "unstructured")]
    Unstructured,
    /// 2 zeros in every 4 consecutive weights of a row (sparsity exactly 0.5).
    #[serde(rename = "2:4")]
    TwoOfFour,
}

/// How the zeros are chosen (see [`super::prune`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// Smallest |w| per row; needs no calibration data.
    Magnitude,
    /// Smallest |w|·‖x_j‖₂ per row.
    Wanda,
    /// SparseGPT: Hessian-aware mask and OBS update of the kept weights.
    SparseGpt,
}

/// How the kept weights are rounded to codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMethod {
    /// Round to nearest ([`super::quant::quantize`]).
    Rtn,
    /// GPTQ error feedback ([`super::gptq`]).
    Gptq,
}

/// How the per-layer numbers were chosen (recorded for the reader; not used to compress).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// From the sensitivity profile (LUC).
    Luc,
    /// The same for every layer.
    Uniform,
    /// Edited by hand.
    Manual,
}

/// A whole model's compression policy (the JSON document of the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version, [`POLICY_VERSION`].
    pub version: u32,
    /// One entry per transformer block, in order.
    pub layers: Vec<LayerPolicy>,
    /// Where zeros may go (all layers alike: one sparse kernel format per model).
    pub pattern: Pattern,
    /// How zeros are chosen.
    pub prune: PruneMethod,
    /// How kept weights are rounded.
    pub quant: QuantMethod,
    /// Columns sharing one quantization scale (32, 64 or 128).
    pub group: usize,
    /// Symmetric (scale only) or asymmetric (scale and zero) groups, as `quantize`.
    pub symmetric: bool,
    /// How `layers` were made.
    pub allocation: Allocation,
}

impl Policy {
    /// A policy from per-layer sparsities and bit widths (equal lengths), with the
    /// defaults: unstructured SparseGPT, GPTQ, symmetric groups of 32.
    pub fn from_layers(sparsity: &[f64], bits: &[u32], allocation: Allocation) -> Result<Self> {
        if sparsity.len() != bits.len() {
            return Err(Error::Invalid(format!(
                "policy: {} sparsities for {} bit widths",
                sparsity.len(),
                bits.len()
            )));
        }
        let p = Policy {
            version: POLICY_VERSION,
            layers: sparsity
                .iter()
                .zip(bits)
                .map(|(&sparsity, &bits)| LayerPolicy { sparsity, bits })
                .collect(),
            pattern: Pattern::Unstructured,
            prune: PruneMethod::SparseGpt,
            quant: QuantMethod::Gptq,
            group: 32,
            symmetric: true,
            allocation,
        };
        p.validate(sparsity.len())?;
        Ok(p)
    }

    /// Parses a policy and checks it against a model of `n_layers` blocks.
    pub fn from_json(text: &str, n_layers: usize) -> Result<Self> {
        let p: Policy = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("policy: not a valid policy document: {e}")))?;
        p.validate(n_layers)?;
        Ok(p)
    }

    /// The policy as pretty JSON (what a user edits).
    pub fn to_json(&self) -> String {
        // A struct of plain numbers, strings and vectors always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks everything the compressor relies on; the error names the first problem.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("policy: {m}")));
        if self.version != POLICY_VERSION {
            return bad(format!(
                "version {} (this build reads version {POLICY_VERSION})",
                self.version
            ));
        }
        if self.layers.len() != n_layers {
            return bad(format!(
                "{} layer entries for a model of {n_layers} layers",
                self.layers.len()
            ));
        }
        if !GROUPS.contains(&self.group) {
            return bad(format!("group {} (supported: {GROUPS:?})", self.group));
        }
        for (l, lp) in self.layers.iter().enumerate() {
            if !(lp.sparsity.is_finite() && (0.0..1.0).contains(&lp.sparsity)) {
                return bad(format!(
                    "layer {l}: sparsity {} is outside [0, 1)",
                    lp.sparsity
                ));
            }
            if !BITS.contains(&lp.bits) {
                return bad(format!("layer {l}: {} bits (supported: {BITS:?})", lp.bits));
            }
            if self.pattern == Pattern::TwoOfFour && lp.sparsity != 0.0 && lp.sparsity != 0.5 {
                return bad(format!(
                    "layer {l}: sparsity {} with the 2:4 pattern (must be 0.5, or 0 to keep \
                     the layer dense)",
                    lp.sparsity
                ));
            }
        }
        Ok(())
    }

    /// Mean sparsity over layers.
    pub fn mean_sparsity(&self) -> f64 {
        mean(self.layers.iter().map(|l| l.sparsity))
    }

    /// Average code width weighted by each layer's weight count (`counts[l]`), scales
    /// excluded (they cost the same at every width).
    pub fn mean_bits(&self, counts: &[usize]) -> f64 {
        let total: f64 = counts.iter().map(|&c| c as f64).sum();
        let bits: f64 = self
            .layers
            .iter()
            .zip(counts)
            .map(|(l, &c)| l.bits as f64 * c as f64)
            .sum();
        bits / total
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// The same sparsity and width for every one of `n_layers` layers.
pub fn uniform(n_layers: usize, sparsity: f64, bits: u32) -> Result<Policy> {
    Policy::from_layers(
        &vec![sparsity; n_layers],
        &vec![bits; n_layers],
        Allocation::Uniform,
    )
}

fn check_sensitivities(what: &str, s: &[f64]) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Invalid(format!("{what}: no layers")));
    }
    if let Some(v) = s.iter().find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("{what}: sensitivity {v}")));
    }
    Ok(())
}

/// Min-max normalised sensitivities Ŝ in [0, 1]; all zeros when every layer is equal.
pub fn normalise_minmax(s: &[f64]) -> Vec<f64> {
    let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi > lo {
        s.iter().map(|v| (v - lo) / (hi - lo)).collect()
    } else {
        vec![0.0; s.len()]
    }
}

/// Per-layer sparsity from per-layer pruning sensitivity (the reference rule): w_l = 1 − Ŝ_l,
/// sparsity_l = c·w_l with c = target·L / Σw, so the least sensitive layer is pruned most
/// and the mean is `target`.
///
/// Unlike the reference, each layer is clamped to [`lo`, `hi`] (defaults
/// [`MIN_LAYER_SPARSITY`], [`MAX_LAYER_SPARSITY`]) and c is then re-solved exactly so
/// that the mean of `clamp(c·w_l, lo, hi)` is still `target` (the mean is piecewise linear
/// and non-decreasing in c). If even c → ∞ falls short (every layer with w > 0 at `hi`),
/// the remaining budget is shared evenly by the layers with w = 0 (the most sensitive).
pub fn sparsity_from_sensitivity(s: &[f64], target: f64, lo: f64, hi: f64) -> Result<Vec<f64>> {
    check_sensitivities("sparsity_from_sensitivity", s)?;
    if !(0.0 <= lo && lo <= target && target <= hi && hi < 1.0) {
        return Err(Error::Invalid(format!(
            "sparsity_from_sensitivity: need 0 ≤ min {lo} ≤ target {target} ≤ max {hi} < 1"
        )));
    }
    let w: Vec<f64> = normalise_minmax(s).iter().map(|v| 1.0 - v).collect();
    let l = s.len() as f64;
    let goal = target * l;
    let at = |c: f64| -> f64 { w.iter().map(|&wl| (c * wl).clamp(lo, hi)).sum() };
    // Breakpoints of the piecewise-linear sum, ascending.
    let mut cs: Vec<f64> = w
        .iter()
        .filter(|&&wl| wl > 0.0)
        .flat_map(|&wl| [lo / wl, hi / wl])
        .collect();
    cs.push(0.0);
    cs.sort_by(f64::total_cmp);
    let (mut prev_c, mut prev_f) = (0.0, at(0.0));
    if prev_f >= goal {
        return Ok(vec![lo; s.len()]);
    }
    for &c in &cs {
        let f = at(c);
        if f >= goal {
            let c = if f > prev_f {
                prev_c + (goal - prev_f) * (c - prev_c) / (f - prev_f)
            } else {
                c
            };
            return Ok(w.iter().map(|&wl| (c * wl).clamp(lo, hi)).collect());
        }
        (prev_c, prev_f) = (c, f);
    }
    // Every layer with w > 0 is at `hi`: the layers with w = 0 share what is left.
    let zero = w.iter().filter(|&&wl| wl <= 0.0).count() as f64;
    let rest = ((goal - prev_f) / zero + lo).min(hi);
    Ok(w.iter()
        .map(|&wl| if wl > 0.0 { hi } else { rest })
        .collect())
}

/// The paper's bit rule: layers whose quantization sensitivity is above the mean get `high`
/// bits, the others `base`.
pub fn bits_from_sensitivity(s: &[f64], base: u32, high: u32) -> Result<Vec<u32>> {
    check_sensitivities("bits_from_sensitivity", s)?;
    for b in [base, high] {
        if !BITS.contains(&b) {
            return Err(Error::Invalid(format!(
                "bits_from_sensitivity: {b} bits (supported: {BITS:?})"
            )));
        }
    }
    let m = mean(s.iter().copied());
    Ok(s.iter().map(|&v| if v > m { high } else { base }).collect())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Chooses a width from [`BITS`] for every layer so that the weight-count-weighted mean
/// width is at most `target_bits` and the summed error is least.
///
/// `err[l][i]` is layer l's error estimate at `BITS[i]` bits (e.g. output MSE from the
/// profile; `f64::INFINITY` forbids that width), `counts[l]` its weight count. Scales are
/// left out: they cost the same bits per group at every width, so they shift the budget
/// but not the choice.
///
/// A knapsack by dynamic programming over layers: cost of layer l at b bits is `b·counts[l]`
/// in units of `gcd(counts)` (exact, the usual case: equal blocks), or, when that would
/// exceed [`MAX_DP_STATES`], in coarser units with each cost rounded up (never over budget,
/// possibly slightly short of the optimum).
pub fn allocate_bits(err: &[[f64; 4]], counts: &[usize], target_bits: f64) -> Result<Vec<u32>> {
    let bad = |m: String| Err(Error::Invalid(format!("allocate_bits: {m}")));
    if err.is_empty() || err.len() != counts.len() {
        return bad(format!(
            "{} error rows for {} weight counts",
            err.len(),
            counts.len()
        ));
    }
    if counts.contains(&0) {
        return bad("a layer has no weights".into());
    }
    if err.iter().flatten().any(|e| e.is_nan() || *e < 0.0) {
        return bad("errors must be non-negative numbers (∞ forbids a width)".into());
    }
    if !target_bits.is_finite() {
        return bad(format!("target {target_bits} bits"));
    }
    let total: usize = counts.iter().sum();
    let mut unit = counts.iter().fold(0, |g, &c| gcd(g, c)) as f64;
    let max_units = |u: f64| (8.0 * total as f64 / u).ceil() as usize + 1;
    if max_units(unit).saturating_mul(counts.len() + 1) > MAX_DP_STATES {
        unit = (8.0 * total as f64 * (counts.len() + 1) as f64 / MAX_DP_STATES as f64).ceil();
    }
    let cost = |l: usize, i: usize| (BITS[i] as f64 * counts[l] as f64 / unit).ceil() as usize;
    let budget_f = (target_bits * total as f64 / unit + 1e-9).floor();
    let min_cost: usize = (0..counts.len()).map(|l| cost(l, 0)).sum();
    if budget_f < min_cost as f64 {
        return bad(format!(
            "target {target_bits} bits per weight is below the narrowest width {}",
            BITS[0]
        ));
    }
    let budget = (budget_f as usize).min(max_units(unit));
    // best[c]: least (error, spread) of the layers so far within cost c; pick[l][c] their
    // choice. Equal errors (say, all measured 0) are broken by the spread Σ(8 − b)², which
    // prefers even widths: 4 bits everywhere, not 2 beside 8 at the same mean.
    let spread = |i: usize| (8 - BITS[i] as u64).pow(2);
    let mut best = vec![(0.0f64, 0u64); budget + 1];
    let mut pick = vec![vec![u8::MAX; budget + 1]; counts.len()];
    for (l, e) in err.iter().enumerate() {
        let mut next = vec![(f64::INFINITY, u64::MAX); budget + 1];
        for c in 0..=budget {
            for (i, &ei) in e.iter().enumerate() {
                let ci = cost(l, i);
                if ci > c {
                    continue;
                }
                let (be, bs) = best[c - ci];
                let cand = (be + ei, bs.saturating_add(spread(i)));
                if cand.0 < next[c].0 || (cand.0 == next[c].0 && cand.1 < next[c].1) {
                    next[c] = cand;
                    pick[l][c] = i as u8;
                }
            }
        }
        best = next;
    }
    if !best[budget].0.is_finite() {
        return bad(format!(
            "no allowed widths fit {target_bits} bits per weight"
        ));
    }
    let mut bits = vec![0; counts.len()];
    let mut c = budget;
    for l in (0..counts.len()).rev() {
        let i = pick[l][c] as usize;
        bits[l] = BITS[i];
        c -= cost(l, i);
    }
    Ok(bits)
}

/// `e` (values at the ascending points `grid`) at `s`: linear between points, flat
/// outside them. How [`allocate_sparsity`] reads a layer's error between profiled levels.
pub fn interpolate(grid: &[f64], e: &[f64], s: f64) -> f64 {
    match grid.iter().position(|&g| g >= s) {
        Some(0) => e[0],
        Some(i) => {
            let t = (s - grid[i - 1]) / (grid[i] - grid[i - 1]);
            e[i - 1] + t * (e[i] - e[i - 1])
        }
        None => e[grid.len() - 1],
    }
}

/// Sparsity steps of [`allocate_sparsity`]: its levels are taken to this grid.
pub const SPARSITY_UNIT: f64 = 0.01;

/// Per-layer sparsity at least estimated error (the budget allocator for pruning, as
/// [`allocate_bits`] is for widths): choose each layer's sparsity among the levels of
/// `grid` (ascending; `err[l][i]` is layer l's error estimate at `grid[i]`, e.g. the
/// profile's Fisher estimate of the loss change) so that the layers' mean is `target` and
/// Σ err is least. Levels outside [`lo`, `hi`] are not used; `lo` and `hi` themselves are
/// levels too (error interpolated linearly, or taken from the nearest grid point outside
/// the grid), so a target in [`lo`, `hi`] is always reachable.
///
/// Why not only [`sparsity_from_sensitivity`]: that rule reads one number per layer (the
/// mean error over levels) and spreads sparsity linearly in it, so it cannot see how fast
/// each layer's error grows around the target; on SmolLM2-135M it lost to uniform
/// sparsity (perplexity 70.35 vs 62.94 at 0.5 and 4 bits). Uniform sparsity is one of
/// the allocations searched here, so by the estimate this never does worse.
///
/// A dynamic programme over layers and the running sum in steps of [`SPARSITY_UNIT`]:
/// the least-error sum not below the target is taken, and any excess (less than a step
/// between levels) is taken off the layers where that saves most, so the mean is exactly
/// `target`.
/// Equal errors (say, all 0) are broken by the least Σ s², the most even allocation.
pub fn allocate_sparsity(
    grid: &[f64],
    err: &[Vec<f64>],
    target: f64,
    lo: f64,
    hi: f64,
) -> Result<Vec<f64>> {
    let bad = |m: String| Err(Error::Invalid(format!("allocate_sparsity: {m}")));
    if err.is_empty() {
        return bad("no layers".into());
    }
    if grid.is_empty()
        || grid.windows(2).any(|w| w[0] >= w[1])
        || grid.iter().any(|g| !(0.0..1.0).contains(g))
    {
        return bad("the grid must be ascending sparsities in [0, 1)".into());
    }
    if let Some(e) = err.iter().find(|e| e.len() != grid.len()) {
        return bad(format!(
            "{} errors for a grid of {} levels",
            e.len(),
            grid.len()
        ));
    }
    if err.iter().flatten().any(|e| !e.is_finite()) {
        return bad("errors must be finite numbers".into());
    }
    if !(0.0 <= lo && lo <= target && target <= hi && hi < 1.0) {
        return bad(format!(
            "need 0 ≤ min {lo} ≤ target {target} ≤ max {hi} < 1"
        ));
    }
    let units = |s: f64| (s / SPARSITY_UNIT).round() as usize;
    // Layer l's error at sparsity s (linear between grid points, flat outside).
    let at = |l: usize, s: f64| interpolate(grid, &err[l], s);
    let mut levels: Vec<f64> = grid
        .iter()
        .copied()
        .filter(|&g| g >= lo && g <= hi)
        .chain([lo, hi])
        .collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup_by(|a, b| units(*a) == units(*b));
    if levels.len() >= u8::MAX as usize {
        return bad(format!("{} levels (at most 254)", levels.len()));
    }
    let n = err.len();
    let goal = target * n as f64;
    let need = (goal / SPARSITY_UNIT - 1e-9).ceil().max(0.0) as usize;
    let top = units(hi) * n;
    // best[u]: least (error, Σ units²) of the layers so far whose units sum to u.
    let none = (f64::INFINITY, u64::MAX);
    let mut best = vec![none; top + 1];
    best[0] = (0.0, 0);
    let mut pick = vec![vec![u8::MAX; top + 1]; n];
    for (l, pick_l) in pick.iter_mut().enumerate() {
        let mut next = vec![none; top + 1];
        for (u, &(be, bs)) in best.iter().enumerate() {
            if !be.is_finite() {
                continue;
            }
            for (i, &s) in levels.iter().enumerate() {
                let v = u + units(s);
                if v > top {
                    continue;
                }
                let su = units(s) as u64;
                let cand = (be + at(l, s), bs.saturating_add(su * su));
                if cand.0 < next[v].0 || (cand.0 == next[v].0 && cand.1 < next[v].1) {
                    next[v] = cand;
                    pick_l[v] = i as u8;
                }
            }
        }
        best = next;
    }
    let Some(end) = (need.min(top)..=top)
        .filter(|&u| best[u].0.is_finite())
        .min_by(|&a, &b| best[a].0.total_cmp(&best[b].0).then(a.cmp(&b)))
    else {
        return bad(format!("no allocation reaches a mean of {target}"));
    };
    let mut out = vec![0.0; n];
    let mut u = end;
    for l in (0..n).rev() {
        let s = levels[pick[l][u] as usize];
        out[l] = s;
        u -= units(s);
    }
    // Settle what the levels could not hit (under one level's step) on the layers where it
    // costs least (or saves most), within [lo, hi].
    let mut excess = out.iter().sum::<f64>() - goal;
    while excess.abs() > 1e-12 {
        let dir = -excess.signum();
        let room = |s: f64| if dir < 0.0 { s - lo } else { hi - s };
        let step = |l: usize| excess.abs().min(room(out[l]));
        let per_unit = |l: usize| (at(l, out[l] + dir * step(l)) - at(l, out[l])) / step(l);
        let Some(l) = (0..n)
            .filter(|&l| room(out[l]) > 1e-12)
            .min_by(|&a, &b| per_unit(a).total_cmp(&per_unit(b)))
        else {
            break;
        };
        let d = step(l);
        out[l] += dir * d;
        excess += dir * d;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < EPS)
    }

    #[test]
    fn sparsity_allocation_by_hand() {
        let grid = [0.0, 0.25, 0.5, 0.75];
        // Mean 0.375 over two layers: (0.25, 0.5) costs 1 + 0.5, the least of the four
        // splits of 0.75 ((0, .75): 4; (.5, .25): 2.1; (.75, 0): 3).
        let err = vec![vec![0.0, 1.0, 2.0, 3.0], vec![0.0, 0.1, 0.5, 4.0]];
        let s = allocate_sparsity(&grid, &err, 0.375, 0.0, 0.75).unwrap();
        assert!(close(&s, &[0.25, 0.5]), "{s:?}");
        // Equal errors: the even allocation.
        let flat = vec![vec![0.0; 4]; 3];
        let s = allocate_sparsity(&grid, &flat, 0.25, 0.0, 0.75).unwrap();
        assert!(close(&s, &[0.25; 3]), "{s:?}");
        // A mean between levels: the best split of the next reachable sum, (0.5, 0.25),
        // overshoots by 0.15, taken off where it saves most (layer 0: 4 per unit, layer 1:
        // 0.4), so the mean is exact.
        let steep = vec![vec![0.0, 1.0, 2.0, 3.0], vec![0.0, 0.1, 5.1, 9.0]];
        let s = allocate_sparsity(&grid, &steep, 0.3, 0.0, 0.75).unwrap();
        assert!(close(&s, &[0.35, 0.25]), "{s:?}");
        // lo and hi bound every layer; a target outside them is refused.
        let s = allocate_sparsity(&grid, &err, 0.4, 0.3, 0.5).unwrap();
        assert!(
            s.iter().all(|&v| (0.3 - EPS..=0.5 + EPS).contains(&v)),
            "{s:?}"
        );
        assert!((s.iter().sum::<f64>() - 0.8).abs() < EPS, "{s:?}");
        assert!(allocate_sparsity(&grid, &err, 0.6, 0.0, 0.5).is_err());
        assert!(allocate_sparsity(&grid, &[vec![0.0; 3]], 0.3, 0.0, 0.75).is_err());
        assert!(allocate_sparsity(&[0.5, 0.25], &[vec![0.0; 2]], 0.3, 0.0, 0.75).is_err());
        assert!(allocate_sparsity(&grid, &[vec![0.0, f64::NAN, 1.0, 2.0]], 0.3, 0.0, 0.7).is_err());
    }

    /// The dynamic programme finds the least total error of every split, by brute force
    /// over small seeded cases.
    #[test]
    fn sparsity_allocation_is_optimal() {
        let grid = [0.0, 0.1, 0.2, 0.3, 0.4];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..50 {
            // Non-decreasing, not convex: random increments.
            let err: Vec<Vec<f64>> = (0..3)
                .map(|_| {
                    let mut e = vec![0.0];
                    for _ in 1..grid.len() {
                        let last = e[e.len() - 1];
                        e.push(last + rnd() * rnd() * 3.0);
                    }
                    e
                })
                .collect();
            let target = [0.1, 0.2, 0.3][case % 3];
            let s = allocate_sparsity(&grid, &err, target, 0.0, 0.4).unwrap();
            let cost = |idx: [usize; 3]| -> f64 { (0..3).map(|l| err[l][idx[l]]).sum() };
            let mut brute = f64::INFINITY;
            for a in 0..5 {
                for b in 0..5 {
                    for c in 0..5 {
                        if a + b + c == (target * 30.0).round() as usize {
                            brute = brute.min(cost([a, b, c]));
                        }
                    }
                }
            }
            let got: f64 = s
                .iter()
                .enumerate()
                .map(|(l, &v)| err[l][(v * 10.0).round() as usize])
                .sum();
            assert!(
                (got - brute).abs() < 1e-12,
                "case {case}: {s:?} {got} vs {brute}"
            );
            assert!((s.iter().sum::<f64>() - 3.0 * target).abs() < 1e-9);
        }
    }

    #[test]
    fn sparsity_rule_by_hand() {
        // Ŝ = [0, .5, 1], w = [1, .5, 0], Σw = 1.5, target·L = 0.9 → c = 0.6.
        let s = sparsity_from_sensitivity(&[0.0, 0.5, 1.0], 0.3, 0.0, 0.9).unwrap();
        assert!(close(&s, &[0.6, 0.3, 0.0]), "{s:?}");
        // Scale-free: sensitivities 10, 20, 30 normalise to the same Ŝ.
        let t = sparsity_from_sensitivity(&[10.0, 20.0, 30.0], 0.3, 0.0, 0.9).unwrap();
        assert!(close(&s, &t), "{t:?}");
    }

    #[test]
    fn sparsity_upper_clamp_binds() {
        // Unclamped: c = 1.0 → [1.0, 0.5, 0]; clamped at 0.9: 0.9 + 0.5c = 1.5 → c = 1.2.
        let s = sparsity_from_sensitivity(&[0.0, 0.5, 1.0], 0.5, 0.0, 0.9).unwrap();
        assert!(close(&s, &[0.9, 0.6, 0.0]), "{s:?}");
        assert!((s.iter().sum::<f64>() / 3.0 - 0.5).abs() < EPS);
    }

    #[test]
    fn sparsity_lower_clamp_binds() {
        // Layer 3 (w = 0) sits at 0.1; c + 0.5c = 0.8 → c = 8/15.
        let s = sparsity_from_sensitivity(&[0.0, 0.5, 1.0], 0.3, 0.1, 0.9).unwrap();
        assert!(close(&s, &[8.0 / 15.0, 4.0 / 15.0, 0.1]), "{s:?}");
    }

    #[test]
    fn sparsity_fallback_and_errors() {
        // w = [1, 0]: layer 1 saturates at 0.9, layer 2 takes the remaining 0.3.
        let s = sparsity_from_sensitivity(&[0.0, 1.0], 0.6, 0.0, 0.9).unwrap();
        assert!(close(&s, &[0.9, 0.3]), "{s:?}");
        // All equal: uniform.
        let s = sparsity_from_sensitivity(&[2.0; 4], 0.4, 0.0, 0.9).unwrap();
        assert!(close(&s, &[0.4; 4]), "{s:?}");
        assert!(sparsity_from_sensitivity(&[0.0, 1.0], 0.95, 0.0, 0.9).is_err());
        assert!(sparsity_from_sensitivity(&[0.0, f64::NAN], 0.5, 0.0, 0.9).is_err());
        assert!(sparsity_from_sensitivity(&[], 0.5, 0.0, 0.9).is_err());
    }

    #[test]
    fn bit_rule() {
        // Mean 0.35: layers 3 and 4 are above it.
        let b = bits_from_sensitivity(&[0.1, 0.2, 0.5, 0.6], 4, 8).unwrap();
        assert_eq!(b, [4, 4, 8, 8]);
        assert!(bits_from_sensitivity(&[0.1], 5, 8).is_err());
    }

    fn brute(err: &[[f64; 4]], counts: &[usize], target: f64) -> f64 {
        let l = err.len();
        let total: usize = counts.iter().sum();
        let mut best = f64::INFINITY;
        for code in 0..4usize.pow(l as u32) {
            let idx: Vec<usize> = (0..l).map(|i| code / 4usize.pow(i as u32) % 4).collect();
            let bits: usize = idx
                .iter()
                .zip(counts)
                .map(|(&i, &c)| BITS[i] as usize * c)
                .sum();
            if bits as f64 <= target * total as f64 + 1e-9 {
                best = best.min(idx.iter().enumerate().map(|(li, &i)| err[li][i]).sum());
            }
        }
        best
    }

    #[test]
    fn dp_matches_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case in 0..40 {
            let counts: Vec<usize> = (0..4).map(|_| rng.random_range(1..6) * 96).collect();
            // Error falls with width, at a random per-layer scale.
            let err: Vec<[f64; 4]> = (0..4)
                .map(|_| {
                    let s: f64 = rng.random_range(0.1..10.0);
                    let mut e = [0.0; 4];
                    for (i, v) in e.iter_mut().enumerate() {
                        *v = s * rng.random_range(0.5..1.5) / (1u32 << BITS[i]) as f64;
                    }
                    e
                })
                .collect();
            let target = rng.random_range(2.0..8.0);
            let bits = allocate_bits(&err, &counts, target).unwrap();
            let spent: usize = bits
                .iter()
                .zip(&counts)
                .map(|(&b, &c)| b as usize * c)
                .sum();
            let total: usize = counts.iter().sum();
            assert!(spent as f64 <= target * total as f64 + 1e-9, "case {case}");
            let got: f64 = bits
                .iter()
                .enumerate()
                .map(|(l, b)| err[l][BITS.iter().position(|x| x == b).unwrap()])
                .sum();
            let want = brute(&err, &counts, target);
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "case {case}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn dp_edges() {
        let err = [[4.0, 3.0, 2.0, 1.0]; 3];
        assert_eq!(allocate_bits(&err, &[10; 3], 2.0).unwrap(), [2, 2, 2]);
        assert_eq!(allocate_bits(&err, &[10; 3], 8.0).unwrap(), [8, 8, 8]);
        assert!(allocate_bits(&err, &[10; 3], 1.9).is_err());
        // Only 4 and 8 bits allowed; the second layer gains more from 8.
        let inf = f64::INFINITY;
        let err = [[inf, inf, 2.0, 1.0], [inf, inf, 5.0, 1.0]];
        assert_eq!(allocate_bits(&err, &[1, 1], 6.0).unwrap(), [4, 8]);
        assert!(allocate_bits(&err, &[1, 1], 3.5).is_err());
        // Equal errors (all measured 0): the widest that fits, never 2 bits beside 8.
        assert_eq!(allocate_bits(&[[0.0; 4]; 4], &[1; 4], 4.0).unwrap(), [4; 4]);
        assert_eq!(allocate_bits(&[[0.0; 4]; 2], &[1; 2], 8.0).unwrap(), [8; 2]);
    }

    #[test]
    fn dp_coarse_units_stay_within_budget() {
        // Co-prime counts make gcd 1 and far too many exact states.
        let counts = [1_000_003usize, 2_000_029, 999_983];
        let err = [
            [9.0, 5.0, 2.0, 1.0],
            [30.0, 10.0, 3.0, 1.0],
            [4.0, 3.0, 2.0, 1.0],
        ];
        let bits = allocate_bits(&err, &counts, 3.5).unwrap();
        let spent: f64 = bits
            .iter()
            .zip(&counts)
            .map(|(&b, &c)| b as f64 * c as f64)
            .sum();
        assert!(
            spent <= 3.5 * counts.iter().sum::<usize>() as f64,
            "{bits:?}"
        );
        // The most sensitive (and largest) layer gets the most bits.
        assert_eq!(bits[1], *bits.iter().max().unwrap());
    }

    #[test]
    fn json_round_trip_and_validation() {
        let p = Policy::from_layers(&[0.6, 0.3], &[4, 8], Allocation::Luc).unwrap();
        let text = p.to_json();
        assert!(
            text.contains("\"sparsegpt\"") && text.contains("\"unstructured\""),
            "{text}"
        );
        assert_eq!(Policy::from_json(&text, 2).unwrap(), p);
        let err = |t: &str, n| Policy::from_json(t, n).unwrap_err().to_string();
        assert!(err(&text, 3).contains("2 layer entries for a model of 3"));
        let e = err(&text.replace("0.6", "1.0"), 2);
        assert!(e.contains("layer 0: sparsity 1 is outside"), "{e}");
        let e = err(&text.replace("\"bits\": 8", "\"bits\": 5"), 2);
        assert!(e.contains("layer 1: 5 bits"), "{e}");
        let e = err(&text.replace("\"unstructured\"", "\"2:4\""), 2);
        assert!(e.contains("with the 2:4 pattern"), "{e}");
        let e = err(&text.replace("\"group\": 32", "\"group\": 48"), 2);
        assert!(e.contains("group 48"), "{e}");
        let e = err(&text.replace("\"version\": 1", "\"version\": 2"), 2);
        assert!(e.contains("version 2"), "{e}");
        let e = err(&text.replace("\"group\"", "\"groups\""), 2);
        assert!(e.contains("unknown field"), "{e}");
        let two = uniform(2, 0.5, 4).unwrap();
        let t24 = two.to_json().replace("\"unstructured\"", "\"2:4\"");
        assert_eq!(
            Policy::from_json(&t24, 2).unwrap().pattern,
            Pattern::TwoOfFour
        );
        assert!((two.mean_sparsity() - 0.5).abs() < EPS);
        assert!((p.mean_bits(&[1, 3]) - 7.0).abs() < EPS);
    }
}
