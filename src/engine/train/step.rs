//! The training step: one row forward to its per-row losses and, when it trains, backward
//! to the adapters' gradients, as one command buffer. The forward runs the frozen blocks
//! below the window (from the prefix cache where it can), the window's blocks keeping
//! their activations, the exit, and the fused head on the rows with a target; the
//! backward runs the same steps in reverse: head, exit, then the window's blocks from the
//! top ([`block_backward`]).

use super::{BlockActs, GpuTrainer, Trained};
use crate::engine::block::{
    block_backward, block_forward, Backprop, BlockBufs, BlockGrads, BlockKernels, BlockWeights,
    Keys, LoraGrad, ProjLora, Residual,
};
use crate::engine::weights::read_mapped;
use crate::kernels::ops::cross_entropy::{
    encode_cross_entropy_backward, encode_cross_entropy_forward, target_words, Head,
};
use crate::kernels::ops::embedding::{
    encode_embedding_backward, encode_embedding_forward, Segments,
};
use crate::kernels::ops::lora::{encode_lora_backward, encode_lora_forward, LoraShape};
use crate::kernels::ops::rmsnorm::{encode_rmsnorm_backward, encode_rmsnorm_forward};
use crate::reference::{lora_dropout, Dropout, Proj};
use crate::train::{LossSum, Row};
use crate::{Error, Result};
use std::ops::Range;
use wgpu::{Buffer, CommandEncoder};

/// What a row's pass does after its forward to the losses.
#[derive(Clone, Copy, Debug)]
pub(super) enum RowPass {
    /// Forward only: the span's blocks run as the frozen ones do (no dropout, nothing
    /// kept).
    Eval,
    /// Forward keeping the window's activations, then backward: the gradient of
    /// `grad_scale`·Σ loss, accumulated; LoRA dropout drawn from `dropout_seed` (None: no
    /// dropout).
    Train {
        grad_scale: f64,
        dropout_seed: Option<u64>,
    },
}

impl RowPass {
    fn trains(self) -> bool {
        matches!(self, RowPass::Train { .. })
    }

    fn seed(self) -> Option<u64> {
        match self {
            RowPass::Eval => None,
            RowPass::Train { dropout_seed, .. } => dropout_seed,
        }
    }
}

/// The exit a span ends at: its adapter's A and B, and the adapter's u and output z.
struct Exit<'a> {
    a: &'a Trained,
    b: &'a Trained,
    u: &'a Buffer,
    z: &'a Buffer,
}

impl BlockActs {
    /// The forward's buffers: this set, the projection scratch `o`, and the block's
    /// output `out` (the residual kept: x and h stay for the backward).
    fn bufs<'a>(&'a self, o: &'a Buffer, out: &'a Buffer) -> BlockBufs<'a> {
        BlockBufs {
            x: &self.x,
            n1: &self.n1,
            rstd1: &self.rstd1,
            q: &self.q,
            k: &self.k,
            v: &self.v,
            attn: &self.attn,
            lse: &self.lse,
            n2: &self.n2,
            rstd2: &self.rstd2,
            gate: &self.gate,
            up: &self.up,
            act: &self.act,
            o,
            residual: Residual::Kept { h: &self.h, out },
        }
    }
}

impl GpuTrainer<'_> {
    /// Forward over one row up to the per-row losses; with [`RowPass::Train`], the
    /// backward pass too. Returns the summed loss.
    pub(super) async fn row(&mut self, row: &Row, pass: RowPass) -> Result<LossSum> {
        self.check_row(row)?;
        let n = row.n_targets();
        if n == 0 {
            return Ok(LossSum::default());
        }
        let span = self.current_span();
        self.check_planned(&span, pass.trains())?;
        if pass.trains() {
            self.load_window(span.layers.clone())?;
        }
        let start = span.layers.start;
        self.prefix(&row.tokens, start).await?;
        // Without a backward pass the span's blocks run as the frozen ones do.
        let window = if pass.trains() {
            span.layers.clone()
        } else {
            span.layers.end..span.layers.end
        };
        let t = row.tokens.len();
        self.write_targets(row)?;
        let mut enc = self.ctx.encoder();
        self.frozen_blocks(&mut enc, start..window.start, t)?;
        let exit = self.exit(span.exit)?;
        let seed = pass.seed();

        self.window_forward(&mut enc, window.clone(), t, seed)?;
        let top = self.exit_forward(&mut enc, exit.as_ref(), t)?;
        self.head_forward(&mut enc, top, n)?;
        if let RowPass::Train { grad_scale, .. } = pass {
            self.head_backward(&mut enc, n, grad_scale)?;
            self.exit_backward(&mut enc, exit.as_ref(), t)?;
            self.window_backward(&mut enc, window, t, seed)?;
        }
        self.read_losses(enc, n).await
    }

    /// Only the n rows with a target reach the head: writes their positions (ascending,
    /// so the segments' distinct ids are the positions in order) and their targets.
    fn write_targets(&mut self, row: &Row) -> Result<()> {
        let t = row.tokens.len();
        let (positions, targets): (Vec<u32>, Vec<Option<u32>>) = (0..t as u32)
            .zip(row.targets.iter().copied())
            .filter(|(_, tg)| tg.is_some())
            .unzip();
        let words = target_words(&targets, self.config.vocab)?;
        (self.ctx.queue).write_buffer(&self.s.targets, 0, bytemuck::cast_slice(&words));
        (self.s.head_pos).write(&self.ctx.queue, &Segments::new(&positions)?)
    }

    /// The exit `k` a span ends at, if any.
    fn exit(&self, k: Option<usize>) -> Result<Option<Exit<'_>>> {
        let Some(k) = k else {
            return Ok(None);
        };
        let (_, (ia, ib)) = self
            .exits
            .get(k)
            .ok_or_else(|| Error::Invalid(format!("the GPU trainer has no exit {k}")))?;
        let (u, z) = self
            .exit_bufs
            .as_ref()
            .ok_or_else(|| Error::Invalid("no exit buffers were planned".into()))?;
        Ok(Some(Exit {
            a: &self.trained[*ia],
            b: &self.trained[*ib],
            u,
            z,
        }))
    }

    /// The window's blocks forward from the first input into the final x, each keeping its
    /// activations (an empty window: the input is the final x).
    fn window_forward(
        &self,
        enc: &mut CommandEncoder,
        window: Range<usize>,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let bytes = (t * self.config.hidden * 4) as u64;
        if window.is_empty() {
            enc.copy_buffer_to_buffer(self.input(0), 0, &self.s.y, 0, bytes);
        }
        let nw = window.len();
        for (i, l) in window.enumerate() {
            let a = self.set(i);
            if self.opts.recompute {
                enc.copy_buffer_to_buffer(self.input(i), 0, &a.x, 0, bytes);
            }
            let out = if i + 1 < nw {
                self.input(i + 1)
            } else {
                &self.s.y
            };
            self.block_forward(enc, l, a, out, t, seed)?;
        }
        Ok(())
    }

    /// The exit's adapter on an identity projection: z = y + s·B·A·y, no dropout.
    fn exit_shape(&self, t: usize) -> LoraShape {
        let d = self.config.hidden;
        LoraShape {
            k: d,
            n: d,
            ..self.shape(Proj::Q, t)
        }
    }

    /// What the head reads: the exit's z, or the final x without an exit.
    fn exit_forward<'a>(
        &'a self,
        enc: &mut CommandEncoder,
        exit: Option<&Exit<'a>>,
        t: usize,
    ) -> Result<&'a Buffer> {
        let s = &self.s;
        let Some(e) = exit else {
            return Ok(&s.y);
        };
        let bytes = (t * self.config.hidden * 4) as u64;
        enc.copy_buffer_to_buffer(&s.y, 0, e.z, 0, bytes);
        let ab = (&e.a.param, &e.b.param);
        encode_lora_forward(self.ctx, enc, &s.y, ab, None, e.u, e.z, self.exit_shape(t))?;
        Ok(e.z)
    }

    /// The head on the n rows with a target of `top`: gathered into the spare rows (the
    /// final norm is per row, so it runs on them alone; spare is free until the blocks'
    /// backward), the final norm, and the fused cross-entropy into the per-row losses.
    fn head_forward(&self, enc: &mut CommandEncoder, top: &Buffer, n: usize) -> Result<()> {
        let (ctx, s, c) = (self.ctx, &self.s, &self.config);
        let (d, eps) = (c.hidden, c.norm_eps);
        let (pos, rows, norm) = (&s.head_pos, &s.spare, &self.output_norm);
        encode_embedding_forward(ctx, enc, &pos.uniq, top, rows, n, d)?;
        encode_rmsnorm_forward(ctx, enc, rows, norm, &s.yn, &s.rstd_out, n, d, eps)?;
        encode_cross_entropy_forward(
            ctx,
            enc,
            &self.mm,
            &s.yn,
            &self.head(),
            &s.targets,
            (&s.ce_scratch, &s.ce_stats),
            (&s.loss, &s.ce_lse),
            n,
        )
    }

    /// The head's backward: d(grad_scale·Σ loss) through the cross-entropy and the final
    /// norm, scattered back to the rows' positions into `s.dx` (the other rows' gradient
    /// stays 0).
    fn head_backward(&self, enc: &mut CommandEncoder, n: usize, grad_scale: f64) -> Result<()> {
        let (ctx, s, d) = (self.ctx, &self.s, self.config.hidden);
        let rows_bytes = Some((n * d * 4) as u64);
        enc.clear_buffer(&s.dn, 0, rows_bytes);
        enc.clear_buffer(&s.dx, 0, None);
        // d(grad_scale·Σ loss) = d(mean loss)·grad_scale·n; dtmp is free until the
        // blocks' backward.
        encode_cross_entropy_backward(
            ctx,
            enc,
            &self.mm,
            &s.yn,
            &self.head(),
            (&s.targets, &s.ce_lse),
            (&s.ce_scratch, &s.dtmp),
            &s.dn,
            n,
            ((grad_scale * n as f64) as f32, n),
        )?;
        enc.clear_buffer(&s.dtmp, 0, rows_bytes);
        let (rows, norm, rstd) = (&s.spare, &self.output_norm, &s.rstd_out);
        encode_rmsnorm_backward(ctx, enc, &s.dn, rows, norm, rstd, &s.dtmp, None, n, d)?;
        encode_embedding_backward(ctx, enc, &s.dtmp, &s.head_pos, &s.dx, d)
    }

    /// The exit's backward: dy = dz + the adapter's input gradient (dz read from a copy),
    /// dA and dB accumulated.
    fn exit_backward(
        &self,
        enc: &mut CommandEncoder,
        exit: Option<&Exit<'_>>,
        t: usize,
    ) -> Result<()> {
        let Some(e) = exit else {
            return Ok(());
        };
        let s = &self.s;
        let bytes = (t * self.config.hidden * 4) as u64;
        enc.copy_buffer_to_buffer(&s.dx, 0, &s.dn, 0, bytes);
        encode_lora_backward(
            self.ctx,
            enc,
            &s.dn,
            (&s.y, e.u),
            (&e.a.param, &e.b.param),
            None,
            &s.du,
            (&s.dx, &e.a.grad, &e.b.grad),
            self.exit_shape(t),
        )
    }

    /// The window's blocks backward from the top (each recomputed first with
    /// `recompute`), `s.dx` carrying the gradient down.
    fn window_backward(
        &self,
        enc: &mut CommandEncoder,
        window: Range<usize>,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let bytes = (t * self.config.hidden * 4) as u64;
        for (i, l) in window.enumerate().rev() {
            let a = self.set(i);
            if self.opts.recompute {
                enc.copy_buffer_to_buffer(self.input(i), 0, &a.x, 0, bytes);
                self.block_forward(enc, l, a, &self.s.spare, t, seed)?;
            }
            self.block_backward(enc, l, a, t, seed)?;
        }
        Ok(())
    }

    /// Submits `enc` with the n losses' readback and sums them.
    async fn read_losses(&self, mut enc: CommandEncoder, n: usize) -> Result<LossSum> {
        let (ctx, s) = (self.ctx, &self.s);
        enc.copy_buffer_to_buffer(&s.loss, 0, &s.loss_read, 0, (n * 4) as u64);
        ctx.queue.submit([enc.finish()]);
        let losses = read_mapped(ctx, &s.loss_read, (n * 4) as u64).await?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        if !sum.is_finite() {
            return Err(Error::Invalid(format!(
                "the loss of a row is {sum} (diverged?)"
            )));
        }
        Ok(LossSum { sum, count: n })
    }

    fn kernels(&self) -> BlockKernels<'_> {
        BlockKernels {
            ctx: self.ctx,
            mm: &self.mm,
            config: &self.config,
            rope: &self.rope,
        }
    }

    fn shape(&self, p: Proj, t: usize) -> LoraShape {
        let (k, n) = p.shape(&self.config);
        LoraShape {
            m: t,
            k,
            n,
            rank: self.lora_config.rank,
            scale: self.lora_config.alpha / self.lora_config.rank as f32,
        }
    }

    fn dropout(&self, seed: Option<u64>, l: usize, p: Proj) -> Option<Dropout> {
        seed.and_then(|s| lora_dropout(s, l, p, self.lora_config.dropout))
    }

    /// Block `l`'s adapter on projection `p` (its u kept in `a`) on t rows, with its A
    /// and B, if the projection is targeted.
    fn proj_lora<'a>(
        &'a self,
        (l, p): (usize, Proj),
        a: &'a BlockActs,
        t: usize,
        seed: Option<u64>,
    ) -> Option<(ProjLora<'a>, &'a Trained, &'a Trained)> {
        let ((ia, ib), u) = (self.pairs[l][p.index()]?, a.u[p.index()].as_ref()?);
        let (ta, tb) = (&self.trained[ia], &self.trained[ib]);
        let lora = ProjLora {
            ab: (&ta.param, &tb.param),
            drop: self.dropout(seed, l, p).map(|d| (d, &self.s.drop)),
            u,
            shape: self.shape(p, t),
        };
        Some((lora, ta, tb))
    }

    /// Block `l` forward on t rows from `a.x` into `out`, keeping its activations in `a`.
    pub(super) fn block_forward(
        &self,
        enc: &mut CommandEncoder,
        l: usize,
        a: &BlockActs,
        out: &Buffer,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let w: &BlockWeights = self.block(l)?;
        let lora = |p: Proj| self.proj_lora((l, p), a, t, seed).map(|(lora, _, _)| lora);
        let bufs = a.bufs(&self.s.o, out);
        block_forward(&self.kernels(), enc, w, &lora, &bufs, Keys::Rows, t)
    }

    /// Block `l` backward: `s.dx` holds the gradient of the block's output and receives
    /// the gradient of its input.
    fn block_backward(
        &self,
        enc: &mut CommandEncoder,
        l: usize,
        a: &BlockActs,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let s = &self.s;
        let lora = |p: Proj| {
            let (lora, ta, tb) = self.proj_lora((l, p), a, t, seed)?;
            Some(LoraGrad {
                lora,
                da: &ta.grad,
                db: &tb.grad,
            })
        };
        let observe = |enc: &mut CommandEncoder, p: Proj, dy: &Buffer, x: &Buffer| {
            self.observe_grad(enc, (l, p), (dy, x), t)
        };
        let bp = Backprop {
            lora: &lora,
            observe: &observe,
        };
        let grads = BlockGrads {
            dx: &s.dx,
            dn: &s.dn,
            dtmp: &s.dtmp,
            dact: &s.dact,
            dgate: &s.dgate,
            dup: &s.dup,
            dattn: &s.dattn,
            dq: &s.dq,
            dk: &s.dk,
            dv: &s.dv,
            delta: &s.delta,
            du: &s.du,
        };
        // The backward reads the kept activations, not the block's output.
        let bufs = a.bufs(&s.o, &s.spare);
        block_backward(&self.kernels(), enc, self.block(l)?, &bp, &bufs, &grads, t)
    }

    pub(super) fn head(&self) -> Head<'_> {
        Head {
            chunks: &self.head,
            vocab: self.config.vocab,
            d: self.config.hidden,
        }
    }

    /// The acts set of the span's `i`-th block.
    pub(super) fn set(&self, i: usize) -> &BlockActs {
        if self.opts.recompute {
            &self.acts[0]
        } else {
            &self.acts[i]
        }
    }

    /// Where the span's `i`-th block's input is kept.
    pub(super) fn input(&self, i: usize) -> &Buffer {
        if self.opts.recompute {
            &self.inputs[i]
        } else {
            &self.acts[i].x
        }
    }

    /// The embedding rows of `tokens`, written into `x`.
    pub(super) fn write_embedding(&self, tokens: &[u32], x: &Buffer) -> Result<()> {
        let rows = self.gather.cpu_rows(tokens, self.config.hidden)?;
        self.ctx
            .queue
            .write_buffer(x, 0, bytemuck::cast_slice(&rows));
        Ok(())
    }

    /// Writes the hidden state entering block `start` into the first input: from the
    /// prefix cache where valid (extended by the frozen blocks it lacks), else from the
    /// embeddings through the frozen blocks; a state computed here is read back into the
    /// cache when it has room.
    async fn prefix(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        let ctx = self.ctx;
        let bytes = (tokens.len() * self.config.hidden * 4) as u64;
        let cached = if start > 0 {
            self.cache.lookup(tokens, start, &self.versions)
        } else {
            None
        };
        let from = match cached {
            Some((depth, x)) => {
                let x0 = self.input(0);
                ctx.queue.write_buffer(x0, 0, bytemuck::cast_slice(&x));
                depth
            }
            None => {
                self.write_embedding(tokens, self.input(0))?;
                0
            }
        };
        if from == start {
            return Ok(());
        }
        let mut enc = ctx.encoder();
        self.frozen_blocks(&mut enc, from..start, tokens.len())?;
        let keep = (self.prefix_read.as_ref()).filter(|_| self.cache.has_room(tokens, bytes));
        if let Some(rb) = keep {
            enc.copy_buffer_to_buffer(self.input(0), 0, rb, 0, bytes);
        }
        ctx.queue.submit([enc.finish()]);
        if let Some(rb) = keep {
            let x = read_mapped(ctx, rb, bytes).await?;
            self.cache.store(tokens, start, &self.versions, &x);
        }
        Ok(())
    }

    /// Runs blocks `blocks` frozen (nothing kept, no dropout) in place in the first input,
    /// through the first activation set: from a window slot holding the block, else
    /// through the stream slot (which may submit `enc` and replace it).
    pub(super) fn frozen_blocks(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        blocks: std::ops::Range<usize>,
        t: usize,
    ) -> Result<()> {
        let bytes = (t * self.config.hidden * 4) as u64;
        for l in blocks {
            self.stream_block(enc, l)?;
            let a = self.set(0);
            if self.opts.recompute {
                enc.copy_buffer_to_buffer(self.input(0), 0, &a.x, 0, bytes);
            }
            self.block_forward(enc, l, a, self.input(0), t, None)?;
        }
        Ok(())
    }
}
