//! The calibration statistics of compression, measured by a profiling trainer
//! ([`GpuTrainer::for_statistics`]): the Hessians XᵀX of every block's projection inputs
//! (forward only) or the diagonal empirical Fisher of every projection's base weights
//! (forward and backward, through the backward's `observe` hook).

use super::step::RowPass;
use super::Alloc;
use super::{GpuTrainer, TrainOptions};
use crate::engine::plan::{Category, MemoryPlan};
use crate::engine::weights::{read_mapped, PROJ_NAMES};
use crate::kernels::context::GpuContext;
use crate::kernels::ops::stats::{encode_fisher_acc, encode_gram_acc};
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::stats::Hessian;
use crate::reference::stats::{BlockFisher, LayerHessians};
use crate::reference::{Lora, LoraConfig, Proj};
use crate::train::prefix::default_span;
use crate::train::Row;
use crate::{Error, Result};

/// The calibration statistics a profiling trainer ([`GpuTrainer::for_statistics`])
/// accumulates: one kind per trainer, so a tab never holds both sets (for SmolLM2-135M,
/// 402 MB of Hessians and 425 MB of Fisher diagonal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsPass {
    /// XᵀX of each block's four projection inputs (n1, attn, n2, act), forward only.
    Hessians,
    /// The mean squared base-weight gradient of each projection (forward and backward).
    Fisher,
}

impl StatsPass {
    /// The options of a profiling trainer for rows of up to `seq_len` tokens: the Hessian
    /// pass runs its blocks through one activation set (no backward needs the others);
    /// the Fisher pass keeps every block's activations (no second forward).
    pub fn options(self, seq_len: usize) -> TrainOptions {
        TrainOptions {
            seq_len,
            recompute: self == StatsPass::Hessians,
            ..TrainOptions::default()
        }
    }

    /// Per block, each statistics matrix as (label, rows, cols): the Hessians of n1, attn,
    /// n2 and act (k×k), or each projection's Fisher diagonal (n×k, [`Proj::ALL`] order).
    pub(super) fn matrices(self, c: &LlamaConfig) -> Vec<(String, usize, usize)> {
        match self {
            StatsPass::Hessians => [
                ("n1", c.hidden),
                ("attn", c.q_dim()),
                ("n2", c.hidden),
                ("act", c.ffn),
            ]
            .into_iter()
            .map(|(name, k)| (format!("hessian {name}"), k, k))
            .collect(),
            StatsPass::Fisher => Proj::ALL
                .iter()
                .map(|p| {
                    let (k, n) = p.shape(c);
                    (format!("fisher {}", PROJ_NAMES[p.index()]), n, k)
                })
                .collect(),
        }
    }
}

impl StatsPass {
    /// One f32 buffer per statistics matrix and block, and their readback buffer (as
    /// [`Stats::alloc`] allocates them).
    pub(super) fn plan(self, plan: &mut MemoryPlan, c: &LlamaConfig) {
        let mats = self.matrices(c);
        for l in 0..c.n_layers {
            for (name, rows, cols) in &mats {
                let label = format!("block {l} {name}");
                plan.storage(label, Category::Statistics, (rows * cols) as u64 * 4);
            }
        }
        let largest = mats.iter().map(|m| m.1 * m.2).max().unwrap_or(1);
        plan.other(
            "statistics readback",
            Category::Readback,
            largest as u64 * 4,
        );
    }
}

/// A profiling trainer's statistics: per block, the matrices of [`StatsPass::matrices`],
/// and one readback buffer as large as the largest.
pub(super) struct Stats {
    pub(super) pass: StatsPass,
    pub(super) mats: Vec<Vec<wgpu::Buffer>>,
    pub(super) read: wgpu::Buffer,
    /// The Fisher pass's weight per row (1 / the rows with a target).
    pub(super) scale: f32,
}

impl Stats {
    /// One zeroed f32 buffer per statistics matrix of `pass` and block, and the readback
    /// buffer.
    pub(super) fn alloc(alloc: &mut Alloc<'_>, c: &LlamaConfig, pass: StatsPass) -> Result<Self> {
        let mats = pass.matrices(c);
        let mut per_block = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let mut bufs = Vec::with_capacity(mats.len());
            for (name, rows, cols) in &mats {
                bufs.push(alloc.zeros(&format!("block {l} {name}"), rows * cols)?);
            }
            per_block.push(bufs);
        }
        let largest = mats.iter().map(|m| m.1 * m.2).max().unwrap_or(1);
        let read = alloc.readback("statistics readback", (largest * 4) as u64);
        Ok(Stats {
            pass,
            mats: per_block,
            read,
            scale: 1.0,
        })
    }
}

impl<'c> GpuTrainer<'c> {
    /// The adapter of a profiling trainer: rank 1 on q, no dropout, B = 0, so the model
    /// computes exactly the base model's outputs and base-weight gradients (the trainer
    /// needs some adapter; this is the smallest).
    pub(super) fn stats_lora(c: &LlamaConfig) -> Lora<f32> {
        let lc = LoraConfig {
            rank: 1,
            alpha: 1.0,
            dropout: 0.0,
            targets: vec![Proj::Q],
        };
        Lora::new(c, lc, 0)
    }

    /// A trainer that measures calibration statistics for profiling
    /// ([`GpuTrainer::collect_hessians`] or [`GpuTrainer::fisher_diagonal`], by `pass`)
    /// instead of training; planned as [`GpuTrainer::plan_statistics`].
    pub fn for_statistics(
        ctx: &'c GpuContext,
        file: &ModelFile,
        pass: StatsPass,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let lora = Self::stats_lora(&file.config);
        let all = default_span(file.config.n_layers, &[]);
        Self::build(ctx, file, &lora, opts, &[all], Some(pass))
    }

    /// This profiling trainer's statistics, zeroed, if it was built for `pass`.
    fn start_stats(&mut self, pass: StatsPass) -> Result<&mut Stats> {
        let ctx = self.ctx;
        let st = (self.stats.as_mut().filter(|s| s.pass == pass)).ok_or_else(|| {
            Error::Invalid(format!(
                "this GPU trainer does not collect {pass:?} statistics: build it with \
                 GpuTrainer::for_statistics"
            ))
        })?;
        let mut enc = ctx.encoder();
        for b in st.mats.iter().flatten() {
            enc.clear_buffer(b, 0, None);
        }
        ctx.queue.submit([enc.finish()]);
        Ok(st)
    }

    /// Every statistics matrix, read back block by block.
    async fn read_stats(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        let ctx = self.ctx;
        let st = (self.stats.as_ref()).ok_or_else(|| Error::Invalid("no statistics".into()))?;
        let mut out = Vec::with_capacity(st.mats.len());
        for block in &st.mats {
            let mut mats = Vec::with_capacity(block.len());
            for b in block {
                let mut enc = ctx.encoder();
                enc.copy_buffer_to_buffer(b, 0, &st.read, 0, b.size());
                ctx.queue.submit([enc.finish()]);
                mats.push(read_mapped(ctx, &st.read, b.size()).await?);
            }
            out.push(mats);
        }
        Ok(out)
    }

    /// XᵀX of every block's projection inputs over `rows` (one forward per row without
    /// dropout, through every block and no head), as the CPU's
    /// [`crate::compress::calibration::collect_hessians`] sums them. `progress(done, total)`
    /// counts rows the GPU has finished.
    pub async fn collect_hessians(
        &mut self,
        rows: &[Row],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<LayerHessians>> {
        for row in rows {
            self.check_row(row)?;
        }
        self.start_stats(StatsPass::Hessians)?;
        let (ctx, c) = (self.ctx, &self.config);
        let st = (self.stats.as_ref()).ok_or_else(|| Error::Invalid("no statistics".into()))?;
        let ks = [c.hidden, c.q_dim(), c.hidden, c.ffn];
        let mut tokens = 0;
        for (i, row) in rows.iter().enumerate() {
            let t = row.tokens.len();
            let x0 = self.input(0);
            self.write_embedding(&row.tokens, x0)?;
            let a = self.set(0);
            let mut enc = ctx.encoder();
            for l in 0..c.n_layers {
                if self.opts.recompute {
                    enc.copy_buffer_to_buffer(x0, 0, &a.x, 0, (t * c.hidden * 4) as u64);
                }
                self.block_forward(&mut enc, l, a, x0, t, None)?;
                let inputs = [&a.n1, &a.attn, &a.n2, &a.act];
                for ((x, h), &k) in inputs.into_iter().zip(&st.mats[l]).zip(&ks) {
                    encode_gram_acc(ctx, &mut enc, x, h, t, k)?;
                }
            }
            // A word read back: the row is done when progress says so.
            enc.copy_buffer_to_buffer(x0, 0, &st.read, 0, 4);
            ctx.queue.submit([enc.finish()]);
            let probe = read_mapped(ctx, &st.read, 4).await?;
            if !probe[0].is_finite() {
                return Err(Error::Invalid(format!(
                    "calibration row {i}: the hidden state is {} (diverged?)",
                    probe[0]
                )));
            }
            tokens += t;
            progress(i + 1, rows.len());
        }
        let sums = self.read_stats().await?;
        sums.into_iter()
            .map(|m| {
                let [n1, attn, n2, act]: [Vec<f32>; 4] = m
                    .try_into()
                    .map_err(|_| Error::Invalid("four Hessians per block".into()))?;
                let h = |k: usize, mut s: Vec<f32>| {
                    s.truncate(k * k);
                    Hessian::from_sum(k, &s, tokens)
                };
                Ok(LayerHessians {
                    n1: h(ks[0], n1)?,
                    attn: h(ks[1], attn)?,
                    n2: h(ks[2], n2)?,
                    act: h(ks[3], act)?,
                })
            })
            .collect()
    }

    /// The diagonal empirical Fisher of every projection's base weights over `rows`: the
    /// mean over the rows with a target of the squared gradient of the row's mean loss
    /// (one forward and backward per row, no dropout; the profiling adapter's B = 0 leaves
    /// the base gradients as without it), as the CPU's
    /// [`crate::compress::calibration::fisher_diagonal`] computes it.
    pub async fn fisher_diagonal(
        &mut self,
        rows: &[Row],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<BlockFisher>> {
        for row in rows {
            self.check_row(row)?;
        }
        let used = rows.iter().filter(|r| r.n_targets() > 0).count();
        if used == 0 {
            return Err(crate::reference::stats::no_fisher_rows());
        }
        self.start_stats(StatsPass::Fisher)?.scale = 1.0 / used as f32;
        for (i, row) in rows.iter().enumerate() {
            let n = row.n_targets();
            if n > 0 {
                // grad_scale·n = 1: the gradient of the row's mean loss.
                let pass = RowPass::Train {
                    grad_scale: 1.0 / n as f64,
                    dropout_seed: None,
                };
                self.row(row, pass).await?;
            }
            progress(i + 1, rows.len());
        }
        let mut enc = self.ctx.encoder();
        self.clear_grads(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        let c = &self.config;
        Ok(self
            .read_stats()
            .await?
            .into_iter()
            .map(|block| {
                (block.into_iter().zip(Proj::ALL))
                    .map(|(mut f, p)| {
                        let (k, n) = p.shape(c);
                        f.truncate(n * k);
                        f
                    })
                    .collect()
            })
            .collect())
    }

    /// The Fisher pass's step in a projection's backward (block `l`, projection `p`): the
    /// base weight's gradient of this row is dyᵀ·x; its square joins the sum.
    pub(super) fn observe_grad(
        &self,
        enc: &mut wgpu::CommandEncoder,
        (l, p): (usize, Proj),
        (dy, x): (&wgpu::Buffer, &wgpu::Buffer),
        t: usize,
    ) -> Result<()> {
        if let Some(st) = self.stats.as_ref().filter(|s| s.pass == StatsPass::Fisher) {
            let (k, n) = p.shape(&self.config);
            let f = &st.mats[l][p.index()];
            encode_fisher_acc(self.ctx, enc, dy, x, f, t, (n, k), st.scale)?;
        }
        Ok(())
    }
}
