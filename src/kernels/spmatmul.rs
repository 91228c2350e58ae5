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

const SOURCE: &str = include_str!("../../shaders/spmatmul.wgsl");
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

/// y[m×n] = x[m×k]·Wᵀ for a 2:4 weight, on the GPU (upload, run, read back).
pub async fn sparse24_matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    w: &Sparse24Matrix,
    m: usize,
) -> Result<Vec<f32>> {
    check_len("sparse24_matmul_nt", x.len(), m, w.k)?;
    let a = GpuSparseMatrix::sparse24(ctx, w)?;
    run(ctx, "sparse24_matmul_nt", x, w.n, m, |e, x, y| {
        a.encode(ctx, e, x, y, m)
    })
    .await
}

/// dx[m×k] = dy[m×n]·W for a 2:4 weight, on the GPU (through its transposed copy).
pub async fn sparse24_matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    w: &Sparse24Matrix,
    m: usize,
) -> Result<Vec<f32>> {
    check_len("sparse24_matmul_nn", dy.len(), m, w.n)?;
    let t = GpuSparseMatrix::unstructured(ctx, &w.transposed(), None)?;
    run(ctx, "sparse24_matmul_nn", dy, w.k, m, |e, x, y| {
        t.encode(ctx, e, x, y, m)
    })
    .await
}

/// y[m×rows] = x[m×cols]·Aᵀ for an unstructured A, on the GPU.
pub async fn unstructured_matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    a: &UnstructuredMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    check_len("unstructured_matmul_nt", x.len(), m, a.cols)?;
    let g = GpuSparseMatrix::unstructured(ctx, a, None)?;
    run(ctx, "unstructured_matmul_nt", x, a.rows, m, |e, x, y| {
        g.encode(ctx, e, x, y, m)
    })
    .await
}

/// dx[m×cols] = dy[m×rows]·A for an unstructured A, on the GPU (through its transpose).
pub async fn unstructured_matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    a: &UnstructuredMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    check_len("unstructured_matmul_nn", dy.len(), m, a.rows)?;
    let t = GpuSparseMatrix::unstructured(ctx, &a.transposed(), None)?;
    run(ctx, "unstructured_matmul_nn", dy, a.cols, m, |e, x, y| {
        t.encode(ctx, e, x, y, m)
    })
    .await
}

/// Test bodies (native and browser): every kernel vs its CPU twin, each twin vs the dense
/// product of the expanded matrix, the pruning helpers and the quantization budgets.
pub mod checks {
    use super::*;
    use crate::formats::sparse::{self as sp, PackedValues};
    use crate::reference::ops;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Tolerance rule: |a − b| ≤ max(REL_TOL·(|a| + |b|), ABS_TOL). Both sides sum at most
    /// k ≤ 576 f32 products of values in [-1, 1) in different orders; the rounding error is
    /// about √k·ε·|partial sums| ≈ 1e-5. A wrong index or a skipped weight moves an output
    /// by the size of one product (≈ 0.1–1), far above both.
    pub const REL_TOL: f32 = 1e-4;
    pub const ABS_TOL: f32 = 1e-4;
    /// Quantization budget per bit-width, as a fraction of the group's absmax: half a
    /// step (absmax/qmax/2) plus the f16 rounding of the scale (≤ 2⁻¹¹ relative, times
    /// qmax/2 steps).
    pub const INT8_BUDGET: f32 = 0.5 / 127.0 + 0.5 / 2048.0;
    pub const INT4_BUDGET: f32 = 0.5 / 7.0 + 0.5 / 2048.0;

    const MS: [usize; 5] = [1, 3, 6, 37, 70];
    const KS: [usize; 5] = [4, 6, 64, 100, 576];
    const NS: [usize; 3] = [1, 5, 33];
    const SPARSITIES: [f32; 3] = [0.0, 0.5, 0.9];

    fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<()> {
        if got.len() != want.len() {
            return Err(Error::Gpu(format!(
                "{what}: {} values, expected {}",
                got.len(),
                want.len()
            )));
        }
        let mut worst = (0.0f32, 0usize);
        let mut bad = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            if err.is_nan() || err > (REL_TOL * (g.abs() + w.abs())).max(ABS_TOL) {
                bad.get_or_insert((i, g, w));
            }
            if err > worst.0 || err.is_nan() {
                worst = (err, i);
            }
        }
        match bad {
            Some((i, g, w)) => Err(Error::Gpu(format!(
                "{what}: element {i} is {g}, expected {w}; max |error| {:.3e} at {}",
                worst.0, worst.1
            ))),
            None => Ok(()),
        }
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; a.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = a[r * cols + c];
            }
        }
        t
    }

    fn dense_nn(dy: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut dx = vec![0.0; m * k];
        ops::matmul_nn_acc(dy, w, m, k, n, &mut dx);
        dx
    }

    /// The dequantized matrix is the pruned one within the bit-width's budget (exact for
    /// f32), and zeros stay zeros.
    fn check_values(
        what: &str,
        got: &[f32],
        want: &[f32],
        n: usize,
        k: usize,
        ty: ValueType,
    ) -> Result<()> {
        let budget = match ty {
            ValueType::F32 => 0.0,
            ValueType::Int8 => INT8_BUDGET,
            ValueType::Int4 => INT4_BUDGET,
        };
        for r in 0..n {
            for g in (0..k).step_by(sp::QCOLS) {
                let cols = g..(g + sp::QCOLS).min(k);
                let absmax = want[r * k..][cols.clone()]
                    .iter()
                    .fold(0.0f32, |a, v| a.max(v.abs()));
                for c in cols {
                    let (a, b) = (got[r * k + c], want[r * k + c]);
                    if (b == 0.0 && a != 0.0) || (a - b).abs() > budget * absmax {
                        return Err(Error::Invalid(format!(
                            "{what} {ty:?}: w[{r}, {c}] holds {a}, pruned weight {b} (budget {} × absmax {absmax})",
                            budget
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Pruning helpers leave exactly the required pattern, keeping the largest weights.
    pub fn pruning() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (n, k) in [(3, 4), (5, 6), (2, 7), (4, 100)] {
            let w = random(n * k, &mut rng);
            let p = sp::prune_magnitude_2of4(&w, n, k);
            for r in 0..n {
                for g in (0..k).step_by(4) {
                    let grp = g..(g + 4).min(k);
                    let kept: Vec<usize> = grp.clone().filter(|&c| p[r * k + c] != 0.0).collect();
                    let min_kept = kept
                        .iter()
                        .map(|&c| w[r * k + c].abs())
                        .fold(f32::MAX, f32::min);
                    let max_dropped = grp
                        .clone()
                        .filter(|c| !kept.contains(c))
                        .map(|c| w[r * k + c].abs())
                        .fold(0.0, f32::max);
                    if kept.len() != grp.len().min(2) || min_kept < max_dropped {
                        return Err(Error::Invalid(format!(
                            "prune_magnitude_2of4 {n}×{k}: row {r} columns {grp:?} keep {kept:?}"
                        )));
                    }
                    for &c in &kept {
                        if p[r * k + c] != w[r * k + c] {
                            return Err(Error::Invalid(format!(
                                "prune_magnitude_2of4 changed a kept weight at ({r}, {c})"
                            )));
                        }
                    }
                }
            }
            for s in SPARSITIES.into_iter().chain([1.0, 0.3]) {
                let p = sp::prune_magnitude(&w, n, k, s);
                let drop = (s * k as f32).round() as usize;
                for r in 0..n {
                    let row = &p[r * k..(r + 1) * k];
                    let zeros = row.iter().filter(|v| **v == 0.0).count();
                    let min_kept = (0..k)
                        .filter(|&c| row[c] != 0.0)
                        .map(|c| w[r * k + c].abs())
                        .fold(f32::MAX, f32::min);
                    let max_dropped = (0..k)
                        .filter(|&c| row[c] == 0.0)
                        .map(|c| w[r * k + c].abs())
                        .fold(0.0, f32::max);
                    if zeros != drop || min_kept < max_dropped {
                        return Err(Error::Invalid(format!(
                            "prune_magnitude {n}×{k} sparsity {s}: row {r} has {zeros} zeros (want {drop})"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A random `[n][k]` weight pruned 2:4 (case 0) or to SPARSITIES[case % 3], with every
    /// third row all zero on odd cases.
    fn weight(n: usize, k: usize, case: usize, two_four: bool, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let w = random(n * k, rng);
        let mut w = if two_four {
            let mut p = sp::prune_magnitude_2of4(&w, n, k);
            if case % 3 == 2 {
                p = sp::prune_magnitude(&p, n, k, 0.75); // sparser than 2:4 still fits 2:4
            }
            p
        } else {
            sp::prune_magnitude(&w, n, k, SPARSITIES[case % 3])
        };
        if case % 2 == 1 {
            for r in (0..n).step_by(3) {
                w[r * k..(r + 1) * k].fill(0.0);
            }
        }
        w
    }

    /// Formats hold the pruned weight (within the quantization budget), transposed copies
    /// hold exactly its transpose, and each twin matches the dense product of the expanded
    /// matrix; the kernels match the twins.
    pub async fn kernels(ctx: &GpuContext) -> Result<()> {
        kernels_on(ctx, &MS, &KS, &NS).await
    }

    /// A subset small enough for a browser's software WebGPU (SwiftShader): awkward
    /// shapes only (1 row, k not a multiple of 4 or 32, n of 1 and 33).
    pub async fn browser_subset(ctx: &GpuContext) -> Result<()> {
        pruning()?;
        refusals()?;
        kernels_on(ctx, &[1, 37], &[6, 100], &[1, 33]).await
    }

    async fn kernels_on(ctx: &GpuContext, ms: &[usize], ks: &[usize], ns: &[usize]) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut case = 0;
        for &k in ks {
            for &n in ns {
                for &m in ms {
                    case += 1;
                    for two_four in [true, false] {
                        let w = weight(n, k, case, two_four, &mut rng);
                        let x = random(m * k, &mut rng);
                        let dy = random(m * n, &mut rng);
                        for ty in ValueType::ALL {
                            let name =
                                |op: &str| format!("{op} {ty:?} m={m} k={k} n={n} case={case}");
                            let (dense, dense_t, twin_nt, twin_nn, gpu_nt, gpu_nn);
                            if two_four {
                                let a = Sparse24Matrix::pack(&w, n, k, ty)?;
                                dense = a.to_dense();
                                dense_t = a.transposed().to_dense();
                                twin_nt = sp::sparse24_matmul_nt(&x, &a, m);
                                twin_nn = sp::sparse24_matmul_nn(&dy, &a, m);
                                gpu_nt = sparse24_matmul_nt(ctx, &x, &a, m).await?;
                                gpu_nn = sparse24_matmul_nn(ctx, &dy, &a, m).await?;
                            } else {
                                let a = UnstructuredMatrix::pack(&w, n, k, ty)?;
                                dense = a.to_dense();
                                dense_t = a.transposed().to_dense();
                                twin_nt = sp::unstructured_matmul_nt(&x, &a, m);
                                twin_nn = sp::unstructured_matmul_nn(&dy, &a, m);
                                gpu_nt = unstructured_matmul_nt(ctx, &x, &a, m).await?;
                                gpu_nn = unstructured_matmul_nn(ctx, &dy, &a, m).await?;
                            }
                            let fmt = if two_four { "sparse24" } else { "unstructured" };
                            check_values(&name(fmt), &dense, &w, n, k, ty)?;
                            if dense_t != transpose(&dense, n, k) {
                                return Err(Error::Invalid(format!(
                                    "{}: transposed copy differs",
                                    name(fmt)
                                )));
                            }
                            let nt = format!("{fmt}_matmul_nt");
                            let nn = format!("{fmt}_matmul_nn");
                            compare(
                                &format!("{} twin vs dense", name(&nt)),
                                &twin_nt,
                                &ops::matmul_nt(&x, &dense, m, k, n),
                            )?;
                            compare(
                                &format!("{} twin vs dense", name(&nn)),
                                &twin_nn,
                                &dense_nn(&dy, &dense, m, k, n),
                            )?;
                            compare(&format!("{} gpu vs twin", name(&nt)), &gpu_nt, &twin_nt)?;
                            compare(&format!("{} gpu vs twin", name(&nn)), &gpu_nn, &twin_nn)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Packing refuses what is not its format.
    pub fn refusals() -> Result<()> {
        let three = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        if Sparse24Matrix::pack(&three, 1, 6, ValueType::F32).is_ok() {
            return Err(Error::Invalid(
                "sparse24 accepted 3 non-zeros in a group of 4".into(),
            ));
        }
        if UnstructuredMatrix::pack(&[1.0; 5], 2, 3, ValueType::F32).is_ok() {
            return Err(Error::Invalid(
                "unstructured accepted a 5-value 2×3 weight".into(),
            ));
        }
        // An int4 code is sign-extended, a stored f32 round-trips bit-exactly.
        let v = PackedValues {
            ty: ValueType::Int4,
            words: vec![0x0000_00f9],
            scales: vec![],
            groups_per_row: 0,
            layout: ScaleLayout::Direct,
        };
        if v.raw(0) as i32 != -7 || v.raw(1) as i32 != -1 {
            return Err(Error::Invalid("int4 codes are not sign-extended".into()));
        }
        Ok(())
    }

    /// The transposed copy's buffers are sized from the codes exactly as the upload
    /// allocates them (a memory plan relies on it), on int4 codes that round to zero.
    pub fn planned_bytes(ctx: &GpuContext) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let b = |words: usize| (4 * words as u64).max(4);
        let sum = |a: [(&str, u64); 3]| a.iter().map(|e| e.1).sum::<u64>();
        for (n, k) in [(1, 6), (33, 100), (70, 37)] {
            for ty in ValueType::ALL {
                let w = random(n * k, &mut rng);
                let s24 = Sparse24Matrix::pack(&sp::prune_magnitude_2of4(&w, n, k), n, k, ty)?;
                let un = UnstructuredMatrix::pack(&sp::prune_magnitude(&w, n, k, 0.3), n, k, ty)?;
                let fwd_24 =
                    b(s24.values.words.len()) + b(s24.values.scales.len()) + b(s24.idx.len());
                let fwd_un = b(un.values.words.len())
                    + b(un.values.scales.len())
                    + b(un.masks.len())
                    + b(un.row_ptr.len());
                let cases = [
                    (
                        "sparse24",
                        SparseWeight::sparse24(ctx, &s24, true)?,
                        fwd_24 + sum(grad_buffers_sparse24(&s24)),
                    ),
                    (
                        "unstructured",
                        SparseWeight::unstructured(ctx, &un, true)?,
                        fwd_un + sum(grad_buffers_unstructured(&un)),
                    ),
                ];
                for (what, up, want) in cases {
                    if up.bytes() != want {
                        return Err(Error::Invalid(format!(
                            "{what} {ty:?} {n}×{k}: uploaded {} bytes, sized {want}",
                            up.bytes()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every check that runs under any limits.
    pub async fn all(ctx: &GpuContext) -> Result<()> {
        pruning()?;
        refusals()?;
        planned_bytes(ctx)?;
        kernels(ctx).await
    }

    /// Needs a context with max_storage_buffer_binding_size ≤ 64 KiB and
    /// max_compute_workgroups_per_dimension ≤ 8: a product over the workgroup limit is
    /// folded into a 2-D grid, and a weight over the binding limit is refused with
    /// Error::Gpu naming the limit.
    pub async fn small_limits(ctx: &GpuContext) -> Result<()> {
        if ctx.limits.max_storage_buffer_binding_size > 1 << 16
            || ctx.limits.max_compute_workgroups_per_dimension > 8
        {
            return Err(Error::Invalid(
                "spmatmul::checks::small_limits needs a context with small limits".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (m, k, n) = (70, 40, 140); // 5 × 3 = 15 workgroups, folded into 8 × 2
        let w = sp::prune_magnitude(&random(n * k, &mut rng), n, k, 0.5);
        let x = random(m * k, &mut rng);
        let a = UnstructuredMatrix::pack(&w, n, k, ValueType::Int8)?;
        compare(
            "unstructured_matmul_nt folded grid",
            &unstructured_matmul_nt(ctx, &x, &a, m).await?,
            &sp::unstructured_matmul_nt(&x, &a, m),
        )?;
        let a = Sparse24Matrix::pack(&sp::prune_magnitude_2of4(&w, n, k), n, k, ValueType::F32)?;
        compare(
            "sparse24_matmul_nt folded grid",
            &sparse24_matmul_nt(ctx, &x, &a, m).await?,
            &sp::sparse24_matmul_nt(&x, &a, m),
        )?;

        let (n, k) = (160, 256); // f32 values: 80 KiB
        let big = Sparse24Matrix::pack(
            &sp::prune_magnitude_2of4(&random(n * k, &mut rng), n, k),
            n,
            k,
            ValueType::F32,
        )?;
        match sparse24_matmul_nt(ctx, &random(k, &mut rng), &big, 1).await {
            Err(Error::Gpu(e)) if e.contains("max_storage_buffer_binding_size") => Ok(()),
            other => Err(Error::Invalid(format!(
                "a {}-byte weight over a {}-byte binding limit gave {other:?}",
                big.bytes(),
                ctx.limits.max_storage_buffer_binding_size
            ))),
        }
    }
}
