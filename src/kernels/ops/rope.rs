//! RoPE forward/backward in place, interleaved-pair (GGUF) or half-split, from a (cos, sin)
//! table built once on the CPU in f64. Shader: shaders/rope.wgsl. CPU twins:
//! [`crate::reference::ops::rope_forward`], [`crate::reference::ops::rope_backward`].

use super::{check_len, groups, launch, read, to_u32, upload, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::model::RopeStyle;
use crate::{Error, Result};

const SPEC: KernelSpec<'static> = KernelSpec {
    name: "rope",
    source: include_str!("../../../shaders/rope.wgsl"),
    entry: "rope",
    binds: &[Bind::ReadWrite, Bind::Read, Bind::Uniform],
    constants: &[],
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n_heads: u32,
    head_dim: u32,
    pos0: u32,
    style: u32,
    sign: f32,
    _pad: [u32; 2],
}

/// (cos, sin) of pos·θ^(−2i/head_dim) for positions 0..n_pos and i < head_dim/2, resident
/// on the GPU; make it once for the longest context and reuse it for every layer.
#[derive(Debug)]
pub struct RopeTable {
    pub buffer: wgpu::Buffer,
    pub n_pos: usize,
    pub head_dim: usize,
}

/// The table's values, computed as the twin computes its angles (f64, then rounded).
pub fn rope_table_values(head_dim: usize, n_pos: usize, theta: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let mut t = Vec::with_capacity(n_pos * half * 2);
    for pos in 0..n_pos {
        for i in 0..half {
            let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
            let (s, c) = (pos as f64 * freq).sin_cos();
            t.push(c as f32);
            t.push(s as f32);
        }
    }
    t
}

impl RopeTable {
    pub fn new(ctx: &GpuContext, head_dim: usize, n_pos: usize, theta: f64) -> Result<Self> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Invalid(format!("rope: head_dim {head_dim} is odd")));
        }
        let values = rope_table_values(head_dim, n_pos, theta);
        Ok(Self {
            buffer: upload(ctx, "rope table", &values)?,
            n_pos,
            head_dim,
        })
    }
}

/// Records RoPE in place on x `[m][n_heads·head_dim]` for rows at pos0…; `backward`
/// rotates back (the gradient of the forward rotation).
#[allow(clippy::too_many_arguments)]
pub fn encode_rope(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    table: &RopeTable,
    m: usize,
    n_heads: usize,
    pos0: usize,
    style: RopeStyle,
    backward: bool,
) -> Result<()> {
    if pos0 + m > table.n_pos {
        return Err(Error::Invalid(format!(
            "rope: positions up to {} but the table holds {}",
            pos0 + m,
            table.n_pos
        )));
    }
    let p = Params {
        m: to_u32("rope rows", m)?,
        n_heads: to_u32("rope heads", n_heads)?,
        head_dim: to_u32("rope head_dim", table.head_dim)?,
        pos0: to_u32("rope pos0", pos0)?,
        style: match style {
            RopeStyle::Interleaved => 0,
            RopeStyle::HalfSplit => 1,
        },
        sign: if backward { -1.0 } else { 1.0 },
        _pad: [0; 2],
    };
    let u = ctx.uniform("rope params", &p);
    let pairs = m * n_heads * (table.head_dim / 2);
    launch(
        ctx,
        encoder,
        &SPEC,
        &[x, &table.buffer, &u],
        groups("rope", pairs, WG)?,
    )
}

#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: &GpuContext,
    x: &[f32],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
    backward: bool,
) -> Result<Vec<f32>> {
    check_len("rope x", x.len(), m * n_heads * head_dim)?;
    let table = RopeTable::new(ctx, head_dim, pos0 + m, theta)?;
    let xb = upload(ctx, "rope x", x)?;
    let mut enc = ctx.encoder();
    encode_rope(
        ctx, &mut enc, &xb, &table, m, n_heads, pos0, style, backward,
    )?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &xb, x.len()).await
}

/// RoPE forward on the GPU, returning the rotated copy of `x`. Twin: `rope_forward`.
#[allow(clippy::too_many_arguments)]
pub async fn rope_forward(
    ctx: &GpuContext,
    x: &[f32],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
) -> Result<Vec<f32>> {
    run(ctx, x, m, n_heads, head_dim, pos0, theta, style, false).await
}

/// RoPE backward on the GPU, returning the gradient rotated back. Twin: `rope_backward`.
#[allow(clippy::too_many_arguments)]
pub async fn rope_backward(
    ctx: &GpuContext,
    dx: &[f32],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
) -> Result<Vec<f32>> {
    run(ctx, dx, m, n_heads, head_dim, pos0, theta, style, true).await
}
