//! The [`Backend`] on the CPU reference transformer (f32): LoRA tensors, their gradient
//! accumulator and AdamW moments in host memory; `reference::optim` does the step.
//!
//! It also runs adaptive layer tuning: with a [`Span`] set, only that window of blocks
//! carries gradients, the forward stops at the window's exit, and the hidden state entering
//! the window is taken from a [`PrefixCache`] ([`super::prefix`], shared with the GPU
//! trainer) — the blocks below are frozen, so their output for a row changes only when one
//! of them is trained again.

use super::{derive_seed, Backend, LossSum, ParamState, Row, Tensor};

/// Stream name for [`derive_seed`]: the exits' initialisation.
const EXITS: u64 = 3;
use crate::model::Weights;
use crate::reference::ops::cross_entropy_forward;
use crate::reference::optim::{adamw_step, clip_grad_norm, sum_squares, AdamW};
use crate::reference::{Lora, LoraConfig, Owner, Span, Transformer};
use crate::{Error, Result};

pub use super::prefix::PrefixCache;
use super::prefix::{bump_versions, check_span, default_span};

pub struct CpuBackend {
    /// The frozen base and the trained adapters (`model.lora` is always `Some`).
    pub model: Transformer<f32>,
    grad: Lora<f32>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// AdamW steps taken per tensor (bias correction when tensors train in windows).
    steps: Vec<u64>,
    /// The window being trained (None: every block, to the model's last exit or head).
    span: Option<Span>,
    /// Optimizer updates per block: a cached prefix is valid while the blocks below its
    /// depth have the updates it was computed with.
    versions: Vec<u64>,
    pub cache: PrefixCache,
}

impl CpuBackend {
    /// Host memory the prefix cache may use unless told otherwise.
    pub const DEFAULT_CACHE_BYTES: u64 = PrefixCache::DEFAULT_MAX_BYTES;

    /// Base weights plus fresh LoRA adapters (PEFT's initialisation, seeded).
    pub fn new(weights: Weights<f32>, lora: LoraConfig, seed: u64) -> Self {
        Self::with_exits(weights, lora, &[], seed)
    }

    /// Like [`Self::new`], with early exits after the given block counts (for adaptive
    /// layer tuning; their adapters are drawn from a seed derived from `seed`).
    pub fn with_exits(weights: Weights<f32>, lora: LoraConfig, exits: &[usize], seed: u64) -> Self {
        crate::cpu::keep_freed_memory();
        let adapters = initial_adapters(&weights.config, lora, exits, seed);
        let mut grad = adapters.zeros_like();
        let zeros: Vec<Vec<f32>> = grad
            .tensors_mut()
            .iter()
            .map(|t| vec![0.0; t.len()])
            .collect();
        let n_layers = weights.config.n_layers;
        Self {
            model: Transformer {
                w: weights,
                lora: Some(adapters),
            },
            grad,
            steps: vec![0; zeros.len()],
            m: zeros.clone(),
            v: zeros,
            span: None,
            versions: vec![0; n_layers],
            cache: PrefixCache::with_max_bytes(Self::DEFAULT_CACHE_BYTES),
        }
    }

    /// The exits' block counts.
    pub fn exits(&self) -> Vec<usize> {
        self.lora()
            .map_or(Vec::new(), |l| l.exits.iter().map(|e| e.after).collect())
    }

    /// The span a step trains now: the window set, or every block to the last exit (or
    /// the model's head when there are no exits).
    fn current_span(&self) -> Span {
        self.span
            .clone()
            .unwrap_or_else(|| default_span(self.model.w.config.n_layers, &self.exits()))
    }

    /// The hidden state entering block `start` for `tokens`, from the cache where it is
    /// valid (extending it to `start` if it is shallower), else from the embeddings.
    fn prefix(&mut self, tokens: &[u32], start: usize) -> Option<Vec<f32>> {
        if start == 0 {
            return None;
        }
        let x = match self.cache.lookup(tokens, start, &self.versions) {
            Some((depth, x)) if depth == start => return Some(x),
            Some((depth, x)) => self.model.forward_blocks(tokens, Some(x), depth, start),
            None => self.model.forward_blocks(tokens, None, 0, start),
        };
        self.cache.store(tokens, start, &self.versions, &x);
        Some(x)
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
            let span = self.current_span();
            let input = self.prefix(&row.tokens, span.layers.start);
            let model = &self.model;
            // On a pool thread: each op's first part starts without a wake-up.
            let (loss, grads) = crate::cpu::par::install(|| {
                let acts =
                    model.forward_span(&row.tokens, input, &span, Some(&row.targets), Some(seed));
                let loss = model.loss(&acts, &row.targets);
                (loss, model.backward(&acts, &row.targets, false))
            });
            let mut g = grads
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
        let owners = lora.owners();
        let span = self.span.clone();
        let active = |o: &Owner| match (&span, *o) {
            (None, _) => true,
            (Some(s), Owner::Layer(l)) => s.layers.contains(&l),
            (Some(s), Owner::Exit(k)) => s.exit == Some(k),
        };
        for (i, ((((p, g), m), v), o)) in lora
            .tensors_mut()
            .into_iter()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
            .zip(&owners)
            .enumerate()
        {
            if active(o) {
                // Without a window every tensor steps together: the trainer's count.
                self.steps[i] = if span.is_some() { self.steps[i] + 1 } else { t };
                adamw_step(opt, self.steps[i], p, g, m, v);
            }
            g.fill(0.0);
        }
        bump_versions(&mut self.versions, span.as_ref());
        Ok(norm)
    }

    async fn eval(&mut self, rows: &[&Row]) -> Result<LossSum> {
        let vocab = self.model.w.config.vocab;
        let span = self.current_span();
        let mut out = LossSum::default();
        for row in rows {
            self.check_row(row)?;
            if row.n_targets() == 0 {
                continue;
            }
            let input = self.prefix(&row.tokens, span.layers.start);
            let acts = self
                .model
                .forward_span(&row.tokens, input, &span, Some(&row.targets), None);
            let t: Vec<Option<u32>> = acts.rows.iter().map(|&i| row.targets[i]).collect();
            let (loss, n) = cross_entropy_forward(&acts.logits, &t, vocab);
            out.add(LossSum {
                sum: loss as f64 * n as f64,
                count: n,
            });
        }
        Ok(out)
    }

    async fn save(&mut self) -> Result<ParamState> {
        let (m, v) = (self.m.clone(), self.v.clone());
        let (exits, steps) = (self.exits(), self.steps.clone());
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
            exits,
            steps,
        })
    }

    async fn adapters(&mut self) -> Result<Lora<f32>> {
        Ok(self.lora_mut()?.clone())
    }

    async fn load(&mut self, state: &ParamState) -> Result<()> {
        let exits = self.exits();
        if state.exits != exits {
            return Err(Error::Invalid(format!(
                "checkpoint exits {:?} differ from the model's {exits:?}",
                state.exits
            )));
        }
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
        self.steps = if state.steps.len() == n {
            state.steps.clone()
        } else {
            vec![0; n]
        };
        self.m = state.m.iter().map(|t| t.0.clone()).collect();
        self.v = state.v.iter().map(|t| t.0.clone()).collect();
        for g in self.grad.tensors_mut() {
            g.fill(0.0);
        }
        // Every block may have changed: no cached prefix is valid any more.
        bump_versions(&mut self.versions, None);
        Ok(())
    }

    fn set_span(&mut self, span: Option<&Span>) -> Result<()> {
        if let Some(s) = span {
            check_span(self.model.w.config.n_layers, &self.exits(), s)?;
        }
        self.span = span.cloned();
        Ok(())
    }
}

/// Fresh adapters with exits after the given block counts, as every backend draws them
/// from the run's seed (the exits from a seed derived from it).
pub fn initial_adapters(
    c: &crate::model::LlamaConfig,
    lora: LoraConfig,
    exits: &[usize],
    seed: u64,
) -> Lora<f32> {
    Lora::new(c, lora, seed).with_exits(exits, c.hidden, derive_seed(seed, &[EXITS]))
}
