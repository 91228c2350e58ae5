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
    fn block(&self, row: usize, b: usize, out: &mut [f32]) {
        let bb = self.ty.block_bytes();
        let blk = &self.bytes[row * self.row_bytes() + b * bb..][..bb];
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        match self.ty {
            GgmlType::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                    *o = d * (q as i8) as f32;
                }
            }
            GgmlType::Q4_1 => {
                let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let (lo, hi) = out.split_at_mut(QK / 2);
                for (j, &q) in blk[4..20].iter().enumerate() {
                    lo[j] = d * (q & 0x0F) as f32 + m;
                    hi[j] = d * (q >> 4) as f32 + m;
                }
            }
            _ => {
                let (lo, hi) = out.split_at_mut(QK / 2);
                for (j, &q) in blk[2..18].iter().enumerate() {
                    lo[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    hi[j] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
    }
}

/// Calls `f(block, first column inside it, values wanted, their offset in out)` for the
/// blocks of `size` columns that cover `c0..c0 + len`.
fn blocks_of(c0: usize, len: usize, size: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut c = c0;
    while c < c0 + len {
        let (b, at) = (c / size, c % size);
        let take = (size - at).min(c0 + len - c);
        f(b, at, take, c - c0);
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
        if self.ty == GgmlType::F16 {
            let row = &self.bytes[(r * self.cols + c0) * 2..][..out.len() * 2];
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            return;
        }
        let mut tmp = [0.0f32; QK];
        blocks_of(c0, out.len(), QK, |b, at, take, o| {
            if at == 0 && take == QK {
                self.block(r, b, &mut out[o..o + QK]);
            } else {
                self.block(r, b, &mut tmp);
                out[o..o + take].copy_from_slice(&tmp[at..at + take]);
            }
        });
    }
}

/// The 32 codes of a [`QuantMatrix`] block, decoded to `s·code + z`.
fn quant_block(q: &QuantMatrix, row: usize, b: usize, out: &mut [f32; QBLOCK]) {
    let (s, z) = q.scale(row, b * QBLOCK / q.group);
    let words = q.block(row, b);
    match q.bits {
        8 | 4 | 2 => {
            let bits = q.bits as usize;
            let per = 32 / bits;
            let mask = u32::MAX >> (32 - bits);
            for (c, o) in out.iter_mut().enumerate() {
                let code = (words[c / per] >> ((c % per) * bits)) & mask;
                *o = s * code as f32 + z;
            }
        }
        _ => {
            for (c, o) in out.iter_mut().enumerate() {
                let code = super::quant::code_in_block(words, q.bits, c);
                *o = s * code as f32 + z;
            }
        }
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
        let mut tmp = [0.0f32; QBLOCK];
        blocks_of(c0, out.len(), QBLOCK, |b, at, take, o| {
            quant_block(self, r, b, &mut tmp);
            out[o..o + take].copy_from_slice(&tmp[at..at + take]);
        });
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

impl RowSource for Sparse24Matrix {
    fn rows(&self) -> usize {
        self.n
    }
    fn cols(&self) -> usize {
        self.k
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        out.fill(0.0);
        let mut vals = RowValues::new(&self.values, r);
        let end = c0 + out.len();
        for g in c0 / 4..end.div_ceil(4) {
            let nib = (self.idx[r * self.idx_stride + g / 8] >> (4 * (g % 8))) as usize;
            for (slot, i) in [(0, nib & 3), (1, (nib >> 2) & 3)] {
                let c = 4 * g + i;
                if (c0..end).contains(&c) {
                    out[c - c0] = vals.get(r * self.value_stride + 2 * g + slot, c);
                }
            }
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
        out.fill(0.0);
        let nb = self.blocks();
        let masks = &self.masks[r * nb..(r + 1) * nb];
        let first = c0 / SBLOCK;
        let mut p = self.row_ptr[r] as usize;
        p += masks[..first]
            .iter()
            .map(|m| m.count_ones() as usize)
            .sum::<usize>();
        let mut vals = RowValues::new(&self.values, r);
        let end = c0 + out.len();
        for (b, &mask) in masks
            .iter()
            .enumerate()
            .take(end.div_ceil(SBLOCK))
            .skip(first)
        {
            let mut m = mask;
            while m != 0 {
                let c = b * SBLOCK + m.trailing_zeros() as usize;
                m &= m - 1;
                if (c0..end).contains(&c) {
                    out[c - c0] = vals.get(p, c);
                }
                p += 1;
            }
        }
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
