//! A tuning checkpoint (`checkpoint.json`: JSON, then a `crc32` line), as `tune --resume`
//! and the page read it, then loaded into a CPU trainer's backend for the tiny model (the
//! LoRA setting of the seed run) and its layer schedule consulted as the
//! trainer does. Each input is read as it is and, so that mutated JSON gets past the
//! checksum, as its body with a checksum that matches.
#![no_main]

use edge_llm::model::Storage;
use edge_llm::reference::LoraConfig;
use edge_llm::train::{Backend, CpuBackend, TrainState};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static BACKEND: RefCell<CpuBackend> = RefCell::new(CpuBackend::new(
        fuzz_support::tiny_model()
            .weights_as(Storage::File)
            .expect("the harness's own tiny model loads (not fuzz input)"),
        LoraConfig {
            rank: fuzz_support::SEED_LORA_RANK,
            ..LoraConfig::default()
        },
        0,
    ));
}

fn check(bytes: &[u8]) {
    let Ok(state) = TrainState::from_bytes(bytes) else {
        return;
    };
    let _ = state.best_val();
    BACKEND.with(|b| {
        let _ = pollster::block_on(b.borrow_mut().load(&state.params));
    });
    if let Some(ls) = &state.layers {
        // The trainer's next step, in a run of twice as many steps.
        let total = state.step.saturating_mul(2).max(1);
        let _ = ls.opens_phase(state.step, total, &state.phases);
        let _ = ls.window_at(state.step, total, &state.phases, Some(1.0));
        let _ = ls.lr_multiplier(state.phases.last().map_or(0, |p| p.window));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let body = match data.windows(7).rposition(|w| w == b"\ncrc32 ") {
        Some(at) => &data[..at],
        None => data,
    };
    let mut sealed = body.to_vec();
    sealed.extend_from_slice(format!("\ncrc32 {:08x}\n", crc32(body)).as_bytes());
    check(&sealed);
});

/// CRC-32 (IEEE), bit by bit: the checksum the checkpoint's last line states.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}
