//! Pruning one weight matrix W `[n][k]` (rows are outputs, y = x·Wᵀ) from calibration
//! inputs X `[m][k]` (the projection's input saved by `Transformer::forward_train`): n1 for
//! q/k/v, attn for o, n2 for gate/up, act for down).
//!
//! Three methods, cheapest first:
//! * magnitude: drop the smallest |w| of each row (the same choice as
//!   [`super::sparse::prune_magnitude`] / [`super::sparse::prune_magnitude_2of4`]);
//! * Wanda: drop the smallest |w_ij|·‖x_j‖₂ of each row;
//! * SparseGPT (Frantar & Alistarh 2023): with H = 2XᵀX/m, process columns left to right
//!   in blocks of [`ObsOptions::block`]; the mask is chosen inside each block by
//!   w²/[U]_jj² (U the upper Cholesky factor of H⁻¹, H⁻¹ = UᵀU), and each removal is
//!   compensated by the optimal-brain-surgeon update of the columns not yet processed,
//!   inside the block at once and for later blocks lazily (one matrix product per block).
//!
//! The same sweep ([`obs_sweep`]) drives GPTQ ([`super::gptq`]): there a column's
//! replacement is its quantized value instead of 0.
//!
//! Results are a dense W with exact zeros plus the keep mask; `Sparse24Matrix::pack` and
//! `UnstructuredMatrix::pack` turn it into the GPU formats. Rows get exactly
//! `round(sparsity·k)` zeros (the kernels like balanced rows), and 2:4 drops the 2 lowest
//! of every 4 consecutive columns (a last partial group of 3 drops 1, of 1–2 none).
//!
//! Memory: the Hessian is k×k f64 ([`hessian_bytes`]: 2.7 MB for k = 576, 18.9 MB for
//! k = 1536, SmolLM2-135M's largest input); SparseGPT/GPTQ hold three such matrices at
//! peak (H, its factor, the inverse factor) plus an n×k f64 copy of W.

use super::policy::Pattern;
use crate::formats::sparse::{Sparse24Matrix, UnstructuredMatrix, ValueType};
use crate::reference::stats::Hessian;
use crate::reference::Real;
use crate::{Error, Result};

/// SparseGPT's and GPTQ's dampening: λ = DAMP·mean(diag H) is added to H's diagonal.
pub const DAMP: f64 = 0.01;
/// SparseGPT's and GPTQ's column block (lazy batch update width).
pub const OBS_BLOCK: usize = 128;
/// Bytes of one k×k f64 Hessian (SparseGPT/GPTQ hold about three at peak).
pub fn hessian_bytes(k: usize) -> usize {
    k * k * std::mem::size_of::<f64>()
}

/// Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU, positive diagonal), for a symmetric
/// positive definite k×k `h`.
///
/// H is factored "backwards" as H = ŨŨᵀ with Ũ upper (Cholesky in reversed index order);
/// then H⁻¹ = Ũ⁻ᵀŨ⁻¹, so U = Ũ⁻¹ by uniqueness. One factorisation and one triangular
/// inverse, no explicit H⁻¹.
pub fn inverse_cholesky_upper(h: &[f64], k: usize) -> Result<Vec<f64>> {
    assert_eq!(h.len(), k * k, "inverse_cholesky_upper: H is not {k}×{k}");
    // Ũ (upper) with H = ŨŨᵀ: columns from the last one down.
    let mut t = vec![0.0f64; k * k];
    for j in (0..k).rev() {
        let tail = |i: usize| &t[i * k + j + 1..(i + 1) * k];
        let d = h[j * k + j] - tail(j).iter().map(|v| v * v).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::Invalid(format!(
                "hessian: not positive definite at column {j} (pivot {d}); more dampening \
                 or calibration data needed"
            )));
        }
        let djj = d.sqrt();
        let mut col = vec![0.0; j];
        for (i, c) in col.iter_mut().enumerate() {
            let dot: f64 = tail(i).iter().zip(tail(j)).map(|(a, b)| a * b).sum();
            *c = (h[i * k + j] - dot) / djj;
        }
        t[j * k + j] = djj;
        for (i, c) in col.into_iter().enumerate() {
            t[i * k + j] = c;
        }
    }
    // U = Ũ⁻¹ (upper), row by row from U·Ũ = I: row i solves Ũᵀuᵢ = eᵢ by forward
    // substitution, in axpy form so it reads Ũ by rows (contiguous).
    let mut u = vec![0.0f64; k * k];
    for i in 0..k {
        let row = &mut u[i * k..(i + 1) * k];
        row[i] = 1.0;
        for p in i..k {
            let x = row[p] / t[p * k + p];
            row[p] = x;
            if x != 0.0 {
                for (r, tv) in row[p + 1..].iter_mut().zip(&t[p * k + p + 1..(p + 1) * k]) {
                    *r -= x * tv;
                }
            }
        }
    }
    Ok(u)
}

/// Settings shared by SparseGPT and GPTQ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObsOptions {
    /// Columns per block (a multiple of 4 for 2:4, of the quantization group for GPTQ).
    pub block: usize,
    /// Dampening fraction of mean(diag H).
    pub damp: f64,
}

impl Default for ObsOptions {
    fn default() -> Self {
        ObsOptions {
            block: OBS_BLOCK,
            damp: DAMP,
        }
    }
}

/// The damped Hessian's inverse factor for one weight: H from `hess`, dead inputs (a
/// feature that is zero in every calibration row) given H_jj = 1 and their weights zeroed
/// in `w` (they never contribute), λ = damp·mean(diag H) added to the diagonal.
pub fn prepare(hess: &Hessian, w: &mut [f64], n: usize, damp: f64) -> Result<Vec<f64>> {
    let k = hess.k;
    if hess.rows() == 0 {
        return Err(Error::Invalid("hessian: no calibration rows".into()));
    }
    if !(damp.is_finite() && damp >= 0.0) {
        return Err(Error::Invalid(format!("hessian: dampening {damp}")));
    }
    let mut h = hess.matrix();
    for j in 0..k {
        if h[j * k + j] == 0.0 {
            h[j * k + j] = 1.0;
            for r in 0..n {
                w[r * k + j] = 0.0;
            }
        }
    }
    let lambda = damp * (0..k).map(|j| h[j * k + j]).sum::<f64>() / k.max(1) as f64;
    for j in 0..k {
        h[j * k + j] += lambda;
    }
    inverse_cholesky_upper(&h, k)
}

/// What a sweep's rule sees when it decides the replacement of column `j`.
pub struct Column<'a> {
    /// The column (global index) being processed.
    pub j: usize,
    /// First column of the current block.
    pub j0: usize,
    /// The current block's weights `[n][bw]` after every update so far.
    pub w1: &'a [f64],
    /// Block width.
    pub bw: usize,
    /// [U]_jj for the block's columns.
    pub ud: &'a [f64],
}

/// The OBS sweep shared by SparseGPT and GPTQ, on an f64 `w` `[n][k]` in place: for each
/// column j, `rule` writes each row's replacement value q (0 for a pruned weight, the
/// quantized value for GPTQ, the current value to keep it) into `q`; the error
/// e = (w_j − q)/U_jj is then fed to the columns after j: w_t −= e·U_jt (inside the
/// block now, for later blocks by one product per block).
pub fn obs_sweep(
    w: &mut [f64],
    n: usize,
    k: usize,
    u: &[f64],
    block: usize,
    mut rule: impl FnMut(Column<'_>, &mut [f64]) -> Result<()>,
) -> Result<()> {
    assert_eq!(w.len(), n * k, "obs_sweep: W is not {n}×{k}");
    assert_eq!(u.len(), k * k, "obs_sweep: U is not {k}×{k}");
    if block == 0 {
        return Err(Error::Invalid("obs_sweep: block of 0 columns".into()));
    }
    let mut q = vec![0.0f64; n];
    for j0 in (0..k).step_by(block) {
        let j1 = (j0 + block).min(k);
        let bw = j1 - j0;
        let mut w1 = vec![0.0f64; n * bw];
        for r in 0..n {
            w1[r * bw..(r + 1) * bw].copy_from_slice(&w[r * k + j0..r * k + j1]);
        }
        let ud: Vec<f64> = (j0..j1).map(|j| u[j * k + j]).collect();
        let mut err1 = vec![0.0f64; n * bw];
        for i in 0..bw {
            let j = j0 + i;
            rule(
                Column {
                    j,
                    j0,
                    w1: &w1,
                    bw,
                    ud: &ud,
                },
                &mut q,
            )?;
            let urow = &u[j * k + j0..j * k + j1];
            for r in 0..n {
                let row = &mut w1[r * bw..(r + 1) * bw];
                let e = (row[i] - q[r]) / ud[i];
                err1[r * bw + i] = e;
                row[i] = q[r];
                if e != 0.0 {
                    for t in i + 1..bw {
                        row[t] -= e * urow[t];
                    }
                }
            }
        }
        for r in 0..n {
            w[r * k + j0..r * k + j1].copy_from_slice(&w1[r * bw..(r + 1) * bw]);
        }
        if j1 < k {
            // W[:, j1..] −= Err1 · U[j0..j1, j1..].
            f64::gemm(
                n,
                bw,
                k - j1,
                -1.0,
                &err1,
                bw as isize,
                1,
                &u[j0 * k + j1..],
                k as isize,
                1,
                1.0,
                &mut w[j1..],
                k as isize,
                1,
            );
        }
    }
    Ok(())
}

/// A pruned weight: dense `[n][k]` with exact zeros, and which entries were kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Pruned<T> {
    /// Output features (rows).
    pub n: usize,
    /// Input features (columns).
    pub k: usize,
    /// The pruned (and, for SparseGPT, updated) weight.
    pub w: Vec<T>,
    /// `keep[r·k + j]`: w[r][j] survived (it may still be 0 if it was 0 already).
    pub keep: Vec<bool>,
}

impl<T: Real> Pruned<T> {
    /// Pruned entries in row `r`.
    pub fn pruned_in_row(&self, r: usize) -> usize {
        self.keep[r * self.k..(r + 1) * self.k]
            .iter()
            .filter(|&&kp| !kp)
            .count()
    }

    fn dense_f32(&self) -> Vec<f32> {
        self.w.iter().map(|v| Real::to_f64(*v) as f32).collect()
    }

    /// Packs into the blocked-bitmask unstructured format the GPU reads.
    pub fn pack_unstructured(&self, ty: ValueType) -> Result<UnstructuredMatrix> {
        UnstructuredMatrix::pack(&self.dense_f32(), self.n, self.k, ty)
    }

    /// Packs into the 2:4 format (refused unless every 4 columns hold ≤ 2 non-zeros).
    pub fn pack_24(&self, ty: ValueType) -> Result<Sparse24Matrix> {
        Sparse24Matrix::pack(&self.dense_f32(), self.n, self.k, ty)
    }
}

/// What to prune: a fraction of each row, or 2 of every 4 columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// `round(fraction·k)` weights per row, fraction in [0, 1].
    Unstructured(f64),
    /// 2 of every 4 consecutive columns.
    TwoOfFour,
}

impl Sparsity {
    /// From a policy layer's pattern and sparsity; None when there is nothing to prune
    /// (sparsity 0). Assumes a validated policy (2:4 with sparsity 0.5).
    pub fn from_policy(pattern: Pattern, sparsity: f64) -> Option<Sparsity> {
        match pattern {
            _ if sparsity == 0.0 => None,
            Pattern::Unstructured => Some(Sparsity::Unstructured(sparsity)),
            Pattern::TwoOfFour => Some(Sparsity::TwoOfFour),
        }
    }

    fn check(self) -> Result<()> {
        match self {
            Sparsity::Unstructured(p) if !(0.0..=1.0).contains(&p) => Err(Error::Invalid(format!(
                "prune: sparsity {p} is outside [0, 1]"
            ))),
            _ => Ok(()),
        }
    }
}

fn check_w<T: Real>(what: &str, w: &[T], n: usize, k: usize) -> Result<()> {
    if n.checked_mul(k) != Some(w.len()) {
        return Err(Error::Invalid(format!(
            "{what}: {} weights are not {n}×{k}",
            w.len()
        )));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("{what}: non-finite weight")));
    }
    Ok(())
}

/// Marks as pruned (`keep = false`) the `drop` lowest-scoring columns of `cols` in one
/// row; ties prune the lower column first (as `sparse::prune_magnitude`).
fn drop_lowest(
    score: impl Fn(usize) -> f64,
    cols: std::ops::Range<usize>,
    drop: usize,
    keep: &mut [bool],
) {
    let mut order: Vec<usize> = cols.collect();
    order.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
    for &c in order.iter().take(drop) {
        keep[c] = false;
    }
}

/// 2 of 4 columns from `c0`: drops max(len − 2, 0) lowest; ties keep the lower column (as
/// `sparse::prune_magnitude_2of4`).
fn drop_2of4(score: impl Fn(usize) -> f64, c0: usize, c1: usize, keep: &mut [bool]) {
    let mut order: Vec<usize> = (c0..c1).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    for &c in order.iter().skip(2) {
        keep[c] = false;
    }
}

/// The keep mask of a per-element score `[n][k]` (lowest pruned, per row).
pub fn mask_from_scores(score: &[f64], n: usize, k: usize, s: Sparsity) -> Result<Vec<bool>> {
    s.check()?;
    let mut keep = vec![true; n * k];
    for r in 0..n {
        let sc = |c: usize| score[r * k + c];
        let row = &mut keep[r * k..(r + 1) * k];
        match s {
            Sparsity::Unstructured(p) => {
                drop_lowest(sc, 0..k, (p * k as f64).round() as usize, row);
            }
            Sparsity::TwoOfFour => {
                for c0 in (0..k).step_by(4) {
                    drop_2of4(sc, c0, (c0 + 4).min(k), row);
                }
            }
        }
    }
    Ok(keep)
}

fn apply_mask<T: Real>(w: &[T], n: usize, k: usize, keep: Vec<bool>) -> Pruned<T> {
    let w = w
        .iter()
        .zip(&keep)
        .map(|(&v, &kp)| if kp { v } else { T::zero() })
        .collect();
    Pruned { n, k, w, keep }
}

/// Magnitude pruning: the smallest |w| of each row (no calibration data).
pub fn prune_magnitude<T: Real>(w: &[T], n: usize, k: usize, s: Sparsity) -> Result<Pruned<T>> {
    check_w("prune_magnitude", w, n, k)?;
    let score: Vec<f64> = w.iter().map(|v| Real::to_f64(*v).abs()).collect();
    Ok(apply_mask(w, n, k, mask_from_scores(&score, n, k, s)?))
}

/// Wanda: the smallest |w_ij|·‖x_j‖₂ of each row, with `col_norms` from
/// [`Hessian::column_norms`] (or computed directly; only their ratios matter).
pub fn prune_wanda<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    col_norms: &[f64],
    s: Sparsity,
) -> Result<Pruned<T>> {
    check_w("prune_wanda", w, n, k)?;
    if col_norms.len() != k {
        return Err(Error::Invalid(format!(
            "prune_wanda: {} column norms for k = {k}",
            col_norms.len()
        )));
    }
    let score: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, v)| Real::to_f64(*v).abs() * col_norms[i % k.max(1)])
        .collect();
    Ok(apply_mask(w, n, k, mask_from_scores(&score, n, k, s)?))
}

/// SparseGPT: per block of `opts.block` columns, the mask by w²/[U]_jj² (unstructured:
/// the lowest `round(p·j1) − round(p·j0)` of the block's columns in each row, so a row's
/// total is exactly `round(p·k)`; 2:4: the lowest 2 of every 4, chosen when the sweep
/// reaches the group), then the OBS update of the kept weights. In f64 throughout.
pub fn prune_sparsegpt<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    hess: &Hessian,
    s: Sparsity,
    opts: ObsOptions,
) -> Result<Pruned<T>> {
    check_w("prune_sparsegpt", w, n, k)?;
    s.check()?;
    if hess.k != k {
        return Err(Error::Invalid(format!(
            "prune_sparsegpt: Hessian of {} features for k = {k}",
            hess.k
        )));
    }
    if opts.block == 0 || !opts.block.is_multiple_of(4) {
        return Err(Error::Invalid(format!(
            "prune_sparsegpt: block {} is not a positive multiple of 4",
            opts.block
        )));
    }
    let mut wf: Vec<f64> = w.iter().map(|v| Real::to_f64(*v)).collect();
    let u = prepare(hess, &mut wf, n, opts.damp)?;
    let mut keep = vec![true; n * k];
    obs_sweep(&mut wf, n, k, &u, opts.block, |c, q| {
        let i = c.j - c.j0;
        let score = |r: usize, t: usize| (c.w1[r * c.bw + t] / c.ud[t]).powi(2);
        match s {
            Sparsity::Unstructured(p) if i == 0 => {
                let drop =
                    ((p * (c.j0 + c.bw) as f64).round() - (p * c.j0 as f64).round()) as usize;
                for r in 0..n {
                    let row = &mut keep[r * k + c.j0..r * k + c.j0 + c.bw];
                    drop_lowest(|t| score(r, t), 0..c.bw, drop, row);
                }
            }
            Sparsity::TwoOfFour if c.j.is_multiple_of(4) => {
                let end = (i + 4).min(c.bw);
                for r in 0..n {
                    let row = &mut keep[r * k + c.j0..r * k + c.j0 + c.bw];
                    drop_2of4(|t| score(r, t), i, end, row);
                }
            }
            _ => {}
        }
        for (r, qr) in q.iter_mut().enumerate() {
            *qr = if keep[r * k + c.j] {
                c.w1[r * c.bw + i]
            } else {
                0.0
            };
        }
        Ok(())
    })?;
    let w = wf
        .iter()
        .zip(&keep)
        .map(|(&v, &kp)| if kp { T::from_f64(v) } else { T::zero() })
        .collect();
    Ok(Pruned { n, k, w, keep })
}

/// SparseGPT's reconstruction for a mask chosen elsewhere (e.g. Wanda's, or a fixed 2:4
/// pattern): the same sweep, pruning exactly the entries with `keep = false` and updating
/// the kept ones.
pub fn sparsegpt_update<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    hess: &Hessian,
    keep: &[bool],
    opts: ObsOptions,
) -> Result<Pruned<T>> {
    check_w("sparsegpt_update", w, n, k)?;
    if keep.len() != w.len() || hess.k != k {
        return Err(Error::Invalid(format!(
            "sparsegpt_update: mask of {} and Hessian of {} features for {n}×{k}",
            keep.len(),
            hess.k
        )));
    }
    let mut wf: Vec<f64> = w.iter().map(|v| Real::to_f64(*v)).collect();
    let u = prepare(hess, &mut wf, n, opts.damp)?;
    obs_sweep(&mut wf, n, k, &u, opts.block, |c, q| {
        let i = c.j - c.j0;
        for (r, qr) in q.iter_mut().enumerate() {
            *qr = if keep[r * k + c.j] {
                c.w1[r * c.bw + i]
            } else {
                0.0
            };
        }
        Ok(())
    })?;
    let w = wf
        .iter()
        .zip(keep)
        .map(|(&v, &kp)| if kp { T::from_f64(v) } else { T::zero() })
        .collect();
    Ok(Pruned {
        n,
        k,
        w,
        keep: keep.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loose bound for f64 factorisations of well-conditioned 7×7 matrices.
    const FACTOR_TOL: f64 = 1e-10;

    #[test]
    fn inverse_factor_is_upper_and_inverts() {
        let k = 7;
        let a: Vec<f64> = (0..k * k)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0)
            .collect();
        // H = AᵀA + I is symmetric positive definite.
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = (0..k).map(|p| a[p * k + i] * a[p * k + j]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_cholesky_upper(&h, k).unwrap();
        for i in 0..k {
            assert!(u[i * k + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "U[{i}][{j}]");
            }
        }
        // (UᵀU)·H = I.
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k)
                    .map(|p| {
                        (0..k).map(|q| u[q * k + i] * u[q * k + p]).sum::<f64>() * h[p * k + j]
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < FACTOR_TOL, "[{i}][{j}] = {v}");
            }
        }
        h[0] = -1.0;
        assert!(inverse_cholesky_upper(&h, k).is_err());
    }

    #[test]
    fn magnitude_matches_sparse_rs() {
        let (n, k) = (5, 23);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let p = prune_magnitude(&w, n, k, Sparsity::Unstructured(0.4)).unwrap();
        assert_eq!(p.w, crate::formats::sparse::prune_magnitude(&w, n, k, 0.4));
        let p = prune_magnitude(&w, n, k, Sparsity::TwoOfFour).unwrap();
        assert_eq!(p.w, crate::formats::sparse::prune_magnitude_2of4(&w, n, k));
    }
}
