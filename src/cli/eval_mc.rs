//! `edge-llm eval-mc`: zero-shot multiple-choice accuracy, voted over early exits when the
//! adapter has some.

use super::progress_bar;
use super::shared::{with_lm, LmArgs};
use crate::data::{Dataset, PromptFormat};
use crate::eval;
use crate::{Error, Result};
use serde_json::json;
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    lm: LmArgs,
    #[arg(long)]
    data: PathBuf,
    /// Only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Combine the early exits' answers by this rule (max, mean, majority, last;
    /// default last when the adapter has exits), on the chosen --device. Every exit's
    /// and every rule's accuracy is reported too, and an error-weighted rule's fitted
    /// leave-one-out on the questions.
    #[arg(long)]
    vote: Option<crate::vote::Vote>,
    /// How each question is put to the model: wrapped as "Question: {question}\nAnswer:"
    /// (lm-evaluation-harness's ARC prompt), or raw, as written in the file (for questions
    /// that carry their own wrapper). Each choice follows as " {choice}".
    #[arg(long, value_enum, default_value_t = PromptFormat::Wrapped)]
    prompt_format: PromptFormat,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        lm,
        data,
        limit,
        vote,
        prompt_format,
        json,
    } = a;
    let ds = Dataset::load(&data)?;
    let Dataset::MultipleChoice(mut qs) = ds else {
        return Err(Error::Data(format!(
            "{} holds {} data; eval-mc needs multiple-choice JSONL ({{\"question\",\"choices\",\"answer\"}})",
            data.display(),
            ds.kind()
        )));
    };
    if let Some(n) = limit {
        qs.truncate(n);
    }
    for q in &mut qs {
        q.format = prompt_format;
    }
    let (file, tok, m) = lm.load()?;
    let has_exits = m.lora.as_ref().is_some_and(|l| !l.exits.is_empty());
    let rule = crate::vote::resolve(vote, has_exits)?;
    let pb = progress_bar(qs.len() as u64, "eval-mc");
    let mut progress = |done: usize, _: usize, correct: usize| {
        pb.set_message(format!("eval-mc acc {:.3}", correct as f64 / done as f64));
        pb.set_position(done as u64);
    };
    if let Some(rule) = rule {
        eprintln!("exit voting: {rule}");
        let r = with_lm(lm.device, &file, &m, |lm| {
            pollster::block_on(eval::eval_mc_vote(lm, &tok, &qs, rule, &mut progress))
        })?;
        pb.finish_and_clear();
        if json {
            println!(
                "{}",
                json!({"accuracy": r.accuracy, "n": r.n, "correct": r.correct,
                       "vote": r.rule, "exits": r.exits, "votes": r.votes,
                       "fitted": r.fitted, "predictions": r.predictions})
            );
        } else {
            for e in &r.exits {
                println!(
                    "exit after block {:<3} accuracy {:.4} ({}/{})",
                    e.after, e.accuracy, e.correct, r.n
                );
            }
            for v in &r.votes {
                println!(
                    "vote {:<15} accuracy {:.4} ({}/{})",
                    v.rule, v.accuracy, v.correct, r.n
                );
            }
            println!(
                "vote {:<15} accuracy {:.4} ({}/{}; exits weighted by their accuracy on \
                 the other questions)",
                "fitted", r.fitted.accuracy, r.fitted.correct, r.n
            );
            println!(
                "accuracy {:.4} ({}/{}) by vote {}",
                r.accuracy, r.correct, r.n, r.rule
            );
        }
        return Ok(());
    }
    let r = with_lm(lm.device, &file, &m, |lm| {
        pollster::block_on(eval::eval_mc(lm, &tok, &qs, &mut progress))
    })?;
    pb.finish_and_clear();
    if json {
        println!(
            "{}",
            json!({"accuracy": r.accuracy, "acc": r.accuracy, "acc_norm": r.accuracy_norm,
                   "n": r.n, "correct": r.correct, "correct_norm": r.correct_norm,
                   "prompt_format": prompt_format, "predictions": r.predictions,
                   "predictions_norm": r.predictions_norm, "scores": r.scores})
        );
    } else {
        println!(
            "accuracy (acc) {:.4} ({}/{}); acc_norm {:.4} ({}/{})",
            r.accuracy, r.correct, r.n, r.accuracy_norm, r.correct_norm, r.n
        );
    }
    Ok(())
}
