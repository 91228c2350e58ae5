//! SwiGLU forward/backward, elementwise. Shader: shaders/swiglu.wgsl. CPU twins:
//! [`crate::reference::ops::swiglu_forward`], [`crate::reference::ops::swiglu_backward`].

use super::{check_len, groups, launch, read, to_u32, upload, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::Result;

const SOURCE: &str = include_str!("../../../shaders/swiglu.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// Records h = silu(gate)⊙up over n values.
pub fn encode_swiglu_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    h: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    let spec = KernelSpec {
        name: "swiglu",
        source: SOURCE,
        entry: "swiglu_forward",
        binds: &[Bind::Read, Bind::Read, Bind::ReadWrite, Bind::Uniform],
        constants: &[],
    };
    let u = ctx.uniform(
        "swiglu params",
        &Params {
            n: to_u32("swiglu n", n)?,
            _pad: [0; 3],
        },
    );
    launch(
        ctx,
        encoder,
        &spec,
        &[gate, up, h, &u],
        groups("swiglu", n, WG)?,
    )
}

/// Records (dgate, dup) from dh, written (not added), over n values.
#[allow(clippy::too_many_arguments)]
pub fn encode_swiglu_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dh: &wgpu::Buffer,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    dgate: &wgpu::Buffer,
    dup: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    let spec = KernelSpec {
        name: "swiglu",
        source: SOURCE,
        entry: "swiglu_backward",
        binds: &[
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
            Bind::ReadWrite,
            Bind::Uniform,
        ],
        constants: &[],
    };
    let u = ctx.uniform(
        "swiglu params",
        &Params {
            n: to_u32("swiglu n", n)?,
            _pad: [0; 3],
        },
    );
    launch(
        ctx,
        encoder,
        &spec,
        &[gate, up, dh, dgate, dup, &u],
        groups("swiglu", n, WG)?,
    )
}

/// SwiGLU forward on the GPU. Twin: `swiglu_forward`.
pub async fn swiglu_forward(ctx: &GpuContext, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    let n = gate.len();
    check_len("swiglu up", up.len(), n)?;
    let (gb, ub, hb) = (
        upload(ctx, "gate", gate)?,
        upload(ctx, "up", up)?,
        zeros(ctx, "h", n)?,
    );
    let mut enc = ctx.encoder();
    encode_swiglu_forward(ctx, &mut enc, &gb, &ub, &hb, n)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &hb, n).await
}

/// SwiGLU backward on the GPU: (dgate, dup). Twin: `swiglu_backward`.
pub async fn swiglu_backward(
    ctx: &GpuContext,
    dh: &[f32],
    gate: &[f32],
    up: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = dh.len();
    check_len("swiglu gate", gate.len(), n)?;
    check_len("swiglu up", up.len(), n)?;
    let (db, gb, ub) = (
        upload(ctx, "dh", dh)?,
        upload(ctx, "gate", gate)?,
        upload(ctx, "up", up)?,
    );
    let (dgb, dub) = (zeros(ctx, "dgate", n)?, zeros(ctx, "dup", n)?);
    let mut enc = ctx.encoder();
    encode_swiglu_backward(ctx, &mut enc, &db, &gb, &ub, &dgb, &dub, n)?;
    ctx.queue.submit([enc.finish()]);
    Ok((read(ctx, &dgb, n).await?, read(ctx, &dub, n).await?))
}
