//! Causal grouped-query attention, forward (saving the log-sum-exp per row, not the
//! probabilities) and backward (recomputing them; dk/dv gathered per key, no atomics).
//! Shader: shaders/attention.wgsl. CPU twins: [`crate::reference::ops::attention_forward`],
//! [`crate::reference::ops::attention_backward`].

use super::{check_len, groups, launch, read, to_u32, upload, zeros};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::reference::ops::AttnShape;
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/attention.wgsl");
/// The largest head_dim the shader holds in workgroup memory (MAX_HD).
pub const MAX_HEAD_DIM: usize = 256;
/// Invocations per workgroup (BLK in the shader).
const BLK: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    s: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
    _pad: u32,
}

/// Checks a shape the kernels support and returns its uniform block.
fn params(sh: AttnShape) -> Result<Params> {
    let AttnShape {
        t,
        s,
        n_heads,
        n_kv_heads,
        head_dim,
    } = sh;
    if n_kv_heads == 0
        || !n_heads.is_multiple_of(n_kv_heads)
        || t > s
        || head_dim == 0
        || head_dim > MAX_HEAD_DIM
    {
        return Err(Error::Invalid(format!(
            "attention: unsupported shape {sh:?} (need Hkv dividing H, t ≤ s, 1 ≤ head_dim ≤ {MAX_HEAD_DIM})"
        )));
    }
    Ok(Params {
        t: to_u32("attention t", t)?,
        s: to_u32("attention s", s)?,
        n_heads: to_u32("attention heads", n_heads)?,
        n_kv_heads: to_u32("attention kv heads", n_kv_heads)?,
        head_dim: to_u32("attention head_dim", head_dim)?,
        group: to_u32("attention group", n_heads / n_kv_heads)?,
        scale: (1.0 / (head_dim as f64).sqrt()) as f32,
        _pad: 0,
    })
}

fn spec(entry: &'static str, binds: &'static [Bind]) -> KernelSpec<'static> {
    KernelSpec {
        name: "attention",
        source: SOURCE,
        entry,
        binds,
        constants: &[],
    }
}

/// Records out `[t][H·hd]` and lse `[H][t]` (saved for backward).
#[allow(clippy::too_many_arguments)]
pub fn encode_attention_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    lse: &wgpu::Buffer,
    sh: AttnShape,
) -> Result<()> {
    use Bind::*;
    let p = params(sh)?;
    let u = ctx.uniform("attention params", &p);
    let rows = to_u32("attention rows", sh.n_heads * sh.t)?;
    launch(
        ctx,
        encoder,
        &spec(
            "attention_forward",
            &[Read, Read, Read, ReadWrite, ReadWrite, Uniform],
        ),
        &[q, k, v, out, lse, &u],
        rows,
    )
}

/// Records (dq, dk, dv), written not added, from dout and the forward's out and lse;
/// `delta` is scratch of H·t values.
#[allow(clippy::too_many_arguments)]
pub fn encode_attention_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dout: &wgpu::Buffer,
    (q, k, v): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    (out, lse): (&wgpu::Buffer, &wgpu::Buffer),
    delta: &wgpu::Buffer,
    (dq, dk, dv): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    sh: AttnShape,
) -> Result<()> {
    use Bind::*;
    let p = params(sh)?;
    let u = ctx.uniform("attention params", &p);
    let rows = sh.n_heads * sh.t;
    launch(
        ctx,
        encoder,
        &spec("attention_delta", &[Read, Read, ReadWrite, Uniform]),
        &[dout, out, delta, &u],
        groups("attention delta", rows, BLK)?,
    )?;
    launch(
        ctx,
        encoder,
        &spec(
            "attention_dq",
            &[Read, Read, Read, Read, Read, Read, ReadWrite, Uniform],
        ),
        &[q, k, v, dout, lse, delta, dq, &u],
        to_u32("attention rows", rows)?,
    )?;
    launch(
        ctx,
        encoder,
        &spec(
            "attention_dkv",
            &[
                Read, Read, Read, Read, Read, Read, ReadWrite, ReadWrite, Uniform,
            ],
        ),
        &[q, k, v, dout, lse, delta, dk, dv, &u],
        to_u32("attention keys", sh.n_kv_heads * sh.s)?,
    )
}

fn check_inputs(q: &[f32], k: &[f32], v: &[f32], sh: AttnShape) -> Result<()> {
    params(sh)?;
    check_len("attention q", q.len(), sh.t * sh.n_heads * sh.head_dim)?;
    check_len("attention k", k.len(), sh.s * sh.n_kv_heads * sh.head_dim)?;
    check_len("attention v", v.len(), sh.s * sh.n_kv_heads * sh.head_dim)
}

/// Attention forward on the GPU: (out, lse). Twin: `attention_forward` (which returns the
/// probabilities instead of lse).
pub async fn attention_forward(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: AttnShape,
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_inputs(q, k, v, sh)?;
    let (qb, kb, vb) = (
        upload(ctx, "q", q)?,
        upload(ctx, "k", k)?,
        upload(ctx, "v", v)?,
    );
    let (ob, lb) = (
        zeros(ctx, "attention out", q.len())?,
        zeros(ctx, "attention lse", sh.n_heads * sh.t)?,
    );
    let mut enc = ctx.encoder();
    encode_attention_forward(ctx, &mut enc, &qb, &kb, &vb, &ob, &lb, sh)?;
    ctx.queue.submit([enc.finish()]);
    Ok((
        read(ctx, &ob, q.len()).await?,
        read(ctx, &lb, sh.n_heads * sh.t).await?,
    ))
}

/// Attention backward on the GPU: (dq, dk, dv). Twin: `attention_backward`.
#[allow(clippy::too_many_arguments)]
pub async fn attention_backward(
    ctx: &GpuContext,
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    sh: AttnShape,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    check_inputs(q, k, v, sh)?;
    check_len("attention dout", dout.len(), q.len())?;
    check_len("attention out", out.len(), q.len())?;
    check_len("attention lse", lse.len(), sh.n_heads * sh.t)?;
    let (qb, kb, vb) = (
        upload(ctx, "q", q)?,
        upload(ctx, "k", k)?,
        upload(ctx, "v", v)?,
    );
    let (db, ob, lb) = (
        upload(ctx, "dout", dout)?,
        upload(ctx, "out", out)?,
        upload(ctx, "lse", lse)?,
    );
    let delta = zeros(ctx, "attention delta", lse.len())?;
    let (dqb, dkb, dvb) = (
        zeros(ctx, "dq", q.len())?,
        zeros(ctx, "dk", k.len())?,
        zeros(ctx, "dv", v.len())?,
    );
    let mut enc = ctx.encoder();
    encode_attention_backward(
        ctx,
        &mut enc,
        &db,
        (&qb, &kb, &vb),
        (&ob, &lb),
        &delta,
        (&dqb, &dkb, &dvb),
        sh,
    )?;
    ctx.queue.submit([enc.finish()]);
    Ok((
        read(ctx, &dqb, q.len()).await?,
        read(ctx, &dkb, k.len()).await?,
        read(ctx, &dvb, v.len()).await?,
    ))
}
