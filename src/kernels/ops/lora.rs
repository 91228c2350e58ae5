//! LoRA forward (y += scale·(drop(x)·Aᵀ)·Bᵀ) and backward (dA, dB, dx), on the strided gemm
//! of shaders/linear_backward.wgsl plus the hashed dropout of shaders/lora.wgsl.
//! CPU twins: [`crate::reference::ops::lora_forward`], [`crate::reference::ops::lora_backward`].

use super::linear::Gemm;
use super::{check_len, groups, launch, read, to_u32, upload, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::reference::ops::{Dropout, LoraPair};
use crate::Result;

const SOURCE: &str = include_str!("../../../shaders/lora.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    key: u32,
    threshold: u32,
    keep_scale: f32,
}

/// The adapter's shape: A `[rank][k]`, B `[n][rank]`, over `m` rows.
#[derive(Clone, Copy, Debug)]
pub struct LoraShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub rank: usize,
    pub scale: f32,
}

/// Records dst = src⊙mask (`acc`: dst += src⊙mask) over n values, the mask drawn by `d`.
fn encode_dropout(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    acc: bool,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    n: usize,
    d: Dropout,
) -> Result<()> {
    let spec = KernelSpec {
        name: "lora",
        source: SOURCE,
        entry: if acc {
            "lora_dropout_acc"
        } else {
            "lora_dropout"
        },
        binds: &[Bind::Read, Bind::ReadWrite, Bind::Uniform],
        constants: &[],
    };
    let u = ctx.uniform(
        "lora dropout params",
        &Params {
            n: to_u32("lora n", n)?,
            key: d.key,
            threshold: d.threshold,
            keep_scale: d.keep_scale as f32,
        },
    );
    launch(ctx, encoder, &spec, &[src, dst, &u], groups("lora", n, WG)?)
}

/// Records u `[m][rank]` = drop(x)·Aᵀ and y += scale·u·Bᵀ. With dropout, `dropout` is
/// (mask, xd) where xd (m·k scratch) receives drop(x).
#[allow(clippy::too_many_arguments)]
pub fn encode_lora_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    (a, b): (&wgpu::Buffer, &wgpu::Buffer),
    dropout: Option<(Dropout, &wgpu::Buffer)>,
    u: &wgpu::Buffer,
    y: &wgpu::Buffer,
    sh: LoraShape,
) -> Result<()> {
    let LoraShape {
        m,
        k,
        n,
        rank,
        scale,
    } = sh;
    let xin = match dropout {
        Some((d, xd)) => {
            encode_dropout(ctx, encoder, false, x, xd, m * k, d)?;
            xd
        }
        None => x,
    };
    Gemm::nt(m, k, rank).encode(ctx, encoder, xin, a, u)?;
    Gemm {
        alpha: scale,
        accumulate: true,
        ..Gemm::nt(m, rank, n)
    }
    .encode(ctx, encoder, u, b, y)
}

/// Records db += scale·dyᵀ·u, da += (scale·dy·B)ᵀ·drop(x) and dx += (scale·dy·B·A)⊙mask,
/// from the forward's input `x` and `u`. `du` is m·rank scratch; with dropout, `dropout`
/// is (the forward's mask, m·k scratch), drop(x) being recomputed from the mask's key.
#[allow(clippy::too_many_arguments)]
pub fn encode_lora_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dy: &wgpu::Buffer,
    (x, u): (&wgpu::Buffer, &wgpu::Buffer),
    (a, b): (&wgpu::Buffer, &wgpu::Buffer),
    dropout: Option<(Dropout, &wgpu::Buffer)>,
    du: &wgpu::Buffer,
    (dx, da, db): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    sh: LoraShape,
) -> Result<()> {
    let LoraShape {
        m,
        k,
        n,
        rank,
        scale,
    } = sh;
    Gemm {
        alpha: scale,
        ..Gemm::tn(m, rank, n)
    }
    .encode(ctx, encoder, dy, u, db)?;
    Gemm {
        alpha: scale,
        accumulate: false,
        ..Gemm::nn(m, rank, n)
    }
    .encode(ctx, encoder, dy, b, du)?;
    match dropout {
        Some((d, scratch)) => {
            encode_dropout(ctx, encoder, false, x, scratch, m * k, d)?;
            Gemm::tn(m, k, rank).encode(ctx, encoder, du, scratch, da)?;
            Gemm {
                accumulate: false,
                ..Gemm::nn(m, k, rank)
            }
            .encode(ctx, encoder, du, a, scratch)?;
            encode_dropout(ctx, encoder, true, scratch, dx, m * k, d)
        }
        None => {
            Gemm::tn(m, k, rank).encode(ctx, encoder, du, x, da)?;
            Gemm::nn(m, k, rank).encode(ctx, encoder, du, a, dx)
        }
    }
}

fn shape(p: &LoraPair<f32>, m: usize, scale: f32, x: &[f32]) -> Result<LoraShape> {
    check_len("lora A", p.a.len(), p.rank * p.k)?;
    check_len("lora B", p.b.len(), p.n * p.rank)?;
    check_len("lora x", x.len(), m * p.k)?;
    Ok(LoraShape {
        m,
        k: p.k,
        n: p.n,
        rank: p.rank,
        scale,
    })
}

/// LoRA forward on the GPU: returns (y + scale·u·Bᵀ, u). Twin: `lora_forward`.
pub async fn lora_forward(
    ctx: &GpuContext,
    x: &[f32],
    p: &LoraPair<f32>,
    scale: f32,
    m: usize,
    dropout: Option<Dropout>,
    y: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let sh = shape(p, m, scale, x)?;
    check_len("lora y", y.len(), m * p.n)?;
    let (xb, ab, bb, yb) = (
        upload(ctx, "x", x)?,
        upload(ctx, "A", &p.a)?,
        upload(ctx, "B", &p.b)?,
        upload(ctx, "y", y)?,
    );
    let ub = zeros(ctx, "u", m * p.rank)?;
    let scratch = zeros(ctx, "xd", m * p.k)?;
    let mut enc = ctx.encoder();
    encode_lora_forward(
        ctx,
        &mut enc,
        &xb,
        (&ab, &bb),
        dropout.map(|d| (d, &scratch)),
        &ub,
        &yb,
        sh,
    )?;
    ctx.queue.submit([enc.finish()]);
    Ok((
        read(ctx, &yb, m * p.n).await?,
        read(ctx, &ub, m * p.rank).await?,
    ))
}

/// LoRA backward on the GPU, adding into copies of dx, dA and dB: returns (dx, dA, dB).
/// Twin: `lora_backward`.
#[allow(clippy::too_many_arguments)]
pub async fn lora_backward(
    ctx: &GpuContext,
    dy: &[f32],
    x: &[f32],
    u: &[f32],
    p: &LoraPair<f32>,
    scale: f32,
    m: usize,
    dropout: Option<Dropout>,
    dx: &[f32],
    dp: &LoraPair<f32>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let sh = shape(p, m, scale, x)?;
    check_len("lora dy", dy.len(), m * p.n)?;
    check_len("lora u", u.len(), m * p.rank)?;
    check_len("lora dx", dx.len(), m * p.k)?;
    check_len("lora dA", dp.a.len(), p.a.len())?;
    check_len("lora dB", dp.b.len(), p.b.len())?;
    let (dyb, xb, ub) = (
        upload(ctx, "dy", dy)?,
        upload(ctx, "x", x)?,
        upload(ctx, "u", u)?,
    );
    let (ab, bb) = (upload(ctx, "A", &p.a)?, upload(ctx, "B", &p.b)?);
    let (dxb, dab, dbb) = (
        upload(ctx, "dx", dx)?,
        upload(ctx, "dA", &dp.a)?,
        upload(ctx, "dB", &dp.b)?,
    );
    let du = zeros(ctx, "du", m * p.rank)?;
    let scratch = zeros(ctx, "dropout scratch", m * p.k)?;
    let mut enc = ctx.encoder();
    encode_lora_backward(
        ctx,
        &mut enc,
        &dyb,
        (&xb, &ub),
        (&ab, &bb),
        dropout.map(|d| (d, &scratch)),
        &du,
        (&dxb, &dab, &dbb),
        sh,
    )?;
    ctx.queue.submit([enc.finish()]);
    Ok((
        read(ctx, &dxb, dx.len()).await?,
        read(ctx, &dab, dp.a.len()).await?,
        read(ctx, &dbb, dp.b.len()).await?,
    ))
}
