//! Inputs the fuzz targets (fuzz/fuzz_targets, `bash scripts/fuzz.sh`) found to panic, hang
//! or allocate without bound, each reduced to what it needs, through the same public
//! functions: every one must now give an error. Also checks that the committed seeds
//! still parse, so that fuzzing starts from valid files.

use edge_llm::tokenizer::Tokenizer;

/// A small byte-level BPE `tokenizer.json` whose normalizer is `normalizer`.
fn tokenizer_json(normalizer: &str) -> String {
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {normalizer}, "pre_tokenizer": null, "post_processor": null,
            "decoder": null,
            "model": {{"type": "BPE", "dropout": null, "unk_token": null,
                       "continuing_subword_prefix": null, "end_of_word_suffix": null,
                       "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                       "vocab": {{"a": 0, "b": 1, "ab": 2}}, "merges": ["a b"]}}}}"#
    )
}

fn assert_refused(what: &str, json: &str, needle: &str) {
    match Tokenizer::from_json(json.as_bytes()) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{what}: the error should name {needle:?}: {e}"
        ),
    }
}

#[test]
fn tokenizer_json_seeds_parse() {
    for name in ["byte_level_bpe", "wordpiece", "wordlevel", "unigram"] {
        let path = format!(
            "{}/fuzz/seeds/tokenizer/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let tok = Tokenizer::from_json(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let ids = tok.encode("Hello, wörld! 12345").unwrap();
        assert!(!ids.is_empty(), "{path}");
    }
    assert!(Tokenizer::from_json(tokenizer_json("null").as_bytes()).is_ok());
}

/// tokenizers 0.22 panics (`expect("Precompiled")`) on a SentencePiece `Precompiled`
/// normalizer whose charsmap does not decode, and indexes out of bounds normalizing text
/// with one whose trie is damaged: the fuzzer's first finding (a null charsmap).
#[test]
fn tokenizer_json_precompiled_normalizer_is_refused() {
    let null_map = r#"{"type": "Precompiled", "precompiled_charsmap": null}"#;
    assert_refused("null charsmap", &tokenizer_json(null_map), "Precompiled");
    let in_sequence =
        format!(r#"{{"type": "Sequence", "normalizers": [{{"type": "NFKC"}}, {null_map}]}}"#);
    assert_refused(
        "in a sequence",
        &tokenizer_json(&in_sequence),
        "Precompiled",
    );
    // A trie of one unit pointing far outside it.
    let damaged = r#"{"type": "Precompiled", "precompiled_charsmap": "BAAAAAD///9hAA=="}"#;
    assert_refused("damaged trie", &tokenizer_json(damaged), "Precompiled");
}
