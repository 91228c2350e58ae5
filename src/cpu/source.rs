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
use super::{kernels, narrow, par, sparse};
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
    if op == Op::Nt && csa == 1 && m > DOT_ROWS_MAX && w.density() <= sparse::DENSITY_MAX {
        // SAFETY: A and C bounds checked above.
        return unsafe { sparse::nt(p, w, (m, k, n), alpha, beta) };
    }
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
    /// [`narrow::MAX_N`] decoded rows of W per thread.
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Columns of C per task of [`dot_rows`] (enough work to hide the split).
const DOT_CHUNK: usize = 64;

/// C = α·A·Wᵀ + β·C for a few rows of A (contiguous along k): W is decoded
/// [`narrow::MAX_N`] rows at a time, each dotted with every row of A by [`narrow::dots`]
/// (vectorised, AVX-512 where the CPU has it), so W is decoded once per product.
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
        ROWS.with_borrow_mut(|rows| {
            rows.resize(narrow::MAX_N * k, 0.0);
            let mut j = cols.start;
            while j < cols.end {
                let nb = (cols.end - j).min(narrow::MAX_N);
                for (t, row) in rows.chunks_exact_mut(k).take(nb).enumerate() {
                    w.row_into(j + t, 0, row);
                }
                // SAFETY: A holds m rows of k values at stride rsa; columns j..j + nb of
                // C are this part's; `rows` holds nb rows of k.
                narrow::dots(
                    true,
                    (m, k, nb),
                    alpha,
                    (p.a, p.rsa),
                    (rows.as_ptr(), k),
                    beta,
                    (p.c.add(j * p.csc), p.rsc, p.csc),
                );
                j += nb;
            }
        });
    });
}
