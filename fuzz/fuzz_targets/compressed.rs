//! A compressed-model file (`edge-llm compress`'s output): a GGUF whose packed projections
//! are described by JSON records in its metadata, with the compression policy.
#![no_main]

use edge_llm::compress::file::policy_of;
use edge_llm::formats::packed::{is_compressed, read_tensor, KEY_FORMAT};
use edge_llm::model::{ModelFile, Storage};
use libfuzzer_sys::fuzz_target;

extern crate fuzz_support;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ModelFile::from_bytes(data.to_vec()) else {
        return;
    };
    let g = &file.gguf;
    if !is_compressed(g) {
        return;
    }
    let _ = policy_of(g, file.config.n_layers);
    for (key, _) in &g.metadata {
        if let Some(name) = key.strip_prefix(KEY_FORMAT) {
            if let Ok(Some(p)) = read_tensor(g, &file.bytes, name) {
                let _ = p.to_dense();
            }
        }
    }
    let _ = file.weight_bytes(Storage::File);
    let _ = file.weights_as(Storage::File);
    let _ = file.weights_as(Storage::F32);
});
