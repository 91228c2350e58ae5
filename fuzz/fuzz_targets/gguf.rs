//! A model file: the GGUF reader, then everything that reads its header (the model's
//! configuration, the tokenizer from its metadata) and its tensors, dequantized and as
//! the CPU engine holds them.
#![no_main]

use edge_llm::gguf::Gguf;
use edge_llm::model::{LlamaConfig, ModelFile, Storage};
use edge_llm::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

extern crate fuzz_support;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    for t in &g.tensors {
        let _ = g.tensor_f32(data, &t.name);
    }
    let _ = LlamaConfig::from_gguf(&g);
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        if let Ok(ids) = tok.encode("<|im_start|>user\nHello, 12345 wörld!<|im_end|>") {
            let _ = tok.decode(&ids);
        }
        let _ = tok.stop_tokens();
        let _ = tok.chat_prompt("hi");
    }
    if let Ok(file) = ModelFile::from_bytes(data.to_vec()) {
        let _ = file.weight_bytes(Storage::File);
        let _ = file.weights_as(Storage::File);
    }
});
