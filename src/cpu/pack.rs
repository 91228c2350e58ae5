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
        for i in 0..mrows {
            let row = src.add(i * rsa);
            for q in 0..kc {
                *dst.add(q * mr + i) = *row.add(q);
            }
        }
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
            row.resize(kc.max(row.len()), 0.0);
            let row = &mut row[..kc];
            for j in 0..nc {
                w.row_into(j0 + j, p0, row);
                let col = dst.add((j / nr) * kc * nr + j % nr);
                for (s, &v) in row.iter().enumerate() {
                    *col.add(s * nr) = v;
                }
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
