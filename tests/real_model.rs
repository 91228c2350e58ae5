//! Checks on the real SmolLM2-135M-Instruct (fetched by scripts/fetch-model.sh). Skipped
//! with a note when the file is absent, unless EDGE_LLM_REQUIRE_MODEL=1 (as in CI), where
//! a missing model is a failure.

mod common;
use common::model_path;
use edge_llm::data::Dataset;
use edge_llm::eval::{self, CpuLm, Sampling};
use edge_llm::model::ModelFile;
use edge_llm::reference::Transformer;
use edge_llm::tokenizer::Tokenizer;
use pollster::block_on;
use std::path::PathBuf;

#[test]
fn tokenizer_matches_the_original() {
    let Some(p) = model_path() else { return };
    let f = ModelFile::open(p).unwrap();
    let tok = Tokenizer::from_gguf(&f.gguf).unwrap();
    assert_eq!(
        tok.encode("Hello, world! 12345").unwrap(),
        [19556, 28, 905, 17, 216, 33, 34, 35, 36, 37]
    );
    assert_eq!(tok.vocab_size(), 49152);
    // Control tokens are single ids; text round-trips.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    let s = "Émile paid 3€ for naïve café — ok?\n\tDone.";
    assert_eq!(tok.decode(&tok.encode(s).unwrap()).unwrap(), s);
    assert_eq!((tok.bos, tok.eos, tok.add_bos), (Some(1), Some(2), false));
}

/// Its adapters name the Hugging Face model (recognised by the file's sha256), which PEFT's
/// loaders resolve, not the GGUF's display name.
#[test]
fn adapters_name_the_hugging_face_base_model() {
    let Some(p) = model_path() else { return };
    let f = ModelFile::open(p).unwrap();
    assert_eq!(
        edge_llm::adapter::base_model_id(&f),
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
}

#[test]
fn chat_answers_paris() {
    let Some(p) = model_path() else { return };
    let f = ModelFile::open(p).unwrap();
    let tok = Tokenizer::from_gguf(&f.gguf).unwrap();
    let model = Transformer::new(f.weights().unwrap());
    let prompt = tok
        .encode(&tok.chat_prompt("What is the capital of France?"))
        .unwrap();
    let mut lm = CpuLm::new(&model);
    let out = block_on(eval::generate(
        &mut lm,
        &prompt,
        16,
        &Sampling::default(),
        &[2],
        &mut |_| {},
    ))
    .unwrap();
    let text = tok.decode(&out).unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
}

/// A regression guard on the scoring convention: the first 60 ARC-Easy validation
/// questions, well above chance (0.25). The full 570 are measured by `edge-llm eval-mc`.
#[test]
fn arc_easy_subset_above_chance() {
    let Some(p) = model_path() else { return };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/arc-easy/validation.jsonl");
    let Dataset::MultipleChoice(qs) = Dataset::load(&data).expect("run scripts/fetch-data.sh")
    else {
        panic!("validation.jsonl is not multiple-choice")
    };
    assert_eq!(qs.len(), 570);
    let f = ModelFile::open(p).unwrap();
    let tok = Tokenizer::from_gguf(&f.gguf).unwrap();
    let model = Transformer::new(f.weights().unwrap());
    let mut lm = CpuLm::new(&model);
    let r = block_on(eval::eval_mc(&mut lm, &tok, &qs[..60], &mut |_, _, _| {})).unwrap();
    eprintln!("ARC-Easy first 60: accuracy {:.3}", r.accuracy);
    assert!(r.accuracy >= 0.40, "accuracy {}", r.accuracy);
}
