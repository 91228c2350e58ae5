//! The GEMM's B operand read from a weight in whatever format it is stored: a
//! [`RowSource`] decodes a segment of one row of W `[rows][cols]` as f32, and
//! [`sgemm_rows`] multiplies by Wᵀ (a forward pass, y = x·Wᵀ) or by W (an input gradient,
//! dx = dy·W), decoding W tile by tile while it packs the B panels (the panel packing
//! copies anyway), so a weight stored in 4 or 8 bits is read in 4 or 8 bits. Products of a
//! few rows (decoding a token) take each row of W once through dot products instead.
//!
//! This layer knows no format: the packed formats implement [`RowSource`] where they are
//! defined (`crate::formats`), and [`DenseRows`] is the plain f32 one.

use super::gemm::{self, BFrom, Ptrs};
pub use super::rows::{DenseRows, Op, RowSource};
use super::{kernels, par};
use std::cell::RefCell;

/// Products of at most this many rows in the [`Op::Nt`] orientation run as dot products
/// with each decoded row of W (the panels would be packed for one use).
pub const DOT_ROWS_MAX: usize = 4;

/// (m, k, n) of the product with `w` in orientation `op`.
pub fn dims(op: Op, m: usize, w: &dyn RowSource) -> (usize, usize, usize) {
    match op {
        Op::Nt => (m, w.cols(), w.rows()),
        Op::Nn => (m, w.rows(), w.cols()),
    }
}

/// C = α·A·op(W) + β·C, with op(W) = Wᵀ or W (see [`Op`]); A is m×k and C m×n (from
/// [`dims`]), element (i, j) of each at `i·rs + j·cs` as in [`gemm::sgemm`]. β = 0
/// overwrites C without reading it. Panics when A or C is too short for its shape.
pub fn sgemm_rows(
    op: Op,
    m: usize,
    alpha: f32,
    (a, rsa, csa): (&[f32], isize, isize),
    w: &dyn RowSource,
    beta: f32,
    (c, rsc, csc): (&mut [f32], isize, isize),
) {
    let (m, k, n) = dims(op, m, w);
    // B's bounds are the source's own; A and C are checked against a B of one element
    // addressed at stride 0.
    gemm::check_bounds(
        (m, k, n),
        (a, rsa, csa),
        (&[0.0f32][..], 0, 0),
        (&*c, rsc, csc),
    );
    if m == 0 || n == 0 {
        return;
    }
    let u = |s: isize| s as usize;
    if k == 0 || alpha == 0.0 {
        gemm::scale_c((m, n), beta, (c, rsc, csc));
        return;
    }
    let p = Ptrs {
        a: a.as_ptr(),
        b: std::ptr::null(),
        c: c.as_mut_ptr(),
        rsa: u(rsa),
        csa: u(csa),
        rsb: 0,
        csb: 0,
        rsc: u(rsc),
        csc: u(csc),
    };
    if op == Op::Nt && m <= DOT_ROWS_MAX && csa == 1 {
        // SAFETY: A and C bounds checked above.
        return unsafe { dot_rows(p, w, (m, k, n), alpha, beta) };
    }
    // SAFETY: A and C bounds checked above; B is the source's.
    unsafe {
        gemm::blocked(
            kernels::best(),
            p,
            BFrom::Rows(w, op),
            (m, k, n),
            alpha,
            beta,
        )
    }
}

thread_local! {
    /// One decoded row of W per thread.
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Columns of C per task of [`dot_rows`] (enough work to hide the split).
const DOT_CHUNK: usize = 64;

/// C = α·A·Wᵀ + β·C for a few rows of A (contiguous along k): each row of W is decoded
/// once and dotted with every row of A.
///
/// # Safety
/// A (m×k, csa = 1) and C (m×n) must be in bounds at the strides of `p`.
unsafe fn dot_rows(
    p: Ptrs,
    w: &dyn RowSource,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    beta: f32,
) {
    let tasks = n.div_ceil(DOT_CHUNK);
    let parts = if m * k * n < 1 << 16 {
        1
    } else {
        par::threads().min(tasks)
    };
    par::for_each(parts, |i| {
        let p: Ptrs = p;
        let q = par::part(tasks, parts, i);
        let cols = q.start * DOT_CHUNK..(q.end * DOT_CHUNK).min(n);
        ROW.with_borrow_mut(|row| {
            row.resize(k, 0.0);
            for j in cols {
                w.row_into(j, 0, row);
                for r in 0..m {
                    // SAFETY: row r of A holds k values; C[r][j] is this part's.
                    let a = std::slice::from_raw_parts(p.a.add(r * p.rsa), k);
                    let c = &mut *p.c.add(r * p.rsc + j * p.csc);
                    let d = alpha * dot(a, row);
                    *c = if beta == 0.0 { d } else { d + beta * *c };
                }
            }
        });
    });
}

/// Σ a·b in eight lanes (vectorised by the compiler on every target).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}
