//! The report of `edge-llm bench cpu`: its JSON (the f32 vanilla step's keys at the top, as
//! before, then the packed run and the forward comparison) and its table.

use serde::Serialize;

/// One op's part of the timed steps.
#[derive(Serialize)]
pub(super) struct OpShare {
    pub op: &'static str,
    pub ms_per_step: f64,
    pub share_of_step: f64,
    pub gflops: Option<f64>,
    pub share_of_peak: Option<f64>,
}

/// A vanilla LoRA run on one way of holding the weights.
#[derive(Serialize)]
pub(super) struct Vanilla {
    /// The matrices' formats with counts.
    pub weights: String,
    /// Bytes the frozen weights hold.
    pub weight_bytes: u64,
    pub steps: u64,
    pub tokens_per_step: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    pub gflop_per_step: f64,
    pub gflops: f64,
    pub share_of_peak: f64,
    /// tokens/s ÷ the f32 run's.
    pub speed_vs_f32: f64,
}

/// The frozen-prefix forward of one model.
#[derive(Serialize)]
pub(super) struct Forward {
    /// "f32", "file" (the model's own packed weights), "luc" (the compressed model).
    pub model: String,
    pub weights: String,
    pub weight_bytes: u64,
    pub rows: usize,
    pub tokens: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Work counted (dense-equivalent: a sparse matrix counts its full shape).
    pub gflop: f64,
    pub gflops: f64,
    pub share_of_peak: f64,
    pub speed_vs_f32: f64,
}

/// Token-by-token decoding with the KV cache, through the head (chat, `eval-mc`'s choices).
#[derive(Serialize)]
pub(super) struct Decode {
    pub model: String,
    pub weight_bytes: u64,
    /// Tokens decoded (timed).
    pub tokens: usize,
    pub ms_per_token: f64,
    pub tokens_per_s: f64,
    /// The weights' bytes read per second (each token reads every weight once).
    pub weight_gbps: f64,
    pub speed_vs_f32: f64,
}

#[derive(Serialize)]
pub(super) struct Report {
    pub threads: usize,
    pub gemm_kernel: &'static str,
    pub steps: u64,
    pub tokens_per_step: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// Work counted by the ops (matrix products, attention) per step.
    pub gflop_per_step: f64,
    pub gflops: f64,
    pub peak_gflops: f64,
    pub peak_isa: &'static str,
    pub share_of_peak: f64,
    /// Tokens/s the step would reach at the FMA peak (same counted work).
    pub tokens_per_s_at_peak: f64,
    pub ops: Vec<OpShare>,
    /// Bytes of the f32 run's frozen weights.
    pub weight_bytes: u64,
    /// The same steps on the file's own weights held packed.
    pub file_weights: Vanilla,
    /// The frozen-prefix forward: f32, file weights, LUC (empty with --no-forward).
    pub forward: Vec<Forward>,
    /// Decoding one token at a time: f32, file weights, LUC (empty with --no-forward).
    pub decode: Vec<Decode>,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

pub(super) fn print_table(r: &Report) {
    println!(
        "CPU engine, vanilla LoRA on f32 weights ({:.1} MiB): {} steps of {:.0} tokens on {} \
         threads (GEMM kernel {})",
        mib(r.weight_bytes),
        r.steps,
        r.tokens_per_step,
        r.threads,
        r.gemm_kernel
    );
    println!(
        "step {:.0} ms, {:.1} tokens/s; {:.1} GFLOP/step counted, {:.1} GFLOP/s = {:.1} % of \
         the FMA peak {:.1} GFLOP/s ({}; at the peak: {:.0} tokens/s)",
        r.step_ms,
        r.tokens_per_s,
        r.gflop_per_step,
        r.gflops,
        100.0 * r.share_of_peak,
        r.peak_gflops,
        r.peak_isa,
        r.tokens_per_s_at_peak
    );
    println!(
        "{:<24} {:>9} {:>7} {:>9} {:>7}",
        "op", "ms/step", "% step", "GFLOP/s", "% peak"
    );
    let rest = 1.0 - r.ops.iter().map(|o| o.share_of_step).sum::<f64>();
    for o in &r.ops {
        let g = o.gflops.map_or("".into(), |g| format!("{g:.1}"));
        let p = o
            .share_of_peak
            .map_or("".into(), |p| format!("{:.1}", 100.0 * p));
        println!(
            "{:<24} {:>9.1} {:>7.1} {:>9} {:>7}",
            o.op,
            o.ms_per_step,
            100.0 * o.share_of_step,
            g,
            p
        );
    }
    println!(
        "{:<24} {:>9.1} {:>7.1}",
        "other (allocation, adds, optimizer)",
        rest * r.step_ms,
        100.0 * rest
    );
    let f = &r.file_weights;
    println!(
        "\nvanilla LoRA on the file's own weights held packed ({}; {:.1} MiB): step {:.0} ms, \
         {:.1} tokens/s = {:.2}× f32, {:.1} GFLOP/s = {:.1} % of peak",
        f.weights,
        mib(f.weight_bytes),
        f.step_ms,
        f.tokens_per_s,
        f.speed_vs_f32,
        f.gflops,
        100.0 * f.share_of_peak
    );
    if r.forward.is_empty() {
        return;
    }
    println!("\nfrozen-prefix forward (every block, no head):");
    println!(
        "{:<6} {:>10} {:>9} {:>10} {:>9} {:>7} {:>7}  weights",
        "model", "MiB", "tokens", "tokens/s", "GFLOP/s", "% peak", "× f32"
    );
    for f in &r.forward {
        println!(
            "{:<6} {:>10.1} {:>9} {:>10.1} {:>9.1} {:>7.1} {:>7.2}  {}",
            f.model,
            mib(f.weight_bytes),
            f.tokens,
            f.tokens_per_s,
            f.gflops,
            100.0 * f.share_of_peak,
            f.speed_vs_f32,
            f.weights
        );
    }
    println!("\ndecoding one token at a time (KV cache, every block and the head):");
    println!(
        "{:<6} {:>10} {:>9} {:>10} {:>10} {:>12} {:>7}",
        "model", "MiB", "tokens", "ms/token", "tokens/s", "weights GB/s", "× f32"
    );
    for d in &r.decode {
        println!(
            "{:<6} {:>10.1} {:>9} {:>10.2} {:>10.1} {:>12.1} {:>7.2}",
            d.model,
            mib(d.weight_bytes),
            d.tokens,
            d.ms_per_token,
            d.tokens_per_s,
            d.weight_gbps,
            d.speed_vs_f32
        );
    }
}
