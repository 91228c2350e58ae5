//! AdamW with global gradient-norm clipping: the squared norm over every gradient buffer
//! (reduce.wgsl, two passes), then one update dispatch per tensor that scales its gradient
//! by the clipping factor read on the GPU. Shader: shaders/adamw.wgsl. CPU twins:
//! [`crate::reference::optim::clip_grad_norm`], [`crate::reference::optim::adamw_step`].

use super::reduce::{encode_sum_partials, encode_sumsq_partial, sumsq_partials};
use super::{check_len, groups, launch, read, to_u32, upload, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::reference::optim::AdamW;
use crate::{Error, Result};

const SPEC: KernelSpec<'static> = KernelSpec {
    name: "adamw",
    source: include_str!("../../../shaders/adamw.wgsl"),
    entry: "adamw",
    binds: &[
        Bind::ReadWrite,
        Bind::Read,
        Bind::ReadWrite,
        Bind::ReadWrite,
        Bind::Read,
        Bind::Uniform,
    ],
    constants: &[],
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step: f32,
    bc2_sqrt: f32,
    max_norm: f32,
}

/// One trained tensor's buffers: parameter, gradient and the two moments, n f32 each.
#[derive(Clone, Copy, Debug)]
pub struct Slot<'a> {
    pub param: &'a wgpu::Buffer,
    pub grad: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub n: usize,
}

/// Scratch words [`encode_grad_norm2`] needs for `lens` gradient sizes.
pub fn norm_scratch_len(lens: impl IntoIterator<Item = usize>) -> usize {
    lens.into_iter().map(sumsq_partials).sum::<usize>().max(1)
}

/// Records norm2[0] = Σ g² over the gradients (two passes, `partials` of
/// [`norm_scratch_len`] words).
pub fn encode_grad_norm2(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    grads: &[(&wgpu::Buffer, usize)],
    partials: &wgpu::Buffer,
    norm2: &wgpu::Buffer,
) -> Result<()> {
    let mut off = 0;
    for &(g, n) in grads {
        encode_sumsq_partial(ctx, encoder, g, n, partials, off)?;
        off += sumsq_partials(n);
    }
    encode_sum_partials(ctx, encoder, partials, off, norm2, 0)
}

/// Records AdamW step `t` (from 1) on every slot, clipping the gradients to a global norm
/// of `max_norm` when given (`norm2` from [`encode_grad_norm2`]; ignored otherwise).
pub fn encode_adamw(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    slots: &[Slot<'_>],
    norm2: &wgpu::Buffer,
    cfg: &AdamW,
    t: u64,
    max_norm: Option<f32>,
) -> Result<()> {
    if t == 0 {
        return Err(Error::Invalid("adamw: steps count from 1".into()));
    }
    let (bc1, bc2) = cfg.bias_corrections(t);
    for s in slots {
        let p = Params {
            n: to_u32("adamw n", s.n)?,
            beta1: cfg.beta1 as f32,
            beta2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            decay: (1.0 - cfg.lr * cfg.weight_decay) as f32,
            step: (cfg.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            max_norm: max_norm.unwrap_or(0.0),
        };
        let u = ctx.uniform("adamw params", &p);
        launch(
            ctx,
            encoder,
            &SPEC,
            &[s.param, s.grad, s.m, s.v, norm2, &u],
            groups("adamw", s.n, WG)?,
        )?;
    }
    Ok(())
}

/// The state of one tensor on the CPU side of [`adamw_step`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub param: Vec<f32>,
    pub grad: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// One clipped AdamW step on the GPU over several tensors: returns the updated tensors
/// (grad unchanged) and the gradient norm before clipping. Twin: `clip_grad_norm` then
/// `adamw_step` per tensor.
pub async fn adamw_step(
    ctx: &GpuContext,
    tensors: &[Tensor],
    cfg: &AdamW,
    t: u64,
    max_norm: Option<f32>,
) -> Result<(Vec<Tensor>, f32)> {
    let mut bufs = Vec::new();
    for (i, x) in tensors.iter().enumerate() {
        let n = x.param.len();
        for (what, len) in [("grad", x.grad.len()), ("m", x.m.len()), ("v", x.v.len())] {
            check_len(&format!("adamw tensor {i} {what}"), len, n)?;
        }
        bufs.push([
            upload(ctx, "param", &x.param)?,
            upload(ctx, "grad", &x.grad)?,
            upload(ctx, "m", &x.m)?,
            upload(ctx, "v", &x.v)?,
        ]);
    }
    let partials = zeros(
        ctx,
        "norm partials",
        norm_scratch_len(tensors.iter().map(|x| x.param.len())),
    )?;
    let norm2 = zeros(ctx, "norm2", 1)?;
    let slots: Vec<Slot<'_>> = bufs
        .iter()
        .zip(tensors)
        .map(|(b, x)| Slot {
            param: &b[0],
            grad: &b[1],
            m: &b[2],
            v: &b[3],
            n: x.param.len(),
        })
        .collect();
    let grads: Vec<(&wgpu::Buffer, usize)> = slots.iter().map(|s| (s.grad, s.n)).collect();
    let mut enc = ctx.encoder();
    encode_grad_norm2(ctx, &mut enc, &grads, &partials, &norm2)?;
    encode_adamw(ctx, &mut enc, &slots, &norm2, cfg, t, max_norm)?;
    ctx.queue.submit([enc.finish()]);
    let mut out = Vec::with_capacity(tensors.len());
    for (b, x) in bufs.iter().zip(tensors) {
        let n = x.param.len();
        out.push(Tensor {
            param: read(ctx, &b[0], n).await?,
            grad: x.grad.clone(),
            m: read(ctx, &b[2], n).await?,
            v: read(ctx, &b[3], n).await?,
        });
    }
    let norm = read(ctx, &norm2, 1).await?[0].sqrt();
    Ok((out, norm))
}
