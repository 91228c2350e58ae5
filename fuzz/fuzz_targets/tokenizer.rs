//! A Hugging Face `tokenizer.json`, then a round trip of text through it.
#![no_main]

use edge_llm::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

extern crate fuzz_support;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_json(data) else {
        return;
    };
    let _ = tok.vocab_size();
    let _ = tok.stop_tokens();
    let prompt = tok.chat_prompt("Hello, wörld! 12345");
    if let Ok(ids) = tok.encode(&prompt) {
        let _ = tok.decode(&ids);
        for &id in ids.iter().take(8) {
            let _ = tok.id_to_token(id);
        }
    }
});
