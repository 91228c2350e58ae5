//! The trainer as a [`Backend`]: accumulating rows' gradients, the AdamW step of the
//! window's tensors, evaluation, checkpoints and windows; and reading tensors back.

use super::step::RowPass;
use super::{GpuTrainer, Trained};
use crate::engine::weights::read_mapped;
use crate::kernels::ops::adamw::{encode_adamw, encode_grad_norm2, Slot};
use crate::reference::optim::AdamW;
use crate::reference::{Lora, Owner, Span};
use crate::train::prefix::{bump_versions, check_span};
use crate::train::{derive_seed, Backend, LossSum, ParamState, Row, Tensor};
use crate::{Error, Result};

impl GpuTrainer<'_> {
    /// The first n values of `b`, through the planned readback buffer.
    async fn read_tensor(&self, b: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let bytes = (n * 4) as u64;
        let mut enc = self.ctx.encoder();
        enc.copy_buffer_to_buffer(b, 0, &self.s.tensor_read, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        read_mapped(self.ctx, &self.s.tensor_read, bytes).await
    }

    /// The adapters' current values, as the CPU reference holds them.
    pub async fn read_adapters(&self) -> Result<Lora<f32>> {
        self.read_lora(|t| &t.param).await
    }

    /// The accumulated gradients, shaped like the adapters (for tests against the CPU).
    pub async fn gradients(&self) -> Result<Lora<f32>> {
        self.read_lora(|t| &t.grad).await
    }

    /// One buffer of every trained tensor (`which`), shaped like the adapters.
    async fn read_lora(&self, which: fn(&Trained) -> &wgpu::Buffer) -> Result<Lora<f32>> {
        let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
        let mut lora = Lora::new(&self.config, self.lora_config.clone(), 0).with_exits(
            &afters,
            self.config.hidden,
            0,
        );
        for (dst, (_, (ia, ib))) in lora.exits.iter_mut().zip(&self.exits) {
            dst.pair.a = self
                .read_tensor(which(&self.trained[*ia]), dst.pair.a.len())
                .await?;
            dst.pair.b = self
                .read_tensor(which(&self.trained[*ib]), dst.pair.b.len())
                .await?;
        }
        for (l, row) in self.pairs.iter().enumerate() {
            for (pi, pair) in row.iter().enumerate() {
                if let (Some((ia, ib)), Some(dst)) = (pair, lora.layers[l][pi].as_mut()) {
                    dst.a = self
                        .read_tensor(which(&self.trained[*ia]), dst.a.len())
                        .await?;
                    dst.b = self
                        .read_tensor(which(&self.trained[*ib]), dst.b.len())
                        .await?;
                }
            }
        }
        Ok(lora)
    }

    pub(super) fn clear_grads(&self, enc: &mut wgpu::CommandEncoder) {
        for tr in &self.trained {
            enc.clear_buffer(&tr.grad, 0, None);
        }
    }
}

impl Backend for GpuTrainer<'_> {
    async fn accumulate(
        &mut self,
        rows: &[&Row],
        grad_scale: f64,
        dropout_seed: u64,
    ) -> Result<LossSum> {
        let mut out = LossSum::default();
        for (r, row) in rows.iter().enumerate() {
            let seed = derive_seed(dropout_seed, &[r as u64]);
            let loss = self
                .row(
                    row,
                    RowPass::Train {
                        grad_scale,
                        dropout_seed: Some(seed),
                    },
                )
                .await?;
            out.add(loss);
        }
        Ok(out)
    }

    async fn apply(&mut self, opt: &AdamW, t: u64, max_grad_norm: Option<f64>) -> Result<f64> {
        let ctx = self.ctx;
        let grads: Vec<(&wgpu::Buffer, usize)> =
            self.trained.iter().map(|tr| (&tr.grad, tr.n)).collect();
        let mut enc = ctx.encoder();
        encode_grad_norm2(ctx, &mut enc, &grads, &self.s.norm_partials, &self.s.norm2)?;
        enc.copy_buffer_to_buffer(&self.s.norm2, 0, &self.s.norm_read, 0, 4);
        ctx.queue.submit([enc.finish()]);
        let norm2 = read_mapped(ctx, &self.s.norm_read, 4).await?[0];
        let norm = (norm2 as f64).sqrt();
        let mut enc = ctx.encoder();
        if !norm.is_finite() {
            self.clear_grads(&mut enc);
            ctx.queue.submit([enc.finish()]);
            return Err(Error::Invalid(format!(
                "gradient norm is {norm} at step {t}; the step was skipped"
            )));
        }
        // Only the span's tensors step, each with its own count (as on the CPU): one AdamW
        // dispatch group per distinct count.
        let span = self.span.clone();
        let mut groups: std::collections::BTreeMap<u64, Vec<Slot<'_>>> = Default::default();
        for ((tr, o), steps) in self.trained.iter().zip(&self.owners).zip(&mut self.steps) {
            let active = match (&span, *o) {
                (None, _) => true,
                (Some(s), Owner::Layer(l)) => s.layers.contains(&l),
                (Some(s), Owner::Exit(k)) => s.exit == Some(k),
            };
            if !active {
                continue;
            }
            *steps = if span.is_some() { *steps + 1 } else { t };
            groups.entry(*steps).or_default().push(Slot {
                param: &tr.param,
                grad: &tr.grad,
                m: &tr.m,
                v: &tr.v,
                n: tr.n,
            });
        }
        let max = max_grad_norm.map(|m| m as f32);
        for (steps, slots) in &groups {
            encode_adamw(ctx, &mut enc, slots, &self.s.norm2, opt, *steps, max)?;
        }
        for tr in &self.trained {
            enc.clear_buffer(&tr.grad, 0, None);
        }
        ctx.queue.submit([enc.finish()]);
        bump_versions(&mut self.versions, self.span.as_ref());
        Ok(norm)
    }

    async fn eval(&mut self, rows: &[&Row]) -> Result<LossSum> {
        let mut out = LossSum::default();
        for row in rows {
            out.add(self.row(row, RowPass::Eval).await?);
        }
        Ok(out)
    }

    async fn save(&mut self) -> Result<ParamState> {
        let (mut tensors, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for tr in &self.trained {
            tensors.push(Tensor(self.read_tensor(&tr.param, tr.n).await?));
            m.push(Tensor(self.read_tensor(&tr.m, tr.n).await?));
            v.push(Tensor(self.read_tensor(&tr.v, tr.n).await?));
        }
        Ok(ParamState {
            lora: self.lora_config.clone(),
            tensors,
            m,
            v,
            exits: self.exits.iter().map(|e| e.0).collect(),
            steps: self.steps.clone(),
        })
    }

    async fn adapters(&mut self) -> Result<Lora<f32>> {
        self.read_adapters().await
    }

    fn gpu_bytes(&self) -> u64 {
        self.allocated
    }

    async fn load(&mut self, state: &ParamState) -> Result<()> {
        let exits: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
        if state.exits != exits {
            return Err(Error::Invalid(format!(
                "checkpoint exits {:?} differ from the model's {exits:?}",
                state.exits
            )));
        }
        if state.lora != self.lora_config {
            return Err(Error::Invalid(format!(
                "checkpoint LoRA config {:?} differs from the model's {:?}",
                state.lora, self.lora_config
            )));
        }
        let n = self.trained.len();
        let ok = state.tensors.len() == n
            && state.m.len() == n
            && state.v.len() == n
            && self.trained.iter().enumerate().all(|(i, tr)| {
                state.tensors[i].0.len() == tr.n
                    && state.m[i].0.len() == tr.n
                    && state.v[i].0.len() == tr.n
            });
        if !ok {
            return Err(Error::Invalid(
                "checkpoint tensors do not match the model's LoRA shapes".into(),
            ));
        }
        let q = &self.ctx.queue;
        for (i, tr) in self.trained.iter().enumerate() {
            q.write_buffer(&tr.param, 0, bytemuck::cast_slice(&state.tensors[i].0));
            q.write_buffer(&tr.m, 0, bytemuck::cast_slice(&state.m[i].0));
            q.write_buffer(&tr.v, 0, bytemuck::cast_slice(&state.v[i].0));
        }
        self.steps = if state.steps.len() == n {
            state.steps.clone()
        } else {
            vec![0; n]
        };
        // Every block may have changed: no cached prefix is valid any more.
        bump_versions(&mut self.versions, None);
        let mut enc = self.ctx.encoder();
        self.clear_grads(&mut enc);
        q.submit([enc.finish()]);
        Ok(())
    }

    fn set_span(&mut self, span: Option<&Span>) -> Result<()> {
        if let Some(s) = span {
            let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
            check_span(self.config.n_layers, &afters, s)?;
            self.check_planned(s, true)?;
            self.load_window(s.layers.clone())?;
        }
        self.span = span.cloned();
        Ok(())
    }
}
