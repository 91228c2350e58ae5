//! A data file: plain text, instruction JSONL or multiple-choice JSONL, as `--data` and the
//! page read it (the format from the file name or the content), then made into training
//! rows with the tiny model's tokenizer.
#![no_main]

use edge_llm::data::Dataset;
use edge_llm::tokenizer::Tokenizer;
use edge_llm::train::{prepare, DataConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The first byte picks the file name (the format rule reads its extension).
const NAMES: [&str; 4] = ["data.txt", "data.jsonl", "data.json", "data"];

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_gguf(&fuzz_support::tiny_model().gguf)
            .expect("the harness's own tiny model has a tokenizer (not fuzz input)")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // Files are read as UTF-8 (`read_to_string`; the page's `File.text()` replaces bad bytes).
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let name = NAMES[pick as usize % NAMES.len()];
    if let Ok(p) = Dataset::parse_lenient(name, text) {
        let _ = (p.dataset.kind(), p.dataset.len(), p.errors.len());
    }
    let Ok(ds) = Dataset::parse(name, text) else {
        return;
    };
    if let Dataset::MultipleChoice(qs) = &ds {
        for q in qs {
            // What evaluation reads: the context, and the answer among the choices.
            let _ = q.context();
            let _ = q.continuation(q.answer);
        }
    }
    let cfg = DataConfig {
        seq_len: 32,
        ..DataConfig::default()
    };
    let _ = prepare(&ds, tokenizer(), &cfg);
});
