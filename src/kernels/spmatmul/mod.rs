//! Sparse matmuls that skip the zero work, for frozen sparse (and optionally quantized)
//! weights: y = x·Wᵀ and the input gradient dx = dy·W, for 2:4 and unstructured formats.
//! Shader: shaders/spmatmul.wgsl. CPU twins: [`crate::formats::sparse`]
//! (`sparse24_matmul_nt`, `sparse24_matmul_nn`, `unstructured_matmul_nt`,
//! `unstructured_matmul_nn`).
//!
//! A weight is uploaded once as a [`SparseWeight`]: its forward format plus, when the input
//! gradient is wanted, a transposed unstructured copy (same codes; the scales buffer is
//! shared) that turns dy·W into a gather. `encode_*` record dispatches on resident buffers;
//! the async functions upload, run and read back (tests, one-off products).

use super::context::{GpuContext, Kernel};
use super::program::{Bind, KernelSpec};
use crate::formats::sparse::{ScaleLayout, Sparse24Matrix, UnstructuredMatrix, ValueType};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/spmatmul.wgsl");
/// Output columns (weight rows) per workgroup (`WG_N` in the shader).
pub const WG_N: u32 = 64;
/// Rows of x per workgroup (the shader's `TM` override) for m rows: a one-token product
/// does not pay for a 16-row tile.
pub fn tile_rows(m: usize) -> u32 {
    match m {
        0..=1 => 1,
        2..=4 => 4,
        5..=8 => 8,
        _ => 16,
    }
}

/// The uniform block of shaders/spmatmul.wgsl (`Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    tiles_n: u32,
    value_stride: u32,
    idx_stride: u32,
    groups: u32,
    gpr: u32,
    nb: u32,
    _pad: [u32; 3],
}

#[derive(Clone, Debug)]
enum Layout {
    Sparse24 {
        value_stride: u32,
        idx_stride: u32,
        groups: u32,
    },
    Unstructured {
        nb: u32,
        row_ptr: wgpu::Buffer,
        scale_t: bool,
    },
}

/// [`Layout`] without its buffer.
#[derive(Clone, Copy, Debug)]
enum HostLayout {
    Sparse24 {
        value_stride: u32,
        idx_stride: u32,
        groups: u32,
    },
    Unstructured {
        nb: u32,
        scale_t: bool,
    },
}

/// One sparse operand on the host: its metadata and the words of its buffers as they are
/// uploaded. It is read on the GPU from buffers allocated for it ([`Self::upload`]) or
/// from buffers allocated once and rewritten with other matrices ([`Self::on`]: the GPU
/// trainer's slots).
#[derive(Clone, Debug)]
pub struct HostSparseMatrix {
    pub rows: usize,
    pub cols: usize,
    pub ty: ValueType,
    gpr: u32,
    layout: HostLayout,
    pub vals: Vec<u32>,
    /// Empty for f32 values, and in a transposed copy (it reads its original's).
    pub scales: Vec<u32>,
    /// 2:4 in-group offsets, or unstructured bitmasks.
    pub pattern: Vec<u32>,
    /// Unstructured row pointers; empty for 2:4.
    pub row_ptr: Vec<u32>,
}

/// The buffers a [`HostSparseMatrix`] is read from (`row_ptr` for unstructured ones).
#[derive(Clone, Copy, Debug)]
pub struct SparseBuffers<'a> {
    pub vals: &'a wgpu::Buffer,
    pub scales: &'a wgpu::Buffer,
    pub pattern: &'a wgpu::Buffer,
    pub row_ptr: Option<&'a wgpu::Buffer>,
}

impl HostSparseMatrix {
    /// A 2:4 weight `[n][k]` (the forward operand).
    pub fn sparse24(a: &Sparse24Matrix) -> Result<Self> {
        Ok(HostSparseMatrix {
            rows: a.n,
            cols: a.k,
            ty: a.values.ty,
            gpr: u32_of("sparse24 scales", a.values.groups_per_row)?,
            layout: HostLayout::Sparse24 {
                value_stride: u32_of("sparse24 k", a.value_stride)?,
                idx_stride: u32_of("sparse24 k", a.idx_stride)?,
                groups: u32_of("sparse24 k", a.groups())?,
            },
            vals: a.values.words.clone(),
            scales: a.values.scales.clone(),
            pattern: a.idx.clone(),
            row_ptr: Vec::new(),
        })
    }

    /// An unstructured matrix; `own_scales: false` (a transposed copy) keeps no scales:
    /// it is read with its original's.
    pub fn unstructured(a: &UnstructuredMatrix, own_scales: bool) -> Result<Self> {
        Ok(HostSparseMatrix {
            rows: a.rows,
            cols: a.cols,
            ty: a.values.ty,
            gpr: u32_of("unstructured scales", a.values.groups_per_row)?,
            layout: HostLayout::Unstructured {
                nb: u32_of("unstructured cols", a.blocks())?,
                scale_t: a.values.layout == ScaleLayout::Transposed,
            },
            vals: a.values.words.clone(),
            scales: if own_scales {
                a.values.scales.clone()
            } else {
                Vec::new()
            },
            pattern: a.masks.clone(),
            row_ptr: a.row_ptr.clone(),
        })
    }

    /// Whether it has a row-pointer buffer (unstructured).
    pub fn has_row_ptr(&self) -> bool {
        matches!(self.layout, HostLayout::Unstructured { .. })
    }

    /// The resident matrix reading `b`, which hold (at least) this matrix's words.
    pub fn on(&self, b: SparseBuffers<'_>) -> Result<GpuSparseMatrix> {
        let layout = match self.layout {
            HostLayout::Sparse24 {
                value_stride,
                idx_stride,
                groups,
            } => Layout::Sparse24 {
                value_stride,
                idx_stride,
                groups,
            },
            HostLayout::Unstructured { nb, scale_t } => Layout::Unstructured {
                nb,
                row_ptr: b
                    .row_ptr
                    .ok_or_else(|| Error::Invalid("unstructured matrix without row_ptr".into()))?
                    .clone(),
                scale_t,
            },
        };
        Ok(GpuSparseMatrix {
            rows: self.rows,
            cols: self.cols,
            ty: self.ty,
            gpr: self.gpr,
            vals: b.vals.clone(),
            scales: b.scales.clone(),
            pattern: b.pattern.clone(),
            layout,
        })
    }

    /// Uploads it into buffers of its own; `scales` reuses an already uploaded scales
    /// buffer (a transposed copy shares its original's).
    pub fn upload(
        &self,
        ctx: &GpuContext,
        scales: Option<&wgpu::Buffer>,
    ) -> Result<GpuSparseMatrix> {
        let kind = if self.has_row_ptr() {
            "unstructured"
        } else {
            "sparse24"
        };
        let own;
        let scales = match scales {
            Some(s) => s,
            None => {
                own = words(ctx, &format!("{kind} scales"), &self.scales)?;
                &own
            }
        };
        let vals = words(ctx, &format!("{kind} values"), &self.vals)?;
        let pattern = if self.has_row_ptr() {
            words(ctx, "unstructured masks", &self.pattern)?
        } else {
            words(ctx, "sparse24 indices", &self.pattern)?
        };
        let row_ptr = if self.has_row_ptr() {
            Some(words(ctx, "unstructured row_ptr", &self.row_ptr)?)
        } else {
            None
        };
        self.on(SparseBuffers {
            vals: &vals,
            scales,
            pattern: &pattern,
            row_ptr: row_ptr.as_ref(),
        })
    }
}

/// One sparse operand A `[rows][cols]` resident on the GPU, for y[m×rows] = x[m×cols]·Aᵀ.
#[derive(Clone, Debug)]
pub struct GpuSparseMatrix {
    pub rows: usize,
    pub cols: usize,
    pub ty: ValueType,
    gpr: u32,
    vals: wgpu::Buffer,
    scales: wgpu::Buffer,
    pattern: wgpu::Buffer,
    layout: Layout,
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Invalid(format!("{what}: {v} does not fit u32")))
}

fn words(ctx: &GpuContext, label: &str, w: &[u32]) -> Result<wgpu::Buffer> {
    ctx.storage(label, bytemuck::cast_slice(w))
}

impl GpuSparseMatrix {
    /// The pipeline for this matrix and `tm` rows of x per workgroup (cached per variant).
    fn kernel(&self, ctx: &GpuContext, tm: u32) -> Kernel {
        use Bind::*;
        let values = ("VALUES", self.ty.shader_id() as f64);
        let tm = ("TM", tm as f64);
        if let Layout::Unstructured { scale_t, .. } = self.layout {
            ctx.build(&KernelSpec {
                name: "spmatmul",
                source: SOURCE,
                entry: "unstructured_nt",
                binds: &[Read, Read, Read, Read, ReadWrite, Uniform, Read],
                constants: &[values, tm, ("SCALE_T", if scale_t { 1.0 } else { 0.0 })],
            })
        } else {
            ctx.build(&KernelSpec {
                name: "spmatmul",
                source: SOURCE,
                entry: "sparse24_nt",
                binds: &[Read, Read, Read, Read, ReadWrite, Uniform],
                constants: &[values, tm],
            })
        }
    }

    /// Uploads a 2:4 weight `[n][k]` (the forward operand).
    pub fn sparse24(ctx: &GpuContext, a: &Sparse24Matrix) -> Result<Self> {
        HostSparseMatrix::sparse24(a)?.upload(ctx, None)
    }

    /// Uploads an unstructured matrix; `scales` reuses an already uploaded scales buffer
    /// (a transposed copy shares its original's).
    pub fn unstructured(
        ctx: &GpuContext,
        a: &UnstructuredMatrix,
        scales: Option<&wgpu::Buffer>,
    ) -> Result<Self> {
        HostSparseMatrix::unstructured(a, scales.is_none())?.upload(ctx, scales)
    }

    /// Bytes of its buffers; `with_scales: false` leaves out a scales buffer it shares.
    pub fn bytes(&self, with_scales: bool) -> u64 {
        let own = self.vals.size() + self.pattern.size();
        let scales = if with_scales { self.scales.size() } else { 0 };
        let row_ptr = match &self.layout {
            Layout::Unstructured { row_ptr, .. } => row_ptr.size(),
            Layout::Sparse24 { .. } => 0,
        };
        own + scales + row_ptr
    }

    /// Workgroups for m rows of x.
    pub fn workgroups(&self, m: usize) -> u64 {
        (m as u64).div_ceil(tile_rows(m) as u64) * (self.rows as u64).div_ceil(WG_N as u64)
    }

    /// Records y[m×rows] = x[m×cols]·Aᵀ on resident buffers (x and y hold at least m·cols
    /// and m·rows f32).
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        let need = |what: &str, buf: &wgpu::Buffer, cols: usize| -> Result<()> {
            let bytes = (m as u64).saturating_mul(cols as u64).saturating_mul(4);
            if buf.size() < bytes {
                return Err(Error::Invalid(format!(
                    "spmatmul: {what} holds {} bytes, needs {m}×{cols} f32",
                    buf.size()
                )));
            }
            Ok(())
        };
        need("x", x, self.cols)?;
        need("y", y, self.rows)?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        let groups = u32::try_from(self.workgroups(m))
            .map_err(|_| Error::Invalid(format!("spmatmul: m = {m} is too large")))?;
        let kernel = self.kernel(ctx, tile_rows(m));
        let mut params = Params {
            m: u32_of("spmatmul m", m)?,
            k: u32_of("spmatmul k", self.cols)?,
            n: u32_of("spmatmul n", self.rows)?,
            tiles_n: (self.rows as u32).div_ceil(WG_N),
            gpr: self.gpr,
            ..Default::default()
        };
        let uniform;
        let bind_group = match &self.layout {
            Layout::Sparse24 {
                value_stride,
                idx_stride,
                groups,
            } => {
                params.value_stride = *value_stride;
                params.idx_stride = *idx_stride;
                params.groups = *groups;
                uniform = ctx.uniform("spmatmul params", &params);
                ctx.bind(
                    &kernel,
                    &[x, &self.vals, &self.scales, &self.pattern, y, &uniform],
                )
            }
            Layout::Unstructured { nb, row_ptr, .. } => {
                params.nb = *nb;
                uniform = ctx.uniform("spmatmul params", &params);
                ctx.bind(
                    &kernel,
                    &[
                        x,
                        &self.vals,
                        &self.scales,
                        &self.pattern,
                        y,
                        &uniform,
                        row_ptr,
                    ],
                )
            }
        };
        ctx.dispatch(encoder, &kernel, &bind_group, groups)
    }
}

/// A frozen sparse weight W `[n][k]` on the GPU: the forward operand and, if asked for,
/// the transposed copy Wᵀ `[k][n]` for the input gradient.
#[derive(Clone, Debug)]
pub struct SparseWeight {
    pub fwd: GpuSparseMatrix,
    pub grad: Option<GpuSparseMatrix>,
}

/// A frozen sparse weight on the host, as [`SparseWeight`] uploads it: the forward operand
/// and, if asked for, the transposed copy (without scales: it reads the forward's).
#[derive(Clone, Debug)]
pub struct HostSparseWeight {
    pub fwd: HostSparseMatrix,
    pub grad: Option<HostSparseMatrix>,
}

impl HostSparseWeight {
    /// A 2:4 weight; `with_grad` also builds its transpose.
    pub fn sparse24(w: &Sparse24Matrix, with_grad: bool) -> Result<Self> {
        Ok(HostSparseWeight {
            fwd: HostSparseMatrix::sparse24(w)?,
            grad: if with_grad {
                Some(HostSparseMatrix::unstructured(&w.transposed(), false)?)
            } else {
                None
            },
        })
    }

    /// An unstructured weight; `with_grad` also builds its transpose.
    pub fn unstructured(w: &UnstructuredMatrix, with_grad: bool) -> Result<Self> {
        Ok(HostSparseWeight {
            fwd: HostSparseMatrix::unstructured(w, true)?,
            grad: if with_grad {
                Some(HostSparseMatrix::unstructured(&w.transposed(), false)?)
            } else {
                None
            },
        })
    }

    /// Uploads it into buffers of its own.
    pub fn upload(&self, ctx: &GpuContext) -> Result<SparseWeight> {
        let fwd = self.fwd.upload(ctx, None)?;
        let grad = match &self.grad {
            Some(g) => Some(g.upload(ctx, Some(&fwd.scales))?),
            None => None,
        };
        Ok(SparseWeight { fwd, grad })
    }
}

impl SparseWeight {
    /// Uploads a 2:4 weight; `with_grad` also builds and uploads its transpose.
    pub fn sparse24(ctx: &GpuContext, w: &Sparse24Matrix, with_grad: bool) -> Result<Self> {
        HostSparseWeight::sparse24(w, with_grad)?.upload(ctx)
    }

    /// Uploads an unstructured weight; `with_grad` also builds and uploads its transpose.
    pub fn unstructured(ctx: &GpuContext, w: &UnstructuredMatrix, with_grad: bool) -> Result<Self> {
        HostSparseWeight::unstructured(w, with_grad)?.upload(ctx)
    }

    /// Bytes of every buffer it holds (the shared scales once).
    pub fn bytes(&self) -> u64 {
        self.fwd.bytes(true) + self.grad.as_ref().map_or(0, |g| g.bytes(false))
    }

    /// Records y[m×n] = x[m×k]·Wᵀ.
    pub fn encode_nt(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        self.fwd.encode(ctx, encoder, x, y, m)
    }

    /// Records dx[m×k] = dy[m×n]·W (overwrites dx).
    pub fn encode_nn(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        let t = self.grad.as_ref().ok_or_else(|| {
            Error::Invalid("spmatmul: this weight was uploaded without its gradient copy".into())
        })?;
        t.encode(ctx, encoder, dy, dx, m)
    }
}

/// The buffers of the transposed copy `with_grad` adds, as (name, bytes) in upload order:
/// masks, row pointers and values (the scales are shared). Counted from the stored codes
/// without building the copy, so a memory plan can size it exactly: the copy keeps only the
/// entries whose code is not zero, padding each of its rows to 8 value positions.
pub fn grad_buffers_sparse24(w: &Sparse24Matrix) -> [(&'static str, u64); 3] {
    let mut counts = vec![0usize; w.k];
    for r in 0..w.n {
        for g in 0..w.groups() {
            let nib = (w.idx[r * w.idx_stride + g / 8] >> (4 * (g % 8))) as usize;
            for (slot, i) in [(0, nib & 3), (1, (nib >> 2) & 3)] {
                let c = 4 * g + i;
                if c < w.k && !is_zero(&w.values, r * w.value_stride + 2 * g + slot) {
                    counts[c] += 1;
                }
            }
        }
    }
    transposed_buffers(w.k, w.n, &counts, w.values.ty)
}

/// [`grad_buffers_sparse24`] for an unstructured weight.
pub fn grad_buffers_unstructured(w: &UnstructuredMatrix) -> [(&'static str, u64); 3] {
    let mut counts = vec![0usize; w.cols];
    let nb = w.blocks();
    for r in 0..w.rows {
        let mut p = w.row_ptr[r] as usize;
        for b in 0..nb {
            let mut mask = w.masks[r * nb + b];
            while mask != 0 {
                let c = b * crate::formats::sparse::BLOCK + mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if !is_zero(&w.values, p) {
                    counts[c] += 1;
                }
                p += 1;
            }
        }
    }
    transposed_buffers(w.cols, w.rows, &counts, w.values.ty)
}

/// Whether the code at `pos` is zero (±0.0 or code 0), as the transposed copy decides.
fn is_zero(v: &crate::formats::sparse::PackedValues, pos: usize) -> bool {
    v.raw(pos) << 1 == 0
}

/// Buffer sizes of an unstructured `[rows][cols]` matrix whose row r stores `counts[r]`
/// values of type `ty` (as `GpuContext::storage` allocates them: at least 4 bytes).
fn transposed_buffers(
    rows: usize,
    cols: usize,
    counts: &[usize],
    ty: ValueType,
) -> [(&'static str, u64); 3] {
    let per_word = match ty {
        ValueType::F32 => 1,
        ValueType::Int8 => 4,
        ValueType::Int4 => 8,
    };
    let positions: usize = counts.iter().map(|&n| n.next_multiple_of(8)).sum();
    let bytes = |words: usize| (4 * words as u64).max(4);
    [
        (
            "masks",
            bytes(rows * cols.div_ceil(crate::formats::sparse::BLOCK)),
        ),
        ("row_ptr", bytes(rows + 1)),
        ("values", bytes(positions.div_ceil(per_word))),
    ]
}

/// Uploads `x`, runs `op` into a zeroed `m×out` buffer and reads it back, turning wgpu
/// validation and out-of-memory errors into `Error::Gpu`.
async fn run(
    ctx: &GpuContext,
    what: &str,
    x: &[f32],
    out: usize,
    m: usize,
    op: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer, &wgpu::Buffer) -> Result<()>,
) -> Result<Vec<f32>> {
    let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = async {
        let xb = ctx.storage(&format!("{what} input"), bytemuck::cast_slice(x))?;
        let bytes = (m as u64)
            .checked_mul(out as u64)
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(|| Error::Invalid(format!("{what}: {m}×{out} overflows")))?;
        let yb = ctx.storage_zeroed(&format!("{what} output"), bytes)?;
        let mut encoder = ctx.encoder();
        op(&mut encoder, &xb, &yb)?;
        ctx.queue.submit([encoder.finish()]);
        Ok::<_, Error>(yb)
    }
    .await;
    let validation = validation.pop().await;
    let oom = oom.pop().await;
    let yb = result?;
    if let Some(e) = validation {
        return Err(Error::Gpu(format!("{what}: {e}")));
    }
    if let Some(e) = oom {
        return Err(Error::Gpu(format!("{what}: out of GPU memory: {e}")));
    }
    let bytes = ctx.read_buffer(&yb).await?;
    let mut y: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    y.truncate(m * out);
    Ok(y)
}

fn check_len(what: &str, got: usize, m: usize, cols: usize) -> Result<()> {
    if Some(got) != m.checked_mul(cols) {
        return Err(Error::Invalid(format!(
            "{what}: input has {got} values, expected {m}×{cols}"
        )));
    }
    Ok(())
}

/// `x` `[m][cols_in]` times the uploaded sparse `a` (`[m][cols_out]` out): upload, run,
/// read back. The body of the four one-off products below.
async fn product(
    ctx: &GpuContext,
    what: &str,
    x: &[f32],
    m: usize,
    (cols_in, cols_out): (usize, usize),
    a: impl FnOnce() -> Result<GpuSparseMatrix>,
) -> Result<Vec<f32>> {
    check_len(what, x.len(), m, cols_in)?;
    let a = a()?;
    run(ctx, what, x, cols_out, m, |e, x, y| {
        a.encode(ctx, e, x, y, m)
    })
    .await
}

/// y[m×n] = x[m×k]·Wᵀ for a 2:4 weight, on the GPU (upload, run, read back).
pub async fn sparse24_matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    w: &Sparse24Matrix,
    m: usize,
) -> Result<Vec<f32>> {
    let a = || GpuSparseMatrix::sparse24(ctx, w);
    product(ctx, "sparse24_matmul_nt", x, m, (w.k, w.n), a).await
}

/// dx[m×k] = dy[m×n]·W for a 2:4 weight, on the GPU (through its transposed copy).
pub async fn sparse24_matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    w: &Sparse24Matrix,
    m: usize,
) -> Result<Vec<f32>> {
    let t = || GpuSparseMatrix::unstructured(ctx, &w.transposed(), None);
    product(ctx, "sparse24_matmul_nn", dy, m, (w.n, w.k), t).await
}

/// y[m×rows] = x[m×cols]·Aᵀ for an unstructured A, on the GPU.
pub async fn unstructured_matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    a: &UnstructuredMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    let g = || GpuSparseMatrix::unstructured(ctx, a, None);
    product(ctx, "unstructured_matmul_nt", x, m, (a.cols, a.rows), g).await
}

/// dx[m×cols] = dy[m×rows]·A for an unstructured A, on the GPU (through its transpose).
pub async fn unstructured_matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    a: &UnstructuredMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    let t = || GpuSparseMatrix::unstructured(ctx, &a.transposed(), None);
    product(ctx, "unstructured_matmul_nn", dy, m, (a.rows, a.cols), t).await
}

pub mod checks;
