//! The learning-rate schedule, as Hugging Face's `get_constant_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup`: the multiplier of optimizer step `s` (counted from
//! 0) is s / warmup during warm-up (so the first step runs at lr 0, as there), then 1
//! (constant) or ½(1 + cos(π·progress)) decaying to 0 at `total` (cosine).

use serde::{Deserialize, Serialize};

/// What the learning rate does after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Constant,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Steps of the whole run (the cosine reaches 0 here).
    pub total: u64,
    pub decay: Decay,
}

impl LrSchedule {
    /// Warm-up of ⌈fraction·total⌉ steps (HF's `warmup_ratio`).
    pub fn new(peak: f64, warmup_fraction: f64, total: u64, decay: Decay) -> Self {
        let warmup = (warmup_fraction.max(0.0) * total as f64).ceil() as u64;
        Self {
            peak,
            warmup,
            total,
            decay,
        }
    }

    /// Learning rate of optimizer step `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * step as f64 / self.warmup.max(1) as f64;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let progress = ((step - self.warmup) as f64 / span).min(1.0);
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
