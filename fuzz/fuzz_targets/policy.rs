//! A compression policy, the JSON document a user edits and passes to `compress --policy`
//! (and the one a compressed file carries), checked against a model of as many blocks as
//! it lists, then read as the compressor reads it.
#![no_main]

use edge_llm::compress::policy::Policy;
use libfuzzer_sys::fuzz_target;

extern crate fuzz_support;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The model's block count decides only the count check: try the tiny model's and the
    // document's own, so that the checks after it are reached.
    let _ = Policy::from_json(text, 2);
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let n = doc["layers"].as_array().map_or(0, Vec::len);
    if let Ok(p) = Policy::from_json(text, n) {
        let _ = p.mean_sparsity();
        let _ = p.mean_bits(&vec![1000; n]);
        let _ = p.to_json();
    }
});
