//! Products with a weight that stores only some of its entries (a pruned projection):
//! C = α·A·Wᵀ + β·C computed from W's stored entries alone.
//!
//! Measured on the 2-core AVX-512 machine (one thread, 1024×576 by 1536×576, int4
//! values): against the dense GEMM over the decoded weight this kernel takes 1.9× as
//! long at sparsity 0.5, 1.06× at 0.7, 0.96× at 0.8 and 0.83× at 0.9. Each stored entry
//! costs a broadcast and four loads of Aᵀ for four multiply-adds, where the dense
//! micro-kernel loads about one value per two multiply-adds, so at sparsity 0.5 it could
//! at best match the dense GEMM; only weights with at most [`DENSITY_MAX`] of their
//! entries stored take it (docs/results.md).
//!
//! The dense GEMM broadcasts A and streams W; here W's entries are the broadcast side.
//! A is transposed into tiles of [`MT`] rows (`at[c]` holds column c of A for the tile's
//! rows, contiguous), and each row r of W accumulates `Σ w[r][c]·at[c]` over its stored
//! columns c into [`MT`] lanes (vector registers): column r of C for the tile's rows. The
//! depth is cut in blocks of [`KC`] so that a tile's slice of Aᵀ stays in the L1 cache
//! while every row of W's block sweeps it; W's entries in a block are decoded once per
//! block ([`RowSource::entries`]) and reused by every tile of A. Rows of W are split over
//! the threads; each writes its own columns of C.

use super::gemm::Ptrs;
use super::pack::{aligned, transpose};
use super::par;
use super::rows::RowSource;
use std::cell::RefCell;

/// Rows of A per tile: the accumulator lanes of one row of W (four AVX-512 registers).
pub const MT: usize = 64;
/// Depth per block (a tile's block of Aᵀ: KC·MT floats, 16 KiB).
const KC: usize = 64;
/// Rows of W per task.
const NB: usize = 32;

/// At most this share of entries stored, products with W take the stored entries only
/// (the measured break-even is between sparsity 0.7 and 0.8).
pub const DENSITY_MAX: f32 = 0.2;

#[derive(Default)]
struct Bufs {
    /// The stored entries of a task's rows in one depth block, row after row.
    entries: Vec<(u32, f32)>,
    /// Where each row's entries start in `entries` (NB + 1).
    starts: Vec<usize>,
    /// The task's columns of C, transposed: `[NB][tiles·MT]`.
    ct: Vec<f32>,
    /// ct transposed back: `[m][NB]`.
    c: Vec<f32>,
}

thread_local! {
    static BUFS: RefCell<Bufs> = RefCell::new(Bufs::default());
    /// Aᵀ in tiles (built by the calling thread, read by every task).
    static AT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// C = α·A·Wᵀ + β·C (A m×k with csa = 1, C m×n) from the entries W stores.
///
/// # Safety
/// A and C must be in bounds at the strides of `p`; `w` is k columns wide and n rows.
pub(super) unsafe fn nt(
    p: Ptrs,
    w: &dyn RowSource,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    beta: f32,
) {
    let tiles = m.div_ceil(MT);
    AT.with_borrow_mut(|atv| {
        let at = aligned(atv, tiles * k * MT);
        for t in 0..tiles {
            let rows = MT.min(m - t * MT);
            let dst = at.add(t * k * MT);
            if rows < MT {
                std::ptr::write_bytes(dst, 0, k * MT);
            }
            let srcs: Vec<*const f32> = (0..rows).map(|i| p.a.add((t * MT + i) * p.rsa)).collect();
            transpose(&srcs, k, dst, MT);
        }
        let at = at as *const f32 as usize;
        let tasks = n.div_ceil(NB);
        let parts = par::threads().min(tasks);
        par::for_each(parts, |i| {
            let p: Ptrs = p;
            for task in par::part(tasks, parts, i) {
                let rows = task * NB..((task + 1) * NB).min(n);
                BUFS.with_borrow_mut(|b| {
                    run_task(b, at as *const f32, p, w, (m, k, tiles), rows, alpha, beta)
                });
            }
        });
    });
}

/// One task: rows `rows` of W, i.e. those columns of C.
///
/// # Safety
/// As [`nt`]; `at` holds Aᵀ in `tiles` tiles of k·MT.
#[allow(clippy::too_many_arguments)]
unsafe fn run_task(
    b: &mut Bufs,
    at: *const f32,
    p: Ptrs,
    w: &dyn RowSource,
    (m, k, tiles): (usize, usize, usize),
    rows: std::ops::Range<usize>,
    alpha: f32,
    beta: f32,
) {
    let nr = rows.len();
    let width = tiles * MT;
    b.ct.clear();
    b.ct.resize(nr * width, 0.0);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        b.entries.clear();
        b.starts.clear();
        b.starts.push(0);
        for r in rows.clone() {
            w.entries(r, pc, pc + kc, &mut b.entries);
            b.starts.push(b.entries.len());
        }
        for t in 0..tiles {
            let xt = at.add(t * k * MT + pc * MT);
            accumulate(b, xt, nr, t * MT, width);
        }
    }
    // C[i][r] = α·ct[r][i] + β·C[i][r], through a transpose of the task's columns.
    b.c.clear();
    b.c.resize(m * nr, 0.0);
    let srcs: Vec<*const f32> = (0..nr).map(|r| b.ct.as_ptr().add(r * width)).collect();
    transpose(&srcs, m, b.c.as_mut_ptr(), nr);
    for i in 0..m {
        let src = &b.c[i * nr..(i + 1) * nr];
        for (j, &v) in src.iter().enumerate() {
            let c = &mut *p.c.add(i * p.rsc + (rows.start + j) * p.csc);
            *c = if beta == 0.0 {
                alpha * v
            } else {
                alpha * v + beta * *c
            };
        }
    }
}

/// ct[r][at..at + MT] += Σ w·Aᵀ[c] over row r's entries (c, w) of this depth block, for
/// each of the task's `nr` rows (AVX-512 where the CPU has it).
///
/// # Safety
/// `xt` must hold the block's KC·MT values of one tile; `b` the block's entries.
unsafe fn accumulate(b: &mut Bufs, xt: *const f32, nr: usize, at: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
        return accumulate_avx512(b, xt, nr, at, width);
    }
    accumulate_body::<false>(b, xt, nr, at, width)
}

/// # Safety
/// As [`accumulate`], on a CPU with AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn accumulate_avx512(b: &mut Bufs, xt: *const f32, nr: usize, at: usize, width: usize) {
    accumulate_body::<true>(b, xt, nr, at, width)
}

/// # Safety
/// As [`accumulate`].
#[inline(always)]
unsafe fn accumulate_body<const FMA: bool>(
    b: &mut Bufs,
    xt: *const f32,
    nr: usize,
    at: usize,
    width: usize,
) {
    for r in 0..nr {
        let dst = b.ct.as_mut_ptr().add(r * width + at);
        let mut acc: [f32; MT] = std::ptr::read_unaligned(dst as *const [f32; MT]);
        for &(c, v) in &b.entries[b.starts[r]..b.starts[r + 1]] {
            let x: [f32; MT] = std::ptr::read_unaligned(xt.add(c as usize * MT) as *const _);
            for l in 0..MT {
                acc[l] = if FMA {
                    v.mul_add(x[l], acc[l])
                } else {
                    acc[l] + v * x[l]
                };
            }
        }
        std::ptr::write_unaligned(dst as *mut [f32; MT], acc);
    }
}
