//! From a [`Dataset`] to training rows: each record becomes an [`Example`] (tokens and a
//! loss mask), a seeded split sets some examples aside for validation, and examples are
//! packed into [`Row`]s of at most `seq_len` input positions.
//!
//! Conventions:
//! - `mask[j]` says whether token `j` is a target, i.e. predicted from the tokens before
//!   it. An example's first token is never a target: nothing of its own precedes it, so
//!   packed examples never learn to predict one record from another.
//! - Text: the token stream is cut into chunks of `seq_len + 1` tokens overlapping by one,
//!   so every token but the first is a target exactly once and each chunk fills a row.
//! - Instruction: `encode(prompt) ++ encode(response) ++ [eos]`, tokenized separately;
//!   targets are the response tokens and the EOS (when the tokenizer has one).
//! - Multiple choice: `encode(context) ++ encode(" {right choice}")` (the scoring
//!   convention of [`McQuestion::context`]); targets are the answer tokens.
//! - BOS is prepended (never a target) only when the tokenizer asks for it (`add_bos`).

use crate::data::{Dataset, McQuestion};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One record as tokens and a loss mask of the same length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Example {
    /// Tokens `parts` in order, each with its target flag; the first token is never a target.
    fn from_parts(parts: &[(&[u32], bool)]) -> Self {
        let mut tokens = Vec::new();
        let mut mask = Vec::new();
        for (toks, target) in parts {
            tokens.extend_from_slice(toks);
            mask.extend(std::iter::repeat_n(*target, toks.len()));
        }
        if let Some(m) = mask.first_mut() {
            *m = false;
        }
        Self { tokens, mask }
    }

    pub fn n_targets(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// One training row: input tokens and, per position, the next token to predict (None:
/// not counted in the loss). Rows hold at most `seq_len` positions; the last row of a
/// pack may be shorter. A backend that wants fixed shapes may pad at the end with any
/// token and `None` targets: under causal attention trailing padding changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub tokens: Vec<u32>,
    pub targets: Vec<Option<u32>>,
}

impl Row {
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }

    /// Checks what a backend relies on: one target per token, 1..=`max_len` tokens (`what`
    /// names the limit), every id inside the vocabulary.
    pub fn check(&self, vocab: usize, max_len: usize, what: &str) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Invalid(m));
        let t = self.tokens.len();
        if self.targets.len() != t {
            return bad(format!(
                "a row has {t} tokens but {} targets",
                self.targets.len()
            ));
        }
        if t == 0 || t > max_len {
            return bad(format!(
                "a row of {t} tokens does not fit {what} of {max_len}"
            ));
        }
        let ids = self.tokens.iter().chain(self.targets.iter().flatten());
        if let Some(v) = ids.into_iter().find(|&&v| v as usize >= vocab) {
            return bad(format!("token id {v} is outside the vocabulary of {vocab}"));
        }
        Ok(())
    }
}

/// How examples are made and split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Input positions per row.
    pub seq_len: usize,
    /// Share of examples held out for validation (at least one when there are two or more).
    pub val_fraction: f64,
    /// Seeds the split (the trainer seeds shuffling and dropout separately).
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            seq_len: 256,
            val_fraction: 0.1,
            seed: 0,
        }
    }
}

/// What preparation did, for the user to see (truncation is not silent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataStats {
    /// Records (text: chunks) turned into examples.
    pub examples: usize,
    /// Examples cut to `seq_len + 1` tokens.
    pub truncated: usize,
    /// Examples left with no target (e.g. a prompt longer than a row) and dropped.
    pub dropped: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub train_rows: usize,
    pub val_rows: usize,
    /// Input positions and counted targets over the training rows.
    pub train_tokens: usize,
    pub train_targets: usize,
    pub val_targets: usize,
}

/// Training and validation rows, and how they were made.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub train: Vec<Row>,
    pub val: Vec<Row>,
    pub stats: DataStats,
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode(text)
}

/// Every record of `ds` as an example, truncated to `seq_len + 1` tokens; examples that
/// end up with no target are dropped. Updates `examples`, `truncated` and `dropped`.
pub fn make_examples(
    ds: &Dataset,
    tok: &Tokenizer,
    seq_len: usize,
    stats: &mut DataStats,
) -> Result<Vec<Example>> {
    if seq_len == 0 {
        return Err(Error::Invalid("seq_len must be at least 1".into()));
    }
    let bos: Vec<u32> = match (tok.add_bos, tok.bos) {
        (true, Some(b)) => vec![b],
        _ => Vec::new(),
    };
    let eos: Vec<u32> = tok.eos.into_iter().collect();
    let cap = seq_len + 1;
    let mut out = Vec::new();
    match ds {
        Dataset::Text(text) => {
            let mut stream = bos.clone();
            stream.extend(encode(tok, text)?);
            let mut start = 0;
            while start + 1 < stream.len() {
                let end = (start + cap).min(stream.len());
                out.push(Example::from_parts(&[(&stream[start..end], true)]));
                start += seq_len;
            }
        }
        Dataset::Instruct(records) => {
            for r in records {
                let p = encode(tok, &r.prompt)?;
                let a = encode(tok, &r.response)?;
                out.push(Example::from_parts(&[
                    (&bos, false),
                    (&p, false),
                    (&a, true),
                    (&eos, true),
                ]));
            }
        }
        Dataset::MultipleChoice(qs) => {
            for q in qs {
                out.push(mc_example(tok, q, &bos)?);
            }
        }
    }
    stats.examples += out.len();
    let mut kept = Vec::with_capacity(out.len());
    for mut ex in out {
        if ex.tokens.len() > cap {
            ex.tokens.truncate(cap);
            ex.mask.truncate(cap);
            stats.truncated += 1;
        }
        if ex.n_targets() == 0 {
            stats.dropped += 1;
        } else {
            kept.push(ex);
        }
    }
    Ok(kept)
}

fn mc_example(tok: &Tokenizer, q: &McQuestion, bos: &[u32]) -> Result<Example> {
    if q.answer >= q.choices.len() {
        return Err(Error::Data(format!(
            "answer {} is out of range for {} choices",
            q.answer,
            q.choices.len()
        )));
    }
    let ctx = encode(tok, &q.context())?;
    let ans = encode(tok, &q.continuation(q.answer))?;
    Ok(Example::from_parts(&[
        (bos, false),
        (&ctx, false),
        (&ans, true),
    ]))
}

/// A seeded split: `(train, val)`, each in the original order. The validation set gets
/// round(fraction·n) examples, at least 1 when n ≥ 2 and fraction > 0, and never all.
pub fn split(examples: Vec<Example>, val_fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let want = (val_fraction.clamp(0.0, 1.0) * n as f64).round() as usize;
    let n_val = if n < 2 || val_fraction <= 0.0 {
        0
    } else {
        want.clamp(1, n - 1)
    };
    let perm = permutation(n, seed);
    let mut is_val = vec![false; n];
    for &i in &perm[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (ex, v) in examples.into_iter().zip(is_val) {
        if v {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    (train, val)
}

/// A Fisher–Yates permutation of `0..n` from a ChaCha8 stream seeded with `seed`
/// (written out so it does not depend on a library's shuffle staying the same).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// Packs whole examples, in order, into rows of at most `seq_len + 1` tokens (`seq_len`
/// inputs): an example that does not fit in the current row starts a new one. Examples
/// must already be at most `seq_len + 1` tokens ([`make_examples`] ensures it).
pub fn pack(examples: &[Example], seq_len: usize) -> Vec<Row> {
    let cap = seq_len + 1;
    let mut rows = Vec::new();
    let (mut toks, mut mask): (Vec<u32>, Vec<bool>) = (Vec::new(), Vec::new());
    let flush = |toks: &mut Vec<u32>, mask: &mut Vec<bool>, rows: &mut Vec<Row>| {
        if toks.len() >= 2 && mask[1..].iter().any(|&m| m) {
            rows.push(Row {
                tokens: toks[..toks.len() - 1].to_vec(),
                targets: toks[1..]
                    .iter()
                    .zip(&mask[1..])
                    .map(|(&t, &m)| m.then_some(t))
                    .collect(),
            });
        }
        toks.clear();
        mask.clear();
    };
    for ex in examples {
        let n = ex.tokens.len().min(cap);
        if toks.len() + n > cap {
            flush(&mut toks, &mut mask, &mut rows);
        }
        toks.extend_from_slice(&ex.tokens[..n]);
        mask.extend_from_slice(&ex.mask[..n]);
    }
    flush(&mut toks, &mut mask, &mut rows);
    rows
}

/// Examples → seeded split → packed training and validation rows, with statistics.
pub fn prepare(ds: &Dataset, tok: &Tokenizer, cfg: &DataConfig) -> Result<Prepared> {
    let mut stats = DataStats::default();
    let examples = make_examples(ds, tok, cfg.seq_len, &mut stats)?;
    if examples.is_empty() {
        return Err(Error::Data(format!(
            "no usable training example ({} dropped without targets)",
            stats.dropped
        )));
    }
    let (train_ex, val_ex) = split(examples, cfg.val_fraction, cfg.seed);
    let train = pack(&train_ex, cfg.seq_len);
    let val = pack(&val_ex, cfg.seq_len);
    stats.train_examples = train_ex.len();
    stats.val_examples = val_ex.len();
    stats.train_rows = train.len();
    stats.val_rows = val.len();
    stats.train_tokens = train.iter().map(|r| r.tokens.len()).sum();
    stats.train_targets = train.iter().map(Row::n_targets).sum();
    stats.val_targets = val.iter().map(Row::n_targets).sum();
    Ok(Prepared { train, val, stats })
}
