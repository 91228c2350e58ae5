//! The calibration statistics of LUC profiling, accumulated on the GPU row by row: the Gram
//! matrix XᵀX of a projection input (the Hessians SparseGPT, GPTQ and Wanda read) and the
//! squared base-weight gradient (dYᵀ·X)² of a projection (the Fisher diagonal).
//! Shader: shaders/stats.wgsl. CPU twins: [`crate::reference::stats::gram_acc`],
//! [`crate::reference::stats::fisher_acc`].

use super::{check_len, launch, read, to_u32, upload};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/stats.wgsl");
const BINDS: &[Bind] = &[Bind::Read, Bind::Read, Bind::ReadWrite, Bind::Uniform];
/// The output tile edge of one workgroup (`TILE` in the shader).
pub const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    rows: u32,
    cols: u32,
    tiles_c: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Refuses buffers smaller than the shapes say (a view past the end reads clamped values
/// instead of failing).
fn check_buffer(what: &str, b: &wgpu::Buffer, len: usize) -> Result<()> {
    if (b.size() as usize) < len.saturating_mul(4) {
        return Err(Error::Invalid(format!(
            "{what}: a buffer of {} bytes holds fewer than {len} f32",
            b.size()
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn encode(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    entry: &'static str,
    (a, b, out): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    t: usize,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<()> {
    if t == 0 || rows == 0 || cols == 0 {
        return Ok(());
    }
    check_buffer(entry, a, t * rows)?;
    check_buffer(entry, b, t * cols)?;
    check_buffer(entry, out, rows * cols)?;
    let (tiles_r, tiles_c) = (rows.div_ceil(TILE), cols.div_ceil(TILE));
    let p = Params {
        t: to_u32("stats t", t)?,
        rows: to_u32("stats rows", rows)?,
        cols: to_u32("stats cols", cols)?,
        tiles_c: to_u32("stats tiles", tiles_c)?,
        scale,
        _pad: [0; 3],
    };
    let u = ctx.uniform("stats params", &p);
    let spec = KernelSpec {
        name: "stats",
        source: SOURCE,
        entry,
        binds: BINDS,
        constants: &[],
    };
    let groups = to_u32("stats tiles", tiles_r * tiles_c)?;
    launch(ctx, encoder, &spec, &[a, b, out, &u], groups)
}

/// Records h `[k][k]` += xᵀ·x for x `[t][k]`.
pub fn encode_gram_acc(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    h: &wgpu::Buffer,
    t: usize,
    k: usize,
) -> Result<()> {
    encode(ctx, encoder, "gram_acc", (x, x, h), t, k, k, 1.0)
}

/// Records f `[n][k]` += s·(dyᵀ·x)² elementwise, for dy `[t][n]` and x `[t][k]`.
#[allow(clippy::too_many_arguments)]
pub fn encode_fisher_acc(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    f: &wgpu::Buffer,
    t: usize,
    (n, k): (usize, usize),
    s: f32,
) -> Result<()> {
    encode(ctx, encoder, "fisher_acc", (dy, x, f), t, n, k, s)
}

/// `h + xᵀ·x` on the GPU. Twin: [`crate::reference::stats::gram_acc`].
pub async fn gram_acc(
    ctx: &GpuContext,
    h: &[f32],
    x: &[f32],
    t: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_len("gram h", h.len(), k * k)?;
    check_len("gram x", x.len(), t * k)?;
    let (xb, hb) = (upload(ctx, "x", x)?, upload(ctx, "h", h)?);
    let mut enc = ctx.encoder();
    encode_gram_acc(ctx, &mut enc, &xb, &hb, t, k)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &hb, k * k).await
}

/// `f + s·(dyᵀ·x)²` on the GPU. Twin: [`crate::reference::stats::fisher_acc`].
#[allow(clippy::too_many_arguments)]
pub async fn fisher_acc(
    ctx: &GpuContext,
    f: &[f32],
    dy: &[f32],
    x: &[f32],
    t: usize,
    n: usize,
    k: usize,
    s: f32,
) -> Result<Vec<f32>> {
    check_len("fisher f", f.len(), n * k)?;
    check_len("fisher dy", dy.len(), t * n)?;
    check_len("fisher x", x.len(), t * k)?;
    let (dyb, xb, fb) = (
        upload(ctx, "dy", dy)?,
        upload(ctx, "x", x)?,
        upload(ctx, "f", f)?,
    );
    let mut enc = ctx.encoder();
    encode_fisher_acc(ctx, &mut enc, &dyb, &xb, &fb, t, (n, k), s)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &fb, n * k).await
}
