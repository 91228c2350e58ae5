//! Every packed format as a [`RowSource`] of the CPU GEMM ([`crate::cpu::sgemm_rows`]): a
//! segment of one row decoded to exactly the values the format's own dequantizer gives
//! (the GGUF reader's for the GGUF blocks, `dequantize`/`to_dense` for the others), so a
//! product over the packed weight equals the product over its dequantized copy up to the
//! GEMM's own rounding. And [`CpuWeight`], a frozen matrix as the CPU engine holds it.

use super::packed::Packed;
use super::quant::{QuantMatrix, BLOCK as QBLOCK};
use super::sparse::{PackedValues, ScaleLayout, Sparse24Matrix, UnstructuredMatrix, ValueType};
use super::sparse::{BLOCK as SBLOCK, QCOLS};
use crate::cpu::RowSource;
use crate::gguf::quant::QK;
use crate::gguf::GgmlType;
use crate::{Error, Result};
use half::f16;

/// A GGUF tensor `[rows][cols]` kept as the file stores it: Q4_0, Q4_1, Q8_0 blocks of
/// [`QK`] weights along each row, or F16 values.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufRows {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

impl GgufRows {
    /// Whether the CPU engine reads `ty` in place.
    pub fn reads(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0
        )
    }

    /// Wraps a tensor's bytes (`ne = [cols, rows]`), checking their length.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let per = ty.block_elems();
        let want = rows
            .checked_mul(cols / per)
            .and_then(|b| b.checked_mul(ty.block_bytes()));
        if !Self::reads(ty) || !cols.is_multiple_of(per) || want != Some(bytes.len()) {
            return Err(Error::Invalid(format!(
                "GgufRows: a {rows}×{cols} {} tensor of {} bytes",
                ty.name(),
                bytes.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            bytes,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The [`QK`] values of block `b` of `row` (not for F16).
    #[inline(always)]
    fn block(&self, row: usize, b: usize, out: &mut [f32; QK]) {
        let bb = self.ty.block_bytes();
        let blk = &self.bytes[row * self.row_bytes() + b * bb..][..bb];
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        // Codes first, then one multiply-add per value: loops the compiler vectorises.
        let mut codes = [0i8; QK];
        let (scale, offset) = match self.ty {
            GgmlType::Q8_0 => {
                for (c, &q) in codes.iter_mut().zip(&blk[2..34]) {
                    *c = q as i8;
                }
                (d, None)
            }
            GgmlType::Q4_1 => {
                nibbles(&blk[4..20], 0, &mut codes);
                (d, Some(f16::from_le_bytes([blk[2], blk[3]]).to_f32()))
            }
            _ => {
                nibbles(&blk[2..18], 8, &mut codes);
                (d, None)
            }
        };
        match offset {
            None => {
                for (o, &c) in out.iter_mut().zip(&codes) {
                    *o = scale * c as f32;
                }
            }
            Some(m) => {
                for (o, &c) in out.iter_mut().zip(&codes) {
                    *o = scale * c as f32 + m;
                }
            }
        }
    }
}

/// The 32 codes of 16 bytes of 4-bit pairs (low nibbles first, as GGUF stores them),
/// less `bias`.
#[inline(always)]
fn nibbles(bytes: &[u8], bias: i8, codes: &mut [i8; QK]) {
    let (lo, hi) = codes.split_at_mut(QK / 2);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(bytes) {
        *l = (q & 0x0F) as i8 - bias;
        *h = (q >> 4) as i8 - bias;
    }
}

/// A format stored in blocks of 32 values along each row (the GGUF blocks, the packed
/// quantized codes): its rows are decoded block by block by [`decode_row`].
trait Blocks {
    /// The 32 values of block `b` of row `r` (past the last column: whatever the format
    /// stores there; [`decode_row`] never copies them out).
    fn block(&self, r: usize, b: usize, out: &mut [f32; 32]);

    /// A row decoded otherwise than by blocks (GGUF's F16 rows), else false.
    fn special(&self, _r: usize, _c0: usize, _out: &mut [f32]) -> bool {
        false
    }
}

impl Blocks for GgufRows {
    #[inline(always)]
    fn block(&self, r: usize, b: usize, out: &mut [f32; 32]) {
        GgufRows::block(self, r, b, out)
    }
    #[inline(always)]
    fn special(&self, r: usize, c0: usize, out: &mut [f32]) -> bool {
        if self.ty != GgmlType::F16 {
            return false;
        }
        let row = &self.bytes[(r * self.cols + c0) * 2..][..out.len() * 2];
        for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
            *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
        true
    }
}

impl Blocks for QuantMatrix {
    #[inline(always)]
    fn block(&self, r: usize, b: usize, out: &mut [f32; QBLOCK]) {
        quant_block(self, r, b, out)
    }
}

/// [`RowSource::row_into`] for a [`Blocks`] format: whole blocks decoded straight into
/// `out`, the partial ones at its ends through a scratch block; on x86-64 the copy
/// compiled for AVX2 (its block loops vectorise 8 wide) where the CPU has it.
fn decode_row<B: Blocks>(w: &B, r: usize, c0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the features were detected.
        return unsafe { decode_row_avx2(w, r, c0, out) };
    }
    decode_row_body(w, r, c0, out)
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_row_avx2<B: Blocks>(w: &B, r: usize, c0: usize, out: &mut [f32]) {
    decode_row_body(w, r, c0, out)
}

#[inline(always)]
fn decode_row_body<B: Blocks>(w: &B, r: usize, c0: usize, out: &mut [f32]) {
    if w.special(r, c0, out) {
        return;
    }
    let mut tmp = [0.0f32; 32];
    let (mut c, end) = (c0, c0 + out.len());
    while c < end {
        let (b, at) = (c / 32, c % 32);
        let take = (32 - at).min(end - c);
        let o = &mut out[c - c0..c - c0 + take];
        match o.try_into() {
            Ok(full) => w.block(r, b, full),
            Err(_) => {
                w.block(r, b, &mut tmp);
                o.copy_from_slice(&tmp[at..at + take]);
            }
        }
        c += take;
    }
}

impl RowSource for GgufRows {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        decode_row(self, r, c0, out)
    }
}

/// The 32 codes of a [`QuantMatrix`] block, decoded to `s·code + z`.
#[inline(always)]
fn quant_block(q: &QuantMatrix, row: usize, b: usize, out: &mut [f32; QBLOCK]) {
    match q.bits {
        8 => quant_block_pow2::<8>(q, row, b, out),
        4 => quant_block_pow2::<4>(q, row, b, out),
        2 => quant_block_pow2::<2>(q, row, b, out),
        _ => {
            let (s, z) = q.scale(row, b * QBLOCK / q.group);
            let words = q.block(row, b);
            for (c, o) in out.iter_mut().enumerate() {
                let code = super::quant::code_in_block(words, q.bits, c);
                *o = s * code as f32 + z;
            }
        }
    }
}

/// [`quant_block`] for a width that divides 32 (codes never straddle words), unrolled.
#[inline(always)]
fn quant_block_pow2<const BITS: usize>(
    q: &QuantMatrix,
    row: usize,
    b: usize,
    out: &mut [f32; QBLOCK],
) {
    let (s, z) = q.scale(row, b * QBLOCK / q.group);
    let words = q.block(row, b);
    let per = 32 / BITS;
    let mask = u32::MAX >> (32 - BITS);
    for (c, o) in out.iter_mut().enumerate() {
        let code = (words[c / per] >> ((c % per) * BITS)) & mask;
        *o = s * code as f32 + z;
    }
}

impl RowSource for QuantMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        decode_row(self, r, c0, out)
    }
}

/// Stored values of one row of `v`, each scaled as `PackedValues::get` does (the scale
/// looked up once per group of [`QCOLS`] columns when the layout is direct).
struct RowValues<'a> {
    v: &'a PackedValues,
    row: usize,
    group: usize,
    scale: f32,
}

impl<'a> RowValues<'a> {
    fn new(v: &'a PackedValues, row: usize) -> Self {
        Self {
            v,
            row,
            group: usize::MAX,
            scale: 1.0,
        }
    }
    fn get(&mut self, pos: usize, col: usize) -> f32 {
        if self.v.ty == ValueType::F32 || self.v.layout != ScaleLayout::Direct {
            return self.v.get(pos, self.row, col);
        }
        if col / QCOLS != self.group {
            self.group = col / QCOLS;
            self.scale = self.v.scale(self.row, col);
        }
        self.v.raw(pos) as i32 as f32 * self.scale
    }
}

impl Sparse24Matrix {
    /// Calls `f(column, value)` for the stored entries of row `r` in columns `c0..c1`, in
    /// order (the packer keeps each group's two offsets ascending; a group past k or with
    /// fewer than two non-zeros stores zeros).
    fn each_entry(&self, r: usize, c0: usize, c1: usize, mut f: impl FnMut(usize, f32)) {
        let mut vals = RowValues::new(&self.values, r);
        for g in c0 / 4..c1.div_ceil(4) {
            let nib = (self.idx[r * self.idx_stride + g / 8] >> (4 * (g % 8))) as usize;
            for (slot, i) in [(0, nib & 3), (1, (nib >> 2) & 3)] {
                let c = 4 * g + i;
                if (c0..c1).contains(&c) {
                    f(c, vals.get(r * self.value_stride + 2 * g + slot, c));
                }
            }
        }
    }
}

impl RowSource for Sparse24Matrix {
    fn rows(&self) -> usize {
        self.n
    }
    fn cols(&self) -> usize {
        self.k
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        out.fill(0.0);
        self.each_entry(r, c0, c0 + out.len(), |c, v| out[c - c0] = v);
    }
    fn density(&self) -> f32 {
        0.5
    }
    fn entries(&self, r: usize, c0: usize, c1: usize, out: &mut Vec<(u32, f32)>) {
        self.each_entry(r, c0, c1, |c, v| out.push(((c - c0) as u32, v)));
    }
}

impl UnstructuredMatrix {
    /// Calls `f(column, value)` for the stored entries of row `r` in columns `c0..c1`, in
    /// order.
    fn each_entry(&self, r: usize, c0: usize, c1: usize, mut f: impl FnMut(usize, f32)) {
        let nb = self.blocks();
        let masks = &self.masks[r * nb..(r + 1) * nb];
        let first = c0 / SBLOCK;
        let mut p = self.row_ptr[r] as usize;
        p += masks[..first]
            .iter()
            .map(|m| m.count_ones() as usize)
            .sum::<usize>();
        let blocks = masks
            .iter()
            .enumerate()
            .take(c1.div_ceil(SBLOCK))
            .skip(first);
        let v = &self.values;
        if v.layout == ScaleLayout::Direct {
            match v.ty {
                ValueType::Int4 => return codes::<4>(v, r, c0..c1, p, blocks, f),
                ValueType::Int8 => return codes::<8>(v, r, c0..c1, p, blocks, f),
                ValueType::F32 => {}
            }
        }
        let mut vals = RowValues::new(v, r);
        for (b, &mask) in blocks {
            let mut m = mask;
            while m != 0 {
                let c = b * SBLOCK + m.trailing_zeros() as usize;
                m &= m - 1;
                if (c0..c1).contains(&c) {
                    f(c, vals.get(p, c));
                }
                p += 1;
            }
        }
    }
}

/// [`UnstructuredMatrix::each_entry`] for `BITS`-bit codes with the row's own scales:
/// decoded here (shifts by constants), the scale looked up once per group, each value the
/// one `PackedValues::get` gives. `p` is the position of the first block's first entry.
#[inline(always)]
fn codes<'a, const BITS: usize>(
    v: &PackedValues,
    r: usize,
    cols: std::ops::Range<usize>,
    mut p: usize,
    blocks: impl Iterator<Item = (usize, &'a u32)>,
    mut f: impl FnMut(usize, f32),
) {
    let per = 32 / BITS;
    let shift = (32 - BITS) as u32;
    let (mut group, mut scale) = (usize::MAX, 0.0f32);
    for (b, &mask) in blocks {
        let mut m = mask;
        while m != 0 {
            let c = b * SBLOCK + m.trailing_zeros() as usize;
            m &= m - 1;
            if cols.contains(&c) {
                if c / QCOLS != group {
                    group = c / QCOLS;
                    scale = v.scale(r, c);
                }
                let word = v.words[p / per] >> (BITS * (p % per));
                let code = ((word << shift) as i32) >> shift;
                f(c, code as f32 * scale);
            }
            p += 1;
        }
    }
}

impl RowSource for UnstructuredMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::expand::available(self) {
            return super::expand::row_into(self, r, c0, out);
        }
        out.fill(0.0);
        self.each_entry(r, c0, c0 + out.len(), |c, v| out[c - c0] = v);
    }
    fn density(&self) -> f32 {
        // Positions held (each row's padded to a multiple of 8): a bound on the entries.
        let all = self.rows * self.cols;
        if all == 0 {
            return 1.0;
        }
        self.row_ptr[self.rows] as f32 / all as f32
    }
    fn entries(&self, r: usize, c0: usize, c1: usize, out: &mut Vec<(u32, f32)>) {
        self.each_entry(r, c0, c1, |c, v| out.push(((c - c0) as u32, v)));
    }
}

/// A frozen weight `[rows][cols]` as the CPU engine holds it: the GGUF's own blocks or a
/// compressed file's packed projection, read in place by [`crate::cpu::sgemm_rows`].
#[derive(Clone, Debug, PartialEq)]
pub enum CpuWeight {
    Gguf(GgufRows),
    Packed(Packed),
}

impl CpuWeight {
    /// The format as a [`RowSource`].
    pub fn source(&self) -> &dyn RowSource {
        match self {
            CpuWeight::Gguf(g) => g,
            CpuWeight::Packed(Packed::Quant(q)) => q,
            CpuWeight::Packed(Packed::Sparse24(s)) => s,
            CpuWeight::Packed(Packed::Unstructured(u)) => u,
        }
    }

    /// (rows, cols) = (out, in) features.
    pub fn shape(&self) -> (usize, usize) {
        let s = self.source();
        (s.rows(), s.cols())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            CpuWeight::Gguf(g) => g.bytes.len(),
            CpuWeight::Packed(p) => p.bytes(),
        }
    }

    /// The dense `[rows][cols]` values, row by row through [`RowSource::row_into`].
    pub fn dequantize(&self) -> Vec<f32> {
        let (rows, cols) = self.shape();
        let mut out = vec![0.0f32; rows * cols];
        if cols > 0 {
            for (r, row) in out.chunks_exact_mut(cols).enumerate() {
                self.source().row_into(r, 0, row);
            }
        }
        out
    }

    /// A short name of the format ("Q4_1", "quant 4-bit", "2:4 int4", …).
    pub fn describe(&self) -> String {
        match self {
            CpuWeight::Gguf(g) => g.ty.name().to_string(),
            CpuWeight::Packed(Packed::Quant(q)) => format!("quant {}-bit", q.bits),
            CpuWeight::Packed(Packed::Sparse24(s)) => format!("2:4 {:?}", s.values.ty),
            CpuWeight::Packed(Packed::Unstructured(u)) => {
                format!("unstructured {:?}", u.values.ty)
            }
        }
    }
}
