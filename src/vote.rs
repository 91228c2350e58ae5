//! Exit voting (EDGE-LLM.md §3): every early exit predicts, and a rule combines their
//! predictions. The reference rule is [`Vote::Max`]: the most confident exit wins,
//! P(v) = max_k p_k(v) element-wise over exits, prediction = argmax P.
//!
//! Two uses: choosing among a few candidates (multiple-choice answers; [`pick_log`] works
//! on log-probabilities so long continuations do not underflow) and combining full
//! next-token distributions for generation ([`combine`]).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How the exits' predictions are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// Element-wise max of the exits' probabilities, then argmax (the reference rule).
    Max,
    /// Mean of the exits' probabilities, then argmax.
    Mean,
    /// Each exit votes for its argmax; most votes wins, ties go to the tied candidate with
    /// the higher max-probability over exits.
    Majority,
    /// The deepest exit alone.
    Last,
}

impl Vote {
    pub const ALL: [Vote; 4] = [Vote::Max, Vote::Mean, Vote::Majority, Vote::Last];

    pub fn name(self) -> &'static str {
        match self {
            Vote::Max => "max",
            Vote::Mean => "mean",
            Vote::Majority => "majority",
            Vote::Last => "last",
        }
    }
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Vote {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Vote::ALL
            .into_iter()
            .find(|v| v.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "vote rule '{s}' is not one of max, mean, majority, last"
                ))
            })
    }
}

/// Index of the first largest value (NaN never wins).
fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].partial_cmp(&v[best]).is_none() {
            best = i;
        }
    }
    best
}

/// log Σ exp(v) without overflow or underflow; −∞ for an empty or all −∞ input.
fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn check_shape<T>(rows: &[Vec<T>], what: &str) -> Result<usize> {
    let Some(first) = rows.first() else {
        return Err(Error::Invalid(format!("{what}: no exits to vote")));
    };
    let n = first.len();
    if n == 0 || rows.iter().any(|r| r.len() != n) {
        return Err(Error::Invalid(format!(
            "{what}: every exit needs the same, non-zero number of candidates"
        )));
    }
    Ok(n)
}

/// The winner among candidates given each exit's log-probabilities `log_p[exit][candidate]`
/// (exits shallow to deep). Same result as [`pick`] on the probabilities, with no
/// underflow: max and mean are monotone in their log-space forms.
pub fn pick_log(rule: Vote, log_p: &[Vec<f64>]) -> Result<usize> {
    let n = check_shape(log_p, "vote")?;
    let col_max = |c: usize| log_p.iter().map(|r| r[c]).fold(f64::NEG_INFINITY, f64::max);
    Ok(match rule {
        Vote::Max => argmax(&(0..n).map(col_max).collect::<Vec<_>>()),
        // log of the mean up to the constant −ln K, which does not change the argmax.
        Vote::Mean => argmax(
            &(0..n)
                .map(|c| log_sum_exp(log_p.iter().map(move |r| r[c])))
                .collect::<Vec<_>>(),
        ),
        Vote::Majority => {
            let mut votes = vec![0usize; n];
            for r in log_p {
                votes[argmax(r)] += 1;
            }
            let top = votes.iter().copied().max().unwrap_or(0);
            let mut best: Option<usize> = None;
            for c in (0..n).filter(|&c| votes[c] == top) {
                if best.is_none_or(|b| col_max(c) > col_max(b)) {
                    best = Some(c);
                }
            }
            best.unwrap_or(0)
        }
        Vote::Last => argmax(&log_p[log_p.len() - 1]),
    })
}

/// The winner among candidates given each exit's probabilities `p[exit][candidate]`.
pub fn pick(rule: Vote, p: &[Vec<f64>]) -> Result<usize> {
    let log_p: Vec<Vec<f64>> = p
        .iter()
        .map(|r| r.iter().map(|&x| x.ln()).collect())
        .collect();
    pick_log(rule, &log_p)
}

/// One next-token distribution from each exit's `dists[exit][vocab]` (each summing to 1):
/// max → the element-wise max, renormalised; mean → the mean; majority → a point mass on
/// the most-voted token (ties as in [`pick_log`]); last → the deepest exit's.
pub fn combine(rule: Vote, dists: &[Vec<f32>]) -> Result<Vec<f32>> {
    let n = check_shape(dists, "combine")?;
    let k = dists.len();
    Ok(match rule {
        Vote::Max => {
            let mut p = vec![0.0f32; n];
            for r in dists {
                for (a, &b) in p.iter_mut().zip(r) {
                    *a = a.max(b);
                }
            }
            let s: f32 = p.iter().sum();
            if s > 0.0 {
                p.iter_mut().for_each(|x| *x /= s);
            }
            p
        }
        Vote::Mean => {
            let mut p = vec![0.0f32; n];
            for r in dists {
                for (a, &b) in p.iter_mut().zip(r) {
                    *a += b;
                }
            }
            p.iter_mut().for_each(|x| *x /= k as f32);
            p
        }
        Vote::Majority => {
            let log_p: Vec<Vec<f64>> = dists
                .iter()
                .map(|r| r.iter().map(|&x| (x as f64).ln()).collect())
                .collect();
            let mut p = vec![0.0f32; n];
            p[pick_log(Vote::Majority, &log_p)?] = 1.0;
            p
        }
        Vote::Last => dists[k - 1].clone(),
    })
}

/// The rule a command uses: `asked`, or [`Vote::Max`] when the adapter has exits and none
/// was asked; None (the plain model) without exits. Asking without exits is an error.
pub fn resolve(asked: Option<Vote>, has_exits: bool) -> Result<Option<Vote>> {
    match (asked, has_exits) {
        (Some(r), false) => Err(Error::Invalid(format!(
            "--vote {r} needs an adapter with early exits ({} in its directory)",
            crate::adapter::EXITS_FILE
        ))),
        (asked, true) => Ok(Some(asked.unwrap_or(Vote::Max))),
        (None, false) => Ok(None),
    }
}
