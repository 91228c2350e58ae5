//! The browser shell (wasm32 only): the wasm-bindgen API that www/app.js calls.
//! It converts between JS values and the engine's types and does nothing else; the
//! engine below it is the same code that runs natively.

use wasm_bindgen::prelude::*;

use crate::kernels::GpuContext;
use crate::model::ModelFile;
use crate::tokenizer::Tokenizer;

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// Runs once when the module is instantiated: panics go to the console with their message.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A model loaded from GGUF bytes: its header, configuration and tokenizer.
#[wasm_bindgen]
pub struct WebModel {
    model: ModelFile,
    tokenizer: Tokenizer,
}

/// Parses a GGUF file (the bytes of `models/default.gguf` or of a file the user picked).
#[wasm_bindgen]
pub fn load_model(bytes: Vec<u8>) -> Result<WebModel, JsError> {
    let model = ModelFile::from_bytes(bytes).map_err(js_err)?;
    let tokenizer = Tokenizer::from_gguf(&model.gguf).map_err(js_err)?;
    Ok(WebModel { model, tokenizer })
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

/// The WebGPU adapter and its limits as JSON (`GpuContext::describe`), or an error that
/// says what to do when the browser has no WebGPU.
#[wasm_bindgen]
pub async fn gpu_info() -> Result<String, JsError> {
    let ctx = GpuContext::new(None).await.map_err(js_err)?;
    Ok(ctx.describe().to_string())
}
