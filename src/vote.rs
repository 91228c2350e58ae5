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

/// The rule used when an adapter has exits and none is asked: the deepest exit, since the
/// shallow exits measured so far are weak (bench tune v7: 26–40 % on ARC-Easy against the
/// last exit's 58.42 %, and max voting 58.25 %), so voting over them can only lose.
pub const DEFAULT: Vote = Vote::Last;

/// The rule a command uses: `asked`, or [`DEFAULT`] when the adapter has exits and none
/// was asked; None (the plain model) without exits. Asking without exits is an error.
pub fn resolve(asked: Option<Vote>, has_exits: bool) -> Result<Option<Vote>> {
    match (asked, has_exits) {
        (Some(r), false) => Err(Error::Invalid(format!(
            "--vote {r} needs an adapter with early exits ({} in its directory)",
            crate::adapter::EXITS_FILE
        ))),
        (asked, true) => Ok(Some(asked.unwrap_or(DEFAULT))),
        (None, false) => Ok(None),
    }
}

/// Predictions of an error-weighted rule fitted leave-one-out, for questions whose exits'
/// log-likelihoods are `scores[question][exit][choice]` and answers `answers`: for each
/// question, exit k's weight is w_k = ln((C − 1)·a_k / (1 − a_k)) (SAMME's weight for C
/// choices; 0 for an exit no better than chance), a_k its accuracy on every *other*
/// question, and the winner is argmax_c Σ_k w_k·log p_k(c), p_k exit k's probabilities
/// normalised over the choices. So no question's answer shapes the weights it is voted
/// with; with no exit better than chance the last exit decides.
pub fn fitted_leave_one_out(scores: &[Vec<Vec<f64>>], answers: &[usize]) -> Result<Vec<usize>> {
    if scores.len() != answers.len() {
        return Err(Error::Invalid(format!(
            "fitted vote: {} questions scored, {} answers",
            scores.len(),
            answers.len()
        )));
    }
    let exits = scores.first().map_or(0, |q| q.len());
    let mut right = vec![vec![false; exits]; scores.len()];
    for ((q, r), &answer) in scores.iter().zip(&mut right).zip(answers) {
        check_shape(q, "fitted vote")?;
        if q.len() != exits {
            return Err(Error::Invalid(
                "fitted vote: every question needs the same exits".into(),
            ));
        }
        for (k, s) in q.iter().enumerate() {
            r[k] = argmax(s) == answer;
        }
    }
    let totals: Vec<usize> = (0..exits)
        .map(|k| right.iter().filter(|r| r[k]).count())
        .collect();
    let others = (scores.len() - 1).max(1) as f64;
    let mut out = Vec::with_capacity(scores.len());
    for (q, r) in scores.iter().zip(&right) {
        let choices = q[0].len() as f64;
        let weights: Vec<f64> = (0..exits)
            .map(|k| {
                let acc = ((totals[k] - usize::from(r[k])) as f64 / others).clamp(1e-3, 1.0 - 1e-3);
                ((choices - 1.0) * acc / (1.0 - acc)).ln().max(0.0)
            })
            .collect();
        if weights.iter().all(|&w| w == 0.0) {
            out.push(argmax(&q[exits - 1]));
            continue;
        }
        let pooled: Vec<f64> = (0..q[0].len())
            .map(|c| {
                q.iter()
                    .zip(&weights)
                    .map(|(s, &w)| {
                        let norm = log_sum_exp(s.iter().copied());
                        if w == 0.0 {
                            0.0
                        } else {
                            w * (s[c] - norm)
                        }
                    })
                    .sum()
            })
            .collect();
        out.push(argmax(&pooled));
    }
    Ok(out)
}
