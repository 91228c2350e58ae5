//! Adaptive layer tuning's schedule: which window of blocks trains at each optimizer step.
//!
//! Windows are the blocks between consecutive exits (exit k after block `exits[k]` closes
//! window k), so each window's loss is read at its own exit. Two orders:
//! - **reference**: the steps split into equal phases, one per window, shallow to deep,
//!   each visited once (the paper's released schedule);
//! - **adaptive**: a first sweep as above over half of the steps (so every layer is
//!   updated), then phases of the same length each given to the window whose last phase
//!   lowered the model's loss the most per step; ties go to the deeper window. The loss is
//!   the deepest exit's on a few fixed probe rows (a forward through the whole model at
//!   every phase boundary), because that is what the tuned model answers with: a window's
//!   own exit loss says how fast that exit learns (the shallow ones, far from the head's
//!   space, fall fastest), not how much the window helps the model.
//!
//! The phases run so far, with their losses and probe losses, are part of the checkpoint,
//! so a resumed adaptive run makes the same choices as an uninterrupted one.

use crate::reference::Span;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowOrder {
    Reference,
    Adaptive,
}

impl std::str::FromStr for WindowOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reference" => Ok(Self::Reference),
            "adaptive" => Ok(Self::Adaptive),
            _ => Err(Error::Invalid(format!(
                "window schedule {s:?}: expected reference or adaptive"
            ))),
        }
    }
}

/// The windows a run trains and in what order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSchedule {
    pub windows: Vec<Span>,
    pub order: WindowOrder,
    /// A window's learning rate is the run's × (its last block ÷ the deepest window's
    /// last block)^power: 0 trains every window alike; above 0 shallow windows, whose
    /// exits are far from the head's space, move their blocks less (the deeper blocks
    /// were tuned on what those blocks output), as LayerSkip weights early-exit losses
    /// less the shallower the exit.
    #[serde(default)]
    pub depth_lr_power: f64,
    /// Reference order: window k's share of the steps is ∝ (its last block ÷ the deepest
    /// window's last block)^power: 0 gives equal phases (the paper's); above 0 the deep
    /// windows, which feed the head directly, get more of the steps and the shallow ones
    /// fewer. The adaptive order keeps equal phases.
    #[serde(default)]
    pub depth_steps_power: f64,
}

/// One phase of a run: a window trained from step `start` (0-based) with these losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub window: usize,
    pub start: u64,
    /// Stored as bit patterns: JSON numbers need not round-trip exactly, and a resumed
    /// adaptive run must make the same choices.
    #[serde(with = "f64_bits")]
    pub losses: Vec<f64>,
    /// Adaptive order: the probe loss (deepest exit, [`PROBE_ROWS`] rows) when the phase
    /// started; empty in the reference order.
    #[serde(default, with = "f64_bits")]
    pub probe: Vec<f64>,
}

/// Rows the adaptive order's probe loss is measured on (the first validation rows, or the
/// first training rows when there are none).
pub const PROBE_ROWS: usize = 4;

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let bits: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
        bits.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(f64::from_bits)
            .collect())
    }
}

/// Exits after every `stride` blocks, the last after the model's last block (a shorter
/// final window when `stride` does not divide `n_layers`).
pub fn exits_every(n_layers: usize, stride: usize) -> Result<Vec<usize>> {
    if stride == 0 || stride > n_layers {
        return Err(Error::Invalid(format!(
            "exit every must be between 1 and {n_layers} blocks, the model's blocks (it is {stride})"
        )));
    }
    let mut v: Vec<usize> = (1..=n_layers / stride).map(|k| k * stride).collect();
    if v.last() != Some(&n_layers) {
        v.push(n_layers);
    }
    Ok(v)
}

impl LayerSchedule {
    /// One window per exit: blocks (exits[k−1], exits[k]], read at exit k.
    pub fn from_exits(exits: &[usize], order: WindowOrder) -> Self {
        let windows = exits
            .iter()
            .enumerate()
            .map(|(k, &end)| Span {
                layers: if k == 0 { 0 } else { exits[k - 1] }..end,
                exit: Some(k),
            })
            .collect();
        Self {
            windows,
            order,
            depth_lr_power: 0.0,
            depth_steps_power: 0.0,
        }
    }

    /// (window `w`'s last block ÷ the deepest window's last block)^`power` (1 for power 0
    /// or a window that does not exist).
    fn depth_scale(&self, w: usize, power: f64) -> f64 {
        let deepest = self.windows.iter().map(|s| s.layers.end).max().unwrap_or(0);
        match self.windows.get(w) {
            Some(s) if deepest > 0 && power != 0.0 => {
                (s.layers.end as f64 / deepest as f64).powf(power)
            }
            _ => 1.0,
        }
    }

    /// The multiplier of window `w`'s learning rate (see `depth_lr_power`).
    pub fn lr_multiplier(&self, w: usize) -> f64 {
        self.depth_scale(w, self.depth_lr_power)
    }

    /// Where each phase of the first sweep starts, and where the sweep ends (n + 1 step
    /// numbers for n windows, the last `total` for the reference order): equal phases, or
    /// shares by `depth_steps_power` in the reference order, rounded so that every window
    /// gets at least one step when `total` allows.
    pub fn phase_starts(&self, total: u64) -> Vec<u64> {
        let n = self.windows.len().max(1);
        let equal = |len: u64| (0..=n as u64).map(|k| k * len).collect::<Vec<u64>>();
        match self.order {
            WindowOrder::Adaptive => equal((total / (2 * n as u64)).max(1)),
            WindowOrder::Reference if self.depth_steps_power == 0.0 => {
                equal(total.div_ceil(n as u64).max(1))
            }
            WindowOrder::Reference => {
                let w: Vec<f64> = (0..n)
                    .map(|k| self.depth_scale(k, self.depth_steps_power))
                    .collect();
                let sum: f64 = w.iter().sum();
                let spare = total.saturating_sub(n as u64) as f64;
                let mut acc = 0.0;
                let mut starts = vec![0];
                for (k, wk) in w.iter().enumerate() {
                    acc += wk;
                    // One step each, the rest by share.
                    starts.push((k as u64 + 1) + (spare * acc / sum).round() as u64);
                }
                starts
            }
        }
    }

    /// Steps of window `w`'s phases in a run of `total` steps.
    pub fn phase_len(&self, w: usize, total: u64) -> u64 {
        let s = self.phase_starts(total);
        let k = w.min(s.len().saturating_sub(2));
        (s[k + 1] - s[k]).max(1)
    }

    /// Whether step `step` starts a phase, given the phases run before it.
    pub fn opens_phase(&self, step: u64, total: u64, phases: &[Phase]) -> bool {
        phases
            .last()
            .is_none_or(|p| step >= p.start + self.phase_len(p.window, total))
    }

    /// The window of step `step` (0-based) of `total`, given the phases run before it and
    /// (adaptive order, at a phase boundary) the probe loss now, which ends the last phase.
    pub fn window_at(&self, step: u64, total: u64, phases: &[Phase], probe: Option<f64>) -> usize {
        let n = self.windows.len();
        let starts = self.phase_starts(total);
        let sweep_end = starts.last().copied().unwrap_or(0);
        if n == 0 {
            return 0;
        }
        if step < sweep_end || self.order == WindowOrder::Reference {
            let k = starts[1..].iter().filter(|&&s| s <= step).count();
            return k.min(n - 1);
        }
        // Adaptive, past the first sweep: keep the phase's window until its end.
        if let Some(last) = phases.last() {
            if step < last.start + self.phase_len(last.window, total) && step >= last.start {
                return last.window;
            }
        }
        // Each phase's probe gain per step: its start's probe minus the next phase's (or,
        // for the last one, `probe`), over its steps; a window's latest phase counts.
        let mut best = (n - 1, f64::NEG_INFINITY);
        for w in 0..n {
            let Some(i) = phases.iter().rposition(|ph| ph.window == w) else {
                continue;
            };
            let end = match phases.get(i + 1) {
                Some(next) => next.probe.first().copied(),
                None => probe,
            };
            let (Some(&start), Some(end)) = (phases[i].probe.first(), end) else {
                continue;
            };
            let g = (start - end) / phases[i].losses.len().max(1) as f64;
            if g >= best.1 {
                best = (w, g);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_cover_the_model() {
        assert_eq!(exits_every(30, 6).unwrap(), vec![6, 12, 18, 24, 30]);
        assert_eq!(exits_every(30, 8).unwrap(), vec![8, 16, 24, 30]);
        assert_eq!(exits_every(4, 4).unwrap(), vec![4]);
        assert!(exits_every(4, 0).is_err() && exits_every(4, 5).is_err());
        let s = LayerSchedule::from_exits(&[8, 16, 24, 30], WindowOrder::Reference);
        assert_eq!(s.windows[0].layers, 0..8);
        assert_eq!(s.windows[3].layers, 24..30);
        assert_eq!(s.windows[3].exit, Some(3));
    }

    #[test]
    fn reference_visits_each_window_once_shallow_to_deep() {
        let s = LayerSchedule::from_exits(&[2, 4, 6], WindowOrder::Reference);
        let w: Vec<usize> = (0..9).map(|t| s.window_at(t, 9, &[], None)).collect();
        assert_eq!(w, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
        // 10 steps: phases of 4, 4, 2.
        let w: Vec<usize> = (0..10).map(|t| s.window_at(t, 10, &[], None)).collect();
        assert_eq!(w, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn adaptive_sweeps_then_follows_the_largest_probe_gain() {
        let s = LayerSchedule::from_exits(&[2, 4, 6], WindowOrder::Adaptive);
        // 12 steps: phases of 2; the sweep takes steps 0..6.
        assert_eq!(s.phase_len(0, 12), 2);
        let phase = |window, start, probe: f64| Phase {
            window,
            start,
            // The windows' own exit losses: window 0's falls fastest, which the criterion
            // must not follow.
            losses: vec![20.0, 10.0 + window as f64],
            probe: vec![probe],
        };
        let phases = vec![phase(0, 0, 3.0), phase(1, 2, 2.9), phase(2, 4, 2.5)];
        let sweep: Vec<usize> = (0..6).map(|t| s.window_at(t, 12, &phases, None)).collect();
        assert_eq!(sweep, vec![0, 0, 1, 1, 2, 2]);
        // Probe gains per step: window 0 (3.0 → 2.9) 0.05, window 1 (2.9 → 2.5) 0.2,
        // window 2 (2.5 → 2.4, the probe now) 0.05: window 1.
        assert!(s.opens_phase(6, 12, &phases));
        assert_eq!(s.window_at(6, 12, &phases, Some(2.4)), 1);
        // Window 2 lowered it more: 2.5 → 1.5.
        assert_eq!(s.window_at(6, 12, &phases, Some(1.5)), 2);
        let mut more = phases.clone();
        more.push(Phase {
            window: 1,
            start: 6,
            losses: vec![2.0],
            probe: vec![2.4],
        });
        assert!(!s.opens_phase(7, 12, &more));
        assert_eq!(
            s.window_at(7, 12, &more, None),
            1,
            "a phase runs to its end"
        );
        more[3].losses.push(2.0);
        assert!(s.opens_phase(8, 12, &more));
        // Window 1's latest phase gained nothing (2.4 → 2.4): window 0 (0.05) and window 2
        // (2.5 → 2.4, 0.05) tie, and ties go to the deeper window.
        assert_eq!(s.window_at(8, 12, &more, Some(2.4)), 2);
        // Without probes (a phase from an older checkpoint) a window is not chosen on
        // nothing: the deepest.
        let bare: Vec<Phase> = phases
            .iter()
            .map(|p| Phase {
                probe: vec![],
                ..p.clone()
            })
            .collect();
        assert_eq!(s.window_at(6, 12, &bare, Some(1.0)), 2);
    }

    #[test]
    fn an_empty_schedule_does_not_panic() {
        // A hand-edited tune_run.json can hold no windows; the trainer then refuses it.
        let s = LayerSchedule {
            windows: Vec::new(),
            order: WindowOrder::Adaptive,
            depth_lr_power: 1.0,
            depth_steps_power: 1.0,
        };
        assert_eq!(s.lr_multiplier(0), 1.0);
        assert_eq!(s.phase_len(0, 10), 5);
        let _ = s.window_at(7, 10, &[], None);
    }

    #[test]
    fn depth_scales_the_learning_rate() {
        let mut s = LayerSchedule::from_exits(&[6, 12, 18, 24, 30], WindowOrder::Reference);
        assert!((0..5).all(|w| s.lr_multiplier(w) == 1.0));
        s.depth_lr_power = 2.0;
        let m: Vec<f64> = (0..5).map(|w| s.lr_multiplier(w)).collect();
        for (got, want) in m.iter().zip([0.04, 0.16, 0.36, 0.64, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{m:?}");
        }
    }

    #[test]
    fn deep_windows_can_get_more_steps() {
        let mut s = LayerSchedule::from_exits(&[6, 12, 18, 24, 30], WindowOrder::Reference);
        s.depth_steps_power = 1.0;
        // Shares 1:2:3:4:5 of the 295 steps left after one each: 19.7, 39.3, 59, 78.7, 98.3.
        assert_eq!(s.phase_starts(300), vec![0, 21, 61, 121, 201, 300]);
        let lens: Vec<u64> = (0..5).map(|w| s.phase_len(w, 300)).collect();
        assert_eq!(lens, vec![21, 40, 60, 80, 99]);
        let w: Vec<usize> = (0..300).map(|t| s.window_at(t, 300, &[], None)).collect();
        for (k, &len) in lens.iter().enumerate() {
            assert_eq!(w.iter().filter(|&&x| x == k).count() as u64, len);
        }
        assert!(
            w.windows(2).all(|p| p[0] <= p[1]),
            "shallow to deep, each once"
        );
        // Fewer steps than windows: one step each while they last.
        let w: Vec<usize> = (0..3).map(|t| s.window_at(t, 3, &[], None)).collect();
        assert_eq!(w, vec![0, 1, 2]);
        // Power 0 is the equal split; the adaptive order ignores the power.
        s.depth_steps_power = 0.0;
        assert_eq!(s.phase_starts(300), vec![0, 60, 120, 180, 240, 300]);
        s.depth_steps_power = 1.0;
        s.order = WindowOrder::Adaptive;
        assert_eq!(s.phase_starts(300), vec![0, 30, 60, 90, 120, 150]);
    }
}
