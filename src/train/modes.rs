//! The tuning modes (`edge-llm tune --mode`, `edge-llm bench tune` and the page's Mode
//! select): one mapping from a mode to the exits a run adds and the layer schedule it
//! trains, so the CLI and the browser cannot drift apart.

use super::layers::{exits_every, LayerSchedule, WindowOrder};
use crate::reference::Span;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the layers of a run are tuned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// LoRA on every block of the model as given, full-depth backprop.
    #[default]
    Vanilla,
    /// The same on a compressed model (uniform compression first: `edge-llm compress`).
    CompressThenTune,
    /// LoRA on the last `--partial-layers` blocks only; the frozen blocks below are cached.
    Partial,
    /// LUC-compressed model, windows of blocks between early exits trained in turn.
    Edge,
}

impl Mode {
    /// In the order `bench tune` runs them (vanilla first: the others' ratios refer to it).
    pub const ALL: [Mode; 4] = [
        Mode::Vanilla,
        Mode::CompressThenTune,
        Mode::Partial,
        Mode::Edge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Vanilla => "vanilla",
            Mode::CompressThenTune => "compress-then-tune",
            Mode::Partial => "partial",
            Mode::Edge => "edge",
        }
    }

    /// Whether the mode trains windows of layers (which only the CPU backend runs).
    pub fn windowed(self) -> bool {
        matches!(self, Mode::Partial | Mode::Edge)
    }
}

/// The 30-block default model gets exits after blocks 6, 12, 18, 24 and 30: five windows
/// of six blocks. Six divides 30, so every window is the same size (the paper's 8 of 32
/// would leave a 6-block remainder), and a window is a fifth of the depth — close to the
/// reference's quarter, with one more exit to vote.
pub const DEFAULT_EXIT_STRIDE: usize = 6;

/// Edge mode's default [`LayerSchedule::depth_lr_power`]: the shallow windows of the
/// 30-block default model train at 4 %, 16 %, 36 % and 64 % of the LR. Measured on
/// ARC-Easy (300 steps, 200 validation questions): power 0 left the model below its
/// untuned accuracy (36 % voted) because the shallow windows, trained at exits far from
/// the head's space, moved their blocks away from what the deeper blocks expect; power 2
/// gave 54 %.
pub const DEFAULT_DEPTH_LR_POWER: f64 = 2.0;

/// Edge mode's default [`LayerSchedule::depth_steps_power`]: equal phases, as the paper.
pub const DEFAULT_DEPTH_STEPS_POWER: f64 = 0.0;

/// The mode settings of a new run.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeArgs {
    pub mode: Mode,
    pub exit_stride: usize,
    pub window_schedule: WindowOrder,
    pub partial_layers: usize,
    /// Edge mode: [`LayerSchedule::depth_lr_power`].
    pub depth_lr_power: f64,
    /// Edge mode: [`LayerSchedule::depth_steps_power`].
    pub depth_steps_power: f64,
}

impl Default for ModeArgs {
    fn default() -> Self {
        Self {
            mode: Mode::Vanilla,
            exit_stride: DEFAULT_EXIT_STRIDE,
            window_schedule: WindowOrder::Reference,
            partial_layers: DEFAULT_EXIT_STRIDE,
            depth_lr_power: DEFAULT_DEPTH_LR_POWER,
            depth_steps_power: DEFAULT_DEPTH_STEPS_POWER,
        }
    }
}

/// What a mode adds to a run: exits (block counts, edge mode) and the layer schedule
/// (None: every block trains at every step).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModeLayers {
    pub exits: Vec<usize>,
    pub layers: Option<LayerSchedule>,
}

/// The exits and layer schedule of `m.mode` on a model of `n_layers` blocks. An exit
/// stride larger than the model is clamped to it; a partial depth outside the model is an
/// error.
pub fn mode_layers(n_layers: usize, m: &ModeArgs) -> Result<ModeLayers> {
    Ok(match m.mode {
        Mode::Vanilla | Mode::CompressThenTune => ModeLayers::default(),
        Mode::Partial => {
            let k = m.partial_layers;
            if k == 0 || k > n_layers {
                return Err(Error::Invalid(format!(
                    "the blocks to tune must be between 1 and {n_layers}, the model's blocks \
                     (it is {k})"
                )));
            }
            ModeLayers {
                exits: Vec::new(),
                layers: Some(LayerSchedule {
                    windows: vec![Span {
                        layers: n_layers - k..n_layers,
                        exit: None,
                    }],
                    order: WindowOrder::Reference,
                    depth_lr_power: 0.0,
                    depth_steps_power: 0.0,
                }),
            }
        }
        Mode::Edge => {
            if !(m.depth_lr_power.is_finite() && m.depth_lr_power >= 0.0) {
                return Err(Error::Invalid(format!(
                    "the window learning-rate depth power must be a number of at least 0 \
                     (it is {})",
                    m.depth_lr_power
                )));
            }
            if !(m.depth_steps_power.is_finite() && m.depth_steps_power >= 0.0) {
                return Err(Error::Invalid(format!(
                    "the window steps depth power must be a number of at least 0 (it is {})",
                    m.depth_steps_power
                )));
            }
            let exits = exits_every(n_layers, m.exit_stride.min(n_layers))?;
            let mut ls = LayerSchedule::from_exits(&exits, m.window_schedule);
            ls.depth_lr_power = m.depth_lr_power;
            ls.depth_steps_power = m.depth_steps_power;
            let layers = Some(ls);
            ModeLayers { exits, layers }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_exits_and_windows() {
        let args = |mode, exit_stride, partial_layers| ModeArgs {
            mode,
            exit_stride,
            partial_layers,
            window_schedule: WindowOrder::Adaptive,
            depth_lr_power: 1.0,
            depth_steps_power: 0.5,
        };
        assert_eq!(
            mode_layers(30, &args(Mode::Vanilla, 6, 6)).unwrap(),
            ModeLayers::default()
        );
        let edge = mode_layers(30, &args(Mode::Edge, 6, 6)).unwrap();
        assert_eq!(edge.exits, vec![6, 12, 18, 24, 30]);
        let ls = edge.layers.unwrap();
        assert_eq!(ls.order, WindowOrder::Adaptive);
        assert_eq!(ls.windows.len(), 5);
        assert_eq!(ls.depth_lr_power, 1.0);
        assert_eq!(ls.depth_steps_power, 0.5);
        // A stride beyond the model is clamped: one window, one exit at the top.
        assert_eq!(
            mode_layers(2, &args(Mode::Edge, 6, 6)).unwrap().exits,
            vec![2]
        );
        let p = mode_layers(30, &args(Mode::Partial, 6, 4)).unwrap();
        assert!(p.exits.is_empty());
        assert_eq!(p.layers.unwrap().windows[0].layers, 26..30);
        assert!(mode_layers(2, &args(Mode::Partial, 6, 3)).is_err());
        assert!(mode_layers(2, &args(Mode::Partial, 6, 0)).is_err());
        let bad = ModeArgs {
            depth_lr_power: f64::NAN,
            ..args(Mode::Edge, 6, 6)
        };
        assert!(mode_layers(30, &bad).is_err());
        let bad = ModeArgs {
            depth_steps_power: -1.0,
            ..args(Mode::Edge, 6, 6)
        };
        assert!(mode_layers(30, &bad).is_err());
        assert!(Mode::Edge.windowed() && !Mode::CompressThenTune.windowed());
    }
}
