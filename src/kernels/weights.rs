//! A model's frozen projection weights as the engine holds them, in every format the
//! matmul kernels read in place: dense f32, the packed [`QuantMatrix`] and GGUF blocks
//! ([`GpuWeight`], read by [`super::qmatmul`]) or a sparse matrix ([`SparseWeight`], read
//! by [`super::spmatmul`]), with one call site per projection whatever the file holds
//! ([`FrozenWeight`]); their host-side copies ([`HostWeight`]), uploaded into slots
//! allocated once; and the buffer roles a block's weights take ([`ROLES`]).

use super::context::GpuContext;
use super::qmatmul::{Format, GpuWeight, QMatmul};
use super::spmatmul::{HostSparseWeight, SparseBuffers, SparseWeight};
use crate::formats::quant::QuantMatrix;
use crate::{Error, Result};

/// A frozen projection weight in the form it is resident in: read by the qmatmul kernels
/// (dense f32, quantized, GGUF blocks) or by the sparse ones ([`SparseWeight`]), so a
/// model has one call site per projection whatever the file holds.
#[derive(Debug)]
pub enum FrozenWeight {
    Packed(GpuWeight),
    /// 2:4 or unstructured, f32/int8/int4 values; the input gradient needs its transposed
    /// copy (uploaded `with_grad`). Boxed: two resident matrices are larger than a
    /// [`GpuWeight`].
    Sparse(Box<SparseWeight>),
}

impl FrozenWeight {
    /// Records y[m×n] = x[m×k]·Wᵀ (`mm` picks the qmatmul path; the sparse kernels have one).
    pub fn encode_nt(
        &self,
        mm: &QMatmul,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        match self {
            FrozenWeight::Packed(w) => mm.encode_nt(ctx, encoder, w, x, y, m),
            FrozenWeight::Sparse(w) => w.encode_nt(ctx, encoder, x, y, m),
        }
    }

    /// Records dx[m×k] = dy[m×n]·W (overwrites dx).
    pub fn encode_nn(
        &self,
        mm: &QMatmul,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        match self {
            FrozenWeight::Packed(w) => mm.encode_nn(ctx, encoder, w, dy, dx, m),
            FrozenWeight::Sparse(w) => w.encode_nn(ctx, encoder, dy, dx, m),
        }
    }

    /// Bytes of its GPU buffers.
    pub fn bytes(&self) -> u64 {
        match self {
            FrozenWeight::Packed(w) => w.bytes(),
            FrozenWeight::Sparse(w) => w.bytes(),
        }
    }
}

/// The buffers of a frozen weight by role, in the order they are allocated and planned:
/// packed weights have `data` and `scales` (a 16-byte placeholder for dense and GGUF);
/// sparse ones `data` (values), `scales`, `pattern` (2:4 indices or bitmasks), `row_ptr`
/// (unstructured) and, for the input gradient, the transposed copy's masks, row pointers
/// and values (it reads the forward's scales).
pub const ROLES: [&str; 7] = [
    "data",
    "scales",
    "pattern",
    "row_ptr",
    "transposed masks",
    "transposed row_ptr",
    "transposed values",
];
/// Index of each role in [`ROLES`].
pub mod role {
    pub const DATA: usize = 0;
    pub const SCALES: usize = 1;
    pub const PATTERN: usize = 2;
    pub const ROW_PTR: usize = 3;
    pub const T_MASKS: usize = 4;
    pub const T_ROW_PTR: usize = 5;
    pub const T_VALUES: usize = 6;
}

/// One buffer per role of [`ROLES`] (None: the role is not held).
pub type RoleBuffers = [Option<wgpu::Buffer>; 7];

/// A frozen weight on the host as the words of its buffers, with what the kernels need to
/// read them. Written into buffers allocated once and rewritten with other weights of
/// other formats ([`HostWeight::write`]: the GPU trainer's slots), it is read there
/// through a [`FrozenWeight`] holding those buffers' handles.
#[derive(Clone, Debug)]
pub enum HostWeight {
    Packed {
        format: Format,
        rows: usize,
        cols: usize,
        scale_words_per_row: usize,
        data: Vec<u32>,
        /// Packed scales, or the 16-byte placeholder.
        scales: Vec<u32>,
    },
    Sparse(HostSparseWeight),
}

impl HostWeight {
    /// A packed weight, as [`GpuWeight::quant`] uploads it.
    pub fn quant(q: &QuantMatrix) -> Self {
        HostWeight::Packed {
            format: Format::Quant {
                bits: q.bits,
                group: q.group as u32,
                symmetric: q.symmetric,
            },
            rows: q.rows,
            cols: q.cols,
            scale_words_per_row: q.scale_words_per_row(),
            data: q.data.clone(),
            scales: q.scales.clone(),
        }
    }

    /// A dense row-major f32 weight, as [`GpuWeight::dense`] uploads it.
    pub fn dense(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(w.len()) {
            return Err(Error::Invalid(format!(
                "dense weight: {} values for {rows}×{cols}",
                w.len()
            )));
        }
        Ok(HostWeight::Packed {
            format: Format::Dense,
            rows,
            cols,
            scale_words_per_row: 0,
            data: bytemuck::cast_slice(w).to_vec(),
            scales: vec![0; 4],
        })
    }

    /// The words of each role's buffer; `grad`: with the input-gradient side (a sparse
    /// weight's transposed copy, which must be held).
    pub fn words(&self, grad: bool) -> Result<[Option<&[u32]>; 7]> {
        let mut out: [Option<&[u32]>; 7] = [None; 7];
        match self {
            HostWeight::Packed { data, scales, .. } => {
                out[role::DATA] = Some(data);
                out[role::SCALES] = Some(scales);
            }
            HostWeight::Sparse(w) => {
                out[role::DATA] = Some(&w.fwd.vals);
                out[role::SCALES] = Some(&w.fwd.scales);
                out[role::PATTERN] = Some(&w.fwd.pattern);
                if w.fwd.has_row_ptr() {
                    out[role::ROW_PTR] = Some(&w.fwd.row_ptr);
                }
                if grad {
                    let t = w.grad.as_ref().ok_or_else(no_grad_copy)?;
                    out[role::T_MASKS] = Some(&t.pattern);
                    out[role::T_ROW_PTR] = Some(&t.row_ptr);
                    out[role::T_VALUES] = Some(&t.vals);
                }
            }
        }
        Ok(out)
    }

    /// Writes its words (`grad`: with the input-gradient side) into `bufs`, refusing a
    /// buffer that is missing or too small, and returns the weight reading them. Queue
    /// writes land before the next submission: commands that read the buffers' previous
    /// contents must have been submitted already.
    pub fn write(
        &self,
        queue: &wgpu::Queue,
        bufs: &RoleBuffers,
        grad: bool,
    ) -> Result<FrozenWeight> {
        for (i, w) in self.words(grad)?.into_iter().enumerate() {
            let Some(w) = w else { continue };
            let b = bufs[i].as_ref().filter(|b| b.size() >= w.len() as u64 * 4);
            let Some(b) = b else {
                return Err(Error::Gpu(format!(
                    "a frozen weight's {} ({} bytes) does not fit the buffer given for it ({})",
                    ROLES[i],
                    w.len() * 4,
                    bufs[i]
                        .as_ref()
                        .map_or("none".to_string(), |b| format!("{} bytes", b.size()))
                )));
            };
            if !w.is_empty() {
                queue.write_buffer(b, 0, bytemuck::cast_slice(w));
            }
        }
        self.on(bufs, grad)
    }

    /// The weight read from `bufs`, which hold its words ([`HostWeight::write`]).
    pub fn on(&self, bufs: &RoleBuffers, grad: bool) -> Result<FrozenWeight> {
        let get = |i: usize| {
            bufs[i]
                .as_ref()
                .ok_or_else(|| Error::Gpu(format!("no buffer for a frozen weight's {}", ROLES[i])))
        };
        Ok(match self {
            HostWeight::Packed {
                format,
                rows,
                cols,
                scale_words_per_row,
                ..
            } => FrozenWeight::Packed(GpuWeight {
                format: *format,
                rows: *rows,
                cols: *cols,
                data: get(role::DATA)?.clone(),
                scales: get(role::SCALES)?.clone(),
                scale_words_per_row: *scale_words_per_row,
            }),
            HostWeight::Sparse(w) => {
                let scales = get(role::SCALES)?;
                let fwd = w.fwd.on(SparseBuffers {
                    vals: get(role::DATA)?,
                    scales,
                    pattern: get(role::PATTERN)?,
                    row_ptr: if w.fwd.has_row_ptr() {
                        Some(get(role::ROW_PTR)?)
                    } else {
                        None
                    },
                })?;
                let grad = if grad {
                    let t = w.grad.as_ref().ok_or_else(no_grad_copy)?;
                    Some(t.on(SparseBuffers {
                        vals: get(role::T_VALUES)?,
                        scales,
                        pattern: get(role::T_MASKS)?,
                        row_ptr: Some(get(role::T_ROW_PTR)?),
                    })?)
                } else {
                    None
                };
                FrozenWeight::Sparse(Box::new(SparseWeight { fwd, grad }))
            }
        })
    }
}

fn no_grad_copy() -> Error {
    Error::Invalid("a sparse weight held without its transposed copy was asked for it".into())
}
