//! Packed quantized weights for frozen `[n][k]` matrices (y = x·Wᵀ) and their CPU reference
//! matmuls, the twins of the kernels in shaders/qmatmul.wgsl and shaders/qmatmul_gguf.wgsl.
//!
//! # [`QuantMatrix`] layout
//!
//! Codes are packed along k, one row after another, in blocks of [`BLOCK`] = 32 codes, so a
//! kernel reads whole u32 words and every block lies inside one scale group (groups are
//! 32, 64 or 128 columns). A row has `ceil(k/32)` blocks of `bits` words each; the padding
//! codes past k are 0 (kernels never multiply them: x is 0 there).
//!
//! * 2, 4, 8 bits: code `c` of a block is in word `c / (32/bits)` at bit
//!   `(c % (32/bits))·bits`, little end first.
//! * 3 bits (3 words per block, no code straddles a word): word 0 holds bits 0–1 of codes
//!   0–15 (2 bits each), word 1 bits 0–1 of codes 16–31, word 2 bit 2 of code `c` at bit `c`.
//!
//! A value is `s·code + z` with f16 `s` and `z` per (row, group of `group` columns; the last
//! group of a row may be partial):
//!
//! * symmetric: s = max|w| / (2^(b−1)−1), code = q + 2^(b−1) with q = round(w/s) in
//!   [−(2^(b−1)−1), 2^(b−1)−1], z = −2^(b−1)·s (not stored). Scales are two f16 per u32
//!   (group `g` in half `g % 2` of word `g / 2`), `ceil(groups/2)` words per row.
//! * asymmetric: s = (max − min)/(2^b − 1), z = min, code = round((w − z)/s) in
//!   [0, 2^b − 1]. One u32 per group: s in the low half, z in the high half.
//!
//! Scale rows are zero-padded to a multiple of 4 words (one vec4 load brings the scales of
//! 8 or 4 groups).
//!
//! Codes are rounded with the f16-rounded s and z, so dequantized values are exactly what a
//! kernel computes, and `s·code` is exact in f32 (11 × 8 significant bits).
//!
//! # [`GgufBlockMatrix`]
//! The raw bytes of a GGUF Q4_0/Q4_1/Q8_0 tensor (18/20/34-byte blocks of 32 weights, see
//! [`crate::gguf::quant`]), padded to u32 words, read in place by the kernels.

use crate::gguf::{quant as gq, GgmlType};
use crate::{Error, Result};
use half::f16;

/// Codes per packed block; every scale group is a whole number of blocks.
pub const BLOCK: usize = 32;
/// Supported code widths.
pub const BITS: [u32; 4] = [2, 3, 4, 8];
/// Supported scale group sizes (columns sharing one scale).
pub const GROUPS: [usize; 3] = [32, 64, 128];

/// f16 keeps 11 significant bits: a rounded scale or zero is off by at most 2^-11 relative.
pub const F16_REL_ERR: f32 = 1.0 / 2048.0;
/// f16 subnormal step (2^-24): the absolute error of a tiny rounded scale.
pub const F16_ABS_ERR: f32 = 1.0 / 16_777_216.0;
/// Round-to-nearest leaves at most half a step per element (before f16 rounding of s, z).
pub const MAX_ERR_STEPS: f32 = 0.5;

/// Relative Frobenius error budgets ‖W − deq(W)‖ / ‖W‖ for weights uniform in [−1, 1), per
/// bit width (index as [`BITS`]). Uniform rounding error has rms step/√12, so symmetric
/// gives 1/(2(2^(b−1)−1)) and asymmetric 1/(2^b−1) when the group range is the full
/// [−1, 1); the budgets add 5 % (the f16 scales, and groups whose range is narrower only
/// help).
pub const FROB_BUDGET_SYM: [f32; 4] = [0.5 * 1.05, 1.05 / 6.0, 1.05 / 14.0, 1.05 / 254.0];
pub const FROB_BUDGET_ASYM: [f32; 4] = [1.05 / 3.0, 1.05 / 7.0, 1.05 / 15.0, 1.05 / 255.0];

/// The relative Frobenius budget of `bits` (uniform [−1, 1) weights), or None for an
/// unsupported width.
pub fn frobenius_budget(bits: u32, symmetric: bool) -> Option<f32> {
    let i = BITS.iter().position(|&b| b == bits)?;
    Some(if symmetric {
        FROB_BUDGET_SYM[i]
    } else {
        FROB_BUDGET_ASYM[i]
    })
}

/// A row-major `[rows][cols]` weight quantized per group along cols (layout in the module
/// doc).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    /// Output features n.
    pub rows: usize,
    /// Input features k.
    pub cols: usize,
    pub bits: u32,
    pub group: usize,
    pub symmetric: bool,
    /// `rows · words_per_row()` packed codes.
    pub data: Vec<u32>,
    /// `rows · scale_words_per_row()` packed f16 scales (and zeros when asymmetric).
    pub scales: Vec<u32>,
}

pub(crate) fn put_code(block: &mut [u32], bits: u32, c: usize, code: u32) {
    if bits == 3 {
        block[c / 16] |= (code & 3) << (2 * (c % 16));
        block[2] |= (code >> 2) << c;
    } else {
        let per = 32 / bits as usize;
        block[c / per] |= code << ((c % per) as u32 * bits);
    }
}

/// Code `c` (0..32) of one packed block of `bits`-bit codes.
pub fn code_in_block(block: &[u32], bits: u32, c: usize) -> u32 {
    if bits == 3 {
        ((block[c / 16] >> (2 * (c % 16))) & 3) | (((block[2] >> c) & 1) << 2)
    } else {
        let per = 32 / bits as usize;
        (block[c / per] >> ((c % per) as u32 * bits)) & (u32::MAX >> (32 - bits))
    }
}

fn f16_checked(v: f32, what: &str) -> Result<f16> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Error::Invalid(format!(
            "quantize: {what} = {v} does not fit in f16"
        )))
    }
}

/// Quantizes a row-major `[rows][cols]` weight by round-to-nearest per group of `group`
/// columns (the last group of a row is partial when `group` does not divide `cols`).
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    symmetric: bool,
) -> Result<QuantMatrix> {
    if !BITS.contains(&bits) {
        return Err(Error::Invalid(format!(
            "quantize: {bits} bits (supported: {BITS:?})"
        )));
    }
    if !GROUPS.contains(&group) {
        return Err(Error::Invalid(format!(
            "quantize: group {group} (supported: {GROUPS:?})"
        )));
    }
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(Error::Invalid(format!(
            "quantize: {} values for a {rows}×{cols} matrix",
            w.len()
        )));
    }
    if let Some(v) = w.iter().find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("quantize: non-finite weight {v}")));
    }
    let mut q = QuantMatrix {
        rows,
        cols,
        bits,
        group,
        symmetric,
        data: Vec::new(),
        scales: Vec::new(),
    };
    let (wpr, swpr, gpr) = (
        q.words_per_row(),
        q.scale_words_per_row(),
        q.groups_per_row(),
    );
    q.data = vec![0; rows * wpr];
    q.scales = vec![0; rows * swpr];
    let half = 1u32 << (bits - 1);
    let top = (u32::MAX >> (32 - bits)) as f32; // 2^b − 1
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let data = &mut q.data[r * wpr..(r + 1) * wpr];
        let scales = &mut q.scales[r * swpr..(r + 1) * swpr];
        for g in 0..gpr {
            let c0 = g * group;
            let vals = &row[c0..(c0 + group).min(cols)];
            let (s, z) = if symmetric {
                let amax = vals.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let sh = f16_checked(amax / (half - 1) as f32, "scale")?;
                scales[g / 2] |= (sh.to_bits() as u32) << (16 * (g % 2));
                (sh.to_f32(), 0.0)
            } else {
                let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
                let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sh = f16_checked((max - min) / top, "scale")?;
                let zh = f16_checked(min, "zero")?;
                scales[g] = sh.to_bits() as u32 | ((zh.to_bits() as u32) << 16);
                (sh.to_f32(), zh.to_f32())
            };
            let qmax = (half - 1) as f32;
            let code = |v: f32| -> u32 {
                if s == 0.0 {
                    return if symmetric { half } else { 0 };
                }
                if symmetric {
                    ((v / s).round().clamp(-qmax, qmax) as i32 + half as i32) as u32
                } else {
                    ((v - z) / s).round().clamp(0.0, top) as u32
                }
            };
            for (i, &v) in vals.iter().enumerate() {
                let c = c0 + i;
                let b = c / BLOCK;
                let block = &mut data[b * bits as usize..(b + 1) * bits as usize];
                put_code(block, bits, c % BLOCK, code(v));
            }
        }
    }
    Ok(q)
}

impl QuantMatrix {
    pub fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }
    pub fn words_per_row(&self) -> usize {
        self.blocks_per_row() * self.bits as usize
    }
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group)
    }
    /// Scale words per row, padded to a multiple of 4 so a kernel reads them as vec4.
    pub fn scale_words_per_row(&self) -> usize {
        let words = if self.symmetric {
            self.groups_per_row().div_ceil(2)
        } else {
            self.groups_per_row()
        };
        words.next_multiple_of(4)
    }

    /// (s, z) of group `g` of `row`: a value is `s·code + z`.
    pub fn scale(&self, row: usize, g: usize) -> (f32, f32) {
        let base = row * self.scale_words_per_row();
        if self.symmetric {
            let word = self.scales[base + g / 2];
            let s = f16::from_bits((word >> (16 * (g % 2))) as u16).to_f32();
            (s, -((1u32 << (self.bits - 1)) as f32) * s)
        } else {
            let word = self.scales[base + g];
            (
                f16::from_bits(word as u16).to_f32(),
                f16::from_bits((word >> 16) as u16).to_f32(),
            )
        }
    }

    /// The packed words of block `b` of `row`.
    pub fn block(&self, row: usize, b: usize) -> &[u32] {
        let at = (row * self.blocks_per_row() + b) * self.bits as usize;
        &self.data[at..at + self.bits as usize]
    }

    /// The values of block `b` of `row` (32, zero past the last column), decoded as the
    /// kernels do.
    fn block_values(&self, row: usize, b: usize) -> [f32; BLOCK] {
        let (s, z) = self.scale(row, b * BLOCK / self.group);
        let words = self.block(row, b);
        let mut out = [0.0f32; BLOCK];
        let n = (self.cols - b * BLOCK).min(BLOCK);
        for (c, o) in out.iter_mut().enumerate().take(n) {
            *o = s * code_in_block(words, self.bits, c) as f32 + z;
        }
        out
    }

    /// The dense `[rows][cols]` matrix the codes stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for b in 0..self.blocks_per_row() {
                let v = self.block_values(r, b);
                out.extend_from_slice(&v[..(self.cols - b * BLOCK).min(BLOCK)]);
            }
        }
        out
    }

    /// Bytes held: codes plus scales.
    pub fn bytes(&self) -> usize {
        (self.data.len() + self.scales.len()) * 4
    }

    /// The round-to-nearest bound on |w − deq(w)| for one element of group `g` of `row`,
    /// given that group's original values: half a step, plus the f16 rounding of the scale
    /// (which can clamp the extreme code) and of the zero.
    pub fn max_abs_error_budget(&self, row: usize, g: usize, vals: &[f32]) -> f32 {
        let (s, _) = self.scale(row, g);
        let levels = (1u32 << self.bits) as f32;
        let slack = if self.symmetric {
            let amax = vals.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            amax * F16_REL_ERR
        } else {
            let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (max - min + min.abs()) * F16_REL_ERR
        };
        MAX_ERR_STEPS * s + slack * 1.01 + levels * F16_ABS_ERR
    }
}

/// Checks every bit width, group and symmetry on `w` (values in [−1, 1)) against the
/// budgets: each element within [`QuantMatrix::max_abs_error_budget`], and the relative
/// Frobenius error within [`frobenius_budget`]. Err names the first violation.
pub fn check_error_budgets(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    for bits in BITS {
        for group in GROUPS {
            for sym in [true, false] {
                let q = quantize(w, rows, cols, bits, group, sym)?;
                let d = q.dequantize();
                let what = format!("{bits}-bit group {group} symmetric={sym}");
                let mut err2 = 0.0f64;
                for r in 0..rows {
                    for g in 0..q.groups_per_row() {
                        let c0 = g * group;
                        let c1 = (c0 + group).min(cols);
                        let vals = &w[r * cols + c0..r * cols + c1];
                        let tol = q.max_abs_error_budget(r, g, vals);
                        for (c, &v) in vals.iter().enumerate() {
                            let e = (v - d[r * cols + c0 + c]).abs();
                            if e > tol {
                                return Err(Error::Invalid(format!(
                                    "{what}: w[{r}, {}] = {v} off by {e} > budget {tol}",
                                    c0 + c
                                )));
                            }
                            err2 += (e as f64).powi(2);
                        }
                    }
                }
                let norm2: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
                let rel = if norm2 > 0.0 {
                    (err2 / norm2).sqrt() as f32
                } else {
                    0.0
                };
                let budget = frobenius_budget(bits, sym).unwrap_or(0.0);
                if rel > budget {
                    return Err(Error::Invalid(format!(
                        "{what}: relative Frobenius error {rel} > budget {budget}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_nt(what: &str, x: usize, m: usize, k: usize) -> bool {
    let ok = m.checked_mul(k) == Some(x);
    debug_assert!(ok, "{what}: input of {x} values is not {m}×{k}");
    ok
}

/// y[m×n] = x[m×k]·Wᵀ over a weight read 32 values at a time: `block(j, b)` gives the
/// values of block `b` of row `j` (the last block of a row may be partial).
fn blocked_nt(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    block: impl Fn(usize, usize) -> [f32; BLOCK],
) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for j in 0..n {
        for b in 0..k.div_ceil(BLOCK) {
            let v = block(j, b);
            let c0 = b * BLOCK;
            let len = (k - c0).min(BLOCK);
            for r in 0..m {
                let xs = &x[r * k + c0..r * k + c0 + len];
                y[r * n + j] += xs.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    y
}

/// dx[m×k] = dy[m×n]·W over a weight read block by block, as in [`blocked_nt`].
fn blocked_nn(
    dy: &[f32],
    m: usize,
    k: usize,
    n: usize,
    block: impl Fn(usize, usize) -> [f32; BLOCK],
) -> Vec<f32> {
    let mut dx = vec![0.0f32; m * k];
    for j in 0..n {
        for b in 0..k.div_ceil(BLOCK) {
            let v = block(j, b);
            let c0 = b * BLOCK;
            let len = (k - c0).min(BLOCK);
            for r in 0..m {
                let a = dy[r * n + j];
                for (o, wv) in dx[r * k + c0..r * k + c0 + len].iter_mut().zip(&v) {
                    *o += a * wv;
                }
            }
        }
    }
    dx
}

/// y[m×n] = x[m×k]·Wᵀ reading the packed codes block by block (the twin of the kernel
/// `gemv_nt`/`tiled_nt` in shaders/qmatmul.wgsl). A mis-sized x gives an empty result.
pub fn qmatmul_nt(x: &[f32], w: &QuantMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    if !check_nt("qmatmul_nt", x.len(), m, k) {
        return Vec::new();
    }
    blocked_nt(x, m, k, n, |j, b| w.block_values(j, b))
}

/// dx[m×k] = dy[m×n]·W (the input gradient of a frozen quantized weight; twin of
/// `gemv_nn`/`tiled_nn`). A mis-sized dy gives an empty result.
pub fn qmatmul_nn(dy: &[f32], w: &QuantMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    if !check_nt("qmatmul_nn", dy.len(), m, n) {
        return Vec::new();
    }
    blocked_nn(dy, m, k, n, |j, b| w.block_values(j, b))
}

/// A GGUF Q4_0/Q4_1/Q8_0 weight `[rows][cols]` kept as its raw blocks (read in place by
/// shaders/qmatmul_gguf.wgsl).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufBlockMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// The tensor's bytes, little-endian in u32 words, zero-padded to a whole word.
    pub data: Vec<u32>,
}

impl GgufBlockMatrix {
    /// Wraps the raw bytes of a GGUF tensor with `ne = [cols, rows]`.
    pub fn from_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) {
            return Err(Error::Invalid(format!(
                "GgufBlockMatrix: type {} is not a block type (Q4_0, Q4_1, Q8_0)",
                ty.name()
            )));
        }
        if !cols.is_multiple_of(gq::QK) {
            return Err(Error::Invalid(format!(
                "GgufBlockMatrix: {cols} columns is not a multiple of {}",
                gq::QK
            )));
        }
        let want = rows
            .checked_mul(cols / gq::QK)
            .and_then(|b| b.checked_mul(ty.block_bytes()));
        if want != Some(bytes.len()) {
            return Err(Error::Invalid(format!(
                "GgufBlockMatrix: {rows}×{cols} {} needs {want:?} bytes, got {}",
                ty.name(),
                bytes.len()
            )));
        }
        let data = bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Quantizes a row-major weight with llama.cpp's reference quantizer for `ty`.
    pub fn quantize(ty: GgmlType, w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(w.len()) {
            return Err(Error::Invalid(format!(
                "GgufBlockMatrix: {} values for a {rows}×{cols} matrix",
                w.len()
            )));
        }
        let bytes = gq::quantize(ty, w).map_err(|e| Error::Invalid(format!("quantize: {e}")))?;
        Self::from_bytes(ty, rows, cols, &bytes)
    }

    pub fn blocks_per_row(&self) -> usize {
        self.cols / gq::QK
    }

    /// The same weights in the [`QuantMatrix`] layout, losslessly (same f16 scales, same
    /// codes): Q4_0 → 4-bit asymmetric (s = d, z = −8d), Q4_1 → 4-bit asymmetric (d, m),
    /// Q8_0 → 8-bit symmetric (code = q + 128), all with groups of 32. The packed layout
    /// is what the fast vec4 GEMV reads, so a GGUF model can take that path at load time.
    pub fn to_quant(&self) -> Result<QuantMatrix> {
        let (bits, symmetric) = match self.ty {
            GgmlType::Q8_0 => (8, true),
            _ => (4, false),
        };
        let mut q = QuantMatrix {
            rows: self.rows,
            cols: self.cols,
            bits,
            group: BLOCK,
            symmetric,
            data: Vec::new(),
            scales: Vec::new(),
        };
        let (wpr, swpr) = (q.words_per_row(), q.scale_words_per_row());
        q.data = vec![0; self.rows * wpr];
        q.scales = vec![0; self.rows * swpr];
        for r in 0..self.rows {
            for b in 0..self.blocks_per_row() {
                let o = (r * self.blocks_per_row() + b) * self.ty.block_bytes();
                let d = [self.byte(o), self.byte(o + 1)];
                let block = &mut q.data[r * wpr + b * bits as usize..][..bits as usize];
                let scales = &mut q.scales[r * swpr..(r + 1) * swpr];
                match self.ty {
                    GgmlType::Q8_0 => {
                        scales[b / 2] |= (u16::from_le_bytes(d) as u32) << (16 * (b % 2));
                        for c in 0..BLOCK {
                            let code = (self.byte(o + 2 + c) as i8 as i32 + 128) as u32;
                            put_code(block, bits, c, code);
                        }
                    }
                    _ => {
                        let (z, q0) = if self.ty == GgmlType::Q4_0 {
                            let z = f16_checked(-8.0 * self.half(o), "zero")?;
                            (z.to_bits(), o + 2)
                        } else {
                            (
                                u16::from_le_bytes([self.byte(o + 2), self.byte(o + 3)]),
                                o + 4,
                            )
                        };
                        scales[b] = u16::from_le_bytes(d) as u32 | ((z as u32) << 16);
                        for j in 0..16 {
                            let v = self.byte(q0 + j);
                            put_code(block, bits, j, (v & 15) as u32);
                            put_code(block, bits, j + 16, (v >> 4) as u32);
                        }
                    }
                }
            }
        }
        Ok(q)
    }

    /// The raw tensor bytes (without the word padding).
    pub fn raw_bytes(&self) -> Vec<u8> {
        let len = self.rows * self.blocks_per_row() * self.ty.block_bytes();
        let mut out: Vec<u8> = self.data.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(len);
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The dense matrix, by the GGUF reader's own dequantizer.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        gq::dequantize(self.ty, &self.raw_bytes(), &mut out).map_err(Error::Invalid)?;
        Ok(out)
    }

    fn byte(&self, o: usize) -> u8 {
        (self.data[o / 4] >> (8 * (o % 4))) as u8
    }

    fn half(&self, o: usize) -> f32 {
        f16::from_le_bytes([self.byte(o), self.byte(o + 1)]).to_f32()
    }

    /// The 32 values of block `b` of `row`, as the kernel computes them: `s·code + z`.
    fn block_values(&self, row: usize, b: usize) -> [f32; gq::QK] {
        let o = (row * self.blocks_per_row() + b) * self.ty.block_bytes();
        let mut out = [0.0f32; gq::QK];
        let d = self.half(o);
        match self.ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let (z, q0) = if self.ty == GgmlType::Q4_0 {
                    (-8.0 * d, o + 2)
                } else {
                    (self.half(o + 2), o + 4)
                };
                for j in 0..16 {
                    let q = self.byte(q0 + j);
                    out[j] = d * (q & 15) as f32 + z;
                    out[j + 16] = d * (q >> 4) as f32 + z;
                }
            }
            _ => {
                for (j, v) in out.iter_mut().enumerate() {
                    *v = d * (self.byte(o + 2 + j) as i8) as f32;
                }
            }
        }
        out
    }
}

/// y[m×n] = x[m×k]·Wᵀ reading the GGUF blocks in place (twin of `gemv_nt`/`tiled_nt` in
/// shaders/qmatmul_gguf.wgsl). A mis-sized x gives an empty result.
pub fn gguf_matmul_nt(x: &[f32], w: &GgufBlockMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    if !check_nt("gguf_matmul_nt", x.len(), m, k) {
        return Vec::new();
    }
    blocked_nt(x, m, k, n, |j, b| w.block_values(j, b))
}

/// dx[m×k] = dy[m×n]·W for a GGUF block weight (twin of `gemv_nn`/`tiled_nn` in
/// shaders/qmatmul_gguf.wgsl). A mis-sized dy gives an empty result.
pub fn gguf_matmul_nn(dy: &[f32], w: &GgufBlockMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    if !check_nt("gguf_matmul_nn", dy.len(), m, n) {
        return Vec::new();
    }
    blocked_nn(dy, m, k, n, |j, b| w.block_values(j, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn codes_round_trip_through_the_packing() {
        for bits in BITS {
            let mut block = vec![0u32; bits as usize];
            let codes: Vec<u32> = (0..32u32).map(|c| (c * 7 + 3) % (1 << bits)).collect();
            for (c, &code) in codes.iter().enumerate() {
                put_code(&mut block, bits, c, code);
            }
            for (c, &code) in codes.iter().enumerate() {
                assert_eq!(code_in_block(&block, bits, c), code, "bits {bits} code {c}");
            }
        }
    }

    #[test]
    fn error_budgets_hold_per_bit_width() {
        let (rows, cols) = (7, 200); // 200 is not a multiple of any group
        check_error_budgets(&uniform(rows * cols, 5), rows, cols).unwrap();
    }

    #[test]
    fn twins_match_the_dense_product() {
        let (m, k, n) = (3, 45, 5);
        let x = uniform(m * k, 1);
        let w = uniform(n * k, 2);
        let q = quantize(&w, n, k, 4, 32, false).unwrap();
        let dense = q.dequantize();
        let y = qmatmul_nt(&x, &q, m);
        // The plain products, summed in f64: y = x·Wᵀ, dx = dy·W.
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                (0..k)
                    .map(|j| x[i / n * k + j] as f64 * dense[i % n * k + j] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
        let dy = uniform(m * n, 3);
        let dx = qmatmul_nn(&dy, &q, m);
        let want: Vec<f32> = (0..m * k)
            .map(|i| {
                (0..n)
                    .map(|r| dy[i / k * n + r] as f64 * dense[r * k + i % k] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        for (a, b) in dx.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn gguf_blocks_decode_like_the_reader() {
        let (n, k) = (3, 64);
        let w = uniform(n * k, 9);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let g = GgufBlockMatrix::quantize(ty, &w, n, k).unwrap();
            let dense = g.dequantize().unwrap();
            let mut mine = Vec::new();
            for r in 0..n {
                for b in 0..g.blocks_per_row() {
                    mine.extend(g.block_values(r, b));
                }
            }
            assert_eq!(mine, dense, "{}", ty.name());
            assert_eq!(g.to_quant().unwrap().dequantize(), dense, "{}", ty.name());
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(quantize(&[0.0; 6], 2, 3, 5, 32, true).is_err());
        assert!(quantize(&[0.0; 6], 2, 3, 4, 16, true).is_err());
        assert!(quantize(&[0.0; 5], 2, 3, 4, 32, true).is_err());
        assert!(quantize(&[f32::NAN; 6], 2, 3, 4, 32, true).is_err());
        assert!(quantize(&[1e9; 6], 2, 3, 4, 32, true).is_err());
        assert!(GgufBlockMatrix::from_bytes(GgmlType::Q4_0, 1, 32, &[0; 17]).is_err());
        assert!(GgufBlockMatrix::from_bytes(GgmlType::F32, 1, 32, &[0; 128]).is_err());
    }
}
