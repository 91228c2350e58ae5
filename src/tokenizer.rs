//! The tokenizer, built with the `tokenizers` crate from the GGUF's own vocabulary and
//! merges (byte-level BPE, `tokenizer.ggml.model = gpt2`), or from a `tokenizer.json`.
//!
//! SmolLM2's pre-tokenization (`tokenizer.ggml.pre = smollm`) splits every digit on its
//! own, then applies the GPT-2 byte-level regex; control tokens (token_type 3) are special
//! added tokens, so `<|im_start|>` in a prompt encodes to its one id.

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::AddedToken;

/// GGUF `tokenizer.ggml.token_type` of control tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id; only prepended where the model asks for it.
    pub bos: Option<u32>,
    /// End-of-sequence id (generation stops on it).
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// System message the chat template inserts when the conversation has none.
    pub default_system: Option<String>,
    /// The model uses ChatML (`<|im_start|>role\n…<|im_end|>`).
    pub chatml: bool,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Whether a `tokenizer.json` normalizer is or holds (in a `Sequence`, at any depth) a
/// `Precompiled` one.
fn has_precompiled(n: &serde_json::Value) -> bool {
    match n {
        serde_json::Value::Object(o) => {
            o.get("type").and_then(serde_json::Value::as_str) == Some("Precompiled")
                || o.contains_key("precompiled_charsmap")
                || o.values().any(has_precompiled)
        }
        serde_json::Value::Array(a) => a.iter().any(has_precompiled),
        _ => false,
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model '{model}' is not supported (only byte-level BPE, 'gpt2')"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Tokenizer(format!("missing {key}")))?;
            arr.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| Error::Tokenizer(format!("{key}[{i}] is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges_raw = match g.get("tokenizer.ggml.merges") {
            Some(_) => strings("tokenizer.ggml.merges")?,
            None => Vec::new(),
        };
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) if a.len() == tokens.len() => {
                a.iter().map(|v| v.as_i64().unwrap_or(1)).collect()
            }
            Some(a) => {
                return Err(Error::Tokenizer(format!(
                    "token_type has {} entries for {} tokens",
                    a.len(),
                    tokens.len()
                )))
            }
            None => vec![1; tokens.len()],
        };
        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(Error::Tokenizer(format!("duplicate token {t:?} at id {i}")));
            }
        }
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| Error::Tokenizer(format!("merge {i} {m:?} is not 'a b'")))?;
            if !vocab.contains_key(a) || !vocab.contains_key(b) {
                return Err(Error::Tokenizer(format!(
                    "merge {i} {m:?} uses unknown tokens"
                )));
            }
            merges.push((a.to_owned(), b.to_owned()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("gpt2");
        let byte_level = ByteLevel::new(false, false, true);
        if matches!(pre, "smollm" | "starcoder" | "qwen2" | "llama-bpe") {
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            inner.with_pre_tokenizer(Some(byte_level));
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);

        let id = |key: &str| {
            g.get(key)
                .and_then(Value::as_u64)
                .filter(|&v| (v as usize) < tokens.len())
                .map(|v| v as u32)
        };
        let template = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            default_system: default_system(template),
            chatml: template.contains("<|im_start|>") || tokens.iter().any(|t| t == "<|im_start|>"),
        })
    }

    /// Builds the tokenizer from a Hugging Face `tokenizer.json`. A `Precompiled`
    /// normalizer (a SentencePiece charsmap) is refused: the tokenizers crate panics on
    /// one that does not decode and indexes out of bounds with a damaged one.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let doc: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not JSON: {e}")))?;
        if let Some(n) = doc.get("normalizer").filter(|n| has_precompiled(n)) {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json: the Precompiled normalizer (a SentencePiece charsmap) is not \
                 supported (normalizer {})",
                n.get("type").unwrap_or(&serde_json::Value::Null)
            )));
        }
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        let find = |s: &str| inner.token_to_id(s);
        let chatml = find("<|im_start|>").is_some();
        Ok(Self {
            bos: find("<|im_start|>").or_else(|| find("<s>")),
            eos: find("<|im_end|>")
                .or_else(|| find("</s>"))
                .or_else(|| find("<|endoftext|>")),
            add_bos: false,
            default_system: None,
            chatml,
            inner,
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised. No BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// The tokens that end a generated reply: EOS and ChatML's end of turn (when the
    /// vocabulary has it as one token).
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stop: Vec<u32> = self.eos.into_iter().collect();
        stop.extend(
            self.encode("<|im_end|>")
                .ok()
                .filter(|v| v.len() == 1)
                .unwrap_or_default(),
        );
        stop
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The raw vocabulary entry of one id (byte-level form, e.g. "Ġworld").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One user turn in the model's chat template, ending where the assistant's reply
    /// begins. ChatML models get the template's default system message.
    pub fn chat_prompt(&self, user: &str) -> String {
        if !self.chatml {
            return user.to_owned();
        }
        let mut s = String::new();
        if let Some(sys) = &self.default_system {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        s.push_str(&format!(
            "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ));
        s
    }
}

/// The default system text a ChatML Jinja template inserts, if it has one.
fn default_system(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system\\n";
    const OPEN_RAW: &str = "<|im_start|>system\n";
    let (start, open_len) = template
        .find(OPEN)
        .map(|i| (i, OPEN.len()))
        .or_else(|| template.find(OPEN_RAW).map(|i| (i, OPEN_RAW.len())))?;
    let rest = &template[start + open_len..];
    let end = rest.find("<|im_end|>")?;
    let sys = &rest[..end];
    // A template that splices a variable here has no fixed default.
    (!sys.contains("{{") && !sys.contains('\'') && !sys.is_empty()).then(|| sys.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_from_smollm_template() {
        let t = "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}";
        assert_eq!(
            default_system(t).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            default_system("{{ '<|im_start|>system\n' + message['content'] + '<|im_end|>' }}"),
            None
        );
    }
}
