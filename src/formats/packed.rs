//! The packed projections of a compressed-model file, read and validated: the GGUF holds,
//! for each compressed projection `blk.{l}.{attn_q,…,ffn_down}.weight`, its packed arrays
//! in place of the dense tensor:
//!
//! | format | tensors (`<name>.` + suffix) |
//! |---|---|
//! | `quant` ([`QuantMatrix`]) | `qdata`, `qscales` |
//! | `2:4` ([`Sparse24Matrix`]) | `values`, `idx`, and `scales` for int8/int4 values |
//! | `unstructured` ([`UnstructuredMatrix`]) | `values`, `masks`, `row_ptr`, and `scales` |
//!
//! Each array is a 1-D tensor of u32 words stored under the GGUF type F32 (raw bits): the
//! reader (and llama.cpp's) knows no u32 tensor type that this project parses, and the
//! words are never read as floats. Metadata:
//!
//! * `edge_llm.compressed` (u32): [`FILE_VERSION`];
//! * `edge_llm.policy` (string): the policy JSON (`crate::compress::policy::Policy`);
//! * `edge_llm.format.<name>` (string): that projection's [`TensorFormat`] JSON (rows, cols,
//!   bits, group, symmetric, or the sparse value type).
//!
//! [`read_tensor`] validates every length and index against the format before use, so a
//! damaged file is an error, never a panic; `ModelFile::tensor_f32` falls back to
//! [`dense_f32`] for a projection that is stored compressed, so the CPU reference (and
//! every command built on `ModelFile::weights`) loads the file as it loads a GGUF, from
//! a byte slice in the browser as natively. Writing the file is the compression
//! pipeline's (`crate::compress::file`).

use super::quant::{QuantMatrix, BITS, GROUPS};
use super::sparse::{
    PackedValues, ScaleLayout, Sparse24Matrix, UnstructuredMatrix, ValueType, BLOCK, QCOLS,
};
use crate::gguf::{GgmlType, Gguf};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Version of the compressed layout (`edge_llm.compressed`).
pub const FILE_VERSION: u32 = 1;
/// Metadata key marking a compressed file.
pub const KEY_VERSION: &str = "edge_llm.compressed";
/// Metadata key of the policy JSON.
pub const KEY_POLICY: &str = "edge_llm.policy";
/// Prefix of each compressed tensor's format key.
pub const KEY_FORMAT: &str = "edge_llm.format.";

/// Sparse value types by name in the format JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Values {
    F32,
    Int8,
    Int4,
}

impl Values {
    pub fn ty(self) -> ValueType {
        match self {
            Values::F32 => ValueType::F32,
            Values::Int8 => ValueType::Int8,
            Values::Int4 => ValueType::Int4,
        }
    }
    pub fn of(ty: ValueType) -> Values {
        match ty {
            ValueType::F32 => Values::F32,
            ValueType::Int8 => Values::Int8,
            ValueType::Int4 => Values::Int4,
        }
    }
    fn per_word(self) -> usize {
        match self {
            Values::F32 => 1,
            Values::Int8 => 4,
            Values::Int4 => 8,
        }
    }
}

/// How one projection is stored (`edge_llm.format.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", deny_unknown_fields)]
pub enum TensorFormat {
    #[serde(rename = "quant")]
    Quant {
        rows: usize,
        cols: usize,
        bits: u32,
        group: usize,
        symmetric: bool,
    },
    #[serde(rename = "2:4")]
    Sparse24 {
        rows: usize,
        cols: usize,
        values: Values,
    },
    #[serde(rename = "unstructured")]
    Unstructured {
        rows: usize,
        cols: usize,
        values: Values,
    },
}

impl TensorFormat {
    /// (rows, cols) = (out, in) features.
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            TensorFormat::Quant { rows, cols, .. }
            | TensorFormat::Sparse24 { rows, cols, .. }
            | TensorFormat::Unstructured { rows, cols, .. } => (rows, cols),
        }
    }
}

/// A compressed projection, in the GPU kernels' formats.
#[derive(Clone, Debug, PartialEq)]
pub enum Packed {
    Quant(QuantMatrix),
    Sparse24(Sparse24Matrix),
    Unstructured(UnstructuredMatrix),
}

impl Packed {
    /// Its format record.
    pub fn format(&self) -> TensorFormat {
        match self {
            Packed::Quant(q) => TensorFormat::Quant {
                rows: q.rows,
                cols: q.cols,
                bits: q.bits,
                group: q.group,
                symmetric: q.symmetric,
            },
            Packed::Sparse24(s) => TensorFormat::Sparse24 {
                rows: s.n,
                cols: s.k,
                values: Values::of(s.values.ty),
            },
            Packed::Unstructured(u) => TensorFormat::Unstructured {
                rows: u.rows,
                cols: u.cols,
                values: Values::of(u.values.ty),
            },
        }
    }

    /// The dense `[rows][cols]` weight it holds (what a kernel computes with).
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            Packed::Quant(q) => q.dequantize(),
            Packed::Sparse24(s) => s.to_dense(),
            Packed::Unstructured(u) => u.to_dense(),
        }
    }

    /// Bytes of its packed arrays.
    pub fn bytes(&self) -> usize {
        match self {
            Packed::Quant(q) => q.bytes(),
            Packed::Sparse24(s) => s.bytes(),
            Packed::Unstructured(u) => u.bytes(),
        }
    }

    /// Its arrays as (suffix, words), as the file stores them.
    pub fn arrays(&self) -> Vec<(&'static str, &[u32])> {
        fn vals(v: &PackedValues) -> Vec<(&'static str, &[u32])> {
            let mut a = vec![("values", v.words.as_slice())];
            if !v.scales.is_empty() {
                a.push(("scales", v.scales.as_slice()));
            }
            a
        }
        match self {
            Packed::Quant(q) => vec![("qdata", &q.data), ("qscales", &q.scales)],
            Packed::Sparse24(s) => {
                let mut a = vals(&s.values);
                a.push(("idx", &s.idx));
                a
            }
            Packed::Unstructured(u) => {
                let mut a = vals(&u.values);
                a.push(("masks", &u.masks));
                a.push(("row_ptr", &u.row_ptr));
                a
            }
        }
    }
}

/// One compressed projection: its tensor name and packed form.
#[derive(Clone, Debug)]
pub struct CompressedTensor {
    pub name: String,
    pub packed: Packed,
}

pub(crate) fn bad(m: String) -> Error {
    Error::Model(format!("compressed file: {m}"))
}

/// Whether a parsed GGUF is a compressed-model file.
pub fn is_compressed(g: &Gguf) -> bool {
    g.get(KEY_VERSION).is_some()
}

/// The format record of tensor `name`, if the file stores it compressed.
pub fn format_of(g: &Gguf, name: &str) -> Result<Option<TensorFormat>> {
    let Some(v) = g.get(&format!("{KEY_FORMAT}{name}")) else {
        return Ok(None);
    };
    let text = v
        .as_str()
        .ok_or_else(|| bad(format!("format of {name} is not a string")))?;
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| bad(format!("format of {name}: {e}")))
}

fn words(g: &Gguf, bytes: &[u8], name: &str, want: usize) -> Result<Vec<u32>> {
    let info = g
        .tensor(name)
        .ok_or_else(|| bad(format!("missing tensor {name}")))?;
    if info.ty != GgmlType::F32 || info.dims.len() != 1 {
        return Err(bad(format!("{name} is not a 1-D word array")));
    }
    let data = g.tensor_data(bytes, name)?;
    if data.len() != 4 * want {
        return Err(bad(format!(
            "{name} holds {} words, the format needs {want}",
            data.len() / 4
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn packed_values(
    g: &Gguf,
    bytes: &[u8],
    name: &str,
    values: Values,
    positions: usize,
    rows: usize,
    cols: usize,
) -> Result<PackedValues> {
    let gpr = cols.div_ceil(QCOLS);
    let w = words(
        g,
        bytes,
        &format!("{name}.values"),
        positions.div_ceil(values.per_word()),
    )?;
    let scales = if values == Values::F32 {
        Vec::new()
    } else {
        words(
            g,
            bytes,
            &format!("{name}.scales"),
            (rows * gpr).div_ceil(2),
        )?
    };
    Ok(PackedValues {
        ty: values.ty(),
        words: w,
        scales,
        groups_per_row: gpr,
        layout: ScaleLayout::Direct,
    })
}

/// Largest row or column count accepted from a file: every derived length then fits in
/// 32 bits (wasm32's usize) without overflow.
const MAX_DIM: usize = 1 << 16;

/// Reads and validates the packed form of tensor `name` (None if it is not compressed).
pub fn read_tensor(g: &Gguf, bytes: &[u8], name: &str) -> Result<Option<Packed>> {
    let Some(f) = format_of(g, name)? else {
        return Ok(None);
    };
    let (rows, cols) = f.shape();
    if rows == 0 || cols == 0 || rows > MAX_DIM || cols > MAX_DIM {
        return Err(bad(format!("{name}: shape {rows}×{cols}")));
    }
    let sub = |s: &str| format!("{name}.{s}");
    Ok(Some(match f {
        TensorFormat::Quant {
            bits,
            group,
            symmetric,
            ..
        } => {
            if !BITS.contains(&bits) || !GROUPS.contains(&group) {
                return Err(bad(format!("{name}: {bits} bits, group {group}")));
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
            q.data = words(g, bytes, &sub("qdata"), rows * q.words_per_row())?;
            q.scales = words(g, bytes, &sub("qscales"), rows * q.scale_words_per_row())?;
            Packed::Quant(q)
        }
        TensorFormat::Sparse24 { values, .. } => {
            let groups = cols.div_ceil(4);
            let value_stride = (2 * groups).next_multiple_of(8);
            let idx_stride = groups.div_ceil(8);
            let v = packed_values(g, bytes, name, values, rows * value_stride, rows, cols)?;
            let idx = words(g, bytes, &sub("idx"), rows * idx_stride)?;
            Packed::Sparse24(Sparse24Matrix {
                n: rows,
                k: cols,
                values: v,
                value_stride,
                idx,
                idx_stride,
            })
        }
        TensorFormat::Unstructured { values, .. } => {
            let nb = cols.div_ceil(BLOCK);
            let masks = words(g, bytes, &sub("masks"), rows * nb)?;
            let row_ptr = words(g, bytes, &sub("row_ptr"), rows + 1)?;
            let tail = if cols % BLOCK == 0 {
                0
            } else {
                u32::MAX << (cols % BLOCK)
            };
            for r in 0..rows {
                let row = &masks[r * nb..(r + 1) * nb];
                let nnz: u64 = row.iter().map(|m| m.count_ones() as u64).sum();
                if row[nb - 1] & tail != 0
                    || row_ptr[r] as u64 + nnz > row_ptr[r + 1] as u64
                    || (r == 0 && row_ptr[0] != 0)
                {
                    return Err(bad(format!(
                        "{name}: row {r} masks or pointers are damaged"
                    )));
                }
            }
            let positions = row_ptr[rows] as usize;
            let v = packed_values(g, bytes, name, values, positions, rows, cols)?;
            Packed::Unstructured(UnstructuredMatrix {
                rows,
                cols,
                masks,
                row_ptr,
                values: v,
            })
        }
    }))
}

/// The dense f32 weight of a compressed projection stored under `name`, checked to have
/// `dims` (GGUF order `[in, out]`); None when the file does not store `name` compressed.
pub fn dense_f32(g: &Gguf, bytes: &[u8], name: &str, dims: &[usize]) -> Result<Option<Vec<f32>>> {
    let Some(p) = read_tensor(g, bytes, name)? else {
        return Ok(None);
    };
    let (rows, cols) = p.format().shape();
    if dims != [cols, rows] {
        return Err(bad(format!(
            "{name} is {rows}×{cols}, expected dims {dims:?}"
        )));
    }
    Ok(Some(p.to_dense()))
}
