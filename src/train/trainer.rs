//! The training loop: per optimizer step it takes `micro_batch × accum_steps` rows from
//! the epoch's seeded shuffle, has the backend accumulate token-mean gradients over them,
//! then clip + AdamW at the scheduled learning rate; every `eval_every` steps it measures
//! the validation loss and stops early after `patience` evaluations without improvement.

use super::checkpoint::TrainState;
use super::examples::{permutation, Prepared, Row};
use super::layers::{LayerSchedule, Phase, WindowOrder, PROBE_ROWS};
use super::schedule::{Decay, LrSchedule};
use super::{derive_seed, Backend, LossSum};
use crate::reference::optim::AdamW;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use web_time::Instant;

/// Stream names for [`derive_seed`], so the shuffle and dropout draws never coincide.
const SHUFFLE: u64 = 1;
const DROPOUT: u64 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub decay: Decay,
    /// Share of the run spent warming up linearly from 0.
    pub warmup_fraction: f64,
    /// Rows per backend call, and backend calls per optimizer step.
    pub micro_batch: usize,
    pub accum_steps: usize,
    /// Global gradient-norm clipping (None: off).
    pub max_grad_norm: Option<f64>,
    /// AdamW's decoupled weight decay (betas and eps are PyTorch's defaults).
    pub weight_decay: f64,
    /// Length of the run in epochs, unless `max_steps` is given.
    pub epochs: f64,
    pub max_steps: Option<u64>,
    /// Validation every this many steps (0: never).
    pub eval_every: u64,
    /// Stop after this many evaluations without a new best (None: never stop early).
    pub patience: Option<u32>,
    /// Seeds shuffling and dropout.
    pub seed: u64,
    /// Adaptive layer tuning: train one window of blocks at a time (None: every block).
    #[serde(default)]
    pub layers: Option<LayerSchedule>,
}

impl Default for TrainConfig {
    /// The reference setting: lr 4e-4, 3 % warm-up, clipping at 0.3, no weight decay.
    fn default() -> Self {
        Self {
            lr: 4e-4,
            decay: Decay::Constant,
            warmup_fraction: 0.03,
            micro_batch: 1,
            accum_steps: 4,
            max_grad_norm: Some(0.3),
            weight_decay: 0.0,
            epochs: 1.0,
            max_steps: None,
            eval_every: 50,
            patience: None,
            seed: 0,
            layers: None,
        }
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    /// Optimizer steps done, this one included (from 1).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean training loss over the step's targets (with dropout).
    pub loss: f64,
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Input positions and counted targets in the step.
    pub tokens: usize,
    pub targets: usize,
    /// Input positions per second over the step's forward, backward and update.
    pub tokens_per_s: f64,
    /// Validation loss when it was measured after this step (at the window's exit).
    pub val_loss: Option<f64>,
    /// The window trained (adaptive layer tuning), an index into the schedule's windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
}

/// Why [`Trainer::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Ran the steps asked for; the run is not over.
    Steps,
    /// Reached the schedule's last step.
    Finished,
    /// Validation loss stopped improving for `patience` evaluations.
    EarlyStopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    pub steps: u64,
    pub stop: Stop,
    pub best_val: Option<f64>,
}

pub struct Trainer<B> {
    pub backend: B,
    pub config: TrainConfig,
    pub data: Prepared,
    step: u64,
    epoch: u64,
    pos: usize,
    best_val: Option<f64>,
    bad_evals: u32,
    /// The shuffled order of `epoch` (derived, not state).
    order: Vec<usize>,
    /// Layer tuning: the phases run so far, and the window the backend is set to.
    phases: Vec<Phase>,
    window: Option<usize>,
}

impl<B: Backend> Trainer<B> {
    pub fn new(backend: B, config: TrainConfig, data: Prepared) -> Result<Self> {
        if data.train.is_empty() {
            return Err(Error::Data("no training rows".into()));
        }
        if config.micro_batch == 0 || config.accum_steps == 0 {
            return Err(Error::Invalid(
                "micro_batch and accum_steps must be at least 1".into(),
            ));
        }
        if !(config.lr.is_finite() && config.lr >= 0.0) {
            return Err(Error::Invalid(format!("learning rate {}", config.lr)));
        }
        let mut t = Self {
            backend,
            config,
            data,
            step: 0,
            epoch: 0,
            pos: 0,
            best_val: None,
            bad_evals: 0,
            order: Vec::new(),
            phases: Vec::new(),
            window: None,
        };
        t.order = t.epoch_order(0);
        Ok(t)
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let seed = derive_seed(self.config.seed, &[SHUFFLE, epoch]);
        permutation(self.data.train.len(), seed)
    }

    pub fn rows_per_step(&self) -> usize {
        self.config.micro_batch * self.config.accum_steps
    }

    /// Optimizer steps in one pass over the training rows.
    pub fn steps_per_epoch(&self) -> u64 {
        self.data.train.len().div_ceil(self.rows_per_step()) as u64
    }

    /// Steps of the whole run: `max_steps`, or `epochs` passes (at least 1).
    pub fn total_steps(&self) -> u64 {
        self.config.max_steps.unwrap_or_else(|| {
            ((self.config.epochs.max(0.0) * self.steps_per_epoch() as f64).ceil() as u64).max(1)
        })
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::new(
            self.config.lr,
            self.config.warmup_fraction,
            self.total_steps(),
            self.config.decay,
        )
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn best_val(&self) -> Option<f64> {
        self.best_val
    }

    /// Layer tuning's phases so far (which window trained when, with its losses).
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Sets the backend to the window of the coming step, opening a phase when it starts.
    /// A new window resets early stopping: its exit's losses are not comparable to the
    /// last window's.
    async fn enter_window(&mut self) -> Result<Option<usize>> {
        let Some(ls) = self.config.layers.clone() else {
            return Ok(None);
        };
        let total = self.total_steps();
        let opens = ls.opens_phase(self.step, total, &self.phases);
        // The adaptive order reads the whole model's loss on the probe rows at every phase
        // boundary (it ends the last phase and starts the next).
        let probe = match (opens, ls.order) {
            (true, WindowOrder::Adaptive) => Some(self.probe_loss().await?),
            _ => None,
        };
        let w = ls.window_at(self.step, total, &self.phases, probe);
        if opens {
            self.phases.push(Phase {
                window: w,
                start: self.step,
                losses: Vec::new(),
                probe: probe.into_iter().collect(),
            });
        }
        if self.window != Some(w) {
            let span = ls
                .windows
                .get(w)
                .ok_or_else(|| Error::Invalid(format!("layer schedule has no window {w}")))?;
            self.backend.set_span(Some(span))?;
            self.window = Some(w);
            self.best_val = None;
            self.bad_evals = 0;
        }
        Ok(Some(w))
    }

    /// Mean loss of the whole model (its deepest exit) on the first [`PROBE_ROWS`]
    /// validation rows (training rows when there are none), without dropout. Leaves the
    /// backend outside any window.
    async fn probe_loss(&mut self) -> Result<f64> {
        let rows = if self.data.val.is_empty() {
            &self.data.train
        } else {
            &self.data.val
        };
        let rows: Vec<Row> = rows.iter().take(PROBE_ROWS).cloned().collect();
        let refs: Vec<&Row> = rows.iter().collect();
        self.leave_window()?;
        let mut total = LossSum::default();
        for chunk in refs.chunks(self.config.micro_batch) {
            total.add(self.backend.eval(chunk).await?);
        }
        Ok(total.mean())
    }

    /// Leaves layer tuning's window: the backend trains and evaluates the whole model (to
    /// the last exit) again, e.g. for the final validation.
    pub fn leave_window(&mut self) -> Result<()> {
        self.backend.set_span(None)?;
        self.window = None;
        Ok(())
    }

    fn early_stopped(&self) -> bool {
        self.config
            .patience
            .is_some_and(|p| self.bad_evals >= p.max(1))
    }

    /// The next training row's index, moving to the next epoch's shuffle at the end.
    fn next_row(&mut self) -> usize {
        let i = self.order[self.pos];
        self.pos += 1;
        if self.pos == self.order.len() {
            self.pos = 0;
            self.epoch += 1;
            self.order = self.epoch_order(self.epoch);
        }
        i
    }

    /// Mean cross-entropy over every validation target, without dropout (None: no
    /// validation rows).
    pub async fn validation_loss(&mut self) -> Result<Option<f64>> {
        if self.data.val.is_empty() {
            return Ok(None);
        }
        let mut total = LossSum::default();
        let refs: Vec<&Row> = self.data.val.iter().collect();
        for chunk in refs.chunks(self.config.micro_batch) {
            total.add(self.backend.eval(chunk).await?);
        }
        Ok((total.count > 0).then(|| total.mean()))
    }

    /// One optimizer step; returns its report without validation.
    async fn train_step(&mut self) -> Result<StepReport> {
        let t0 = Instant::now();
        let window = self.enter_window().await?;
        let idx: Vec<usize> = (0..self.rows_per_step()).map(|_| self.next_row()).collect();
        let rows: Vec<&Row> = idx.iter().map(|&i| &self.data.train[i]).collect();
        let targets: usize = rows.iter().map(|r| r.n_targets()).sum();
        let tokens: usize = rows.iter().map(|r| r.tokens.len()).sum();
        // Token-mean over the whole step, however it is split into micro-batches.
        let scale = 1.0 / targets.max(1) as f64;
        let mut loss = LossSum::default();
        for (k, micro) in rows.chunks(self.config.micro_batch).enumerate() {
            let seed = derive_seed(self.config.seed, &[DROPOUT, self.step, k as u64]);
            loss.add(self.backend.accumulate(micro, scale, seed).await?);
        }
        let depth = match (&self.config.layers, window) {
            (Some(ls), Some(w)) => ls.lr_multiplier(w),
            _ => 1.0,
        };
        let lr = self.schedule().lr(self.step) * depth;
        let opt = AdamW {
            lr,
            weight_decay: self.config.weight_decay,
            ..AdamW::default()
        };
        let grad_norm = self
            .backend
            .apply(&opt, self.step + 1, self.config.max_grad_norm)
            .await?;
        self.step += 1;
        if let Some(p) = self.phases.last_mut().filter(|_| window.is_some()) {
            p.losses.push(loss.mean());
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(StepReport {
            step: self.step,
            epoch: self.epoch as f64 + self.pos as f64 / self.data.train.len() as f64,
            loss: loss.mean(),
            lr,
            grad_norm,
            tokens,
            targets,
            tokens_per_s: if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            },
            val_loss: None,
            window,
        })
    }

    /// Runs up to `steps` optimizer steps (fewer at the end of the schedule or on early
    /// stopping), calling `on_step` after each.
    pub async fn run(
        &mut self,
        steps: u64,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<RunSummary> {
        let total = self.total_steps();
        let mut done = 0;
        let stop = loop {
            if self.early_stopped() {
                break Stop::EarlyStopped;
            }
            if self.step >= total {
                break Stop::Finished;
            }
            if done == steps {
                break Stop::Steps;
            }
            let mut report = self.train_step().await?;
            done += 1;
            let every = self.config.eval_every;
            if every > 0 && self.step.is_multiple_of(every) {
                report.val_loss = self.validation_loss().await?;
                if let Some(v) = report.val_loss {
                    if self.best_val.is_none_or(|b| v < b) {
                        self.best_val = Some(v);
                        self.bad_evals = 0;
                    } else {
                        self.bad_evals += 1;
                    }
                }
            }
            on_step(&report);
        };
        Ok(RunSummary {
            steps: done,
            stop,
            best_val: self.best_val,
        })
    }

    /// FNV-1a over the training rows: resuming on other data is refused.
    fn data_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for r in &self.data.train {
            eat(r.tokens.len() as u64);
            for (&t, tg) in r.tokens.iter().zip(&r.targets) {
                eat(t as u64);
                eat(tg.map_or(u64::MAX, |x| x as u64));
            }
        }
        h
    }

    /// The state to continue from later, exactly (between optimizer steps).
    pub async fn checkpoint(&mut self) -> Result<TrainState> {
        Ok(TrainState {
            version: TrainState::VERSION,
            seed: self.config.seed,
            step: self.step,
            epoch: self.epoch,
            pos: self.pos,
            best_val_bits: self.best_val.map(f64::to_bits),
            bad_evals: self.bad_evals,
            data_hash: self.data_hash(),
            params: self.backend.save().await?,
            layers: self.config.layers.clone(),
            phases: self.phases.clone(),
        })
    }

    /// Continues from `state`; the trainer must have been built with the same data and
    /// seed (checked) and configuration (the schedule is recomputed from it).
    pub async fn resume(&mut self, state: &TrainState) -> Result<()> {
        if state.seed != self.config.seed {
            return Err(Error::Invalid(format!(
                "checkpoint seed {} differs from the configured {}",
                state.seed, self.config.seed
            )));
        }
        if state.data_hash != self.data_hash() || state.pos >= self.data.train.len() {
            return Err(Error::Invalid(
                "checkpoint was made on different training data".into(),
            ));
        }
        if state.layers != self.config.layers {
            return Err(Error::Invalid(
                "checkpoint was made with another layer-tuning schedule (--mode, \
                 --exit-stride, --window-schedule, --window-lr-power)"
                    .into(),
            ));
        }
        self.backend.load(&state.params).await?;
        self.phases = state.phases.clone();
        self.window = None;
        self.backend.set_span(None)?;
        self.step = state.step;
        self.epoch = state.epoch;
        self.pos = state.pos;
        self.best_val = state.best_val();
        self.bad_evals = state.bad_evals;
        self.order = self.epoch_order(self.epoch);
        Ok(())
    }
}
