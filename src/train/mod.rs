//! LoRA fine-tuning, independent of where the model runs: data preparation
//! ([`examples`]), the learning-rate schedule ([`schedule`]), the [`Backend`] trait a
//! model implements, the [`Trainer`] loop, and resumable checkpoints ([`checkpoint`]).
//! [`CpuBackend`] runs the reference transformer; the GPU engine implements the same trait.
//!
//! # The split between trainer and backend
//! The backend owns the trainable tensors, their gradient accumulator and the AdamW
//! moments; the trainer owns the data order, the schedule, accumulation counts, the
//! dropout seeds, validation and early stopping. On a GPU the LoRA tensors, gradients and
//! moments then stay on the device: a step uploads token ids, reads back two numbers (the
//! loss sum and the gradient norm), and clipping + AdamW run as kernels. The trainer
//! passes everything a step depends on (learning rate, step number, a dropout seed derived
//! from (seed, step, micro-batch)), so a resumed run repeats an uninterrupted one exactly.
//!
//! The trait's methods return futures because a browser GPU can only read results back
//! asynchronously; the CPU backend's futures are ready at once.

pub mod checkpoint;
pub mod cpu;
pub mod examples;
pub mod host_plan;
pub mod layers;
pub mod modes;
pub mod options;
pub mod prefix;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{ParamState, Tensor, TrainState};
pub use cpu::CpuBackend;
pub use examples::{prepare, DataConfig, DataStats, Example, Prepared, Row};
pub use host_plan::{host_plan, HostPlan};
pub use layers::{exits_every, LayerSchedule, Phase, WindowOrder};
pub use modes::{
    mode_layers, Mode, ModeArgs, ModeLayers, DEFAULT_DEPTH_LR_POWER, DEFAULT_DEPTH_STEPS_POWER,
    DEFAULT_EXIT_STRIDE,
};
pub use options::{TuneOptions, TuneSettings};
pub use schedule::{Decay, LrSchedule};
pub use trainer::{RunSummary, StepReport, Stop, TrainConfig, Trainer};

use crate::reference::ops::splitmix64;
use crate::reference::optim::AdamW;
use crate::reference::{Lora, LoraConfig, Span};
use crate::Result;
use std::future::Future;

/// Summed cross-entropy (nats) over `count` counted targets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSum {
    pub sum: f64,
    pub count: usize,
}

impl LossSum {
    pub fn add(&mut self, o: LossSum) {
        self.sum += o.sum;
        self.count += o.count;
    }

    /// Mean loss per target (0 when nothing was counted).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// A model that can be tuned: it holds the trainable (LoRA) tensors, a gradient
/// accumulator and the optimizer moments; the base weights are frozen.
pub trait Backend {
    /// Forward and backward over `rows` with LoRA dropout drawn from `dropout_seed`; adds
    /// `grad_scale`·∇(Σ target cross-entropy) into the gradient accumulator. Returns the
    /// summed loss and the number of targets.
    fn accumulate(
        &mut self,
        rows: &[&Row],
        grad_scale: f64,
        dropout_seed: u64,
    ) -> impl Future<Output = Result<LossSum>>;

    /// Clips the accumulated gradients to a global L2 norm of `max_grad_norm` (if given),
    /// applies AdamW step `t` (from 1) with `opt`, and zeroes the accumulator. Returns the
    /// norm before clipping; a non-finite norm is an error and changes nothing.
    fn apply(
        &mut self,
        opt: &AdamW,
        t: u64,
        max_grad_norm: Option<f64>,
    ) -> impl Future<Output = Result<f64>>;

    /// Summed loss over `rows` without dropout and without touching gradients.
    fn eval(&mut self, rows: &[&Row]) -> impl Future<Output = Result<LossSum>>;

    /// The trainable tensors and optimizer moments (taken between optimizer steps).
    fn save(&mut self) -> impl Future<Output = Result<ParamState>>;

    /// Restores what [`Backend::save`] returned, checking that the shapes match.
    fn load(&mut self, state: &ParamState) -> impl Future<Output = Result<()>>;

    /// The adapters' current values, to export them.
    fn adapters(&mut self) -> impl Future<Output = Result<Lora<f32>>>;

    /// GPU memory this backend holds, in bytes (0 on the CPU).
    fn gpu_bytes(&self) -> u64 {
        0
    }

    /// Trains only the window `span` from now on (None: every block). Backends that
    /// cannot run windows refuse one.
    fn set_span(&mut self, span: Option<&Span>) -> Result<()> {
        match span {
            None => Ok(()),
            Some(_) => Err(crate::Error::Invalid(
                "this backend trains every layer; it does not run layer windows (adaptive \
                 layer tuning)"
                    .into(),
            )),
        }
    }
}

/// Checks the settings a user can get wrong (from the CLI's flags or the page's form), one
/// message each in plain words (no flags, no range syntax: the page shows them too), the
/// setting named as the page's form names it.
pub fn validate(lora: &LoraConfig, data: &DataConfig, train: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(crate::Error::Invalid(m));
    if lora.rank == 0 || lora.rank > 1024 {
        return bad(format!(
            "the LoRA rank must be between 1 and 1024 (it is {})",
            lora.rank
        ));
    }
    if lora.targets.is_empty() {
        return bad("LoRA needs at least one target projection (LoRA targets)".into());
    }
    if !(0.0..1.0).contains(&lora.dropout) {
        return bad(format!(
            "the LoRA dropout must be at least 0 and below 1 (it is {})",
            lora.dropout
        ));
    }
    if !(train.lr > 0.0 && train.lr.is_finite()) {
        return bad(format!(
            "the learning rate must be above 0 (it is {})",
            train.lr
        ));
    }
    if data.seq_len < 2 {
        return bad(format!(
            "the sequence length must be at least 2 tokens (it is {})",
            data.seq_len
        ));
    }
    if train.max_steps == Some(0) {
        return bad("the steps must be at least 1".into());
    }
    if train.micro_batch == 0 || train.accum_steps == 0 {
        return bad("the batch and the rows per step (accumulation) must be at least 1".into());
    }
    if !(0.0..1.0).contains(&data.val_fraction) {
        return bad(format!(
            "the validation share must be at least 0 and below 1 (it is {})",
            data.val_fraction
        ));
    }
    if !(0.0..1.0).contains(&train.warmup_fraction) {
        return bad(format!(
            "the warm-up share must be at least 0 and below 1 (it is {})",
            train.warmup_fraction
        ));
    }
    Ok(())
}

/// A seed that is a pure function of `seed` and `parts` (e.g. a stream name, the step,
/// the micro-batch): nothing outside a checkpoint is needed to draw it again.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(seed), |h, &p| splitmix64(h ^ splitmix64(p)))
}
