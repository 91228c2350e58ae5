//! One LLaMA transformer block on the GPU, forward and backward, shared by inference
//! ([`GpuModel`](super::GpuModel): a KV cache, the residual updated in place) and training
//! ([`GpuTrainer`](super::GpuTrainer): every activation the backward reads kept), so both
//! dispatch the same kernels in the same order with the same arguments.
//!
//! Forward, on t rows:
//!   n1 = rmsnorm(x); q, k, v = n1·Wᵀ (+ LoRA); RoPE on q and k; [k, v into the cache];
//!   attn = attention(q, k, v); h = x + attn·Woᵀ (+ LoRA);
//!   n2 = rmsnorm(h); gate, up = n2·Wᵀ (+ LoRA); act = swiglu(gate, up);
//!   out = h + act·Wdᵀ (+ LoRA).
//! The backward walks the same steps in reverse ([`block_backward`]).

use crate::kernels::context::GpuContext;
use crate::kernels::ops::attention::{encode_attention_backward, encode_attention_forward};
use crate::kernels::ops::lora::{encode_lora_backward, encode_lora_forward, LoraShape};
use crate::kernels::ops::reduce::encode_col_sums_add;
use crate::kernels::ops::rmsnorm::{encode_rmsnorm_backward, encode_rmsnorm_forward};
use crate::kernels::ops::rope::{encode_rope, RopeTable};
use crate::kernels::ops::swiglu::{encode_swiglu_backward, encode_swiglu_forward};
use crate::kernels::qmatmul::QMatmul;
use crate::kernels::weights::FrozenWeight;
use crate::model::LlamaConfig;
use crate::reference::ops::AttnShape;
use crate::reference::{Dropout, Proj};
use crate::Result;
use wgpu::{Buffer, CommandEncoder};

/// What every block of a model reads besides its own weights.
pub(crate) struct BlockKernels<'a> {
    pub ctx: &'a GpuContext,
    pub mm: &'a QMatmul,
    pub config: &'a LlamaConfig,
    pub rope: &'a RopeTable,
}

/// One block's frozen weights as the kernels read them.
pub(crate) struct BlockWeights {
    pub attn_norm: Buffer,
    pub ffn_norm: Buffer,
    /// In [`Proj`] order.
    pub w: Vec<FrozenWeight>,
}

/// A projection's LoRA term: y += s·drop(x)·Aᵀ·Bᵀ, with u = drop(x)·Aᵀ written.
pub(crate) struct ProjLora<'a> {
    pub ab: (&'a Buffer, &'a Buffer),
    /// The dropout mask's parameters and the scratch its kernel uses.
    pub drop: Option<(Dropout, &'a Buffer)>,
    pub u: &'a Buffer,
    pub shape: LoraShape,
}

/// A trained projection's LoRA term and the gradients of A and B, accumulated.
pub(crate) struct LoraGrad<'a> {
    pub lora: ProjLora<'a>,
    pub da: &'a Buffer,
    pub db: &'a Buffer,
}

/// The residual stream of a block's forward.
pub(crate) enum Residual<'a> {
    /// Updated in place in x (inference: nothing is kept).
    InPlace,
    /// x + attention into `h` and h + ffn into `out`, so x and h stay for the backward.
    Kept { h: &'a Buffer, out: &'a Buffer },
}

/// Where a block's forward reads and writes (t rows each; `o` is projection scratch).
pub(crate) struct BlockBufs<'a> {
    pub x: &'a Buffer,
    pub n1: &'a Buffer,
    pub rstd1: &'a Buffer,
    pub q: &'a Buffer,
    pub k: &'a Buffer,
    pub v: &'a Buffer,
    pub attn: &'a Buffer,
    pub lse: &'a Buffer,
    pub n2: &'a Buffer,
    pub rstd2: &'a Buffer,
    pub gate: &'a Buffer,
    pub up: &'a Buffer,
    pub act: &'a Buffer,
    pub o: &'a Buffer,
    pub residual: Residual<'a>,
}

impl BlockBufs<'_> {
    /// x + attention: `h`, or x itself in place.
    fn h(&self) -> &Buffer {
        match self.residual {
            Residual::InPlace => self.x,
            Residual::Kept { h, .. } => h,
        }
    }

    /// The block's output: `out`, or x itself in place.
    fn out(&self) -> &Buffer {
        match self.residual {
            Residual::InPlace => self.x,
            Residual::Kept { out, .. } => out,
        }
    }
}

/// The keys and values attention reads.
pub(crate) enum Keys<'a> {
    /// The t rows' own, at positions 0.. (training).
    Rows,
    /// A KV cache: k and v are written into it at `pos0`, and attention reads its
    /// pos0 + t positions (inference).
    Cache {
        k: &'a Buffer,
        v: &'a Buffer,
        pos0: usize,
    },
}

/// The gradient buffers of a block's backward (t rows each).
pub(crate) struct BlockGrads<'a> {
    /// In: the gradient of the block's output; out: that of its input.
    pub dx: &'a Buffer,
    pub dn: &'a Buffer,
    /// A projection's input gradient before it is added to another's.
    pub dtmp: &'a Buffer,
    pub dact: &'a Buffer,
    pub dgate: &'a Buffer,
    pub dup: &'a Buffer,
    pub dattn: &'a Buffer,
    pub dq: &'a Buffer,
    pub dk: &'a Buffer,
    pub dv: &'a Buffer,
    pub delta: &'a Buffer,
    pub du: &'a Buffer,
}

/// A projection's adapter, if it has one (None: the frozen weight alone).
pub(crate) type LoraOf<'a> = &'a dyn Fn(Proj) -> Option<ProjLora<'a>>;

/// What a block's backward asks of its caller per projection.
pub(crate) struct Backprop<'a> {
    /// The projection's trained adapter with its gradients, if it has one.
    pub lora: &'a dyn Fn(Proj) -> Option<LoraGrad<'a>>,
    /// Sees each projection's (dy, x) before its input gradient (the profiling trainer's
    /// Fisher statistics of the base weight's gradient dyᵀ·x).
    pub observe: &'a dyn Fn(&mut CommandEncoder, Proj, &Buffer, &Buffer) -> Result<()>,
}

fn attn_shape(c: &LlamaConfig, t: usize, s: usize) -> AttnShape {
    AttnShape {
        t,
        s,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    }
}

/// y = x·Wᵀ (+ the LoRA term).
pub(crate) fn proj_forward(
    k: &BlockKernels<'_>,
    enc: &mut CommandEncoder,
    w: &FrozenWeight,
    lora: Option<ProjLora<'_>>,
    (x, y): (&Buffer, &Buffer),
    t: usize,
) -> Result<()> {
    w.encode_nt(k.mm, k.ctx, enc, x, y, t)?;
    if let Some(lo) = lora {
        encode_lora_forward(k.ctx, enc, x, lo.ab, lo.drop, lo.u, y, lo.shape)?;
    }
    Ok(())
}

/// dx (+)= dy·W (`acc`: added through `g.dtmp`, else written), then the LoRA term's:
/// dx += its input gradient, dA and dB accumulated.
#[allow(clippy::too_many_arguments)]
fn proj_backward(
    k: &BlockKernels<'_>,
    enc: &mut CommandEncoder,
    (w, p): (&FrozenWeight, Proj),
    bp: &Backprop<'_>,
    g: &BlockGrads<'_>,
    (dy, x): (&Buffer, &Buffer),
    (dx, acc): (&Buffer, bool),
    t: usize,
) -> Result<()> {
    let ctx = k.ctx;
    (bp.observe)(enc, p, dy, x)?;
    if acc {
        let cols = p.shape(k.config).0;
        w.encode_nn(k.mm, ctx, enc, dy, g.dtmp, t)?;
        encode_col_sums_add(ctx, enc, g.dtmp, 1, t * cols, dx)?;
    } else {
        w.encode_nn(k.mm, ctx, enc, dy, dx, t)?;
    }
    if let Some(lg) = (bp.lora)(p) {
        let lo = lg.lora;
        let grads = (dx, lg.da, lg.db);
        encode_lora_backward(
            ctx,
            enc,
            dy,
            (x, lo.u),
            lo.ab,
            lo.drop,
            g.du,
            grads,
            lo.shape,
        )?;
    }
    Ok(())
}

/// `to` = `from` + y (in place when they are the same buffer), as a one-row column sum.
fn add_residual(
    k: &BlockKernels<'_>,
    enc: &mut CommandEncoder,
    (from, to): (&Buffer, &Buffer),
    y: &Buffer,
    n: usize,
    in_place: bool,
) -> Result<()> {
    if !in_place {
        enc.copy_buffer_to_buffer(from, 0, to, 0, (n * 4) as u64);
    }
    encode_col_sums_add(k.ctx, enc, y, 1, n, to)
}

/// One block's forward on t rows, from `a.x` into its output.
pub(crate) fn block_forward(
    k: &BlockKernels<'_>,
    enc: &mut CommandEncoder,
    w: &BlockWeights,
    lora: LoraOf<'_>,
    a: &BlockBufs<'_>,
    keys: Keys<'_>,
    t: usize,
) -> Result<()> {
    let (ctx, c) = (k.ctx, k.config);
    let (d, eps, style) = (c.hidden, c.norm_eps, c.rope_style);
    let in_place = matches!(a.residual, Residual::InPlace);
    let proj = |enc: &mut CommandEncoder, p: Proj, x: &Buffer, y: &Buffer| {
        proj_forward(k, enc, &w.w[p.index()], lora(p), (x, y), t)
    };

    // Attention: h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))), n1 = norm(x).
    encode_rmsnorm_forward(ctx, enc, a.x, &w.attn_norm, a.n1, a.rstd1, t, d, eps)?;
    proj(enc, Proj::Q, a.n1, a.q)?;
    proj(enc, Proj::K, a.n1, a.k)?;
    proj(enc, Proj::V, a.n1, a.v)?;
    let pos0 = match keys {
        Keys::Rows => 0,
        Keys::Cache { pos0, .. } => pos0,
    };
    encode_rope(ctx, enc, a.q, k.rope, t, c.n_heads, pos0, style, false)?;
    encode_rope(ctx, enc, a.k, k.rope, t, c.n_kv_heads, pos0, style, false)?;
    let (keys_k, keys_v) = match keys {
        Keys::Rows => (a.k, a.v),
        Keys::Cache { k: kc, v: vc, pos0 } => {
            let kv = c.kv_dim();
            let (off, bytes) = ((pos0 * kv * 4) as u64, (t * kv * 4) as u64);
            enc.copy_buffer_to_buffer(a.k, 0, kc, off, bytes);
            enc.copy_buffer_to_buffer(a.v, 0, vc, off, bytes);
            (kc, vc)
        }
    };
    let sh = attn_shape(c, t, pos0 + t);
    encode_attention_forward(ctx, enc, a.q, keys_k, keys_v, a.attn, a.lse, sh)?;
    proj(enc, Proj::O, a.attn, a.o)?;
    add_residual(k, enc, (a.x, a.h()), a.o, t * d, in_place)?;

    // Feed-forward: out = h + down(swiglu(gate(n2), up(n2))), n2 = norm(h).
    encode_rmsnorm_forward(ctx, enc, a.h(), &w.ffn_norm, a.n2, a.rstd2, t, d, eps)?;
    proj(enc, Proj::Gate, a.n2, a.gate)?;
    proj(enc, Proj::Up, a.n2, a.up)?;
    encode_swiglu_forward(ctx, enc, a.gate, a.up, a.act, t * c.ffn)?;
    proj(enc, Proj::Down, a.act, a.o)?;
    add_residual(k, enc, (a.h(), a.out()), a.o, t * d, in_place)
}

/// One block's backward on t rows (its forward's activations `a`, kept: self-attention
/// over the rows, the residual kept): the forward's steps in reverse. `g.dx` holds the
/// gradient of the block's output and receives that of its input.
pub(crate) fn block_backward(
    k: &BlockKernels<'_>,
    enc: &mut CommandEncoder,
    w: &BlockWeights,
    bp: &Backprop<'_>,
    a: &BlockBufs<'_>,
    g: &BlockGrads<'_>,
    t: usize,
) -> Result<()> {
    let (ctx, c) = (k.ctx, k.config);
    let (d, style) = (c.hidden, c.rope_style);
    let proj = |enc: &mut CommandEncoder, p: Proj, dy_x: (&Buffer, &Buffer), dx_acc| {
        proj_backward(k, enc, (&w.w[p.index()], p), bp, g, dy_x, dx_acc, t)
    };

    // Feed-forward, out = h + down(act): dh = dout + ∂ffn.
    proj(enc, Proj::Down, (g.dx, a.act), (g.dact, false))?;
    encode_swiglu_backward(ctx, enc, g.dact, a.gate, a.up, g.dgate, g.dup, t * c.ffn)?;
    proj(enc, Proj::Gate, (g.dgate, a.n2), (g.dn, false))?;
    proj(enc, Proj::Up, (g.dup, a.n2), (g.dn, true))?;
    let (h, fnorm) = (a.h(), &w.ffn_norm);
    encode_rmsnorm_backward(ctx, enc, g.dn, h, fnorm, a.rstd2, g.dx, None, t, d)?;

    // Attention, h = x + o(attn): dx = dh + ∂attention.
    proj(enc, Proj::O, (g.dx, a.attn), (g.dattn, false))?;
    encode_attention_backward(
        ctx,
        enc,
        g.dattn,
        (a.q, a.k, a.v),
        (a.attn, a.lse),
        g.delta,
        (g.dq, g.dk, g.dv),
        attn_shape(c, t, t),
    )?;
    encode_rope(ctx, enc, g.dq, k.rope, t, c.n_heads, 0, style, true)?;
    encode_rope(ctx, enc, g.dk, k.rope, t, c.n_kv_heads, 0, style, true)?;
    proj(enc, Proj::Q, (g.dq, a.n1), (g.dn, false))?;
    proj(enc, Proj::K, (g.dk, a.n1), (g.dn, true))?;
    proj(enc, Proj::V, (g.dv, a.n1), (g.dn, true))?;
    let anorm = &w.attn_norm;
    encode_rmsnorm_backward(ctx, enc, g.dn, a.x, anorm, a.rstd1, g.dx, None, t, d)
}
