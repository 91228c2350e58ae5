//! The tuning options: every setting of a tuning run a user chooses, with its default,
//! defined once. `edge-llm tune` takes its flags' defaults from [`TuneOptions::default`],
//! `edge-llm bench tune` starts from it, the wasm API reads it from the page's JSON (every
//! field optional), and a test checks npm/index.d.ts's `TuneOptions` against its fields.
//! `crate::tune` builds a run from it.

use super::{mode_layers, DataConfig, Decay, Mode, ModeArgs, TrainConfig, WindowOrder};
use crate::device::Device;
use crate::reference::{LoraConfig, Proj};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Tuning settings, named as `edge-llm tune`'s flags (`--lora-rank` is `lora_rank`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuneOptions {
    /// Optimizer steps (None: `epochs` passes over the data).
    pub steps: Option<u64>,
    pub epochs: f64,
    pub lr: f64,
    /// Cosine decay after warm-up (false: constant).
    pub cosine: bool,
    /// Share of the run spent warming up.
    pub warmup: f64,
    pub lora_rank: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub lora_targets: Vec<Proj>,
    pub seq_len: usize,
    /// Rows per micro-batch, and micro-batches per optimizer step.
    pub batch: usize,
    pub accum: usize,
    /// Gradient-norm clipping (0: off).
    pub clip: f64,
    pub val_fraction: f64,
    /// Validation every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Stop after this many validations without improvement.
    pub patience: Option<u32>,
    pub seed: u64,
    /// GPU bytes the run may use; None: only the device's limits.
    pub memory_budget: Option<u64>,
    /// Layer recompute on the GPU (less memory, one more forward per block).
    pub recompute: bool,
    /// Where the run trains: the GPU engine or the CPU engine (`crate::device`'s rule).
    pub device: Device,
    /// Which layers train.
    pub mode: Mode,
    /// Edge mode: an exit after every this many blocks (clamped to the model's blocks).
    pub exit_stride: usize,
    /// Edge mode: the order of the windows (reference or adaptive).
    pub window_schedule: WindowOrder,
    /// Edge mode: a window's learning rate is `lr` × (its depth ÷ the model's)^this.
    pub window_lr_power: f64,
    /// Edge mode, reference order: a window's share of the steps is ∝ (its depth ÷ the
    /// model's)^this (0: equal phases).
    pub window_steps_power: f64,
    /// Partial mode: the last this many blocks train.
    pub partial_layers: usize,
}

impl Default for TuneOptions {
    /// The reference settings, read from the library's own defaults ([`LoraConfig`],
    /// [`DataConfig`], [`TrainConfig`], [`ModeArgs`]) so that no number is written twice.
    fn default() -> Self {
        let lora = LoraConfig::default();
        let data = DataConfig::default();
        let train = TrainConfig::default();
        let mode = ModeArgs::default();
        Self {
            steps: train.max_steps,
            epochs: train.epochs,
            lr: train.lr,
            cosine: train.decay == Decay::Cosine,
            warmup: train.warmup_fraction,
            lora_rank: lora.rank,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            lora_targets: lora.targets,
            seq_len: data.seq_len,
            batch: train.micro_batch,
            accum: train.accum_steps,
            clip: train.max_grad_norm.unwrap_or(0.0),
            val_fraction: data.val_fraction,
            eval_every: train.eval_every,
            patience: train.patience,
            seed: train.seed,
            memory_budget: None,
            recompute: false,
            device: Device::default(),
            mode: mode.mode,
            exit_stride: mode.exit_stride,
            window_schedule: mode.window_schedule,
            window_lr_power: mode.depth_lr_power,
            window_steps_power: mode.depth_steps_power,
            partial_layers: mode.partial_layers,
        }
    }
}

impl TuneOptions {
    /// Options from JSON (every field optional, unknown fields refused), checked.
    pub fn from_json(json: &str) -> Result<Self> {
        let o: Self = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("tuning options: {e}")))?;
        o.validate()?;
        Ok(o)
    }

    /// The checks of every front-end, one message each (`train::validate`).
    pub fn validate(&self) -> Result<()> {
        super::validate(&self.lora(), &self.data(), &self.train())
    }

    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        }
    }

    pub fn data(&self) -> DataConfig {
        DataConfig {
            seq_len: self.seq_len,
            val_fraction: self.val_fraction,
            seed: self.seed,
        }
    }

    /// The trainer's settings, without a layer schedule (the mode adds it:
    /// [`TuneOptions::settings`]).
    pub fn train(&self) -> TrainConfig {
        TrainConfig {
            lr: self.lr,
            decay: if self.cosine {
                Decay::Cosine
            } else {
                Decay::Constant
            },
            warmup_fraction: self.warmup,
            micro_batch: self.batch,
            accum_steps: self.accum,
            max_grad_norm: (self.clip > 0.0).then_some(self.clip),
            epochs: self.epochs,
            max_steps: self.steps,
            eval_every: self.eval_every,
            patience: self.patience,
            seed: self.seed,
            ..Default::default()
        }
    }

    pub fn mode_args(&self) -> ModeArgs {
        ModeArgs {
            mode: self.mode,
            exit_stride: self.exit_stride,
            window_schedule: self.window_schedule,
            partial_layers: self.partial_layers,
            depth_lr_power: self.window_lr_power,
            depth_steps_power: self.window_steps_power,
        }
    }

    /// The settings of a run on a model of `n_layers` blocks: the mode's exits and layer
    /// schedule (`train::mode_layers`, which refuses a mode the model cannot take). The
    /// other settings are checked by [`TuneSettings::validate`].
    pub fn settings(&self, n_layers: usize) -> Result<TuneSettings> {
        let ml = mode_layers(n_layers, &self.mode_args())?;
        let mut train = self.train();
        train.layers = ml.layers;
        Ok(TuneSettings {
            lora: self.lora(),
            data_config: self.data(),
            train,
            mode: self.mode,
            exits: ml.exits,
        })
    }
}

/// What a run is built from, for one model: [`TuneOptions::settings`], or read back from a
/// saved run (`edge-llm tune --resume`), whose file holds these fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TuneSettings {
    pub lora: LoraConfig,
    pub data_config: DataConfig,
    /// With the mode's layer schedule in `train.layers`.
    pub train: TrainConfig,
    #[serde(default)]
    pub mode: Mode,
    /// Block counts after which early exits sit (edge mode).
    #[serde(default)]
    pub exits: Vec<usize>,
}

impl TuneSettings {
    /// The checks of [`TuneOptions::validate`].
    pub fn validate(&self) -> Result<()> {
        super::validate(&self.lora, &self.data_config, &self.train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option names of npm/index.d.ts's `TuneOptions` interface, in order.
    fn npm_option_names() -> Vec<String> {
        let dts = include_str!("../../npm/index.d.ts");
        let start = dts
            .find("export interface TuneOptions {")
            .expect("npm/index.d.ts declares TuneOptions");
        let body = &dts[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
        let mut in_comment = false;
        let mut names = Vec::new();
        for line in body.lines().map(str::trim) {
            if line.starts_with("/*") {
                in_comment = true;
            }
            if !in_comment && !line.is_empty() && !line.starts_with("//") {
                let name = line.split(['?', ':']).next().unwrap().trim();
                names.push(name.to_string());
            }
            if line.ends_with("*/") {
                in_comment = false;
            }
        }
        names
    }

    #[test]
    fn npm_types_name_every_option() {
        let v = serde_json::to_value(TuneOptions::default()).unwrap();
        let rust: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        let mut npm = npm_option_names();
        let mut sorted = rust.clone();
        sorted.sort();
        npm.sort();
        assert_eq!(
            npm, sorted,
            "npm/index.d.ts's TuneOptions must name exactly the fields of train::TuneOptions"
        );
    }

    #[test]
    fn defaults_are_the_reference_settings() {
        let o = TuneOptions::default();
        assert_eq!((o.lr, o.lora_rank, o.seq_len, o.accum), (4e-4, 8, 256, 4));
        assert_eq!((o.clip, o.warmup, o.eval_every), (0.3, 0.03, 50));
        assert_eq!(o.lora_targets, Proj::ALL.to_vec());
        assert_eq!(TuneOptions::from_json("{}").unwrap(), o);
        assert!(TuneOptions::from_json(r#"{"lora_rnk": 4}"#).is_err());
        assert!(TuneOptions::from_json(r#"{"lora_rank": 0}"#).is_err());
        let o = TuneOptions::from_json(r#"{"mode": "edge", "exit_stride": 2}"#).unwrap();
        let s = o.settings(4).unwrap();
        assert_eq!(s.exits, vec![2, 4]);
        assert_eq!(s.train.layers.unwrap().windows.len(), 2);
        assert_eq!(s.train.max_grad_norm, Some(0.3));
    }
}
