//! Evaluation and generation on any backend that implements [`CausalLm`]: perplexity,
//! zero-shot multiple-choice accuracy, and sampling (greedy, temperature, top-p).
//! The CPU reference implements it here ([`CpuLm`]); the GPU engine implements the same
//! trait, so the CLI and the web app share these functions.

use crate::data::McQuestion;
use crate::reference::ops::log_softmax;
use crate::reference::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A causal language model with a growing context (a KV cache).
pub trait CausalLm {
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
    /// Appends `tokens` and returns the logits of every appended position, `[n][vocab]`.
    fn append(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
}

/// The CPU reference as a [`CausalLm`].
pub struct CpuLm<'a> {
    pub model: &'a Transformer<f32>,
    cache: KvCache<f32>,
}

impl<'a> CpuLm<'a> {
    pub fn new(model: &'a Transformer<f32>) -> Self {
        Self {
            model,
            cache: KvCache::new(model.w.config.n_layers),
        }
    }
}

impl CausalLm for CpuLm<'_> {
    fn vocab(&self) -> usize {
        self.model.w.config.vocab
    }
    fn max_len(&self) -> usize {
        self.model.w.config.context_length
    }
    fn len(&self) -> usize {
        self.cache.len
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len, self.model.w.config.kv_dim());
    }
    fn append(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        check_tokens(tokens, self.vocab())?;
        if self.cache.len + tokens.len() > self.max_len() {
            return Err(Error::Invalid(format!(
                "context of {} tokens exceeds the model's {}",
                self.cache.len + tokens.len(),
                self.max_len()
            )));
        }
        Ok(self.model.logits(tokens, Some(&mut self.cache)))
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
pub fn perplexity(
    lm: &mut dyn CausalLm,
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
        let logits = lm.append(part)?;
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

/// Summed log-likelihood of each choice's continuation tokens after the question.
pub fn score_choices(lm: &mut dyn CausalLm, tok: &Tokenizer, q: &McQuestion) -> Result<Vec<f64>> {
    let ctx = tok.encode(&q.context())?;
    if ctx.is_empty() {
        return Err(Error::Data("a question encodes to no tokens".into()));
    }
    lm.truncate(0);
    let vocab = lm.vocab();
    let ctx_logits = lm.append(&ctx)?;
    let last = log_softmax(&ctx_logits[(ctx.len() - 1) * vocab..]);
    let mut scores = Vec::with_capacity(q.choices.len());
    for i in 0..q.choices.len() {
        let cont = tok.encode(&q.continuation(i))?;
        let Some((&first, rest)) = cont.split_first() else {
            scores.push(f64::NEG_INFINITY);
            continue;
        };
        let mut s = last[first as usize] as f64;
        if !rest.is_empty() {
            lm.truncate(ctx.len());
            let logits = lm.append(&cont[..cont.len() - 1])?;
            for (row, &next) in logits.chunks(vocab).zip(rest) {
                s += log_softmax(row)[next as usize] as f64;
            }
        }
        scores.push(s);
    }
    Ok(scores)
}

#[derive(Clone, Debug, Serialize)]
pub struct McResult {
    pub accuracy: f64,
    pub n: usize,
    pub correct: usize,
    /// The chosen index per question.
    pub predictions: Vec<usize>,
}

/// Zero-shot accuracy: each question's prediction is the choice with the highest summed
/// log-likelihood.
pub fn eval_mc(
    lm: &mut dyn CausalLm,
    tok: &Tokenizer,
    questions: &[McQuestion],
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<McResult> {
    if questions.is_empty() {
        return Err(Error::Data("no questions to evaluate".into()));
    }
    let mut correct = 0;
    let mut predictions = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let scores = score_choices(lm, tok, q)?;
        let best = argmax_f64(&scores);
        correct += usize::from(best == q.answer);
        predictions.push(best);
        progress(i + 1, questions.len(), correct);
    }
    Ok(McResult {
        accuracy: correct as f64 / questions.len() as f64,
        n: questions.len(),
        correct,
        predictions,
    })
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
pub fn generate(
    lm: &mut dyn CausalLm,
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
    let mut logits = lm.append(prompt)?;
    let mut out = Vec::new();
    while out.len() < max_tokens && lm.len() < lm.max_len() {
        let row = &logits[logits.len() - vocab..];
        let next = sample(row, sampling, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        logits = lm.append(&[next])?;
    }
    Ok(out)
}
