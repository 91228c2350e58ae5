//! Evaluation and generation on any model that implements [`Lm`]: perplexity, zero-shot
//! multiple-choice accuracy, and sampling (greedy, temperature, top-p), each over the
//! model's head or, with a [`Vote`] rule, over its early exits (`*_vote`/`*_voted`): the
//! same code on every device.
//!
//! The functions are async because the GPU model's logits arrive through a buffer mapping
//! that the browser cannot block on: the web app awaits them. [`CpuLm`] returns ready
//! futures and [`GpuModel`](crate::engine::GpuModel) awaits the device; the native CLI
//! blocks on them at its edge.

use crate::data::McQuestion;
use crate::reference::ops::log_softmax;
use crate::reference::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use crate::vote::{self, Vote};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::borrow::Borrow;
use std::future::Future;
use std::pin::Pin;

/// What an [`Lm::append`] reads out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// The model's own head after its last block: one logits array.
    Head,
    /// Every early exit of [`Lm::exits`], shallow to deep: one logits array each.
    Exits,
}

/// What [`Lm::append`] returns: a future that may wait for a device, boxed so that the
/// CLI can pick the model at run time (`&mut dyn Lm`).
pub type Logits<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>>> + 'a>>;

/// The one model interface of evaluation and generation: a causal language model with a
/// growing context (a KV cache). A plain model is the one-exit case: [`Readout::Head`]
/// gives its head's logits; a model with early exits also answers [`Readout::Exits`].
/// `append` is async because the GPU model's logits arrive through a buffer mapping the
/// browser cannot block on; the CPU reference's futures are ready at once, and native
/// callers block at their edge (`pollster::block_on`).
pub trait Lm {
    fn vocab(&self) -> usize;
    /// Longest context the model supports.
    fn max_len(&self) -> usize;
    /// Positions in the context.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets positions from `len` on.
    fn truncate(&mut self, len: usize);
    /// The block counts after which the early exits read, shallow to deep (empty for a
    /// plain model).
    fn exits(&self) -> Vec<usize>;
    /// Appends `tokens` and returns, for each head `readout` names, the logits of every
    /// appended position, `[n][vocab]`.
    fn append<'a>(&'a mut self, tokens: &'a [u32], readout: Readout) -> Logits<'a>;
}

/// The head's logits of `tokens` appended to `lm`'s context.
async fn head(lm: &mut dyn Lm, tokens: &[u32]) -> Result<Vec<f32>> {
    let mut heads = lm.append(tokens, Readout::Head).await?;
    heads.pop().ok_or_else(no_logits)
}

fn no_logits() -> Error {
    Error::Invalid("the model returned no logits".into())
}

/// The CPU engine as an [`Lm`] (ready futures), over a borrowed or owned model.
pub struct CpuLm<M: Borrow<Transformer<f32>>> {
    pub model: M,
    cache: KvCache<f32>,
}

impl<M: Borrow<Transformer<f32>>> CpuLm<M> {
    pub fn new(model: M) -> Self {
        let n_layers = model.borrow().w.config.n_layers;
        Self {
            model,
            cache: KvCache::new(n_layers),
        }
    }

    fn model(&self) -> &Transformer<f32> {
        self.model.borrow()
    }

    fn append_now(&mut self, tokens: &[u32], readout: Readout) -> Result<Vec<Vec<f32>>> {
        let (vocab, max_len) = (self.vocab(), self.max_len());
        check_tokens(tokens, vocab)?;
        if self.cache.len + tokens.len() > max_len {
            return Err(Error::Invalid(format!(
                "context of {} tokens exceeds the model's {}",
                self.cache.len + tokens.len(),
                max_len
            )));
        }
        match readout {
            Readout::Head => Ok(vec![self
                .model
                .borrow()
                .logits(tokens, Some(&mut self.cache))]),
            Readout::Exits => {
                check_exits(&self.exits())?;
                Ok(self
                    .model
                    .borrow()
                    .exit_logits(tokens, Some(&mut self.cache)))
            }
        }
    }
}

impl<M: Borrow<Transformer<f32>>> Lm for CpuLm<M> {
    fn vocab(&self) -> usize {
        self.model().w.config.vocab
    }
    fn max_len(&self) -> usize {
        self.model().w.config.context_length
    }
    fn len(&self) -> usize {
        self.cache.len
    }
    fn truncate(&mut self, len: usize) {
        let kv = self.model().w.config.kv_dim();
        self.cache.truncate(len, kv);
    }
    fn exits(&self) -> Vec<usize> {
        self.model()
            .lora
            .as_ref()
            .map(|l| l.exits.iter().map(|e| e.after).collect())
            .unwrap_or_default()
    }
    fn append<'a>(&'a mut self, tokens: &'a [u32], readout: Readout) -> Logits<'a> {
        Box::pin(std::future::ready(self.append_now(tokens, readout)))
    }
}

fn check_tokens(tokens: &[u32], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(Error::Invalid(format!(
            "token id {t} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Tokens of the text used (the first is only context; the rest are predicted).
    pub tokens: usize,
    pub mean_nll: f64,
}

/// Perplexity of `tokens` (no BOS added): predicts tokens 2..N from their prefixes.
/// Runs in chunks of `chunk` tokens through the KV cache, calling `progress(done, total)`.
pub async fn perplexity(
    lm: &mut dyn Lm,
    tokens: &[u32],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    if tokens.len() < 2 {
        return Err(Error::Data(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            tokens.len()
        )));
    }
    lm.truncate(0);
    let vocab = lm.vocab();
    let mut nll = 0.0f64;
    let mut done = 0;
    for part in tokens.chunks(chunk.max(1)) {
        let logits = head(lm, part).await?;
        for (i, row) in logits.chunks(vocab).enumerate() {
            let pos = done + i; // this row predicts token pos + 1
            if let Some(&next) = tokens.get(pos + 1) {
                nll -= log_softmax(row)[next as usize] as f64;
            }
        }
        done += part.len();
        progress(done, tokens.len());
    }
    let n = (tokens.len() - 1) as f64;
    Ok(Perplexity {
        perplexity: (nll / n).exp(),
        tokens: tokens.len(),
        mean_nll: nll / n,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct McResult {
    /// lm-evaluation-harness's `acc`: the choice with the highest summed log-likelihood.
    pub accuracy: f64,
    pub n: usize,
    pub correct: usize,
    /// The chosen index per question.
    pub predictions: Vec<usize>,
    /// lm-evaluation-harness's `acc_norm`: the choice with the highest log-likelihood per
    /// byte of the choice's text ([`norm_scores`]).
    pub accuracy_norm: f64,
    pub correct_norm: usize,
    pub predictions_norm: Vec<usize>,
    /// Each question's summed log-likelihood per choice.
    pub scores: Vec<Vec<f64>>,
}

/// Zero-shot accuracy: each question's prediction is the choice with the highest summed
/// log-likelihood. Calls `progress(done, total, correct)` after each question.
pub async fn eval_mc(
    lm: &mut dyn Lm,
    tok: &Tokenizer,
    questions: &[McQuestion],
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<McResult> {
    if questions.is_empty() {
        return Err(Error::Data("no questions to evaluate".into()));
    }
    let (mut correct, mut correct_norm) = (0, 0);
    let mut predictions = Vec::with_capacity(questions.len());
    let mut predictions_norm = Vec::with_capacity(questions.len());
    let mut all_scores = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let scores = score_choices(lm, tok, q, Readout::Head)
            .await?
            .pop()
            .ok_or_else(no_logits)?;
        let best = argmax_f64(&scores);
        let best_norm = argmax_f64(&norm_scores(q, &scores));
        correct += usize::from(best == q.answer);
        correct_norm += usize::from(best_norm == q.answer);
        predictions.push(best);
        predictions_norm.push(best_norm);
        all_scores.push(scores);
        progress(i + 1, questions.len(), correct);
    }
    let n = questions.len();
    Ok(McResult {
        accuracy: correct as f64 / n as f64,
        n,
        correct,
        predictions,
        accuracy_norm: correct_norm as f64 / n as f64,
        correct_norm,
        predictions_norm,
        scores: all_scores,
    })
}

/// Each choice's summed log-likelihood divided by the length of its text in bytes (without
/// the separating space): lm-evaluation-harness's `acc_norm` (which divides by characters,
/// the same for ASCII), so that long answers are not penalised for their length.
pub fn norm_scores(q: &McQuestion, scores: &[f64]) -> Vec<f64> {
    scores
        .iter()
        .zip(&q.choices)
        .map(|(s, c)| s / c.len().max(1) as f64)
        .collect()
}

fn argmax_f64(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Sampling settings. `temperature` 0 is greedy.
#[derive(Clone, Debug, Serialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let scaled: Vec<f32> = logits.iter().map(|&x| x / s.temperature).collect();
    let probs: Vec<f32> = log_softmax(&scaled).into_iter().map(f32::exp).collect();
    sample_probs(&probs, s, rng)
}

/// Picks the next token from a distribution that already carries the temperature (such
/// as a voted one): the most likely with `temperature` 0, else nucleus sampling.
pub fn sample_probs(probs: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in probs.iter().enumerate() {
            if x > probs[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    // Nucleus: the smallest prefix whose mass reaches top_p.
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        kept.push(i);
        mass += probs[i];
        if mass >= s.top_p {
            break;
        }
    }
    let mut r = rng.random::<f32>() * mass;
    for &i in &kept {
        r -= probs[i];
        if r <= 0.0 {
            return i as u32;
        }
    }
    kept[kept.len() - 1] as u32
}

/// Generates up to `max_tokens` after `prompt`, stopping at any of `stop`. Calls
/// `on_token` with each new token as it is produced (for streaming). Returns the new ids.
pub async fn generate(
    lm: &mut dyn Lm,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    lm.truncate(0);
    let vocab = lm.vocab();
    let mut logits = head(lm, prompt).await?;
    let mut out = Vec::new();
    while out.len() < max_tokens && lm.len() < lm.max_len() {
        let row = &logits[logits.len() - vocab..];
        let next = sample(row, sampling, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        logits = head(lm, &[next]).await?;
    }
    Ok(out)
}

/// Summed log-likelihood of each choice's continuation tokens after the question, under
/// each head `readout` names, `[head][choice]` (the question's context once, then each
/// choice's continuation).
pub async fn score_choices(
    lm: &mut dyn Lm,
    tok: &Tokenizer,
    q: &McQuestion,
    readout: Readout,
) -> Result<Vec<Vec<f64>>> {
    let ctx = tok.encode(&q.context())?;
    if ctx.is_empty() {
        return Err(Error::Data("a question encodes to no tokens".into()));
    }
    lm.truncate(0);
    let vocab = lm.vocab();
    let ctx_logits = lm.append(&ctx, readout).await?;
    let last: Vec<Vec<f32>> = ctx_logits
        .iter()
        .map(|l| log_softmax(&l[(ctx.len() - 1) * vocab..]))
        .collect();
    let mut scores = vec![Vec::with_capacity(q.choices.len()); last.len()];
    for i in 0..q.choices.len() {
        let cont = tok.encode(&q.continuation(i))?;
        let Some((&first, rest)) = cont.split_first() else {
            scores.iter_mut().for_each(|s| s.push(f64::NEG_INFINITY));
            continue;
        };
        let mut s: Vec<f64> = last.iter().map(|l| l[first as usize] as f64).collect();
        if !rest.is_empty() {
            lm.truncate(ctx.len());
            let logits = lm.append(&cont[..cont.len() - 1], readout).await?;
            for (s, exit) in s.iter_mut().zip(&logits) {
                for (row, &next) in exit.chunks(vocab).zip(rest) {
                    *s += log_softmax(row)[next as usize] as f64;
                }
            }
        }
        for (all, s) in scores.iter_mut().zip(s) {
            all.push(s);
        }
    }
    Ok(scores)
}

/// Refuses a model without exits (nothing to vote over).
fn check_exits(afters: &[usize]) -> Result<()> {
    if afters.is_empty() {
        return Err(Error::Invalid(
            "exit voting needs an adapter with early exits".into(),
        ));
    }
    Ok(())
}

/// Accuracy of one exit on its own.
#[derive(Clone, Debug, Serialize)]
pub struct ExitAccuracy {
    /// Block count the exit sits after.
    pub after: usize,
    pub accuracy: f64,
    pub correct: usize,
}

/// Accuracy of the error-weighted rule fitted leave-one-out on the questions evaluated.
#[derive(Clone, Debug, Serialize)]
pub struct FittedAccuracy {
    pub accuracy: f64,
    pub correct: usize,
    pub predictions: Vec<usize>,
}

/// Accuracy of one voting rule.
#[derive(Clone, Debug, Serialize)]
pub struct VoteAccuracy {
    pub rule: Vote,
    pub accuracy: f64,
    pub correct: usize,
}

/// Multiple-choice accuracy with exit voting: the chosen rule's, every exit's and every
/// rule's (EDGE-LLM.md §3 reports per-exit accuracy beside the voted one).
#[derive(Clone, Debug, Serialize)]
pub struct McVoteResult {
    pub rule: Vote,
    /// The chosen rule's accuracy.
    pub accuracy: f64,
    pub n: usize,
    pub correct: usize,
    pub exits: Vec<ExitAccuracy>,
    /// Every rule, in [`Vote::ALL`] order.
    pub votes: Vec<VoteAccuracy>,
    /// The error-weighted rule fitted leave-one-out ([`vote::fitted_leave_one_out`]).
    pub fitted: FittedAccuracy,
    /// The chosen rule's choice per question.
    pub predictions: Vec<usize>,
    /// Each question's summed log-likelihoods, `[question][exit][choice]`.
    pub scores: Vec<Vec<Vec<f64>>>,
}

/// Zero-shot accuracy with exit voting: a choice's probability under exit k is
/// exp(its summed log-likelihood there), and `rule` combines the exits. Calls
/// `progress(done, total, correct)` (by `rule`) after each question.
pub async fn eval_mc_vote(
    lm: &mut dyn Lm,
    tok: &Tokenizer,
    questions: &[McQuestion],
    rule: Vote,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<McVoteResult> {
    if questions.is_empty() {
        return Err(Error::Data("no questions to evaluate".into()));
    }
    let afters = lm.exits();
    check_exits(&afters)?;
    let mut exit_correct = vec![0usize; afters.len()];
    let mut vote_correct = [0usize; Vote::ALL.len()];
    let mut predictions = Vec::with_capacity(questions.len());
    let mut all_scores = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let scores = score_choices(lm, tok, q, Readout::Exits).await?;
        for (c, s) in exit_correct.iter_mut().zip(&scores) {
            *c += usize::from(argmax_f64(s) == q.answer);
        }
        for (c, r) in vote_correct.iter_mut().zip(Vote::ALL) {
            *c += usize::from(vote::pick_log(r, &scores)? == q.answer);
        }
        predictions.push(vote::pick_log(rule, &scores)?);
        all_scores.push(scores);
        let k = Vote::ALL.iter().position(|&r| r == rule).unwrap_or(0);
        progress(i + 1, questions.len(), vote_correct[k]);
    }
    let n = questions.len();
    let frac = |c: usize| c as f64 / n as f64;
    let votes: Vec<VoteAccuracy> = Vote::ALL
        .into_iter()
        .zip(vote_correct)
        .map(|(rule, correct)| VoteAccuracy {
            rule,
            accuracy: frac(correct),
            correct,
        })
        .collect();
    let correct = votes
        .iter()
        .find(|v| v.rule == rule)
        .map_or(0, |v| v.correct);
    let answers: Vec<usize> = questions.iter().map(|q| q.answer).collect();
    let fitted = vote::fitted_leave_one_out(&all_scores, &answers)?;
    let fitted_correct = fitted.iter().zip(&answers).filter(|(p, a)| p == a).count();
    Ok(McVoteResult {
        rule,
        accuracy: frac(correct),
        n,
        correct,
        exits: afters
            .into_iter()
            .zip(exit_correct)
            .map(|(after, correct)| ExitAccuracy {
                after,
                accuracy: frac(correct),
                correct,
            })
            .collect(),
        votes,
        fitted: FittedAccuracy {
            accuracy: frac(fitted_correct),
            correct: fitted_correct,
            predictions: fitted,
        },
        predictions,
        scores: all_scores,
    })
}

/// The voted next-token distribution of one position from each exit's logits row:
/// softmax(logits / temperature) per exit (temperature 1 when sampling is greedy), then
/// [`vote::combine`].
pub fn voted_distribution(rows: &[&[f32]], rule: Vote, temperature: f32) -> Result<Vec<f32>> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let dists: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            let scaled: Vec<f32> = row.iter().map(|&x| x / t).collect();
            log_softmax(&scaled).into_iter().map(f32::exp).collect()
        })
        .collect();
    vote::combine(rule, &dists)
}

/// [`generate_async`] from the exits' voted distribution ([`voted_distribution`]), then
/// greedy or nucleus sampling as `sampling` says ([`sample_probs`]).
pub async fn generate_voted(
    lm: &mut dyn Lm,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    rule: Vote,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    check_exits(&lm.exits())?;
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    lm.truncate(0);
    let vocab = lm.vocab();
    let mut logits = lm.append(prompt, Readout::Exits).await?;
    let mut out = Vec::new();
    while out.len() < max_tokens && lm.len() < lm.max_len() {
        let rows: Vec<&[f32]> = logits.iter().map(|l| &l[l.len() - vocab..]).collect();
        let probs = voted_distribution(&rows, rule, sampling.temperature)?;
        let next = sample_probs(&probs, sampling, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        logits = lm.append(&[next], Readout::Exits).await?;
    }
    Ok(out)
}
