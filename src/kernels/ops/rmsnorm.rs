//! RMSNorm forward (y and the per-row 1/rms saved for backward) and backward (dx, and dw as
//! a two-pass column reduction). Shader: shaders/rmsnorm.wgsl. CPU twins:
//! [`crate::reference::ops::rmsnorm_forward`], [`crate::reference::ops::rmsnorm_backward`].

use super::reduce::encode_col_sums_add;
use super::{check_len, groups, launch, read, to_u32, upload, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::Result;

const SOURCE: &str = include_str!("../../../shaders/rmsnorm.wgsl");
/// Rows one `rmsnorm_dw_partial` workgroup sums (ROWS in the shader).
pub const DW_ROWS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    d: u32,
    eps: f32,
    col_blocks: u32,
}

fn params(m: usize, d: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        m: to_u32("rmsnorm rows", m)?,
        d: to_u32("rmsnorm width", d)?,
        eps,
        col_blocks: groups("rmsnorm columns", d, WG)?,
    })
}

/// Records y = rmsnorm(x)·w and rstd (m values) for x `[m][d]`.
#[allow(clippy::too_many_arguments)]
pub fn encode_rmsnorm_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rstd: &wgpu::Buffer,
    m: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    let spec = KernelSpec {
        name: "rmsnorm",
        source: SOURCE,
        entry: "rmsnorm_forward",
        binds: &[
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
            Bind::ReadWrite,
            Bind::Uniform,
        ],
        constants: &[],
    };
    let u = ctx.uniform("rmsnorm params", &params(m, d, eps)?);
    launch(
        ctx,
        encoder,
        &spec,
        &[x, w, y, rstd, &u],
        to_u32("rmsnorm rows", m)?,
    )
}

/// Scratch words [`encode_rmsnorm_backward`] needs for the dw partial sums.
pub fn dw_scratch_len(m: usize, d: usize) -> usize {
    m.div_ceil(DW_ROWS) * d
}

/// Records dx += ∂y/∂x·dy and, when `dw` is given as (dw, scratch of
/// [`dw_scratch_len`] words), dw += Σ_rows dy⊙x·rstd.
#[allow(clippy::too_many_arguments)]
pub fn encode_rmsnorm_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    rstd: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    dw: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    m: usize,
    d: usize,
) -> Result<()> {
    let p = params(m, d, 0.0)?;
    let u = ctx.uniform("rmsnorm params", &p);
    let spec = KernelSpec {
        name: "rmsnorm",
        source: SOURCE,
        entry: "rmsnorm_backward",
        binds: &[
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
            Bind::Uniform,
        ],
        constants: &[],
    };
    launch(ctx, encoder, &spec, &[x, w, dy, rstd, dx, &u], p.m)?;
    if let Some((dw, scratch)) = dw {
        let spec = KernelSpec {
            name: "rmsnorm",
            source: SOURCE,
            entry: "rmsnorm_dw_partial",
            binds: &[
                Bind::Read,
                Bind::Read,
                Bind::Read,
                Bind::ReadWrite,
                Bind::Uniform,
            ],
            constants: &[],
        };
        let chunks = m.div_ceil(DW_ROWS);
        let g = to_u32("rmsnorm dw groups", chunks * p.col_blocks as usize)?;
        launch(ctx, encoder, &spec, &[x, dy, rstd, scratch, &u], g)?;
        encode_col_sums_add(ctx, encoder, scratch, chunks, d, dw)?;
    }
    Ok(())
}

/// RMSNorm forward on the GPU: (y, rstd). Twin: `rmsnorm_forward`.
pub async fn rmsnorm_forward(
    ctx: &GpuContext,
    x: &[f32],
    w: &[f32],
    m: usize,
    d: usize,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_len("rmsnorm x", x.len(), m * d)?;
    check_len("rmsnorm w", w.len(), d)?;
    let (xb, wb) = (upload(ctx, "x", x)?, upload(ctx, "w", w)?);
    let (yb, rb) = (zeros(ctx, "y", m * d)?, zeros(ctx, "rstd", m)?);
    let mut enc = ctx.encoder();
    encode_rmsnorm_forward(ctx, &mut enc, &xb, &wb, &yb, &rb, m, d, eps)?;
    ctx.queue.submit([enc.finish()]);
    Ok((read(ctx, &yb, m * d).await?, read(ctx, &rb, m).await?))
}

/// RMSNorm backward on the GPU, adding into copies of `dx` and `dw`: returns (dx, dw).
/// Twin: `rmsnorm_backward`.
#[allow(clippy::too_many_arguments)]
pub async fn rmsnorm_backward(
    ctx: &GpuContext,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    m: usize,
    d: usize,
    dx: &[f32],
    dw: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_len("rmsnorm dy", dy.len(), m * d)?;
    check_len("rmsnorm x", x.len(), m * d)?;
    check_len("rmsnorm dx", dx.len(), m * d)?;
    check_len("rmsnorm w", w.len(), d)?;
    check_len("rmsnorm dw", dw.len(), d)?;
    check_len("rmsnorm rstd", rstd.len(), m)?;
    let (dyb, xb, wb, rb) = (
        upload(ctx, "dy", dy)?,
        upload(ctx, "x", x)?,
        upload(ctx, "w", w)?,
        upload(ctx, "rstd", rstd)?,
    );
    let (dxb, dwb) = (upload(ctx, "dx", dx)?, upload(ctx, "dw", dw)?);
    let scratch = zeros(ctx, "rmsnorm dw partial", dw_scratch_len(m, d))?;
    let mut enc = ctx.encoder();
    encode_rmsnorm_backward(
        ctx,
        &mut enc,
        &dyb,
        &xb,
        &wb,
        &rb,
        &dxb,
        Some((&dwb, &scratch)),
        m,
        d,
    )?;
    ctx.queue.submit([enc.finish()]);
    Ok((read(ctx, &dxb, m * d).await?, read(ctx, &dwb, d).await?))
}
