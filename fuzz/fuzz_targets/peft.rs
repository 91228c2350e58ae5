//! A user's PEFT adapter: `adapter_config.json` and `adapter_model.safetensors`, imported
//! for the tiny model. The input is the JSON, a NUL byte, then the safetensors file.
#![no_main]

use edge_llm::adapter::import_peft;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((json, weights)) = fuzz_support::split_at_nul(data) else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let _ = import_peft(weights, json, &fuzz_support::tiny_model().config);
});
