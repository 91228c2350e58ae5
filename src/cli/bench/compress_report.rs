//! `bench compress`'s choice of rule (development texts only) and its tables: each
//! policy's held-out perplexity and zero-shot accuracy, mean ± spread over calibration sets,
//! and the targets of issue 24 checked on the test split.

use super::write_outputs;
use crate::compress::allocation::ExpectedGain;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// One model's scores (perplexity per text, accuracy per task once measured).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Scores {
    pub key: String,
    pub dev: Vec<f64>,
    pub test: Vec<f64>,
    pub accuracy: Option<Vec<f64>>,
}

/// What the report says about the run and where it goes.
pub(super) struct Setup<'a> {
    /// The settings, the first paragraph of table.md.
    pub header: String,
    /// Names of the test texts and of the zero-shot tasks, in score order.
    pub test: Vec<&'a str>,
    pub mc: Vec<&'a str>,
    pub out: &'a Path,
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) struct Budget {
    pub sparsity: f64,
    pub bits: f64,
}

/// One compressed model and its scores.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Entry {
    pub calib: String,
    pub budget: Budget,
    /// "uniform" or the LUC sparsity rule.
    pub policy: String,
    pub path: PathBuf,
    pub layer_sparsity: Vec<f64>,
    pub scores: Scores,
}

/// Ratios of `policy`'s perplexities to uniform's at `b`, paired by calibration set and
/// text (`dev` or test).
fn ratios(entries: &[Entry], b: Budget, policy: &str, dev: bool) -> Vec<f64> {
    let pick = |e: &Entry| {
        if dev {
            e.scores.dev.clone()
        } else {
            e.scores.test.clone()
        }
    };
    let mut out = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.budget == b && e.policy == policy)
    {
        let u = entries
            .iter()
            .find(|u| u.budget == b && u.policy == "uniform" && u.calib == e.calib);
        if let Some(u) = u {
            out.extend(pick(e).iter().zip(pick(u)).map(|(x, y)| x / y));
        }
    }
    out
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean and (population) standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = mean(v);
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64;
    (m, var.sqrt())
}

/// Per budget, the rule with the least mean log ratio to uniform on the development texts.
pub(super) fn choose(entries: &[Entry], budgets: &[(f64, f64)]) -> Vec<(Budget, String)> {
    let mut out = Vec::new();
    for &(sparsity, bits) in budgets {
        let b = Budget { sparsity, bits };
        let mut rules: Vec<&str> = Vec::new();
        for e in entries
            .iter()
            .filter(|e| e.budget == b && e.policy != "uniform")
        {
            if !rules.contains(&e.policy.as_str()) {
                rules.push(&e.policy);
            }
        }
        let score = |r: &str| {
            mean(
                &ratios(entries, b, r, true)
                    .iter()
                    .map(|x| x.ln())
                    .collect::<Vec<_>>(),
            )
        };
        if let Some(best) = rules
            .into_iter()
            .min_by(|x, y| score(x).total_cmp(&score(y)))
        {
            out.push((b, best.to_owned()));
        }
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:+.1} %", 100.0 * x)
}

pub(super) fn report(
    setup: &Setup,
    dense: &Scores,
    entries: &[Entry],
    chosen: &[(Budget, String)],
    gains: &[(String, ExpectedGain)],
) -> Result<()> {
    let mut md = setup.header.clone();
    let mut summaries = Vec::new();
    for (b, rule) in chosen {
        md += &format!(
            "### Mean sparsity {}, {} bits (chosen on the development texts: {rule})\n\n",
            b.sparsity, b.bits
        );
        md += "| policy | dev vs uniform |";
        for n in &setup.test {
            md += &format!(" {n} |");
        }
        md += " test vs uniform | worst |";
        for n in &setup.mc {
            md += &format!(" {n} acc |");
        }
        md += "\n|---|---:|";
        md += &"---:|".repeat(setup.test.len() + 2 + setup.mc.len());
        md += "\n| dense | |";
        for v in &dense.test {
            md += &format!(" {v:.2} |");
        }
        md += " | |";
        for v in dense.accuracy.iter().flatten() {
            md += &format!(" {:.1} % |", 100.0 * v);
        }
        md += "\n";
        let mut policies: Vec<&str> = vec!["uniform"];
        for e in entries.iter().filter(|e| e.budget == *b) {
            if !policies.contains(&e.policy.as_str()) {
                policies.push(&e.policy);
            }
        }
        for p in policies {
            let rows: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.budget == *b && e.policy == p)
                .collect();
            let label = if p == rule {
                format!("**{p}** (chosen)")
            } else {
                p.to_owned()
            };
            let dev = ratios(entries, *b, p, true);
            let test = ratios(entries, *b, p, false);
            md += &format!(
                "| {label} | {} |",
                if p == "uniform" {
                    "".into()
                } else {
                    pct(mean(&dev) - 1.0)
                }
            );
            for t in 0..setup.test.len() {
                let v: Vec<f64> = rows
                    .iter()
                    .filter_map(|e| e.scores.test.get(t).copied())
                    .collect();
                let (m, sd) = mean_sd(&v);
                md += &format!(" {m:.2} ± {sd:.2} |");
            }
            let worst = test.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if p == "uniform" {
                md += " | |";
            } else {
                md += &format!(" {} | {} |", pct(mean(&test) - 1.0), pct(worst - 1.0));
            }
            let mut acc_means = Vec::new();
            for t in 0..setup.mc.len() {
                let v: Vec<f64> = rows
                    .iter()
                    .filter_map(|e| e.scores.accuracy.as_ref().and_then(|x| x.get(t).copied()))
                    .collect();
                if v.is_empty() {
                    md += " – |";
                } else {
                    let (m, sd) = mean_sd(&v);
                    acc_means.push(m);
                    md += &format!(" {:.1} ± {:.1} % |", 100.0 * m, 100.0 * sd);
                }
            }
            md += "\n";
            if p == rule {
                let u_acc: Vec<f64> = (0..setup.mc.len())
                    .map(|t| {
                        mean(
                            &entries
                                .iter()
                                .filter(|e| e.budget == *b && e.policy == "uniform")
                                .filter_map(|e| {
                                    e.scores.accuracy.as_ref().and_then(|x| x.get(t).copied())
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                let acc_delta = (acc_means.len() == u_acc.len() && !acc_means.is_empty())
                    .then(|| mean(&acc_means) - mean(&u_acc));
                summaries.push(json!({
                    "sparsity": b.sparsity, "bits": b.bits, "rule": rule,
                    "dev_vs_uniform": mean(&dev) - 1.0,
                    "test_vs_uniform": mean(&test) - 1.0,
                    "test_worst_vs_uniform": worst - 1.0,
                    "test_ratios": test,
                    "accuracy_delta": acc_delta,
                    "target_mean_met": mean(&test) - 1.0 <= -0.05,
                    "target_worst_met": worst - 1.0 <= 0.01,
                    "target_accuracy_met": acc_delta.map(|d| d >= 0.0),
                }));
            }
        }
        if let Some(s) = summaries.last() {
            md += &format!(
                "\nTargets (test split, {rule}): mean {} against uniform (target −5.0 % or \
                 better), worst {} (target +1.0 % at most), mean accuracy {} points.\n\n",
                pct(s["test_vs_uniform"].as_f64().unwrap_or(f64::NAN)),
                pct(s["test_worst_vs_uniform"].as_f64().unwrap_or(f64::NAN)),
                s["accuracy_delta"]
                    .as_f64()
                    .map_or("–".into(), |d| format!("{:+.1}", 100.0 * d)),
            );
        }
        md += "What the profile expected (least-error over uniform, estimated loss change; \
               cross-fitted: chosen on one half of the Fisher rows, judged by the other):\n\n";
        for (c, g) in gains
            .iter()
            .filter(|(_, g)| g.sparsity == b.sparsity && g.bits == b.bits)
        {
            md += &format!("- {c}: {}\n", g.summary());
        }
        md += "\n";
    }
    let results = json!({"dense": dense, "entries": entries, "chosen": chosen,
                         "gains": gains, "summaries": summaries});
    write_outputs(
        setup.out,
        [
            ("table.md", md.clone().into_bytes()),
            (
                "results.json",
                serde_json::to_vec_pretty(&results).map_err(|e| Error::Io(e.to_string()))?,
            ),
        ],
    )?;
    if setup.json {
        for s in &summaries {
            println!("{s}");
        }
    } else {
        print!("{md}");
    }
    Ok(())
}
