//! Where the CPU engine's time goes: wall time summed per kind of op, collected only while
//! switched on ([`enable`], or `EDGE_LLM_CPU_PROFILE=1` in the environment), so that off
//! it costs one relaxed load per op. In the page too (wall time from `performance.now()`
//! through web-time; `cpuProfile` in the wasm module switches it on).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

/// The kinds of op a step is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// y = x·Wᵀ (forward projections, the LM head, LoRA's u).
    MatmulNt,
    /// dx += dy·W (input gradients).
    MatmulNnAcc,
    /// dW += dyᵀ·x (LoRA weight gradients).
    MatmulTnAcc,
    /// Any other product (LoRA's up-projection and its gradient).
    MatmulOther,
    Attention,
    /// RMSNorm, RoPE, SwiGLU, residual adds, dropout masks.
    Elementwise,
    /// Softmax cross-entropy over the vocabulary.
    Loss,
    /// LoRA dropout: the masks (drawn by hashing), x ⊙ mask and its gradient.
    Dropout,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::MatmulNt,
        Op::MatmulNnAcc,
        Op::MatmulTnAcc,
        Op::MatmulOther,
        Op::Attention,
        Op::Elementwise,
        Op::Loss,
        Op::Dropout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::MatmulNt => "matmul nt",
            Op::MatmulNnAcc => "matmul nn_acc",
            Op::MatmulTnAcc => "matmul tn_acc",
            Op::MatmulOther => "matmul other",
            Op::Attention => "attention",
            Op::Elementwise => "norms/rope/swiglu",
            Op::Loss => "cross-entropy",
            Op::Dropout => "dropout (masks, x⊙mask)",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static ENV: Once = Once::new();
static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static CALLS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static FLOPS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Switches collection on or off (and reads the environment variable once).
pub fn enable(on: bool) {
    ENV.call_once(|| {});
    ON.store(on, Ordering::Relaxed);
}

/// Whether collection is on.
pub fn on() -> bool {
    ENV.call_once(|| {
        if std::env::var_os("EDGE_LLM_CPU_PROFILE").is_some_and(|v| v != "0") {
            ON.store(true, Ordering::Relaxed);
        }
    });
    ON.load(Ordering::Relaxed)
}

/// Zeroes the totals.
pub fn reset() {
    for a in NANOS.iter().chain(&CALLS).chain(&FLOPS) {
        a.store(0, Ordering::Relaxed);
    }
}

/// Per op: (op, seconds, calls, floating-point operations counted).
pub fn totals() -> Vec<(Op, f64, u64, u64)> {
    Op::ALL
        .iter()
        .map(|&op| {
            let i = op as usize;
            (
                op,
                NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
                CALLS[i].load(Ordering::Relaxed),
                FLOPS[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Times the closure as `op` (doing `flops` operations) when collection is on.
#[inline]
pub fn time<R>(op: Op, flops: u64, f: impl FnOnce() -> R) -> R {
    if on() {
        let t = web_time::Instant::now();
        let r = f();
        let i = op as usize;
        NANOS[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        CALLS[i].fetch_add(1, Ordering::Relaxed);
        FLOPS[i].fetch_add(flops, Ordering::Relaxed);
        return r;
    }
    f()
}

/// Prints the totals to stderr as a table (each op's share of their sum).
pub fn report() {
    let t = totals();
    let sum: f64 = t.iter().map(|r| r.1).sum();
    eprintln!(
        "{:<24} {:>9} {:>6} {:>8} {:>9}",
        "op", "s", "%", "calls", "GFLOP/s"
    );
    for (op, s, calls, flops) in t {
        let g = if s > 0.0 {
            flops as f64 / s * 1e-9
        } else {
            0.0
        };
        let pct = 100.0 * s / sum.max(1e-12);
        eprintln!("{:<24} {s:>9.3} {pct:>6.1} {calls:>8} {g:>9.1}", op.name());
    }
}
