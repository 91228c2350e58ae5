//! LUC's allocation: from a profile and a budget (mean sparsity, mean bits) to each block's
//! sparsity and width ([`make_policy`]), and how far the profile's estimates support a
//! non-uniform choice at all ([`expected_gain`]).
//!
//! The sparsity rules ([`SparsityRule`]):
//! * `least-error`: the least total Fisher-estimated loss change at the target mean
//!   ([`allocate_sparsity`]);
//! * `shrunk` (the default): least-error's choice moved toward uniform by how much of its
//!   estimated gain survives cross-fitting, the choice made on one half of the Fisher rows
//!   judged by the other ([`ExpectedGain::shrink`]); a profile whose halves disagree gives
//!   uniform sparsity, one whose halves agree gives least-error's;
//! * `owl`: outlier-weighted layerwise sparsity (Yin et al. 2023): blocks with a larger share
//!   of outlier Wanda scores ([`super::profile::LayerProfile::outlier_ratio`]) are pruned
//!   less, linearly within ±[`OWL_LAMBDA`] of the target;
//! * `reference`: the paper's rule, linear in 1 − normalised sensitivity.
//!
//! Every rule keeps the mean sparsity exactly at the target. Widths are then allocated for
//! the blocks as pruned, never narrower than the target's own width
//! ([`super::policy::allocate_bits`] on the joint estimate).

use super::options::{CompressOptions, SparsityRule};
use super::policy::{
    allocate_bits, allocate_sparsity, interpolate, sparsity_from_sensitivity, Allocation, Pattern,
    Policy, MAX_LAYER_SPARSITY, MIN_LAYER_SPARSITY,
};
use super::profile::Profile;
use crate::formats::quant::BITS;
use crate::model::LlamaConfig;
use crate::reference::Proj;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// OWL's λ: block sparsities span at most target ± λ (the paper's default, 0.08).
pub const OWL_LAMBDA: f64 = 0.08;

/// Weights per block (all 7 projections), for the bit budget.
pub fn layer_counts(c: &LlamaConfig) -> Vec<usize> {
    let per: usize = Proj::ALL
        .iter()
        .map(|p| {
            let (k, n) = p.shape(c);
            k * n
        })
        .sum();
    vec![per; c.n_layers]
}

/// The target's own width: the widest of [`BITS`] not above the mean `bits`.
fn target_width(bits: f64) -> Option<u32> {
    BITS.iter().rev().find(|&&b| b as f64 <= bits).copied()
}

/// Least-error sparsities by `p`'s estimate at `width`.
fn least_error(p: &Profile, target: f64, width: Option<u32>) -> Result<Vec<f64>> {
    let (grid, err) = p.prune_errors(width);
    allocate_sparsity(&grid, &err, target, MIN_LAYER_SPARSITY, MAX_LAYER_SPARSITY)
}

/// Σ over blocks of `p`'s estimated loss change at sparsities `s` (stored at `width`).
pub fn estimated_error(p: &Profile, s: &[f64], width: Option<u32>) -> f64 {
    let (grid, err) = p.prune_errors(width);
    s.iter()
        .zip(&err)
        .map(|(&s, e)| interpolate(&grid, e, s))
        .sum()
}

/// What a non-uniform sparsity promises at a budget, and how far that holds up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpectedGain {
    pub sparsity: f64,
    pub bits: f64,
    /// Σ estimated loss change (nats) of uniform sparsity, by the whole estimate.
    pub uniform: f64,
    /// How much less least-error's choice is estimated to lose, as a fraction of
    /// `uniform`, judged by the rows that chose it (optimistic: it fits their noise).
    pub in_sample: f64,
    /// The choice made on each half of the Fisher rows, judged by the other half (the
    /// same fraction); None without two halves.
    pub cross_fitted: Option<[f64; 2]>,
    /// The share of the halves' own gain that held up on the other half, in [0, 1]; 1
    /// without two halves. The `shrunk` rule moves that far from uniform.
    pub shrink: f64,
}

impl ExpectedGain {
    /// The same in plain words, for the page and the CLI.
    pub fn summary(&self) -> String {
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        match self.cross_fitted {
            None => format!(
                "LUC's per-layer choice is estimated to lose {} less than uniform (one \
                 calibration estimate, so no check of its noise)",
                pct(self.in_sample)
            ),
            Some([a, b]) => {
                let verdict = if self.shrink >= 0.75 {
                    "the estimates support a per-layer choice"
                } else if self.shrink > 0.25 {
                    "the estimates partly support a per-layer choice, so LUC stays near uniform"
                } else {
                    "the estimates are too noisy to support a per-layer choice, so LUC stays \
                     (almost) uniform"
                };
                format!(
                    "LUC's per-layer choice is estimated to lose {} less than uniform; chosen \
                     on one half of the calibration rows and checked on the other, {} and {} \
                     ({} of the gain held): {verdict}",
                    pct(self.in_sample),
                    pct(a),
                    pct(b),
                    pct(self.shrink)
                )
            }
        }
    }
}

/// [`ExpectedGain`] of least-error allocation over uniform at mean `target` sparsity and
/// `bits`, from `p`.
pub fn expected_gain(p: &Profile, target: f64, bits: f64) -> Result<ExpectedGain> {
    let width = target_width(bits);
    let n = p.layers.len();
    let uniform = vec![target; n];
    let rel = |q: &Profile, s: &[f64]| -> f64 {
        let u = estimated_error(q, &uniform, width);
        if u > 0.0 {
            (u - estimated_error(q, s, width)) / u
        } else {
            0.0
        }
    };
    let full = least_error(p, target, width)?;
    let (cross_fitted, shrink) = match (p.half(0), p.half(1)) {
        (Some(a), Some(b)) => {
            let (sa, sb) = (
                least_error(&a, target, width)?,
                least_error(&b, target, width)?,
            );
            let own = (rel(&a, &sa) + rel(&b, &sb)) / 2.0;
            let cross = [rel(&b, &sa), rel(&a, &sb)];
            let held = (cross[0] + cross[1]) / 2.0;
            let shrink = if own > 0.0 {
                (held / own).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (Some(cross), shrink)
        }
        _ => (None, 1.0),
    };
    Ok(ExpectedGain {
        sparsity: target,
        bits,
        uniform: estimated_error(p, &uniform, width),
        in_sample: rel(p, &full),
        cross_fitted,
        shrink,
    })
}

/// `v` shifted by one constant and clamped to [`lo`, `hi`] so that its mean is `target`
/// (bisection on the shift; the clamped mean is monotone in it).
fn with_mean(v: &[f64], target: f64, lo: f64, hi: f64) -> Vec<f64> {
    let at = |c: f64| v.iter().map(|x| (x + c).clamp(lo, hi)).collect::<Vec<_>>();
    let mean = |c: f64| at(c).iter().sum::<f64>() / v.len().max(1) as f64;
    let (mut a, mut b) = (-1.0, 1.0);
    for _ in 0..100 {
        let m = (a + b) / 2.0;
        if mean(m) < target {
            a = m;
        } else {
            b = m;
        }
    }
    let mut s = at((a + b) / 2.0);
    // Settle the last rounding on a block with room, so the mean is the target exactly.
    let excess = s.iter().sum::<f64>() - target * s.len() as f64;
    if let Some(x) = s.iter_mut().find(|x| (lo..=hi).contains(&(**x - excess))) {
        *x -= excess;
    }
    s
}

/// OWL's sparsities: target − 2λ·(r_l − mean r), r the outlier ratios scaled to [0, 1];
/// uniform when every block has the same ratio.
pub fn owl_sparsity(outliers: &[f64], target: f64, lambda: f64) -> Vec<f64> {
    let (min, max) = outliers
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) {
        return vec![target; outliers.len()];
    }
    let r: Vec<f64> = outliers.iter().map(|x| (x - min) / (max - min)).collect();
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    let raw: Vec<f64> = r
        .iter()
        .map(|x| target - 2.0 * lambda * (x - mean))
        .collect();
    with_mean(&raw, target, MIN_LAYER_SPARSITY, MAX_LAYER_SPARSITY)
}

/// The policy `o` asks for on a model of `c`'s shape: the user's (already parsed), or
/// uniform, or LUC from `profile`. Also returns messages about choices made for the user
/// (with LUC: [`ExpectedGain::summary`]).
pub fn make_policy(
    c: &LlamaConfig,
    o: &CompressOptions,
    user: Option<Policy>,
    profile: Option<&Profile>,
) -> Result<(Policy, Vec<String>)> {
    let n = c.n_layers;
    let mut messages = Vec::new();
    if let Some(p) = user {
        p.validate(n)?;
        return Ok((p, messages));
    }
    let (sparsity, bits) = match o.allocation {
        Allocation::Uniform | Allocation::Manual => {
            if o.bits.fract() != 0.0 {
                return Err(Error::Invalid(format!(
                    "--bits {} with uniform allocation must be 2, 3, 4 or 8",
                    o.bits
                )));
            }
            (vec![o.sparsity; n], vec![o.bits as u32; n])
        }
        Allocation::Luc => {
            let p = profile.ok_or_else(|| {
                Error::Invalid("--allocation luc needs --calib for the profile".into())
            })?;
            p.check(n)?;
            // The target's own width (the widest not above the mean): what most blocks get.
            let width = target_width(o.bits);
            let sparsity = if o.pattern == Pattern::TwoOfFour {
                messages.push("2:4: every layer at 0.5 sparsity; LUC allocates bits only".into());
                vec![o.sparsity; n]
            } else {
                let gain = (o.sparsity > 0.0)
                    .then(|| expected_gain(p, o.sparsity, o.bits))
                    .transpose()?;
                if let Some(g) = &gain {
                    messages.push(g.summary());
                }
                match o.sparsity_rule {
                    SparsityRule::LeastError => least_error(p, o.sparsity, width)?,
                    SparsityRule::Shrunk => {
                        let full = least_error(p, o.sparsity, width)?;
                        let a = gain.map_or(1.0, |g| g.shrink);
                        full.iter()
                            .map(|s| o.sparsity + a * (s - o.sparsity))
                            .collect()
                    }
                    SparsityRule::Owl => {
                        let r: Vec<f64> = p.layers.iter().map(|l| l.outlier_ratio).collect();
                        owl_sparsity(&r, o.sparsity, OWL_LAMBDA)
                    }
                    SparsityRule::Reference => sparsity_from_sensitivity(
                        &p.prune_sensitivity(),
                        o.sparsity,
                        MIN_LAYER_SPARSITY,
                        MAX_LAYER_SPARSITY,
                    )?,
                }
            };
            // Widths for the blocks as pruned (a sparse block's width costs more), none
            // narrower than the target's own width: the estimates are second order and
            // underrate a width far below (SmolLM2-135M at a mean of 3 bits: LUC gave one
            // block 2 bits to give the last 4, by the Fisher estimate a gain, and Shakespeare
            // perplexity went from 268 (uniform) to 314).
            let mut err = p.quant_errors_at(&sparsity);
            for e in &mut err {
                for (v, &b) in e.iter_mut().zip(&BITS) {
                    if width.is_some_and(|w| b < w) {
                        *v = f64::INFINITY;
                    }
                }
            }
            let bits = allocate_bits(&err, &layer_counts(c), o.bits)?;
            (sparsity, bits)
        }
    };
    let mut p = Policy::from_layers(
        &sparsity,
        &bits,
        match o.allocation {
            Allocation::Luc => Allocation::Luc,
            _ => Allocation::Uniform,
        },
    )?;
    p.pattern = o.pattern;
    p.prune = o.method;
    p.quant = o.quant;
    p.group = o.group;
    p.symmetric = o.symmetric;
    p.validate(n)?;
    Ok((p, messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::profile::{
        FisherLevels, LayerProfile, ProfileOptions, FISHER_SPARSITIES, PROFILE_VERSION, SPARSITIES,
    };

    /// Fisher levels whose pruning error is a·s² (the same at every width).
    fn levels(a: f64) -> FisherLevels {
        let prune: Vec<f64> = FISHER_SPARSITIES.iter().map(|s| a * s * s).collect();
        FisherLevels {
            joint: prune.iter().map(|&e| vec![e; BITS.len()]).collect(),
            quant: vec![0.0; BITS.len()],
            prune,
        }
    }

    /// A profile of blocks with error a_l·s² by the whole estimate and each half's own.
    fn profile(whole: &[f64], halves: Option<(&[f64], &[f64])>) -> Profile {
        let layers = whole
            .iter()
            .enumerate()
            .map(|(l, &a)| {
                let w = levels(a);
                LayerProfile {
                    prune_mse: vec![1.0; SPARSITIES.len()],
                    quant_mse: vec![1.0; BITS.len()],
                    prune_dloss: Vec::new(),
                    quant_dloss: Vec::new(),
                    prune_fisher: w.prune,
                    quant_fisher: w.quant,
                    joint_fisher: w.joint,
                    fisher_halves: halves
                        .map(|(x, y)| vec![levels(x[l]), levels(y[l])])
                        .unwrap_or_default(),
                    outlier_ratio: 0.0,
                }
            })
            .collect();
        Profile {
            version: PROFILE_VERSION,
            key: String::new(),
            options: ProfileOptions::default(),
            calib_rows: 4,
            calib_tokens: 4,
            sparsities: SPARSITIES.to_vec(),
            bits: BITS.to_vec(),
            base_loss: None,
            layers,
            seconds: 0.0,
        }
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// Halves that agree keep least-error's whole gain; halves that rank the blocks
    /// oppositely keep none of it, and `shrunk` is then uniform, at the exact mean.
    #[test]
    fn the_gain_held_across_halves_decides_how_far_from_uniform() {
        let a = [1.0, 4.0, 2.0, 8.0];
        let agree = profile(&a, Some((&a, &a)));
        let g = expected_gain(&agree, 0.5, 4.0).unwrap();
        assert!(g.in_sample > 0.05, "{g:?}");
        assert!((g.shrink - 1.0).abs() < 1e-9, "{g:?}");
        let rev = [8.0, 2.0, 4.0, 1.0];
        let mixed = [4.5, 3.0, 3.0, 4.5];
        let disagree = profile(&mixed, Some((&a, &rev)));
        let g = expected_gain(&disagree, 0.5, 4.0).unwrap();
        let [x, y] = g.cross_fitted.unwrap();
        assert!(x < 0.0 && y < 0.0 && g.shrink == 0.0, "{g:?}");
        assert!(g.summary().contains("too noisy"), "{}", g.summary());
        let spec = crate::model::tiny::TinySpec {
            n_layers: 4,
            ..Default::default()
        };
        let bytes = crate::model::tiny::generate(&spec).unwrap();
        let c = crate::model::ModelFile::from_bytes(bytes).unwrap().config;
        let o = CompressOptions {
            sparsity: 0.5,
            ..CompressOptions::default()
        };
        assert_eq!(o.sparsity_rule, SparsityRule::Shrunk, "the default rule");
        let (p, messages) = make_policy(&c, &o, None, Some(&disagree)).unwrap();
        assert!(
            p.layers.iter().all(|l| (l.sparsity - 0.5).abs() < 1e-12),
            "{p:?}"
        );
        assert!(messages.iter().any(|m| m.contains("less than uniform")));
        // Where the halves agree, shrunk is least-error: the cheap blocks pruned harder.
        let (p, _) = make_policy(&c, &o, None, Some(&agree)).unwrap();
        let s: Vec<f64> = p.layers.iter().map(|l| l.sparsity).collect();
        assert!((mean(&s) - 0.5).abs() < 1e-9 && s[0] > s[3], "{s:?}");
        let le = CompressOptions {
            sparsity_rule: SparsityRule::LeastError,
            ..o.clone()
        };
        let q = make_policy(&c, &le, None, Some(&agree)).unwrap().0;
        let near = |a: &Policy, b: &Policy| {
            a.layers
                .iter()
                .zip(&b.layers)
                .all(|(x, y)| (x.sparsity - y.sparsity).abs() < 1e-12)
        };
        assert!(near(&p, &q), "{p:?} {q:?}");
        // Without halves: no check of the noise, and least-error's choice.
        let g = expected_gain(&profile(&a, None), 0.5, 4.0).unwrap();
        assert!(g.cross_fitted.is_none() && g.shrink == 1.0, "{g:?}");
    }

    #[test]
    fn owl_spares_the_blocks_with_most_outliers_at_the_exact_mean() {
        let s = owl_sparsity(&[0.001, 0.003, 0.002, 0.002], 0.5, 0.08);
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-12, "{s:?}");
        assert!(s[1] < s[2] && s[2] < s[0], "{s:?}");
        assert!((s[0] - s[1] - 0.16).abs() < 1e-9, "spans 2λ: {s:?}");
        assert_eq!(owl_sparsity(&[0.2; 3], 0.4, 0.08), vec![0.4; 3]);
        // Near the clamp, the mean still holds.
        let s = owl_sparsity(&[0.0, 1.0, 1.0, 1.0], 0.05, 0.2);
        assert!(s.iter().all(|&x| (0.0..=0.9).contains(&x)), "{s:?}");
        assert!((s.iter().sum::<f64>() / 4.0 - 0.05).abs() < 1e-12, "{s:?}");
    }
}
