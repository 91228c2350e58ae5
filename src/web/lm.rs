//! A model on the GPU with a KV cache: perplexity, multiple-choice accuracy (voted over
//! early exits) and generation, through the same `eval` functions as the CLI.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use super::{js_err, json_with, notify, parse_data, parse_json, to_json};
use crate::adapter;
use crate::data::Dataset;
use crate::device::Choice;
use crate::engine::GpuModel;
use crate::eval::{self, CpuLm, Sampling};
use crate::eval::{ExitAccuracy, FittedAccuracy, VoteAccuracy};
use crate::reference::Transformer;
use crate::tokenizer::Tokenizer;
use crate::vote::Vote;
use crate::Error;

/// Generation settings from the page (the CLI's `generate` defaults).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GenerateOptions {
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    /// Wrap the prompt as the user turn of the model's ChatML template.
    chat: bool,
    /// With early exits: sample the exits' distributions combined by this rule (default
    /// max).
    vote: Option<Vote>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            chat: true,
            vote: None,
        }
    }
}

/// The model on this thread's GPU with a KV cache, for perplexity, multiple-choice accuracy
/// and generation: the engine's `GpuModel` behind the same `eval` functions as the CLI.
#[wasm_bindgen]
pub struct WebLm {
    pub(super) engine: Engine,
    /// The device rule's choice and its reason.
    pub(super) device: Choice,
    pub(super) tokenizer: Rc<Tokenizer>,
    pub(super) with_adapter: bool,
}

/// The model a [`WebLm`] runs: on the GPU engine or on the CPU engine, both an
/// [`eval::Lm`].
pub(super) enum Engine {
    Gpu(Box<GpuModel<'static>>),
    Cpu(CpuLm<Transformer<f32>>),
}

impl Engine {
    fn lm(&mut self) -> &mut dyn eval::Lm {
        match self {
            Engine::Gpu(m) => &mut **m,
            Engine::Cpu(m) => m,
        }
    }

    fn lm_ref(&self) -> &dyn eval::Lm {
        match self {
            Engine::Gpu(m) => &**m,
            Engine::Cpu(m) => m,
        }
    }

    /// Positions per `append` in perplexity, each followed by a progress count: the CLI's
    /// chunk on the CPU, and on the GPU as many at most (its scratch rows may hold the whole
    /// text, and a software adapter took minutes over it with no count shown).
    fn chunk(&self) -> usize {
        match self {
            Engine::Gpu(m) => m.max_t().min(PROGRESS_CHUNK),
            Engine::Cpu(_) => PROGRESS_CHUNK,
        }
    }
}

/// Perplexity's positions per forward pass (and per progress count) in the page.
const PROGRESS_CHUNK: usize = 64;

impl WebLm {
    /// The voting rule for `asked` (default [`crate::vote::DEFAULT`] with exits); asking without exits is an
    /// error.
    fn vote_rule(&self, asked: Option<Vote>) -> crate::Result<Option<Vote>> {
        match (asked, self.engine.lm_ref().exits().is_empty()) {
            (Some(r), true) => Err(Error::Invalid(format!(
                "voting ({r}) needs an adapter with early exits: tune in edge mode, or load \
                 the adapter with its {}",
                adapter::EXITS_FILE
            ))),
            (asked, false) => Ok(Some(asked.unwrap_or(crate::vote::DEFAULT))),
            (None, true) => Ok(None),
        }
    }
}

#[wasm_bindgen]
impl WebLm {
    /// GPU bytes this model holds (weights, KV cache, scratch; 0 on the CPU engine).
    pub fn gpu_bytes(&self) -> f64 {
        match &self.engine {
            Engine::Gpu(m) => m.allocated_bytes() as f64,
            Engine::Cpu(_) => 0.0,
        }
    }

    /// Where it runs: "gpu" or "cpu".
    pub fn device(&self) -> String {
        self.device.device.into()
    }

    /// Why it runs there, in plain words (the device rule's reason).
    pub fn device_reason(&self) -> String {
        self.device.reason.clone()
    }

    /// Positions the KV cache holds: the longest prompt plus reply, or text evaluated.
    pub fn max_len(&self) -> usize {
        self.engine.lm_ref().max_len()
    }

    /// Whether a LoRA adapter is applied.
    pub fn has_adapter(&self) -> bool {
        self.with_adapter
    }

    /// The block counts after which the adapter's early exits sit (empty: none).
    pub fn exits(&self) -> Vec<u32> {
        self.engine
            .lm_ref()
            .exits()
            .into_iter()
            .map(|a| a as u32)
            .collect()
    }

    /// Perplexity of the first `max_tokens` tokens of `text` (at most the cache length):
    /// `{perplexity, mean_nll, tokens, seconds}`. Calls `progress(done, total)`.
    pub async fn perplexity(
        &mut self,
        text: String,
        max_tokens: usize,
        progress: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let mut ids = self.tokenizer.encode(&text).map_err(js_err)?;
        ids.truncate(max_tokens.min(self.engine.lm_ref().max_len()));
        let t0 = web_time::Instant::now();
        let chunk = self.engine.chunk();
        let r = eval::perplexity(self.engine.lm(), &ids, chunk, &mut |done, total| {
            notify(&progress, &[(done as f64).into(), (total as f64).into()])
        })
        .await
        .map_err(js_err)?;
        let seconds = t0.elapsed().as_secs_f64();
        json_with(&r, Seconds { seconds })
    }

    /// Zero-shot accuracy on the first `limit` questions of multiple-choice JSONL:
    /// `{accuracy, n, correct, seconds, device, questions: [{question, choices, answer,
    /// predicted, scores}]}`. With early exits the answer is voted by `vote`
    /// (max, mean, majority, last; default last) and the result adds `vote`, `exits: [{after,
    /// accuracy, correct}]`, `votes: [{rule, accuracy, correct}]`, `fitted: {accuracy,
    /// correct, predictions}` (the error-weighted rule fitted leave-one-out) and per question
    /// `exit_predictions`. Calls `progress(done, total, correct)` after each question.
    pub async fn eval_mc(
        &mut self,
        jsonl: String,
        limit: usize,
        progress: Option<js_sys::Function>,
        vote: Option<String>,
    ) -> Result<String, JsError> {
        let (ds, _) = parse_data("questions.jsonl", &jsonl, "mc").map_err(js_err)?;
        let Dataset::MultipleChoice(mut qs) = ds else {
            return Err(JsError::new("the questions are not multiple-choice JSONL"));
        };
        qs.truncate(limit.max(1));
        let asked = vote
            .map(|v| v.parse::<Vote>())
            .transpose()
            .map_err(js_err)?;
        let t0 = web_time::Instant::now();
        let mut report = |done: usize, total: usize, correct: usize| {
            let counts = [done as f64, total as f64, correct as f64];
            notify(&progress, &counts.map(JsValue::from))
        };
        if let Some(rule) = self.vote_rule(asked).map_err(js_err)? {
            let r = eval::eval_mc_vote(self.engine.lm(), &self.tokenizer, &qs, rule, &mut report)
                .await
                .map_err(js_err)?;
            let argmax = |s: &[f64]| {
                (0..s.len())
                    .max_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))
                    .unwrap_or(0)
            };
            let questions = qs
                .iter()
                .zip(r.predictions.iter().zip(&r.scores))
                .map(|(q, (&predicted, s))| QuestionResult {
                    question: &q.question,
                    choices: &q.choices,
                    answer: q.answer,
                    predicted,
                    scores: s.last().map(Vec::as_slice),
                    exit_predictions: Some(s.iter().map(|e| argmax(e)).collect()),
                })
                .collect();
            return to_json(McResult {
                accuracy: r.accuracy,
                n: r.n,
                correct: r.correct,
                seconds: t0.elapsed().as_secs_f64(),
                device: self.device.device,
                vote: Some(r.rule),
                exits: Some(&r.exits),
                votes: Some(&r.votes),
                fitted: Some(&r.fitted),
                questions,
            });
        }
        let r = eval::eval_mc(self.engine.lm(), &self.tokenizer, &qs, &mut report)
            .await
            .map_err(js_err)?;
        let questions = qs
            .iter()
            .zip(r.predictions.iter().zip(&r.scores))
            .map(|(q, (&predicted, s))| QuestionResult {
                question: &q.question,
                choices: &q.choices,
                answer: q.answer,
                predicted,
                scores: Some(s.as_slice()),
                exit_predictions: None,
            })
            .collect();
        to_json(McResult {
            accuracy: r.accuracy,
            n: r.n,
            correct: r.correct,
            seconds: t0.elapsed().as_secs_f64(),
            device: self.device.device,
            vote: None,
            exits: None,
            votes: None,
            fitted: None,
            questions,
        })
    }

    /// Generates a reply to `prompt` (`options_json`: `{max_tokens, temperature, top_p,
    /// seed, chat}`; temperature 0 is greedy), calling `on_text(piece)` with the new text
    /// as whole characters arrive. Returns `{text, tokens, prompt_tokens, seconds,
    /// tokens_per_s, prefill_seconds}`.
    pub async fn generate(
        &mut self,
        prompt: String,
        options_json: String,
        on_text: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let o: GenerateOptions = parse_json("generation options", &options_json).map_err(js_err)?;
        let ok = (o.top_p > 0.0 && o.top_p <= 1.0) && o.temperature >= 0.0;
        if !ok {
            return Err(JsError::new("need 0 < top_p <= 1 and temperature >= 0"));
        }
        let tok = Rc::clone(&self.tokenizer);
        let text = if o.chat {
            tok.chat_prompt(&prompt)
        } else {
            prompt
        };
        let ids = tok.encode(&text).map_err(js_err)?;
        let stop = tok.stop_tokens();
        let sampling = Sampling {
            temperature: o.temperature,
            top_p: o.top_p,
            seed: o.seed,
        };
        let rule = self.vote_rule(o.vote).map_err(js_err)?;
        let t0 = web_time::Instant::now();
        let mut first: Option<f64> = None;
        let mut so_far = Vec::new();
        let mut shown = String::new();
        let mut on_token = |id| {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            so_far.push(id);
            if let Ok(s) = tok.decode(&so_far) {
                // Whole characters only: a multi-byte character may span tokens.
                if s.len() > shown.len() && !s.ends_with('\u{FFFD}') {
                    notify(&on_text, &[JsValue::from_str(&s[shown.len()..])]);
                    shown = s;
                }
            }
        };
        let out = match rule {
            Some(rule) => {
                eval::generate_voted(
                    self.engine.lm(),
                    &ids,
                    o.max_tokens,
                    &sampling,
                    rule,
                    &stop,
                    &mut on_token,
                )
                .await
            }
            None => {
                eval::generate(
                    self.engine.lm(),
                    &ids,
                    o.max_tokens,
                    &sampling,
                    &stop,
                    &mut on_token,
                )
                .await
            }
        }
        .map_err(js_err)?;
        let secs = t0.elapsed().as_secs_f64();
        let text = tok.decode(&out).map_err(js_err)?;
        if text.len() > shown.len() && text.starts_with(&shown) {
            notify(&on_text, &[JsValue::from_str(&text[shown.len()..])]);
        }
        // Decoding speed after the first token (the prompt's prefill excluded).
        let prefill = first.unwrap_or(secs);
        let decode_tps = if out.len() > 1 && secs > prefill {
            (out.len() - 1) as f64 / (secs - prefill)
        } else {
            0.0
        };
        to_json(GenerateResult {
            tokens: out.len(),
            prompt_tokens: ids.len(),
            seconds: secs,
            prefill_seconds: prefill,
            tokens_per_s: out.len() as f64 / secs.max(1e-9),
            decode_tokens_per_s: decode_tps,
            device: self.device.device,
            vote: rule,
            text,
        })
    }
}

/// What [`WebLm::perplexity`] adds to `eval::PerplexityResult`.
#[derive(Serialize)]
struct Seconds {
    seconds: f64,
}

/// [`WebLm::eval_mc`]'s result; `vote`, `exits` and `votes` only when the exits voted.
#[derive(Serialize)]
struct McResult<'a> {
    accuracy: f64,
    n: usize,
    correct: usize,
    seconds: f64,
    device: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote: Option<Vote>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exits: Option<&'a [ExitAccuracy]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    votes: Option<&'a [VoteAccuracy]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fitted: Option<&'a FittedAccuracy>,
    questions: Vec<QuestionResult<'a>>,
}

/// One question of [`McResult`]: `scores` are the (deepest exit's) choice scores, and with
/// voting each exit's own answer is in `exit_predictions`.
#[derive(Serialize)]
struct QuestionResult<'a> {
    question: &'a str,
    choices: &'a [String],
    answer: usize,
    predicted: usize,
    scores: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_predictions: Option<Vec<usize>>,
}

/// [`WebLm::generate`]'s result.
#[derive(Serialize)]
struct GenerateResult {
    text: String,
    tokens: usize,
    prompt_tokens: usize,
    seconds: f64,
    prefill_seconds: f64,
    tokens_per_s: f64,
    decode_tokens_per_s: f64,
    device: &'static str,
    vote: Option<Vote>,
}
