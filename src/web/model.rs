//! A loaded model (GGUF bytes, its configuration and tokenizer) and adapters for it.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use super::lm::{Engine, WebLm};
use super::{engine_for, js_err, parse_json, to_js_object};
use crate::adapter;
use crate::compress::policy::Policy;
use crate::device::Device;
use crate::engine::{GpuModel, GpuModelOptions};
use crate::eval::CpuLm;
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, Transformer};
use crate::tokenizer::Tokenizer;

/// A model loaded from GGUF bytes: its header, configuration and tokenizer.
#[wasm_bindgen]
pub struct WebModel {
    pub(super) model: ModelFile,
    /// Shared with the [`WebLm`]s built from this model.
    pub(super) tokenizer: Rc<Tokenizer>,
    /// The Hugging Face id of a file recognised by its sha256 (its adapters'
    /// `base_model_name_or_path`), worked out on first use.
    pub(super) known_base: std::cell::OnceCell<Option<&'static str>>,
}

/// Parses a GGUF file (the bytes of `models/default.gguf` or of a file the user picked).
#[wasm_bindgen]
pub fn load_model(bytes: Vec<u8>) -> Result<WebModel, JsError> {
    let model = ModelFile::from_bytes(bytes).map_err(js_err)?;
    let tokenizer = Rc::new(Tokenizer::from_gguf(&model.gguf).map_err(js_err)?);
    Ok(WebModel {
        model,
        tokenizer,
        known_base: Default::default(),
    })
}

#[wasm_bindgen]
impl WebModel {
    /// The model configuration (`LlamaConfig`) as JSON.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.model.config)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The size of the GGUF file in bytes.
    pub fn file_bytes(&self) -> usize {
        self.model.bytes.len()
    }

    /// Whether the file is a compressed model (`edge-llm compress`), which
    /// compress-then-tune needs.
    pub fn is_compressed(&self) -> bool {
        crate::formats::packed::is_compressed(&self.model.gguf)
    }

    /// What the model is, for people, as JSON: `{hf_id, name, weights}`: the Hugging Face id
    /// of a file recognised by its sha256 (null for others), the file's own
    /// `general.name` (null without one), and the storage type of most of its weight bytes
    /// ("Q4_1", "F32", …).
    pub fn identity_json(&self) -> String {
        let mut by_type: Vec<(crate::gguf::GgmlType, u64)> = Vec::new();
        for t in &self.model.gguf.tensors {
            match by_type.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some((_, n)) => *n += t.n_bytes,
                None => by_type.push((t.ty, t.n_bytes)),
            }
        }
        let weights = by_type
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(ty, _)| ty.name());
        serde_json::json!({
            "hf_id": self.known_base(),
            "name": adapter::gguf_model_name(&self.model.gguf),
            "weights": weights,
        })
        .to_string()
    }

    /// Token ids of `text` (no special tokens added).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.tokenizer.encode(text).map_err(js_err)
    }

    /// The text of each token, one string per id.
    pub fn token_strings(&self, ids: Vec<u32>) -> Result<Vec<String>, JsError> {
        ids.iter()
            .map(|&id| self.tokenizer.decode(&[id]).map_err(js_err))
            .collect()
    }

    /// `text` as the user turn of the model's ChatML template, ready for generation.
    pub fn chat_prompt(&self, text: &str) -> String {
        self.tokenizer.chat_prompt(text)
    }
}

#[wasm_bindgen]
impl WebModel {
    /// A copy of the GGUF file's bytes (to hand to another worker, or to download).
    pub fn bytes(&self) -> Vec<u8> {
        self.model.bytes.clone()
    }

    /// The policy a compressed model was made with (`edge_llm.policy`), as JSON; None for
    /// an uncompressed model.
    pub fn policy_json(&self) -> Result<Option<String>, JsError> {
        let p = crate::compress::file::policy_of(&self.model.gguf, self.model.config.n_layers)
            .map_err(js_err)?;
        Ok(p.map(|p| p.to_json()))
    }

    /// Checks a policy document against this model (the library's validation, whose
    /// error names the first problem); returns it as pretty JSON.
    pub fn check_policy(&self, policy_json: &str) -> Result<String, JsError> {
        let p = Policy::from_json(policy_json, self.model.config.n_layers).map_err(js_err)?;
        Ok(p.to_json())
    }
}

#[wasm_bindgen]
impl WebModel {
    /// Reads a PEFT adapter (`adapter_model.safetensors` bytes and `adapter_config.json`
    /// text) for this model, with its early exits (`exits.safetensors` bytes) if given;
    /// refused when its shapes or settings do not fit.
    pub fn import_adapter(
        &self,
        safetensors: &[u8],
        config_json: &str,
        exits: Option<Vec<u8>>,
    ) -> Result<WebAdapter, JsError> {
        let mut lora =
            adapter::import_peft(safetensors, config_json, &self.model.config).map_err(js_err)?;
        if let Some(bytes) = exits {
            lora.exits = adapter::import_exits(&bytes, lora.config.rank, &self.model.config)
                .map_err(js_err)?;
        }
        Ok(WebAdapter {
            lora,
            config: self.model.config.clone(),
            base_name: self.base_name(),
        })
    }

    /// The base model for evaluation and generation, on the engine `options_json`'s
    /// `device` picks (`crate::device`'s rule). `options_json`: `{max_len?, device?}`
    /// (`max_len`: the GPU model's KV-cache positions).
    pub async fn lm(&self, options_json: &str) -> Result<WebLm, JsError> {
        self.build_lm(None, options_json).await
    }

    /// The model with `adapter`'s LoRA (tuned or imported), on the engine `device` picks.
    pub async fn lm_with_adapter(
        &self,
        adapter: &WebAdapter,
        options_json: &str,
    ) -> Result<WebLm, JsError> {
        self.build_lm(Some(&adapter.lora), options_json).await
    }
}

impl WebModel {
    /// The Hugging Face id of a file recognised by its sha256 (hashed once, then kept).
    fn known_base(&self) -> Option<&'static str> {
        *self
            .known_base
            .get_or_init(|| adapter::known_base_id(&self.model))
    }

    /// The adapters' `base_model_name_or_path`.
    pub(super) fn base_name(&self) -> String {
        adapter::base_model_name(&self.model, self.known_base())
    }

    async fn build_lm(
        &self,
        lora: Option<&Lora<f32>>,
        options_json: &str,
    ) -> Result<WebLm, JsError> {
        let o: LmOptions = parse_json("model options", options_json).map_err(js_err)?;
        let (device, ctx) = engine_for(o.device).await?;
        // With exits the same model also gives every exit's logits (voted accuracy and
        // chat); perplexity reads the model's own head.
        let engine = match ctx {
            Some(ctx) => {
                let opts = GpuModelOptions {
                    max_len: o.max_len,
                    ..Default::default()
                };
                Engine::Gpu(Box::new(
                    GpuModel::new(ctx, &self.model, &opts, lora).map_err(js_err)?,
                ))
            }
            None => {
                let model = Transformer {
                    w: self
                        .model
                        .weights_as(crate::model::Storage::File)
                        .map_err(js_err)?,
                    lora: lora.cloned(),
                };
                Engine::Cpu(CpuLm::new(model))
            }
        };
        Ok(WebLm {
            engine,
            device,
            tokenizer: Rc::clone(&self.tokenizer),
            with_adapter: lora.is_some(),
        })
    }
}

/// Options of [`WebModel::lm`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LmOptions {
    max_len: Option<usize>,
    device: Device,
}

/// Adapter values (tuned or imported) to build a [`WebLm`] with, or to export.
#[wasm_bindgen]
pub struct WebAdapter {
    pub(super) lora: Lora<f32>,
    pub(super) config: LlamaConfig,
    pub(super) base_name: String,
}

#[wasm_bindgen]
impl WebAdapter {
    /// The LoRA rank.
    pub fn rank(&self) -> usize {
        self.lora.config.rank
    }

    /// The block counts after which its early exits sit (empty: plain LoRA).
    pub fn exits(&self) -> Vec<u32> {
        exit_afters(&self.lora)
    }

    /// The adapter as PEFT files: `{safetensors: Uint8Array, config: string}`, and
    /// `exits: Uint8Array` (`exits.safetensors`) when it has early exits. `base_model`: the
    /// Hugging Face id `adapter_config.json` names as the base (`adapter::given_base_model`;
    /// none: the model's own).
    pub fn files(&self, base_model: Option<String>) -> Result<js_sys::Object, JsError> {
        peft_files(&self.lora, &self.config, &self.base_name, base_model)
    }
}

/// Checks a Hugging Face base model id as the adapter's export does (owner/name), for the
/// page's field: an error in plain words, or nothing.
#[wasm_bindgen]
pub fn check_base_model(id: &str) -> Result<(), JsError> {
    adapter::given_base_model(Some(id))
        .map(|_| ())
        .map_err(js_err)
}

pub(super) fn peft_files(
    lora: &Lora<f32>,
    config_of: &LlamaConfig,
    base_name: &str,
    base_model: Option<String>,
) -> Result<js_sys::Object, JsError> {
    let given = adapter::given_base_model(base_model.as_deref()).map_err(js_err)?;
    let base_name = given.as_deref().unwrap_or(base_name);
    let files = adapter::adapter_files(lora, config_of, base_name).map_err(js_err)?;
    let zip = adapter::zip_files(&files).map_err(js_err)?;
    let file = |name: &str| files.iter().find(|(n, _)| *n == name).map(|(_, d)| d);
    let (Some(safetensors), Some(config)) =
        (file(adapter::WEIGHTS_FILE), file(adapter::CONFIG_FILE))
    else {
        return Err(JsError::new("the adapter's PEFT files are missing"));
    };
    to_js_object(&PeftFiles {
        safetensors,
        config: std::str::from_utf8(config).map_err(|e| JsError::new(&e.to_string()))?,
        exits: file(adapter::EXITS_FILE).map(Vec::as_slice),
        zip: &zip,
    })
}

/// The files of an adapter for the page: `adapter_model.safetensors`, `adapter_config.json`
/// and, with early exits, `exits.safetensors`; and all of them as one zip (the download).
#[derive(Serialize)]
struct PeftFiles<'a> {
    #[serde(with = "serde_bytes")]
    safetensors: &'a [u8],
    config: &'a str,
    #[serde(with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    exits: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    zip: &'a [u8],
}

fn exit_afters(lora: &Lora<f32>) -> Vec<u32> {
    lora.exits.iter().map(|e| e.after as u32).collect()
}
