//! An adapter's early exits, `exits.safetensors`, imported for the tiny model. The first
//! byte is the adapter's rank (from its `adapter_config.json`, already checked).
#![no_main]

use edge_llm::adapter::import_exits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&rank, bytes)) = data.split_first() else {
        return;
    };
    let _ = import_exits(bytes, rank as usize, &fuzz_support::tiny_model().config);
});
