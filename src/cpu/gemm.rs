//! C[m×n] = α·A·B + β·C in f32, with explicit row and column strides for each operand (so
//! one call covers x·Wᵀ, dy·W and dyᵀ·x). Blocked and packed in the usual way: for each
//! block of NC columns and KC depth, B is packed into NR-wide panels, each MR-row strip of
//! A into a small buffer, and a micro-kernel makes an MR×NR tile that is then added into C.
//! The columns (or, for narrow products, the rows) are split over threads.

pub use super::kernels::Kernel;
use super::kernels::Out;
use super::pack::{aligned, pack_a, pack_b, pack_b_rows};
use super::rows::{Op, RowSource};
use super::{kernels, narrow, par};
use std::cell::RefCell;

/// Depth of one packed block (its B block stays in L2, its A strip in L1).
const KC: usize = 384;
/// Columns of one packed B block (a multiple of every kernel's NR).
const NC: usize = 768;
/// Products of fewer multiply-adds than this run on one thread (a split would cost more).
const PARALLEL_MIN: usize = 1 << 18;

/// Every kernel this machine runs, fastest first.
pub fn kernels() -> Vec<Kernel> {
    kernels::available()
}

/// The kernel [`sgemm`] uses.
pub fn best_kernel() -> Kernel {
    kernels::best()
}

/// Whether [`sgemm`] runs on `matrixmultiply` instead of these kernels: set
/// `EDGE_LLM_SGEMM=matrixmultiply` to compare the two on the same binary.
pub fn uses_matrixmultiply() -> bool {
    static MM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MM.get_or_init(|| std::env::var("EDGE_LLM_SGEMM").is_ok_and(|v| v == "matrixmultiply"))
}

/// C = α·A·B + β·C, A m×k and B k×n, each element (i, j) of X at `i·rsx + j·csx` (the
/// strides matrixmultiply takes; non-negative here). β = 0 overwrites C without reading
/// it. Panics when an operand's furthest element lies outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa, csa): (&[f32], isize, isize),
    (b, rsb, csb): (&[f32], isize, isize),
    beta: f32,
    (c, rsc, csc): (&mut [f32], isize, isize),
) {
    if uses_matrixmultiply() {
        check_bounds((m, k, n), (a, rsa, csa), (b, rsb, csb), (&*c, rsc, csc));
        if m > 0 && n > 0 {
            // SAFETY: strides non-negative and every element in bounds (checked above).
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    alpha,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr(),
                    rsb,
                    csb,
                    beta,
                    c.as_mut_ptr(),
                    rsc,
                    csc,
                )
            }
        }
        return;
    }
    sgemm_with(
        kernels::best(),
        (m, k, n),
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        beta,
        (c, rsc, csc),
    );
}

/// Raw operand pointers shared by the threads (each writes its own tiles of C).
#[derive(Clone, Copy)]
pub(super) struct Ptrs {
    pub a: *const f32,
    pub b: *const f32,
    pub c: *mut f32,
    pub rsa: usize,
    pub csa: usize,
    pub rsb: usize,
    pub csb: usize,
    pub rsc: usize,
    pub csc: usize,
}
// SAFETY: A and B are only read; threads write disjoint ranges of C.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// [`sgemm`] with a given kernel (for tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    kern: Kernel,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa, csa): (&[f32], isize, isize),
    (b, rsb, csb): (&[f32], isize, isize),
    beta: f32,
    (c, rsc, csc): (&mut [f32], isize, isize),
) {
    check_bounds((m, k, n), (a, rsa, csa), (b, rsb, csb), (&*c, rsc, csc));
    if m == 0 || n == 0 {
        return;
    }
    let u = |s: isize| s as usize;
    if k == 0 || alpha == 0.0 {
        scale_c((m, n), beta, (c, rsc, csc));
        return;
    }
    // At most 8 columns, both operands contiguous along the depth: dot products (with B
    // transposed first when its columns are the contiguous side).
    if n <= narrow::MAX_N && csa == 1 && k >= 16 {
        let bt: Vec<f32>;
        let (bp, bcs) = if rsb == 1 {
            (b.as_ptr(), u(csb))
        } else if csb == 1 {
            bt = (0..n)
                .flat_map(|j| (0..k).map(move |p| (j, p)))
                .map(|(j, p)| b[p * u(rsb) + j])
                .collect();
            (bt.as_ptr(), k)
        } else {
            (std::ptr::null(), 0)
        };
        if !bp.is_null() {
            let p = Ptrs {
                a: a.as_ptr(),
                b: bp,
                c: c.as_mut_ptr(),
                rsa: u(rsa),
                csa: 1,
                rsb: 1,
                csb: bcs,
                rsc: u(rsc),
                csc: u(csc),
            };
            let parts = if m * k * n < PARALLEL_MIN {
                1
            } else {
                par::threads().min(m)
            };
            let wide = kern.nr >= 16;
            par::for_each(parts, |i| {
                let p: Ptrs = p; // the whole struct (Sync), not its raw fields
                let rows = par::part(m, parts, i);
                // SAFETY: bounds asserted above (B's copy holds n·k values); parts own
                // disjoint rows of C.
                unsafe {
                    narrow::dots(
                        wide,
                        (rows.len(), k, n),
                        alpha,
                        (p.a.add(rows.start * p.rsa), p.rsa),
                        (p.b, p.csb),
                        beta,
                        (p.c.add(rows.start * p.rsc), p.rsc, p.csc),
                    )
                }
            });
            return;
        }
    }
    // A product narrower than a panel (a LoRA rank) is made transposed, Cᵀ = Bᵀ·Aᵀ, so
    // that its few columns become a kernel's rows instead of padding in every panel.
    if n < kern.nr && m > n {
        let kern = kernels::for_rows(kern, n);
        return sgemm_with(
            kern,
            (n, k, m),
            alpha,
            (b, csb, rsb),
            (a, csa, rsa),
            beta,
            (c, csc, rsc),
        );
    }
    let p = Ptrs {
        a: a.as_ptr(),
        b: b.as_ptr(),
        c: c.as_mut_ptr(),
        rsa: u(rsa),
        csa: u(csa),
        rsb: u(rsb),
        csb: u(csb),
        rsc: u(rsc),
        csc: u(csc),
    };
    // SAFETY: bounds asserted above.
    unsafe { blocked(kern, p, BFrom::Strided, (m, k, n), alpha, beta) }
}

/// Where [`block`] reads B: the strided slice of [`Ptrs`], or a [`RowSource`] (B = Wᵀ or
/// W) decoded while its panels are packed.
#[derive(Clone, Copy)]
pub(super) enum BFrom<'a> {
    Strided,
    Rows(&'a dyn RowSource, Op),
}

/// The packed product over every tile, split over threads by columns (or by rows when
/// there are too few column panels).
///
/// # Safety
/// Every element of A, C (and B when strided) addressed by (m, k, n) must be in bounds.
pub(super) unsafe fn blocked(
    kern: Kernel,
    p: Ptrs,
    b: BFrom,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    beta: f32,
) {
    let kern = kernels::for_rows(kern, m);
    let threads = if m * k * n < PARALLEL_MIN {
        1
    } else {
        par::threads()
    };
    let (strips, panels) = (m.div_ceil(kern.mr), n.div_ceil(kern.nr));
    if panels >= 2 * threads || panels >= strips {
        let parts = threads.min(panels);
        par::for_each(parts, |i| {
            let q = par::part(panels, parts, i);
            let cols = q.start * kern.nr..(q.end * kern.nr).min(n);
            // SAFETY: the caller's bounds; parts own disjoint columns of C.
            unsafe { block(kern, p, b, 0..m, cols, k, alpha, beta) }
        });
    } else {
        let parts = threads.min(strips);
        par::for_each(parts, |i| {
            let q = par::part(strips, parts, i);
            let rows = q.start * kern.mr..(q.end * kern.mr).min(m);
            // SAFETY: the caller's bounds; parts own disjoint rows of C.
            unsafe { block(kern, p, b, rows, 0..n, k, alpha, beta) }
        });
    }
}

/// Panics unless every stride is non-negative and the furthest element each operand of a
/// C[m×n] = A[m×k]·B[k×n] product touches is in its slice (any element type: the f64
/// reference's matrixmultiply products are checked here too).
/// C = β·C over an m×n C (C = 0 when β is 0, without reading it): a product with nothing
/// to add (k = 0 or α = 0).
pub(super) fn scale_c(
    (m, n): (usize, usize),
    beta: f32,
    (c, rsc, csc): (&mut [f32], isize, isize),
) {
    let u = |s: isize| s as usize;
    for i in 0..m {
        for j in 0..n {
            let x = &mut c[i * u(rsc) + j * u(csc)];
            *x = if beta == 0.0 { 0.0 } else { beta * *x };
        }
    }
}

pub fn check_bounds<T>(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): (&[T], isize, isize),
    (b, rsb, csb): (&[T], isize, isize),
    (c, rsc, csc): (&[T], isize, isize),
) {
    assert!(
        [rsa, csa, rsb, csb, rsc, csc].iter().all(|&s| s >= 0),
        "gemm: negative stride"
    );
    if m == 0 || n == 0 {
        return;
    }
    let last =
        |r: usize, cc: usize, rs: isize, cs: isize| (r - 1) * rs as usize + (cc - 1) * cs as usize;
    assert!(
        k == 0 || last(m, k, rsa, csa) < a.len(),
        "gemm: A out of bounds"
    );
    assert!(
        k == 0 || last(k, n, rsb, csb) < b.len(),
        "gemm: B out of bounds"
    );
    assert!(last(m, n, rsc, csc) < c.len(), "gemm: C out of bounds");
}

thread_local! {
    /// Packed A strip and B block, and a decoded row of a [`RowSource`], reused across
    /// calls on each thread.
    static BUFS: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// C[rows, cols] = α·A[rows, :]·B[:, cols] + β·C[rows, cols].
///
/// # Safety
/// Every element of the operands addressed by `rows`, `cols` and `k` must be in bounds,
/// and no other thread may touch C[rows, cols] meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    kern: Kernel,
    p: Ptrs,
    b: BFrom,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    BUFS.with_borrow_mut(|(abuf, bbuf, row)| {
        let ap = aligned(abuf, mr * KC);
        let bp = aligned(bbuf, KC * NC);
        let mut tile = [0f32; 512];
        for jc in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                match b {
                    BFrom::Strided => pack_b(
                        bp,
                        (p.b.add(pc * p.rsb + jc * p.csb), p.rsb, p.csb),
                        kc,
                        nc,
                        nr,
                    ),
                    BFrom::Rows(w, op) => pack_b_rows(bp, (w, op), (pc, kc), (jc, nc), nr, row),
                }
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in rows.clone().step_by(mr) {
                    let mrows = mr.min(rows.end - ic);
                    pack_a(
                        ap,
                        (p.a.add(ic * p.rsa + pc * p.csa), p.rsa, p.csa),
                        mrows,
                        kc,
                        mr,
                    );
                    for (q, jr) in (0..nc).step_by(nr).enumerate() {
                        let ncols = nr.min(nc - jr);
                        let bq = bp.add(q * kc * nr);
                        let c = p.c.add(ic * p.rsc + (jc + jr) * p.csc);
                        if mrows == mr && ncols == nr && p.csc == 1 {
                            let rsc = p.rsc;
                            (kern.run)(
                                kc,
                                ap,
                                bq,
                                Out {
                                    c,
                                    rsc,
                                    alpha,
                                    beta,
                                },
                            );
                        } else {
                            let t = Out {
                                c: tile.as_mut_ptr(),
                                rsc: nr,
                                alpha: 1.0,
                                beta: 0.0,
                            };
                            (kern.run)(kc, ap, bq, t);
                            let tile = &tile[..mr * nr];
                            update(c, (p.rsc, p.csc), tile, nr, (mrows, ncols), alpha, beta);
                        }
                    }
                }
            }
        }
    });
}

/// C tile = α·tile + β·C tile (β = 0: C not read).
///
/// # Safety
/// `c` must address a valid `rows`×`cols` block at strides (rsc, csc).
unsafe fn update(
    c: *mut f32,
    (rsc, csc): (usize, usize),
    tile: &[f32],
    nr: usize,
    (rows, cols): (usize, usize),
    alpha: f32,
    beta: f32,
) {
    for i in 0..rows {
        let t = &tile[i * nr..i * nr + cols];
        if csc == 1 {
            let cr = std::slice::from_raw_parts_mut(c.add(i * rsc), cols);
            if beta == 0.0 {
                cr.iter_mut().zip(t).for_each(|(x, &y)| *x = alpha * y);
            } else if beta == 1.0 {
                cr.iter_mut().zip(t).for_each(|(x, &y)| *x += alpha * y);
            } else {
                cr.iter_mut()
                    .zip(t)
                    .for_each(|(x, &y)| *x = alpha * y + beta * *x);
            }
        } else {
            for (j, &y) in t.iter().enumerate() {
                let x = &mut *c.add(i * rsc + j * csc);
                *x = if beta == 0.0 {
                    alpha * y
                } else {
                    alpha * y + beta * *x
                };
            }
        }
    }
}
