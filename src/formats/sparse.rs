//! Sparse weight formats for frozen `[n][k]` weights (y = x·Wᵀ), optionally combined with
//! int8/int4 quantization of the kept values, and their CPU reference matmuls — the twins
//! of the kernels in shaders/spmatmul.wgsl.
//!
//! Two formats, both built from a dense weight whose zeros were already chosen:
//!
//! * [`Sparse24Matrix`] (2:4 semi-structured): in every group of 4 consecutive weights
//!   along k at most 2 are non-zero. Per row: `ceil(k/4)` groups; group g stores 2 values
//!   (stored positions 2g, 2g+1) and a 4-bit nibble `i0 | i1 << 2` (in-group offsets,
//!   i0 < i1), 8 nibbles per u32 (nibble g%8 of word g/8). A k that is not a multiple of
//!   4 is padded with zero weights.
//! * [`UnstructuredMatrix`]: any pattern, blocked CSR. Each row is cut into blocks of
//!   [`BLOCK`] = 32 columns; `masks[row][block]` is a u32 bitmask of the stored columns
//!   and the values follow in row order, column ascending, from `row_ptr[row]` (a value
//!   position, a multiple of 8 so packed int8/int4 rows start on a word). A kernel walks
//!   a row block by block, so it can stage x tile by tile and skip zeros without a
//!   per-value column index (1 bit per column instead of 16–32 bits per non-zero).
//!
//! Values ([`PackedValues`]): f32 words, or symmetric int8 (4 per u32, codes ±127) /
//! int4 (8 per u32, codes ±7), little end first. Quantized values share one f16 scale per
//! row and [`QCOLS`] = 64 dense columns (absmax/qmax), two f16 per u32; the value is
//! `code · scale`. Scales are indexed by the ORIGINAL (row, column), so a transposed copy
//! (built at pack time for the input gradient) reuses the same codes and scales and
//! dequantizes to exactly the same numbers as the forward format.

use crate::{Error, Result};
use half::f16;

/// Columns per bitmask block of the unstructured format.
pub const BLOCK: usize = 32;
/// Dense columns (of the original weight) sharing one quantization scale.
pub const QCOLS: usize = 64;
/// Value positions of a row are padded to a multiple of this (one int4 word).
const ROW_ALIGN: usize = 8;

/// How the kept values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    F32,
    /// Symmetric int8, codes in [-127, 127], f16 scale per row and 64 columns.
    Int8,
    /// Symmetric int4, codes in [-7, 7], f16 scale per row and 64 columns.
    Int4,
}

impl ValueType {
    /// The sparse value container for a sparse layer at `bits`: the sparse kernels read
    /// int8 and int4 codes, so 8 bits → int8 and 2/3/4 bits → int4. The values stay on the
    /// policy's grid (a 3-bit layer uses codes ±3 of the nibble): the accuracy is that of
    /// `bits`, the storage that of the container (the caller reports it).
    pub fn for_bits(bits: u32) -> ValueType {
        if bits >= 8 {
            ValueType::Int8
        } else {
            ValueType::Int4
        }
    }

    pub const ALL: [ValueType; 3] = [ValueType::F32, ValueType::Int8, ValueType::Int4];

    /// The value of the shader's `VALUES` override constant.
    pub fn shader_id(self) -> u32 {
        match self {
            ValueType::F32 => 0,
            ValueType::Int8 => 1,
            ValueType::Int4 => 2,
        }
    }

    /// Bits of one stored code (32 for f32).
    pub fn bits(self) -> u32 {
        match self {
            ValueType::F32 => 32,
            ValueType::Int8 => 8,
            ValueType::Int4 => 4,
        }
    }

    /// The largest code of a symmetric `bits`-bit grid stored in this type: 2^(bits−1) − 1
    /// (a 3-bit grid in int4 nibbles uses codes ±3). Refuses a grid wider than the type.
    fn grid_qmax(self, bits: u32) -> Result<f32> {
        if self == ValueType::F32 {
            return Ok(0.0);
        }
        if !(2..=self.bits()).contains(&bits) {
            return Err(Error::Invalid(format!(
                "a {bits}-bit grid cannot be stored in {self:?} values (2 to {} bits)",
                self.bits()
            )));
        }
        Ok(((1u32 << (bits - 1)) - 1) as f32)
    }

    fn per_word(self) -> usize {
        match self {
            ValueType::F32 => 1,
            ValueType::Int8 => 4,
            ValueType::Int4 => 8,
        }
    }
}

/// Which (row, column) of the original weight a scale belongs to, given a stored entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleLayout {
    /// Entry (row, col) of this matrix is entry (row, col) of the original weight.
    Direct,
    /// This matrix is the transpose: entry (row, col) is original (col, row).
    Transposed,
}

/// A stream of values stored at positions 0, 1, …: raw f32 words or packed integer codes,
/// plus the f16 scales of the original weight (`groups_per_row` per original row).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedValues {
    pub ty: ValueType,
    pub words: Vec<u32>,
    /// f16 scales, two per u32 (low half first); empty for f32.
    pub scales: Vec<u32>,
    /// Scales per original row: ceil(original k / QCOLS).
    pub groups_per_row: usize,
    pub layout: ScaleLayout,
}

impl PackedValues {
    fn new(ty: ValueType, positions: usize, scales: Vec<u32>, groups_per_row: usize) -> Self {
        PackedValues {
            ty,
            words: vec![0; positions.div_ceil(ty.per_word())],
            scales,
            groups_per_row,
            layout: ScaleLayout::Direct,
        }
    }

    /// The raw stored bits at `pos`: f32 bits, or the code sign-extended to i32.
    pub fn raw(&self, pos: usize) -> u32 {
        match self.ty {
            ValueType::F32 => self.words[pos],
            ValueType::Int8 => {
                (((self.words[pos / 4] >> (8 * (pos % 4))) as u8) as i8) as i32 as u32
            }
            ValueType::Int4 => {
                let nib = (self.words[pos / 8] >> (4 * (pos % 8))) & 15;
                (((nib << 28) as i32) >> 28) as u32
            }
        }
    }

    /// Whether the value at `pos` is zero (±0.0 or code 0): the transposed copy omits it.
    fn is_zero(&self, pos: usize) -> bool {
        self.raw(pos) << 1 == 0
    }

    fn set_raw(&mut self, pos: usize, raw: u32) {
        match self.ty {
            ValueType::F32 => self.words[pos] = raw,
            ValueType::Int8 => {
                let s = 8 * (pos % 4);
                let w = &mut self.words[pos / 4];
                *w = (*w & !(0xff << s)) | ((raw & 0xff) << s);
            }
            ValueType::Int4 => {
                let s = 4 * (pos % 8);
                let w = &mut self.words[pos / 8];
                *w = (*w & !(0xf << s)) | ((raw & 0xf) << s);
            }
        }
    }

    /// The scale of stored entry (row, col) of the matrix holding these values.
    pub fn scale(&self, row: usize, col: usize) -> f32 {
        if self.ty == ValueType::F32 {
            return 1.0;
        }
        let (orow, ocol) = match self.layout {
            ScaleLayout::Direct => (row, col),
            ScaleLayout::Transposed => (col, row),
        };
        let i = orow * self.groups_per_row + ocol / QCOLS;
        f16::from_bits((self.scales[i / 2] >> (16 * (i % 2))) as u16).to_f32()
    }

    /// The dequantized value at `pos`, stored for entry (row, col): code · scale.
    pub fn get(&self, pos: usize, row: usize, col: usize) -> f32 {
        match self.ty {
            ValueType::F32 => f32::from_bits(self.words[pos]),
            _ => self.raw(pos) as i32 as f32 * self.scale(row, col),
        }
    }

    /// Stores `v` at `pos` for entry (row, col), quantizing it with that entry's scale to
    /// codes within ±`qmax`.
    fn put(&mut self, pos: usize, row: usize, col: usize, v: f32, qmax: f32) {
        let raw = match self.ty {
            ValueType::F32 => v.to_bits(),
            _ => {
                let s = self.scale(row, col);
                let q = if s > 0.0 {
                    (v / s).round().clamp(-qmax, qmax)
                } else {
                    0.0
                };
                q as i32 as u32
            }
        };
        self.set_raw(pos, raw);
    }

    /// Bytes of the value words and scales.
    pub fn bytes(&self) -> usize {
        4 * (self.words.len() + self.scales.len())
    }
}

/// The f16 scales (absmax/qmax per row and QCOLS columns) of a dense `[n][k]` weight,
/// packed two per u32, and the number of scales per row.
fn scales_of(w: &[f32], n: usize, k: usize, ty: ValueType, qmax: f32) -> (Vec<u32>, usize) {
    let gpr = k.div_ceil(QCOLS);
    if ty == ValueType::F32 {
        return (Vec::new(), gpr);
    }
    let mut packed = vec![0u32; (n * gpr).div_ceil(2)];
    for r in 0..n {
        for g in 0..gpr {
            let cols = g * QCOLS..((g + 1) * QCOLS).min(k);
            let absmax = w[r * k..][cols].iter().fold(0.0f32, |a, v| a.max(v.abs()));
            // A scale over f16's range saturates; the codes then saturate too.
            let s = f16::from_f32((absmax / qmax).min(f16::MAX.to_f32()));
            let i = r * gpr + g;
            packed[i / 2] |= (s.to_bits() as u32) << (16 * (i % 2));
        }
    }
    (packed, gpr)
}

fn check_dense(what: &str, w: &[f32], n: usize, k: usize) -> Result<()> {
    if n.checked_mul(k) != Some(w.len()) {
        return Err(Error::Invalid(format!(
            "{what}: weight has {} values, expected {n}×{k}",
            w.len()
        )));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "{what}: weight has a non-finite value"
        )));
    }
    if n > u32::MAX as usize / 2 || k > u32::MAX as usize / 2 {
        return Err(Error::Invalid(format!("{what}: {n}×{k} is too large")));
    }
    Ok(())
}

/// 2:4 semi-structured sparse weight `[n][k]` (see the module doc for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse24Matrix {
    pub n: usize,
    pub k: usize,
    /// 2 stored values per group of 4 columns; row r starts at position r·value_stride.
    pub values: PackedValues,
    /// Value positions per row: 2·ceil(k/4) rounded up to a multiple of 8.
    pub value_stride: usize,
    /// In-group offsets, one nibble per group, `idx_stride` words per row.
    pub idx: Vec<u32>,
    pub idx_stride: usize,
}

impl Sparse24Matrix {
    /// Packs a dense `[n][k]` weight with at most 2 non-zeros in every group of 4
    /// consecutive columns; refuses any other pattern.
    pub fn pack(w: &[f32], n: usize, k: usize, ty: ValueType) -> Result<Self> {
        Self::pack_bits(w, n, k, ty, ty.bits())
    }

    /// [`Self::pack`] with the kept values on a `bits`-bit grid stored in `ty`'s codes
    /// (e.g. 3-bit values in int4 nibbles: the kernels read them unchanged).
    pub fn pack_bits(w: &[f32], n: usize, k: usize, ty: ValueType, bits: u32) -> Result<Self> {
        check_dense("sparse24", w, n, k)?;
        let qmax = ty.grid_qmax(bits)?;
        let groups = k.div_ceil(4);
        let value_stride = (2 * groups).next_multiple_of(ROW_ALIGN);
        let idx_stride = groups.div_ceil(8);
        let (scales, gpr) = scales_of(w, n, k, ty, qmax);
        let mut values = PackedValues::new(ty, n * value_stride, scales, gpr);
        let mut idx = vec![0u32; n * idx_stride];
        for r in 0..n {
            for g in 0..groups {
                let mut kept = [0usize, 1]; // unused slots point at columns 0, 1 with value 0
                let mut count = 0;
                for i in 0..4 {
                    let c = 4 * g + i;
                    if c < k && w[r * k + c] != 0.0 {
                        if count == 2 {
                            return Err(Error::Invalid(format!(
                                "sparse24: row {r} has more than 2 non-zeros in columns {}..{}",
                                4 * g,
                                (4 * g + 4).min(k)
                            )));
                        }
                        kept[count] = i;
                        count += 1;
                    }
                }
                // Keep i0 < i1 with distinct offsets when fewer than 2 were found.
                if count == 1 {
                    kept[1] = if kept[0] == 3 { 2 } else { kept[0] + 1 };
                    kept.sort_unstable();
                }
                for (slot, &i) in kept.iter().enumerate() {
                    let c = 4 * g + i;
                    let v = if c < k { w[r * k + c] } else { 0.0 };
                    values.put(r * value_stride + 2 * g + slot, r, c.min(k - 1), v, qmax);
                }
                idx[r * idx_stride + g / 8] |= ((kept[0] | kept[1] << 2) as u32) << (4 * (g % 8));
            }
        }
        Ok(Sparse24Matrix {
            n,
            k,
            values,
            value_stride,
            idx,
            idx_stride,
        })
    }

    /// Groups of 4 columns per row.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(4)
    }

    /// Calls `f(row, col, position)` for every stored entry whose column is inside k.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        for r in 0..self.n {
            for g in 0..self.groups() {
                let nib = (self.idx[r * self.idx_stride + g / 8] >> (4 * (g % 8))) as usize;
                for (slot, i) in [(0, nib & 3), (1, (nib >> 2) & 3)] {
                    let c = 4 * g + i;
                    if c < self.k {
                        f(r, c, r * self.value_stride + 2 * g + slot);
                    }
                }
            }
        }
    }

    /// The dense `[n][k]` weight this format holds (dequantized).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.n * self.k];
        self.for_each(|r, c, p| w[r * self.k + c] = self.values.get(p, r, c));
        w
    }

    /// The transposed copy `[k][n]` (unstructured, same codes and scales) that the input
    /// gradient dx = dy·W reads as a gather; W is frozen, so it is built once.
    pub fn transposed(&self) -> UnstructuredMatrix {
        let mut entries = Vec::new();
        self.for_each(|r, c, p| {
            if !self.values.is_zero(p) {
                entries.push((c, r, self.values.raw(p)));
            }
        });
        UnstructuredMatrix::from_entries(self.k, self.n, entries, &self.values, true)
    }

    /// Bytes of the format (values, scales, indices).
    pub fn bytes(&self) -> usize {
        self.values.bytes() + 4 * self.idx.len()
    }
}

/// Unstructured sparse matrix `[rows][cols]` in blocked CSR (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct UnstructuredMatrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows × ceil(cols/32)` bitmasks of the stored columns.
    pub masks: Vec<u32>,
    /// `rows + 1` value positions; row r holds positions row_ptr[r]..row_ptr[r+1] (the
    /// last few may be padding).
    pub row_ptr: Vec<u32>,
    pub values: PackedValues,
}

impl UnstructuredMatrix {
    /// Packs the non-zeros of a dense `[n][k]` weight.
    pub fn pack(w: &[f32], n: usize, k: usize, ty: ValueType) -> Result<Self> {
        Self::pack_bits(w, n, k, ty, ty.bits())
    }

    /// [`Self::pack`] with the values on a `bits`-bit grid stored in `ty`'s codes.
    pub fn pack_bits(w: &[f32], n: usize, k: usize, ty: ValueType, bits: u32) -> Result<Self> {
        check_dense("unstructured", w, n, k)?;
        let qmax = ty.grid_qmax(bits)?;
        let (scales, gpr) = scales_of(w, n, k, ty, qmax);
        let proto = PackedValues::new(ty, 0, scales, gpr);
        let mut m = UnstructuredMatrix::layout(n, k, &proto, |r, f| {
            for c in 0..k {
                if w[r * k + c] != 0.0 {
                    f(c);
                }
            }
        });
        for r in 0..n {
            let mut pos = m.row_ptr[r] as usize;
            for c in 0..k {
                let v = w[r * k + c];
                if v != 0.0 {
                    m.values.put(pos, r, c, v, qmax);
                    pos += 1;
                }
            }
        }
        Ok(m)
    }

    /// Masks, row pointers and room for the values of a matrix whose row r stores the
    /// columns that `cols_of(r, f)` passes to `f`, in ascending order.
    fn layout(
        rows: usize,
        cols: usize,
        proto: &PackedValues,
        cols_of: impl Fn(usize, &mut dyn FnMut(usize)),
    ) -> Self {
        let nb = cols.div_ceil(BLOCK);
        let mut masks = vec![0u32; rows * nb];
        let mut row_ptr = vec![0u32; rows + 1];
        for r in 0..rows {
            let mut count = 0usize;
            cols_of(r, &mut |c| {
                masks[r * nb + c / BLOCK] |= 1 << (c % BLOCK);
                count += 1;
            });
            row_ptr[r + 1] = row_ptr[r] + count.next_multiple_of(ROW_ALIGN) as u32;
        }
        let mut values = PackedValues::new(
            proto.ty,
            row_ptr[rows] as usize,
            proto.scales.clone(),
            proto.groups_per_row,
        );
        values.layout = proto.layout;
        UnstructuredMatrix {
            rows,
            cols,
            masks,
            row_ptr,
            values,
        }
    }

    /// A matrix `[rows][cols]` holding `entries` (row, col, raw value bits), whose values
    /// are those of `src` (same type and scales); `transpose` says the scales are indexed
    /// by (col, row) of this matrix.
    fn from_entries(
        rows: usize,
        cols: usize,
        mut entries: Vec<(usize, usize, u32)>,
        src: &PackedValues,
        transpose: bool,
    ) -> Self {
        entries.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut starts = vec![0usize; rows + 1];
        for &(r, _, _) in &entries {
            starts[r + 1] += 1;
        }
        for r in 0..rows {
            starts[r + 1] += starts[r];
        }
        let mut proto = src.clone();
        proto.words.clear();
        proto.layout = match (src.layout, transpose) {
            (ScaleLayout::Direct, true) | (ScaleLayout::Transposed, false) => {
                ScaleLayout::Transposed
            }
            _ => ScaleLayout::Direct,
        };
        let mut m = UnstructuredMatrix::layout(rows, cols, &proto, |r, f| {
            for &(_, c, _) in &entries[starts[r]..starts[r + 1]] {
                f(c);
            }
        });
        for r in 0..rows {
            let base = m.row_ptr[r] as usize;
            for (i, &(_, _, raw)) in entries[starts[r]..starts[r + 1]].iter().enumerate() {
                m.values.set_raw(base + i, raw);
            }
        }
        m
    }

    /// Blocks of 32 columns per row.
    pub fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    /// Calls `f(row, col, position)` for every stored entry.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let nb = self.blocks();
        for r in 0..self.rows {
            let mut p = self.row_ptr[r] as usize;
            for b in 0..nb {
                let mut mask = self.masks[r * nb + b];
                while mask != 0 {
                    let c = b * BLOCK + mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    f(r, c, p);
                    p += 1;
                }
            }
        }
    }

    /// Stored entries (padding excluded).
    pub fn nnz(&self) -> usize {
        self.masks.iter().map(|m| m.count_ones() as usize).sum()
    }

    /// The dense `[rows][cols]` matrix this format holds (dequantized).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.rows * self.cols];
        self.for_each(|r, c, p| w[r * self.cols + c] = self.values.get(p, r, c));
        w
    }

    /// The transposed copy `[cols][rows]` with the same codes and scales, for the input
    /// gradient's gather.
    pub fn transposed(&self) -> UnstructuredMatrix {
        let mut entries = Vec::with_capacity(self.nnz());
        self.for_each(|r, c, p| {
            if !self.values.is_zero(p) {
                entries.push((c, r, self.values.raw(p)));
            }
        });
        UnstructuredMatrix::from_entries(self.cols, self.rows, entries, &self.values, true)
    }

    /// Bytes of the format (masks, row pointers, values, scales).
    pub fn bytes(&self) -> usize {
        4 * (self.masks.len() + self.row_ptr.len()) + self.values.bytes()
    }
}

/// Keeps the 2 largest-magnitude weights in every group of 4 consecutive columns of each
/// row (the last group of a row may be shorter), zeroing the rest. Ties keep the lower
/// column.
pub fn prune_magnitude_2of4(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut out = w.to_vec();
    for r in 0..n {
        for g in (0..k).step_by(4) {
            let cols = g..(g + 4).min(k);
            let mut order: Vec<usize> = cols.collect();
            order.sort_by(|&a, &b| {
                w[r * k + b]
                    .abs()
                    .total_cmp(&w[r * k + a].abs())
                    .then(a.cmp(&b))
            });
            for &c in order.iter().skip(2) {
                out[r * k + c] = 0.0;
            }
        }
    }
    out
}

/// Zeros the `round(sparsity·k)` smallest-magnitude weights of every row (per-row
/// pruning keeps the rows balanced, which the GPU kernels like). Ties prune the lower
/// column first.
pub fn prune_magnitude(w: &[f32], n: usize, k: usize, sparsity: f32) -> Vec<f32> {
    let drop = ((sparsity.clamp(0.0, 1.0) * k as f32).round() as usize).min(k);
    let mut out = w.to_vec();
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()).then(a.cmp(&b)));
        for &c in &order[..drop] {
            out[r * k + c] = 0.0;
        }
    }
    out
}

fn check_x(what: &str, x: &[f32], m: usize, cols: usize) {
    assert_eq!(x.len(), m * cols, "{what}: input is not {m}×{cols}");
}

/// y[m×n] = x[m×k] · Wᵀ for a 2:4 weight, reading the compressed format.
pub fn sparse24_matmul_nt(x: &[f32], w: &Sparse24Matrix, m: usize) -> Vec<f32> {
    check_x("sparse24_matmul_nt", x, m, w.k);
    let (n, k) = (w.n, w.k);
    let mut y = vec![0.0f32; m * n];
    w.for_each(|c, i, p| {
        let v = w.values.get(p, c, i);
        for r in 0..m {
            y[r * n + c] += x[r * k + i] * v;
        }
    });
    y
}

/// dx[m×k] = dy[m×n] · W for a 2:4 weight (the input gradient of a frozen weight),
/// reading the compressed format.
pub fn sparse24_matmul_nn(dy: &[f32], w: &Sparse24Matrix, m: usize) -> Vec<f32> {
    check_x("sparse24_matmul_nn", dy, m, w.n);
    let (n, k) = (w.n, w.k);
    let mut dx = vec![0.0f32; m * k];
    w.for_each(|c, i, p| {
        let v = w.values.get(p, c, i);
        for r in 0..m {
            dx[r * k + i] += dy[r * n + c] * v;
        }
    });
    dx
}

/// y[m×rows] = x[m×cols] · Aᵀ for an unstructured sparse A, reading the compressed format.
pub fn unstructured_matmul_nt(x: &[f32], a: &UnstructuredMatrix, m: usize) -> Vec<f32> {
    check_x("unstructured_matmul_nt", x, m, a.cols);
    let (n, k) = (a.rows, a.cols);
    let mut y = vec![0.0f32; m * n];
    a.for_each(|c, i, p| {
        let v = a.values.get(p, c, i);
        for r in 0..m {
            y[r * n + c] += x[r * k + i] * v;
        }
    });
    y
}

/// dx[m×cols] = dy[m×rows] · A for an unstructured sparse A, reading the compressed format.
pub fn unstructured_matmul_nn(dy: &[f32], a: &UnstructuredMatrix, m: usize) -> Vec<f32> {
    check_x("unstructured_matmul_nn", dy, m, a.rows);
    let (n, k) = (a.rows, a.cols);
    let mut dx = vec![0.0f32; m * k];
    a.for_each(|c, i, p| {
        let v = a.values.get(p, c, i);
        for r in 0..m {
            dx[r * k + i] += dy[r * n + c] * v;
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_codes_round_trip() {
        for ty in [ValueType::Int8, ValueType::Int4] {
            let q = ty.grid_qmax(ty.bits()).unwrap() as i32;
            let mut v = PackedValues::new(ty, 20, Vec::new(), 0);
            for p in 0..20 {
                v.set_raw(p, ((p as i32 % (2 * q + 1)) - q) as u32);
            }
            for p in 0..20 {
                assert_eq!(v.raw(p) as i32, (p as i32 % (2 * q + 1)) - q, "{ty:?} {p}");
            }
        }
    }

    /// A 3-bit (2-bit) grid in int4 codes: every code within ±3 (±1), every value a code
    /// times the group's scale absmax/3 (absmax/1), so the largest weight is exact.
    #[test]
    fn narrow_grids_in_int4() {
        let (n, k) = (3, 70);
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    ((i * 37 % 23) as f32 - 11.0) / 7.0
                }
            })
            .collect();
        for (bits, qmax) in [(2u32, 1i32), (3, 3), (4, 7)] {
            let m = UnstructuredMatrix::pack_bits(&w, n, k, ValueType::Int4, bits).unwrap();
            let mut codes = std::collections::BTreeSet::new();
            m.for_each(|r, c, p| {
                let code = m.values.raw(p) as i32;
                assert!(code.abs() <= qmax, "{bits} bits: code {code} at ({r},{c})");
                codes.insert(code);
            });
            assert_eq!(
                *codes.iter().max().unwrap(),
                qmax,
                "{bits} bits use the whole grid"
            );
            let absmax = w[..64].iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let s = f16::from_f32(absmax / qmax as f32).to_f32();
            assert_eq!(
                m.values.scale(0, 0),
                s,
                "{bits} bits: scale of row 0, group 0"
            );
            // Round to nearest: within half a step of the original everywhere.
            m.for_each(|r, c, p| {
                let e = (m.values.get(p, r, c) - w[r * k + c]).abs();
                assert!(
                    e <= 0.5 * m.values.scale(r, c) * 1.01,
                    "{bits} bits: ({r},{c}) off by {e}"
                );
            });
        }
        assert!(UnstructuredMatrix::pack_bits(&w, n, k, ValueType::Int4, 5).is_err());
        assert!(Sparse24Matrix::pack_bits(&[0.0; 8], 2, 4, ValueType::Int8, 1).is_err());
    }
}
