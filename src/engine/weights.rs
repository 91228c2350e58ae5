//! The frozen weights as the engine's kernels read them, shared by inference and training:
//! where each matrix lives ([`Layout`]: dense f32, GGUF blocks repacked, or as a compressed
//! file stores it), its planned buffers, its upload, and how token rows are gathered.

use super::plan::{Category, MemoryPlan};
use crate::formats::packed::{self as cfile, Packed, TensorFormat};
use crate::formats::quant::{GgufBlockMatrix, QuantMatrix, BLOCK};
use crate::gguf::{quant as gq, GgmlType};
use crate::kernels::context::GpuContext;
use crate::kernels::qmatmul::GpuWeight;
use crate::kernels::spmatmul::{grad_buffers_sparse24, grad_buffers_unstructured, SparseWeight};
use crate::kernels::weights::FrozenWeight;
use crate::model::ModelFile;
use crate::reference::Proj;
use crate::{Error, Result};

/// How the projection and head matrices are held on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantized to dense f32 (4 bytes per weight; the like-for-like baseline).
    F32,
    /// GGUF Q4_0/Q4_1/Q8_0 blocks repacked losslessly into the packed layout the fast GEMV
    /// reads ([`GgufBlockMatrix::to_quant`]); tensors of other types stay dense f32. A
    /// compressed file's projections stay as stored: quantized or sparse.
    Packed,
}

/// GGUF tensor names of the projections, in [`Proj`] order.
pub(crate) const PROJ_NAMES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

pub(crate) fn proj_tensor(l: usize, p: Proj) -> String {
    format!("blk.{l}.{}.weight", PROJ_NAMES[p.index()])
}

/// Where a matrix lives: dense f32, repacked from these GGUF blocks, or as a compressed
/// file stores it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Layout {
    Dense,
    Packed(GgmlType),
    /// A projection of a compressed-model file ([`crate::formats::packed`]) read as stored:
    /// quantized by the packed kernels, 2:4 or unstructured by the sparse ones.
    Compressed(TensorFormat),
}

fn is_block(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Checks a 2-D tensor's dims (GGUF `[cols, rows]`) and picks its layout.
pub(crate) fn layout(
    file: &ModelFile,
    name: &str,
    rows: usize,
    cols: usize,
    f: WeightFormat,
) -> Result<Layout> {
    let Some(info) = file.gguf.tensor(name) else {
        return match cfile::format_of(&file.gguf, name)? {
            Some(fmt) if fmt.shape() != (rows, cols) => Err(Error::Model(format!(
                "compressed tensor {name} is {:?}, expected ({rows}, {cols})",
                fmt.shape()
            ))),
            Some(fmt) if f == WeightFormat::Packed => Ok(Layout::Compressed(fmt)),
            Some(_) => Ok(Layout::Dense),
            None => Err(Error::Model(format!("missing tensor {name}"))),
        };
    };
    if info.dims != [cols as u64, rows as u64] {
        return Err(Error::Model(format!(
            "tensor {name} has dims {:?}, expected [{cols}, {rows}]",
            info.dims
        )));
    }
    Ok(match f {
        WeightFormat::Packed if is_block(info.ty) && cols.is_multiple_of(BLOCK) => {
            Layout::Packed(info.ty)
        }
        _ => Layout::Dense,
    })
}

/// The packed shape `to_quant` produces for `ty` (Q8_0: 8-bit symmetric, Q4_*: 4-bit
/// asymmetric, groups of 32), without data: for sizing.
fn packed_shape(ty: GgmlType, rows: usize, cols: usize) -> QuantMatrix {
    QuantMatrix {
        rows,
        cols,
        bits: if ty == GgmlType::Q8_0 { 8 } else { 4 },
        group: BLOCK,
        symmetric: ty == GgmlType::Q8_0,
        data: Vec::new(),
        scales: Vec::new(),
    }
}

/// Plans the buffers of matrix `name` as [`upload_proj`] allocates them, labelled
/// `name` + `tag`; `grad`: with the transposed copy a sparse weight's input gradient reads.
/// Header-only except for that copy, whose size depends on the stored codes.
pub(crate) fn plan_matrix(
    plan: &mut MemoryPlan,
    file: &ModelFile,
    name: &str,
    tag: &str,
    (rows, cols): (usize, usize),
    lay: Layout,
    grad: bool,
) -> Result<()> {
    let (r, c) = (rows as u64, cols as u64);
    let label = format!("{name}{tag}");
    match lay {
        Layout::Dense => {
            plan.storage(&label, Category::Weights, r * c * 4);
            plan.storage(format!("{label} (placeholder)"), Category::Weights, 16);
        }
        Layout::Compressed(
            fmt @ (TensorFormat::Sparse24 { .. } | TensorFormat::Unstructured { .. }),
        ) => plan_sparse(plan, file, name, &label, fmt, grad)?,
        Layout::Packed(_) | Layout::Compressed(TensorFormat::Quant { .. }) => {
            let q = match lay {
                Layout::Packed(ty) => packed_shape(ty, rows, cols),
                Layout::Compressed(TensorFormat::Quant {
                    bits,
                    group,
                    symmetric,
                    ..
                }) => QuantMatrix {
                    bits,
                    group,
                    symmetric,
                    ..packed_shape(GgmlType::Q8_0, rows, cols)
                },
                _ => unreachable!("matched above"),
            };
            plan.storage(&label, Category::Weights, r * q.words_per_row() as u64 * 4);
            let s = r * q.scale_words_per_row() as u64 * 4;
            plan.storage(format!("{label} scales"), Category::Weights, s);
        }
    }
    Ok(())
}

/// A sparse projection's buffers: each array of the file as stored (f32 values have no
/// scales: a placeholder), plus with `grad` the transposed copy, counted from the codes.
fn plan_sparse(
    plan: &mut MemoryPlan,
    file: &ModelFile,
    name: &str,
    label: &str,
    fmt: TensorFormat,
    grad: bool,
) -> Result<()> {
    let (arrays, values): (&[&str], _) = match fmt {
        TensorFormat::Sparse24 { values, .. } => (&["values", "scales", "idx"], values),
        TensorFormat::Unstructured { values, .. } => {
            (&["values", "scales", "masks", "row_ptr"], values)
        }
        TensorFormat::Quant { .. } => {
            return Err(Error::Model(format!("{name}: not a sparse tensor")))
        }
    };
    for &a in arrays {
        let words = if a == "scales" && values == cfile::Values::F32 {
            0
        } else {
            let t = format!("{name}.{a}");
            let info = file
                .gguf
                .tensor(&t)
                .ok_or_else(|| Error::Model(format!("missing tensor {t}")))?;
            info.dims.first().copied().unwrap_or(0)
        };
        plan.storage(format!("{label} {a}"), Category::Weights, words * 4);
    }
    if grad {
        let copy = match cfile::read_tensor(&file.gguf, &file.bytes, name)? {
            Some(Packed::Sparse24(w)) => grad_buffers_sparse24(&w),
            Some(Packed::Unstructured(w)) => grad_buffers_unstructured(&w),
            _ => return Err(Error::Model(format!("{name}: not a sparse tensor"))),
        };
        for (a, bytes) in copy {
            plan.storage(format!("{label} transposed {a}"), Category::Weights, bytes);
        }
    }
    Ok(())
}

/// Uploads one matrix in its layout, naming the tensor in any error.
pub(crate) fn upload_matrix(
    ctx: &GpuContext,
    file: &ModelFile,
    name: &str,
    rows: usize,
    cols: usize,
    lay: Layout,
) -> Result<GpuWeight> {
    let named = |e: Error| Error::Gpu(format!("{name}: {e}"));
    match lay {
        Layout::Dense => {
            let w = file.tensor_f32(name, &[cols, rows])?;
            GpuWeight::dense(ctx, &w, rows, cols).map_err(named)
        }
        Layout::Packed(ty) => {
            let raw = file.gguf.tensor_data(&file.bytes, name)?;
            let q = GgufBlockMatrix::from_bytes(ty, rows, cols, raw)?.to_quant()?;
            GpuWeight::quant(ctx, &q).map_err(named)
        }
        Layout::Compressed(_) => match cfile::read_tensor(&file.gguf, &file.bytes, name)? {
            Some(Packed::Quant(q)) => GpuWeight::quant(ctx, &q).map_err(named),
            _ => Err(Error::Model(format!(
                "{name}: not a quantized compressed tensor"
            ))),
        },
    }
}

/// Uploads one projection in its layout: sparse ones for the sparse kernels (`grad`: with
/// the transposed copy for the input gradient), the rest as [`upload_matrix`].
pub(crate) fn upload_proj(
    ctx: &GpuContext,
    file: &ModelFile,
    name: &str,
    (rows, cols): (usize, usize),
    lay: Layout,
    grad: bool,
) -> Result<FrozenWeight> {
    let named = |e: Error| Error::Gpu(format!("{name}: {e}"));
    match lay {
        Layout::Compressed(TensorFormat::Sparse24 { .. } | TensorFormat::Unstructured { .. }) => {
            let w = match cfile::read_tensor(&file.gguf, &file.bytes, name)? {
                Some(Packed::Sparse24(w)) => SparseWeight::sparse24(ctx, &w, grad),
                Some(Packed::Unstructured(w)) => SparseWeight::unstructured(ctx, &w, grad),
                _ => return Err(Error::Model(format!("{name}: not a sparse tensor"))),
            };
            w.map(|w| FrozenWeight::Sparse(Box::new(w))).map_err(named)
        }
        _ => upload_matrix(ctx, file, name, rows, cols, lay).map(FrozenWeight::Packed),
    }
}

/// How token rows reach the residual stream.
pub(crate) enum Gather {
    /// The embedding kernel reads this dense f32 table (the tied dense head's own buffer
    /// when tied).
    Gpu(wgpu::Buffer),
    /// Packed embedding: the embedding kernel reads only f32, so the t rows are
    /// dequantized on the CPU from the raw GGUF blocks and written (t·hidden floats).
    Cpu {
        ty: GgmlType,
        row_bytes: usize,
        bytes: Vec<u8>,
    },
}

impl Gather {
    /// The embedding rows of `tokens` (hidden size `d`), dequantized on the CPU from the
    /// raw GGUF blocks ([`Gather::Cpu`] only).
    pub(crate) fn cpu_rows(&self, tokens: &[u32], d: usize) -> Result<Vec<f32>> {
        let Gather::Cpu {
            ty,
            row_bytes,
            bytes,
        } = self
        else {
            return Err(Error::Invalid("the embedding is not on the CPU".into()));
        };
        let mut rows = vec![0.0f32; tokens.len() * d];
        for (row, &tok) in rows.chunks_mut(d).zip(tokens) {
            let src = &bytes[tok as usize * row_bytes..][..*row_bytes];
            gq::dequantize(*ty, src, row).map_err(Error::Invalid)?;
        }
        Ok(rows)
    }
}

pub(crate) fn compressed_embedding() -> Error {
    Error::Model("token_embd.weight: a compressed embedding is not supported".into())
}

pub(crate) fn cpu_gather(
    file: &ModelFile,
    name: &str,
    ty: GgmlType,
    vocab: usize,
    d: usize,
) -> Result<Gather> {
    let bytes = file.gguf.tensor_data(&file.bytes, name)?.to_vec();
    let row_bytes = d / ty.block_elems() * ty.block_bytes();
    if bytes.len() != vocab * row_bytes {
        return Err(Error::Model(format!(
            "{name}: {} bytes for {vocab} rows of {row_bytes}",
            bytes.len()
        )));
    }
    Ok(Gather::Cpu {
        ty,
        row_bytes,
        bytes,
    })
}

/// The first `bytes` of a MAP_READ buffer as f32.
pub(crate) async fn read_mapped(
    ctx: &GpuContext,
    buf: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &ctx.map_read(buf, bytes).await?,
    ))
}
