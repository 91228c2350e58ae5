//! Test bodies (native and browser): every kernel vs its CPU twin, each twin vs the dense
//! product of the expanded matrix, the pruning helpers and the quantization budgets.

use super::*;
use crate::formats::sparse::{self as sp, PackedValues};
use crate::reference::ops;
use crate::tolerance::{compare as compare_with, Tol};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// |a − b| ≤ max(rel·(|a| + |b|), abs). Both sides sum at most k ≤ 576 f32 products of
/// values in [-1, 1) in different orders; the rounding error is about √k·ε·|partial sums|
/// ≈ 1e-5. A wrong index or a skipped weight moves an output by the size of one product
/// (≈ 0.1–1), far above both.
pub const SPMATMUL_TOL: Tol = Tol::new(1e-4, 1e-4);
/// Quantization budget per bit-width, as a fraction of the group's absmax: half a
/// step (absmax/qmax/2) plus the f16 rounding of the scale (≤ 2⁻¹¹ relative, times
/// qmax/2 steps).
pub const INT8_BUDGET: Tol = Tol::relative(0.5 / 127.0 + 0.5 / 2048.0);
pub const INT4_BUDGET: Tol = Tol::relative(0.5 / 7.0 + 0.5 / 2048.0);

const MS: [usize; 5] = [1, 3, 6, 37, 70];
const KS: [usize; 5] = [4, 6, 64, 100, 576];
const NS: [usize; 3] = [1, 5, 33];
const SPARSITIES: [f32; 3] = [0.0, 0.5, 0.9];

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<()> {
    compare_with(what, got, want, SPMATMUL_TOL).map(|_| ())
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

fn dense_nn(dy: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut dx = vec![0.0; m * k];
    ops::matmul_nn_acc(dy, w, m, k, n, &mut dx);
    dx
}

/// The dequantized matrix is the pruned one within the bit-width's budget (exact for
/// f32), and zeros stay zeros.
fn check_values(
    what: &str,
    got: &[f32],
    want: &[f32],
    n: usize,
    k: usize,
    ty: ValueType,
) -> Result<()> {
    let budget = match ty {
        ValueType::F32 => Tol::absolute(0.0),
        ValueType::Int8 => INT8_BUDGET,
        ValueType::Int4 => INT4_BUDGET,
    };
    for r in 0..n {
        for g in (0..k).step_by(sp::QCOLS) {
            let cols = g..(g + sp::QCOLS).min(k);
            let absmax = want[r * k..][cols.clone()]
                .iter()
                .fold(0.0f32, |a, v| a.max(v.abs()));
            for c in cols {
                let (a, b) = (got[r * k + c], want[r * k + c]);
                if (b == 0.0 && a != 0.0) || (a - b).abs() > budget.bound(absmax) {
                    return Err(Error::Invalid(format!(
                        "{what} {ty:?}: w[{r}, {c}] holds {a}, pruned weight {b} (budget {} × absmax {absmax})",
                        budget.rel
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Pruning helpers leave exactly the required pattern, keeping the largest weights.
pub fn pruning() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (n, k) in [(3, 4), (5, 6), (2, 7), (4, 100)] {
        let w = random(n * k, &mut rng);
        let p = sp::prune_magnitude_2of4(&w, n, k);
        for r in 0..n {
            for g in (0..k).step_by(4) {
                let grp = g..(g + 4).min(k);
                let kept: Vec<usize> = grp.clone().filter(|&c| p[r * k + c] != 0.0).collect();
                let min_kept = kept
                    .iter()
                    .map(|&c| w[r * k + c].abs())
                    .fold(f32::MAX, f32::min);
                let max_dropped = grp
                    .clone()
                    .filter(|c| !kept.contains(c))
                    .map(|c| w[r * k + c].abs())
                    .fold(0.0, f32::max);
                if kept.len() != grp.len().min(2) || min_kept < max_dropped {
                    return Err(Error::Invalid(format!(
                        "prune_magnitude_2of4 {n}×{k}: row {r} columns {grp:?} keep {kept:?}"
                    )));
                }
                for &c in &kept {
                    if p[r * k + c] != w[r * k + c] {
                        return Err(Error::Invalid(format!(
                            "prune_magnitude_2of4 changed a kept weight at ({r}, {c})"
                        )));
                    }
                }
            }
        }
        for s in SPARSITIES.into_iter().chain([1.0, 0.3]) {
            let p = sp::prune_magnitude(&w, n, k, s);
            let drop = (s * k as f32).round() as usize;
            for r in 0..n {
                let row = &p[r * k..(r + 1) * k];
                let zeros = row.iter().filter(|v| **v == 0.0).count();
                let min_kept = (0..k)
                    .filter(|&c| row[c] != 0.0)
                    .map(|c| w[r * k + c].abs())
                    .fold(f32::MAX, f32::min);
                let max_dropped = (0..k)
                    .filter(|&c| row[c] == 0.0)
                    .map(|c| w[r * k + c].abs())
                    .fold(0.0, f32::max);
                if zeros != drop || min_kept < max_dropped {
                    return Err(Error::Invalid(format!(
                        "prune_magnitude {n}×{k} sparsity {s}: row {r} has {zeros} zeros (want {drop})"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A random `[n][k]` weight pruned 2:4 (case 0) or to SPARSITIES[case % 3], with every
/// third row all zero on odd cases.
fn weight(n: usize, k: usize, case: usize, two_four: bool, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let w = random(n * k, rng);
    let mut w = if two_four {
        let mut p = sp::prune_magnitude_2of4(&w, n, k);
        if case % 3 == 2 {
            p = sp::prune_magnitude(&p, n, k, 0.75); // sparser than 2:4 still fits 2:4
        }
        p
    } else {
        sp::prune_magnitude(&w, n, k, SPARSITIES[case % 3])
    };
    if case % 2 == 1 {
        for r in (0..n).step_by(3) {
            w[r * k..(r + 1) * k].fill(0.0);
        }
    }
    w
}

/// Formats hold the pruned weight (within the quantization budget), transposed copies
/// hold exactly its transpose, and each twin matches the dense product of the expanded
/// matrix; the kernels match the twins.
pub async fn kernels(ctx: &GpuContext) -> Result<()> {
    kernels_on(ctx, &MS, &KS, &NS).await
}

/// A subset small enough for a browser's software WebGPU (SwiftShader): awkward
/// shapes only (1 row, k not a multiple of 4 or 32, n of 1 and 33).
pub async fn browser_subset(ctx: &GpuContext) -> Result<()> {
    pruning()?;
    refusals()?;
    kernels_on(ctx, &[1, 37], &[6, 100], &[1, 33]).await
}

async fn kernels_on(ctx: &GpuContext, ms: &[usize], ks: &[usize], ns: &[usize]) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut case = 0;
    for &k in ks {
        for &n in ns {
            for &m in ms {
                case += 1;
                for two_four in [true, false] {
                    let w = weight(n, k, case, two_four, &mut rng);
                    let x = random(m * k, &mut rng);
                    let dy = random(m * n, &mut rng);
                    for ty in ValueType::ALL {
                        let name = |op: &str| format!("{op} {ty:?} m={m} k={k} n={n} case={case}");
                        let (dense, dense_t, twin_nt, twin_nn, gpu_nt, gpu_nn);
                        if two_four {
                            let a = Sparse24Matrix::pack(&w, n, k, ty)?;
                            dense = a.to_dense();
                            dense_t = a.transposed().to_dense();
                            twin_nt = sp::sparse24_matmul_nt(&x, &a, m);
                            twin_nn = sp::sparse24_matmul_nn(&dy, &a, m);
                            gpu_nt = sparse24_matmul_nt(ctx, &x, &a, m).await?;
                            gpu_nn = sparse24_matmul_nn(ctx, &dy, &a, m).await?;
                        } else {
                            let a = UnstructuredMatrix::pack(&w, n, k, ty)?;
                            dense = a.to_dense();
                            dense_t = a.transposed().to_dense();
                            twin_nt = sp::unstructured_matmul_nt(&x, &a, m);
                            twin_nn = sp::unstructured_matmul_nn(&dy, &a, m);
                            gpu_nt = unstructured_matmul_nt(ctx, &x, &a, m).await?;
                            gpu_nn = unstructured_matmul_nn(ctx, &dy, &a, m).await?;
                        }
                        let fmt = if two_four { "sparse24" } else { "unstructured" };
                        check_values(&name(fmt), &dense, &w, n, k, ty)?;
                        if dense_t != transpose(&dense, n, k) {
                            return Err(Error::Invalid(format!(
                                "{}: transposed copy differs",
                                name(fmt)
                            )));
                        }
                        let nt = format!("{fmt}_matmul_nt");
                        let nn = format!("{fmt}_matmul_nn");
                        compare(
                            &format!("{} twin vs dense", name(&nt)),
                            &twin_nt,
                            &ops::matmul_nt(&x, &dense, m, k, n),
                        )?;
                        compare(
                            &format!("{} twin vs dense", name(&nn)),
                            &twin_nn,
                            &dense_nn(&dy, &dense, m, k, n),
                        )?;
                        compare(&format!("{} gpu vs twin", name(&nt)), &gpu_nt, &twin_nt)?;
                        compare(&format!("{} gpu vs twin", name(&nn)), &gpu_nn, &twin_nn)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Packing refuses what is not its format.
pub fn refusals() -> Result<()> {
    let three = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
    if Sparse24Matrix::pack(&three, 1, 6, ValueType::F32).is_ok() {
        return Err(Error::Invalid(
            "sparse24 accepted 3 non-zeros in a group of 4".into(),
        ));
    }
    if UnstructuredMatrix::pack(&[1.0; 5], 2, 3, ValueType::F32).is_ok() {
        return Err(Error::Invalid(
            "unstructured accepted a 5-value 2×3 weight".into(),
        ));
    }
    // An int4 code is sign-extended, a stored f32 round-trips bit-exactly.
    let v = PackedValues {
        ty: ValueType::Int4,
        words: vec![0x0000_00f9],
        scales: vec![],
        groups_per_row: 0,
        layout: ScaleLayout::Direct,
    };
    if v.raw(0) as i32 != -7 || v.raw(1) as i32 != -1 {
        return Err(Error::Invalid("int4 codes are not sign-extended".into()));
    }
    Ok(())
}

/// The transposed copy's buffers are sized from the codes exactly as the upload
/// allocates them (a memory plan relies on it), on int4 codes that round to zero.
pub fn planned_bytes(ctx: &GpuContext) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let b = |words: usize| (4 * words as u64).max(4);
    let sum = |a: [(&str, u64); 3]| a.iter().map(|e| e.1).sum::<u64>();
    for (n, k) in [(1, 6), (33, 100), (70, 37)] {
        for ty in ValueType::ALL {
            let w = random(n * k, &mut rng);
            let s24 = Sparse24Matrix::pack(&sp::prune_magnitude_2of4(&w, n, k), n, k, ty)?;
            let un = UnstructuredMatrix::pack(&sp::prune_magnitude(&w, n, k, 0.3), n, k, ty)?;
            let fwd_24 = b(s24.values.words.len()) + b(s24.values.scales.len()) + b(s24.idx.len());
            let fwd_un = b(un.values.words.len())
                + b(un.values.scales.len())
                + b(un.masks.len())
                + b(un.row_ptr.len());
            let cases = [
                (
                    "sparse24",
                    SparseWeight::sparse24(ctx, &s24, true)?,
                    fwd_24 + sum(grad_buffers_sparse24(&s24)),
                ),
                (
                    "unstructured",
                    SparseWeight::unstructured(ctx, &un, true)?,
                    fwd_un + sum(grad_buffers_unstructured(&un)),
                ),
            ];
            for (what, up, want) in cases {
                if up.bytes() != want {
                    return Err(Error::Invalid(format!(
                        "{what} {ty:?} {n}×{k}: uploaded {} bytes, sized {want}",
                        up.bytes()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Every check that runs under any limits.
pub async fn all(ctx: &GpuContext) -> Result<()> {
    pruning()?;
    refusals()?;
    planned_bytes(ctx)?;
    kernels(ctx).await
}

/// Needs a context with max_storage_buffer_binding_size ≤ 64 KiB and
/// max_compute_workgroups_per_dimension ≤ 8: a product over the workgroup limit is
/// folded into a 2-D grid, and a weight over the binding limit is refused with
/// Error::Gpu naming the limit.
pub async fn small_limits(ctx: &GpuContext) -> Result<()> {
    if ctx.limits.max_storage_buffer_binding_size > 1 << 16
        || ctx.limits.max_compute_workgroups_per_dimension > 8
    {
        return Err(Error::Invalid(
            "spmatmul::checks::small_limits needs a context with small limits".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (m, k, n) = (70, 40, 140); // 5 × 3 = 15 workgroups, folded into 8 × 2
    let w = sp::prune_magnitude(&random(n * k, &mut rng), n, k, 0.5);
    let x = random(m * k, &mut rng);
    let a = UnstructuredMatrix::pack(&w, n, k, ValueType::Int8)?;
    compare(
        "unstructured_matmul_nt folded grid",
        &unstructured_matmul_nt(ctx, &x, &a, m).await?,
        &sp::unstructured_matmul_nt(&x, &a, m),
    )?;
    let a = Sparse24Matrix::pack(&sp::prune_magnitude_2of4(&w, n, k), n, k, ValueType::F32)?;
    compare(
        "sparse24_matmul_nt folded grid",
        &sparse24_matmul_nt(ctx, &x, &a, m).await?,
        &sp::sparse24_matmul_nt(&x, &a, m),
    )?;

    let (n, k) = (160, 256); // f32 values: 80 KiB
    let big = Sparse24Matrix::pack(
        &sp::prune_magnitude_2of4(&random(n * k, &mut rng), n, k),
        n,
        k,
        ValueType::F32,
    )?;
    match sparse24_matmul_nt(ctx, &random(k, &mut rng), &big, 1).await {
        Err(Error::Gpu(e)) if e.contains("max_storage_buffer_binding_size") => Ok(()),
        other => Err(Error::Invalid(format!(
            "a {}-byte weight over a {}-byte binding limit gave {other:?}",
            big.bytes(),
            ctx.limits.max_storage_buffer_binding_size
        ))),
    }
}
