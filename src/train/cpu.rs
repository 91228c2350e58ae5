//! The [`Backend`] on the CPU reference transformer (f32): LoRA tensors, their gradient
//! accumulator and AdamW moments in host memory; `reference::optim` does the step.

use super::{derive_seed, Backend, LossSum, ParamState, Row, Tensor};
use crate::model::Weights;
use crate::reference::ops::cross_entropy_forward;
use crate::reference::optim::{adamw_step, clip_grad_norm, sum_squares, AdamW};
use crate::reference::{Lora, LoraConfig, Transformer};
use crate::{Error, Result};

pub struct CpuBackend {
    /// The frozen base and the trained adapters (`model.lora` is always `Some`).
    pub model: Transformer<f32>,
    grad: Lora<f32>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuBackend {
    /// Base weights plus fresh LoRA adapters (PEFT's initialisation, seeded).
    pub fn new(weights: Weights<f32>, lora: LoraConfig, seed: u64) -> Self {
        let adapters = Lora::new(&weights.config, lora, seed);
        let mut grad = adapters.zeros_like();
        let zeros: Vec<Vec<f32>> = grad
            .tensors_mut()
            .iter()
            .map(|t| vec![0.0; t.len()])
            .collect();
        Self {
            model: Transformer {
                w: weights,
                lora: Some(adapters),
            },
            grad,
            m: zeros.clone(),
            v: zeros,
        }
    }

    pub fn lora(&self) -> Option<&Lora<f32>> {
        self.model.lora.as_ref()
    }

    fn lora_mut(&mut self) -> Result<&mut Lora<f32>> {
        self.model
            .lora
            .as_mut()
            .ok_or_else(|| Error::Invalid("the CPU backend has no LoRA adapters".into()))
    }

    fn check_row(&self, row: &Row) -> Result<()> {
        let c = &self.model.w.config;
        row.check(c.vocab, c.context_length, "the model's context")
    }
}

impl Backend for CpuBackend {
    async fn accumulate(
        &mut self,
        rows: &[&Row],
        grad_scale: f64,
        dropout_seed: u64,
    ) -> Result<LossSum> {
        let mut out = LossSum::default();
        for (r, row) in rows.iter().enumerate() {
            self.check_row(row)?;
            let n = row.n_targets();
            if n == 0 {
                continue;
            }
            let seed = derive_seed(dropout_seed, &[r as u64]);
            let acts = self.model.forward_train(&row.tokens, Some(seed));
            let loss = self.model.loss(&acts, &row.targets);
            let mut g = self
                .model
                .backward(&acts, &row.targets, false)
                .lora
                .ok_or_else(|| Error::Invalid("the CPU backend has no LoRA adapters".into()))?;
            // backward() differentiates this row's mean; the step wants Σ·grad_scale.
            let w = (grad_scale * n as f64) as f32;
            for (acc, gi) in self.grad.tensors_mut().into_iter().zip(g.tensors_mut()) {
                for (a, &b) in acc.iter_mut().zip(gi.iter()) {
                    *a += w * b;
                }
            }
            out.add(LossSum {
                sum: loss as f64 * n as f64,
                count: n,
            });
        }
        Ok(out)
    }

    async fn apply(&mut self, opt: &AdamW, t: u64, max_grad_norm: Option<f64>) -> Result<f64> {
        let mut grads: Vec<&mut [f32]> = self
            .grad
            .tensors_mut()
            .into_iter()
            .map(|v| v.as_mut_slice())
            .collect();
        let norm = {
            let views: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
            sum_squares(&views).sqrt()
        };
        if !norm.is_finite() {
            for g in &mut grads {
                g.fill(0.0);
            }
            return Err(Error::Invalid(format!(
                "gradient norm is {norm} at step {t}; the step was skipped"
            )));
        }
        if let Some(max) = max_grad_norm {
            clip_grad_norm(&mut grads, max);
        }
        let lora = self
            .model
            .lora
            .as_mut()
            .ok_or_else(|| Error::Invalid("the CPU backend has no LoRA adapters".into()))?;
        for (((p, g), m), v) in lora
            .tensors_mut()
            .into_iter()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            adamw_step(opt, t, p, g, m, v);
            g.fill(0.0);
        }
        Ok(norm)
    }

    async fn eval(&mut self, rows: &[&Row]) -> Result<LossSum> {
        let vocab = self.model.w.config.vocab;
        let mut out = LossSum::default();
        for row in rows {
            self.check_row(row)?;
            if row.n_targets() == 0 {
                continue;
            }
            let logits = self.model.logits(&row.tokens, None);
            let (loss, n) = cross_entropy_forward(&logits, &row.targets, vocab);
            out.add(LossSum {
                sum: loss as f64 * n as f64,
                count: n,
            });
        }
        Ok(out)
    }

    async fn save(&mut self) -> Result<ParamState> {
        let (m, v) = (self.m.clone(), self.v.clone());
        let lora = self.lora_mut()?;
        let config = lora.config.clone();
        let tensors = lora
            .tensors_mut()
            .into_iter()
            .map(|t| Tensor(t.clone()))
            .collect();
        Ok(ParamState {
            lora: config,
            tensors,
            m: m.into_iter().map(Tensor).collect(),
            v: v.into_iter().map(Tensor).collect(),
        })
    }

    async fn adapters(&mut self) -> Result<Lora<f32>> {
        Ok(self.lora_mut()?.clone())
    }

    async fn load(&mut self, state: &ParamState) -> Result<()> {
        let lora = self.lora_mut()?;
        if state.lora != lora.config {
            return Err(Error::Invalid(format!(
                "checkpoint LoRA config {:?} differs from the model's {:?}",
                state.lora, lora.config
            )));
        }
        let mut dst = lora.tensors_mut();
        let n = dst.len();
        let shapes_ok = state.tensors.len() == n
            && state.m.len() == n
            && state.v.len() == n
            && (0..n).all(|i| {
                let len = dst[i].len();
                state.tensors[i].0.len() == len
                    && state.m[i].0.len() == len
                    && state.v[i].0.len() == len
            });
        if !shapes_ok {
            return Err(Error::Invalid(
                "checkpoint tensors do not match the model's LoRA shapes".into(),
            ));
        }
        for (d, s) in dst.iter_mut().zip(&state.tensors) {
            d.copy_from_slice(&s.0);
        }
        self.m = state.m.iter().map(|t| t.0.clone()).collect();
        self.v = state.v.iter().map(|t| t.0.clone()).collect();
        for g in self.grad.tensors_mut() {
            g.fill(0.0);
        }
        Ok(())
    }
}
