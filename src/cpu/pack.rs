//! Packing for the GEMM: blocks of A into MR-row strips and of B into NR-wide panels, in
//! the order a micro-kernel reads them, padded with zeros to whole strips and panels; B
//! either from a strided f32 slice or decoded from a [`RowSource`] panel by panel.

use super::rows::{Op, RowSource};

/// The 64-byte aligned part of `v` of `len` values, growing `v` if needed.
pub(super) fn aligned(v: &mut Vec<f32>, len: usize) -> *mut f32 {
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(15);
    // SAFETY: off ≤ 15 and the vector holds len + 16 values.
    unsafe { v.as_mut_ptr().add(off) }
}

/// Packs the `mrows`×`kc` block of A at `src` (strides rsa, csa) as kc steps of `mr`
/// values (rows past `mrows` zero).
///
/// # Safety
/// The block must be in bounds of A; `dst` must hold kc·mr values.
pub(super) unsafe fn pack_a(
    dst: *mut f32,
    (src, rsa, csa): (*const f32, usize, usize),
    mrows: usize,
    kc: usize,
    mr: usize,
) {
    if mrows < mr {
        std::ptr::write_bytes(dst, 0, kc * mr);
    }
    if csa == 1 {
        let rows: Vec<*const f32> = (0..mrows).map(|i| src.add(i * rsa)).collect();
        transpose(&rows, kc, dst, mr);
    } else {
        for q in 0..kc {
            let col = src.add(q * csa);
            for i in 0..mrows {
                *dst.add(q * mr + i) = *col.add(i * rsa);
            }
        }
    }
}

/// Packs the `kc`×`nc` block of B at `b` (strides rsb, csb) into `nr`-wide panels of kc
/// steps (columns past nc zero).
///
/// # Safety
/// The block must be in bounds of B; `dst` must hold kc·⌈nc/nr⌉·nr values.
pub(super) unsafe fn pack_b(
    dst: *mut f32,
    (b, rsb, csb): (*const f32, usize, usize),
    kc: usize,
    nc: usize,
    nr: usize,
) {
    for (q, jr) in (0..nc).step_by(nr).enumerate() {
        let ncols = nr.min(nc - jr);
        let panel = dst.add(q * kc * nr);
        let src = b.add(jr * csb);
        if ncols < nr {
            std::ptr::write_bytes(panel, 0, kc * nr);
        }
        if csb == 1 {
            for s in 0..kc {
                std::ptr::copy_nonoverlapping(src.add(s * rsb), panel.add(s * nr), ncols);
            }
        } else if rsb == 1 {
            let cols: Vec<*const f32> = (0..ncols).map(|j| src.add(j * csb)).collect();
            transpose(&cols, kc, panel, nr);
        } else {
            for j in 0..ncols {
                let col = src.add(j * csb);
                for s in 0..kc {
                    *panel.add(s * nr + j) = *col.add(s * rsb);
                }
            }
        }
    }
}

/// [`pack_b`] for a B read through a [`RowSource`] W: the block of B at depth `p0..p0+kc`
/// and columns `j0..j0+nc`, where B = Wᵀ ([`Op::Nt`]: column j of B is row j of W) or
/// B = W ([`Op::Nn`]: row p of B is row p of W). Each row of W the block touches is
/// decoded once into `row` and copied into its panels.
///
/// # Safety
/// `dst` must hold kc·⌈nc/nr⌉·nr values; the block must lie inside B.
pub(super) unsafe fn pack_b_rows(
    dst: *mut f32,
    (w, op): (&dyn RowSource, Op),
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    nr: usize,
    row: &mut Vec<f32>,
) {
    let panels = nc.div_ceil(nr);
    if !nc.is_multiple_of(nr) {
        // Only the last panel has padding columns.
        std::ptr::write_bytes(dst.add((panels - 1) * kc * nr), 0, kc * nr);
    }
    match op {
        Op::Nt => {
            // Up to TILE rows of W decoded, then moved into their panel's columns.
            row.resize((TILE * kc).max(row.len()), 0.0);
            let mut j = 0;
            while j < nc {
                let (q, at) = (j / nr, j % nr);
                let take = TILE.min(nr - at).min(nc - j);
                for (t, r) in row.chunks_exact_mut(kc).take(take).enumerate() {
                    w.row_into(j0 + j + t, p0, r);
                }
                let srcs: Vec<*const f32> = (0..take).map(|t| row.as_ptr().add(t * kc)).collect();
                transpose(&srcs, kc, dst.add(q * kc * nr + at), nr);
                j += take;
            }
        }
        Op::Nn => {
            row.resize(nc.max(row.len()), 0.0);
            let row = &mut row[..nc];
            for s in 0..kc {
                w.row_into(p0 + s, j0, row);
                for (q, chunk) in row.chunks(nr).enumerate() {
                    let at = dst.add(q * kc * nr + s * nr);
                    std::ptr::copy_nonoverlapping(chunk.as_ptr(), at, chunk.len());
                }
            }
        }
    }
}

/// Rows per tile of [`transpose`].
const TILE: usize = 8;

/// `dst[s·ld + r] = srcs[r][s]` for `s < len` and every source r: contiguous rows
/// written as columns of a matrix of leading dimension `ld`, eight rows at a time through
/// 8×8 register transposes where the CPU has AVX.
///
/// # Safety
/// Each source must hold `len` values; `dst` must hold (len − 1)·ld + srcs.len() values.
pub(super) unsafe fn transpose(srcs: &[*const f32], len: usize, dst: *mut f32, ld: usize) {
    let done = transpose_wide(srcs, len, dst, ld);
    scalar(&srcs[done..], 0..len, dst.add(done), ld);
}

/// The whole tiles of eight sources where the CPU has AVX; returns how many sources were
/// done (0 elsewhere).
///
/// # Safety
/// As [`transpose`].
unsafe fn transpose_wide(srcs: &[*const f32], len: usize, dst: *mut f32, ld: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        let mut r0 = 0;
        while r0 + TILE <= srcs.len() {
            let rows: [*const f32; TILE] = std::array::from_fn(|r| srcs[r0 + r]);
            let whole = len / TILE * TILE;
            x86::transpose8(&rows, whole, dst.add(r0), ld);
            scalar(&rows, whole..len, dst.add(r0), ld);
            r0 += TILE;
        }
        return r0;
    }
    let _ = (srcs, len, dst, ld);
    0
}

/// [`transpose`] one value at a time, for the steps `range`.
///
/// # Safety
/// As [`transpose`].
unsafe fn scalar(srcs: &[*const f32], range: std::ops::Range<usize>, dst: *mut f32, ld: usize) {
    for (r, row) in srcs.iter().enumerate() {
        for s in range.clone() {
            *dst.add(s * ld + r) = *row.add(s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::transpose`] of eight rows over `len` steps (a multiple of 8), 8×8 blocks
    /// in AVX registers.
    ///
    /// # Safety
    /// As [`super::transpose`]; the CPU must have AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose8(rows: &[*const f32; 8], len: usize, dst: *mut f32, ld: usize) {
        let mut s = 0;
        while s < len {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i].add(s)));
            // Pairs of rows interleaved, then quads, then the two 128-bit halves swapped.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((s + i) * ld), v);
            }
            s += 8;
        }
    }
}
