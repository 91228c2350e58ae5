//! x·Wᵀ for a W whose rows are sparse ([`RowSource::entries`]): only the stored weights are
//! multiplied, so a model pruned to half its weights does half the multiply-adds.
//!
//! A is transposed once into Aᵀ `[k][m]` (m padded to [`L`] rows), so each stored weight
//! w = W[j][p] multiplies one contiguous run of L rows, Aᵀ[p][i0..i0 + L], into column j of
//! an L-row tile of C: a broadcast and an FMA per vector of L lanes, four interleaved
//! streams of weights per tile so the FMAs do not wait on each other. Columns are split
//! over threads; each decodes the entries of a chunk of its rows once and reuses them for
//! every row tile.

use super::gemm::Ptrs;
use super::par;
use super::source::RowSource;
use std::cell::RefCell;

/// Rows of C per tile (one AVX-512 vector, four SSE/SIMD128 ones).
pub const L: usize = 16;
/// Rows of W decoded together (their entries stay in L1/L2 for every row tile).
const CHUNK: usize = 32;

thread_local! {
    /// Column indices and values of a chunk's entries, and each row's start.
    static ENTRIES: RefCell<(Vec<u32>, Vec<f32>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// C = α·A·Wᵀ + β·C over W's stored entries (A m×k with csa = 1, C m×n).
///
/// # Safety
/// A and C must be in bounds at the strides of `p`; `w.entries` must give columns < k.
pub(super) unsafe fn sparse_nt(
    p: Ptrs,
    w: &dyn RowSource,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    beta: f32,
) {
    let mp = m.next_multiple_of(L);
    let mut at = vec![0.0f32; k * mp];
    for i in 0..m {
        // SAFETY: row i of A holds k values (caller).
        let row = std::slice::from_raw_parts(p.a.add(i * p.rsa), k);
        for (q, &x) in row.iter().enumerate() {
            at[q * mp + i] = x;
        }
    }
    let at = &at[..];
    let chunks = n.div_ceil(CHUNK);
    let parts = par::threads().min(chunks);
    let kernel = tile_kernel();
    par::for_each(parts, |t| {
        let p: Ptrs = p;
        let q = par::part(chunks, parts, t);
        ENTRIES.with_borrow_mut(|(idx, val, start)| {
            for ch in q {
                let cols = ch * CHUNK..((ch + 1) * CHUNK).min(n);
                idx.clear();
                val.clear();
                start.clear();
                for j in cols.clone() {
                    start.push(idx.len());
                    w.entries(j, idx, val);
                }
                start.push(idx.len());
                debug_assert!(idx.iter().all(|&c| (c as usize) < k));
                for i0 in (0..m).step_by(L) {
                    let rows = L.min(m - i0);
                    for (jj, j) in cols.clone().enumerate() {
                        let e = start[jj]..start[jj + 1];
                        // SAFETY: every column < k (the source's contract), so each
                        // Aᵀ[c][i0..i0 + L] lies inside the k·mp values.
                        let acc = kernel(at, mp, i0, &idx[e.clone()], &val[e]);
                        for (l, &v) in acc.iter().enumerate().take(rows) {
                            // SAFETY: C[i0 + l][j] is in bounds and this part's column.
                            let c = &mut *p.c.add((i0 + l) * p.rsc + j * p.csc);
                            *c = if beta == 0.0 {
                                alpha * v
                            } else {
                                alpha * v + beta * *c
                            };
                        }
                    }
                }
            }
        });
    });
}

/// Σ over entries (c, v) of v·Aᵀ[c][i0..i0 + L], in four interleaved streams.
type TileFn = unsafe fn(&[f32], usize, usize, &[u32], &[f32]) -> [f32; L];

macro_rules! tile_body {
    ($at:ident, $mp:ident, $i0:ident, $idx:ident, $val:ident, $fma:expr) => {{
        let mut acc = [[0.0f32; L]; 4];
        let n4 = $idx.len() / 4 * 4;
        let base = $at.as_ptr().add($i0);
        let mut t = 0;
        while t < n4 {
            for s in 0..4 {
                let c = *$idx.get_unchecked(t + s) as usize;
                let v = *$val.get_unchecked(t + s);
                let a = &*(base.add(c * $mp) as *const [f32; L]);
                for l in 0..L {
                    acc[s][l] = $fma(v, a[l], acc[s][l]);
                }
            }
            t += 4;
        }
        while t < $idx.len() {
            let c = *$idx.get_unchecked(t) as usize;
            let v = *$val.get_unchecked(t);
            let a = &*(base.add(c * $mp) as *const [f32; L]);
            for l in 0..L {
                acc[0][l] = $fma(v, a[l], acc[0][l]);
            }
            t += 1;
        }
        let mut out = [0.0f32; L];
        for l in 0..L {
            out[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
        out
    }};
}

/// The tile for this machine: FMA-enabled builds on x86-64 when it has them.
fn tile_kernel() -> TileFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return x86::tile_avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return x86::tile_avx2;
        }
    }
    tile_portable
}

/// # Safety
/// Every `idx` must be < k, with `at` holding k·mp values and i0 + L ≤ mp.
unsafe fn tile_portable(at: &[f32], mp: usize, i0: usize, idx: &[u32], val: &[f32]) -> [f32; L] {
    tile_body!(at, mp, i0, idx, val, |v: f32, a: f32, s: f32| s + v * a)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::L;

    /// # Safety
    /// As [`super::tile_portable`]; the CPU must have AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn tile_avx512(
        at: &[f32],
        mp: usize,
        i0: usize,
        idx: &[u32],
        val: &[f32],
    ) -> [f32; L] {
        tile_body!(at, mp, i0, idx, val, |v: f32, a: f32, s: f32| v
            .mul_add(a, s))
    }

    /// # Safety
    /// As [`super::tile_portable`]; the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(
        at: &[f32],
        mp: usize,
        i0: usize,
        idx: &[u32],
        val: &[f32],
    ) -> [f32; L] {
        tile_body!(at, mp, i0, idx, val, |v: f32, a: f32, s: f32| v
            .mul_add(a, s))
    }
}
