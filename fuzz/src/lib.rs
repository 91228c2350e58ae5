//! What the fuzz targets share: an allocator that turns a huge allocation into a crash,
//! the tiny model the adapter and checkpoint seeds were made on, and input splitting.

use edge_llm::model::tiny::{self, TinySpec};
use edge_llm::model::ModelFile;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::OnceLock;

/// The largest single allocation a target may make. Inputs are at most a few hundred KiB
/// (the seeds' size), so anything near this is sized by an unchecked field of the input,
/// not by its data: the parsers must refuse such a field with an error instead.
/// (libFuzzer's own `-malloc_limit_mb` needs a sanitizer's allocator hooks; this works
/// with `--sanitizer none` too.)
pub const MAX_ALLOC: usize = 256 << 20;

/// The system allocator, aborting (a crash libFuzzer records, with the input) on a
/// request above [`MAX_ALLOC`].
pub struct Capped;

fn refuse(size: usize) -> ! {
    // No allocation here: stderr is unbuffered and integer formatting needs none.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: an allocation of {size} bytes (limit {MAX_ALLOC}): sized by an unchecked field?"
    );
    std::process::abort()
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            refuse(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            refuse(layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            refuse(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// The model every seed was made on and the adapter and checkpoint targets read for:
/// `edge-llm make-tiny --layers 2 --hidden 32 --heads 2 --kv-heads 1 --ffn 32`
/// (scripts/fuzz.sh; small, so that each input is small and runs fast).
pub fn tiny_spec() -> TinySpec {
    TinySpec {
        n_layers: 2,
        hidden: 32,
        n_heads: 2,
        n_kv_heads: 1,
        ffn: 32,
        seed: 0,
    }
}

/// The LoRA rank of the seed tuning run (`tune --lora-rank 2`; the other LoRA settings
/// are the defaults).
pub const SEED_LORA_RANK: usize = 2;

/// [`tiny_spec`]'s model, built once.
pub fn tiny_model() -> &'static ModelFile {
    static MODEL: OnceLock<ModelFile> = OnceLock::new();
    MODEL.get_or_init(|| {
        let bytes = tiny::generate(&tiny_spec()).expect("the tiny model");
        ModelFile::from_bytes(bytes).expect("the tiny model parses")
    })
}

/// Splits an input into two files at its first NUL byte: a JSON document (which holds no
/// NUL) and the binary file after it. Seeds are written as `json ++ [0] ++ binary`.
pub fn split_at_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == 0)?;
    Some((&data[..at], &data[at + 1..]))
}
