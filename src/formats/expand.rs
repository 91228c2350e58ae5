//! A row of an [`UnstructuredMatrix`] with integer codes decoded by AVX-512 expand loads:
//! the row's codes are first unpacked whole words at a time into a buffer (no per-entry
//! branch), then each 16 columns take theirs in one `vexpandps` by the column bitmask and
//! one multiply by the group's scale. The entry-by-entry walk (`each_entry`) stays the
//! portable path and the oracle this is tested against (`tests/cpu_packed.rs`).
//!
//! Why: LUC-compressed weights are unstructured sparse, and the CPU engine decodes their
//! rows for every product (decoding a token reads every row). Walking the mask bit by bit
//! cost about 1.3 ns an entry, 60 % of `eval-mc` on a compressed model.

#![cfg(target_arch = "x86_64")]

use super::sparse::{ScaleLayout, UnstructuredMatrix, ValueType, BLOCK, QCOLS};
use std::arch::x86_64::*;
use std::cell::RefCell;

thread_local! {
    /// The decoded codes of the row being expanded.
    static CODES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`row_into`] serves `m` on this CPU.
pub fn available(m: &UnstructuredMatrix) -> bool {
    m.values.layout == ScaleLayout::Direct
        && matches!(m.values.ty, ValueType::Int4 | ValueType::Int8)
        && std::is_x86_feature_detected!("avx512f")
}

/// `out` = columns `c0..c0 + out.len()` of row `r`, as `RowSource::row_into`. Call only
/// where [`available`] is true.
pub fn row_into(m: &UnstructuredMatrix, r: usize, c0: usize, out: &mut [f32]) {
    assert!(
        available(m),
        "expand::row_into without AVX-512 or on f32 values"
    );
    CODES.with(|buf| {
        let mut buf = buf.borrow_mut();
        // SAFETY: `available` checked AVX-512F.
        unsafe {
            match m.values.ty {
                ValueType::Int4 => row_avx512::<4>(m, r, c0, out, &mut buf),
                _ => row_avx512::<8>(m, r, c0, out, &mut buf),
            }
        }
    })
}

/// # Safety
/// The CPU must have AVX-512F; `m`'s values are `BITS`-bit codes with direct scales.
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512<const BITS: usize>(
    m: &UnstructuredMatrix,
    r: usize,
    c0: usize,
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    let c1 = c0 + out.len();
    let nb = m.blocks();
    let masks = &m.masks[r * nb..(r + 1) * nb];
    let (b0, b1) = (c0 / BLOCK, c1.div_ceil(BLOCK));
    let p0 = m.row_ptr[r] as usize
        + masks[..b0]
            .iter()
            .map(|x| x.count_ones() as usize)
            .sum::<usize>();
    let n: usize = masks[b0..b1].iter().map(|x| x.count_ones() as usize).sum();
    // Unpack whole words from the one holding p0: codes p0.. sit at buf[skip..].
    let per = 32 / BITS;
    let (w0, skip) = (p0 / per, p0 % per);
    let words = (skip + n).div_ceil(per);
    buf.clear();
    buf.resize(words * per + 16, 0.0);
    let shift = (32 - BITS) as u32;
    let src = &m.values.words[w0..(w0 + words).min(m.values.words.len())];
    for (chunk, &w) in buf.chunks_exact_mut(per).zip(src) {
        for (t, o) in chunk.iter_mut().enumerate() {
            *o = (((w >> (BITS * t)) << shift) as i32 >> shift) as f32;
        }
    }
    let mut at = skip;
    let mut tmp = [0.0f32; BLOCK];
    for (b, &mask) in masks.iter().enumerate().take(b1).skip(b0) {
        let base = b * BLOCK;
        let scale = _mm512_set1_ps(m.values.scale(r, base));
        debug_assert_eq!(QCOLS % BLOCK, 0, "a block shares one scale");
        for half in 0..2 {
            let bits = (mask >> (16 * half)) as u16;
            let v = _mm512_maskz_expandloadu_ps(bits, buf.as_ptr().add(at));
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16 * half), _mm512_mul_ps(v, scale));
            at += bits.count_ones() as usize;
        }
        // The block's columns that fall in c0..c1.
        let (lo, hi) = (base.max(c0), (base + BLOCK).min(c1));
        out[lo - c0..hi - c0].copy_from_slice(&tmp[lo - base..hi - base]);
    }
}
