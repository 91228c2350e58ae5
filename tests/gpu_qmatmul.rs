//! Quantized matmul kernels (shaders/qmatmul.wgsl behind its packed and GGUF decoders) against
//! their CPU twins: the bodies live in `edge_llm::kernels::qmatmul::checks` so the browser
//! runs them too. Plus an #[ignore]d timing comparison at m = 1 (prints, asserts nothing
//! about time).
//!
//! Needs a Vulkan adapter (lavapipe is enough). Without one the tests fail, unless
//! EDGE_LLM_ALLOW_NO_GPU=1 (then they note and pass).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{check, context};
use std::time::Instant;

use edge_llm::formats::quant;
use edge_llm::gguf::GgmlType;
use edge_llm::kernels::qmatmul::{checks, GpuWeight, Path, QMatmul, Tuning};
use edge_llm::kernels::{GpuContext, MatmulNt};

#[test]
fn qmatmul_checks_all() {
    let Some(ctx) = context(None) else { return };
    check(checks::all(&ctx));
}

#[test]
fn qmatmul_refuses_weights_over_the_binding_limit() {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 16 << 10,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    check(checks::refuses_oversized(&ctx));
}

/// A deterministic pseudo-random weight in [−1, 1) (fast enough for 28 M values).
fn weight(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Milliseconds per dispatch of `record`: BATCH dispatches per submission (as a decode
/// step records many), the fastest of `reps` submissions after a warm-up (the machine is
/// shared, so the minimum is the least disturbed).
fn time_ms(ctx: &GpuContext, reps: usize, record: &dyn Fn(&mut wgpu::CommandEncoder)) -> f64 {
    const BATCH: usize = 8;
    let run = || {
        let mut enc = ctx.encoder();
        for _ in 0..BATCH {
            record(&mut enc);
        }
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    };
    run();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e3 / BATCH as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// m = 1 (decoding) on SmolLM2-135M's largest shapes: dense f32 through the same GEMV
/// structure vs 4-bit and 8-bit packed and GGUF blocks, plus the tiled dense matmul_nt.
/// Run: cargo test --test gpu_qmatmul -- --ignored --nocapture
#[test]
#[ignore]
fn qmatmul_timing_m1() {
    let Some(ctx) = context(None) else { return };
    eprintln!("adapter: {} ({:?})", ctx.info.name, ctx.info.device_type);
    let mm = QMatmul::new(&ctx);
    let mm = QMatmul {
        path: Path::Gemv,
        ..mm
    };
    let reps: usize = std::env::var("QMATMUL_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tiny = GpuWeight::dense(&ctx, &[0.5; 32], 1, 32).unwrap();
    let (tx, ty) = (
        ctx.storage("x", &[0; 128]).unwrap(),
        ctx.storage_zeroed("y", 4).unwrap(),
    );
    let overhead = time_ms(&ctx, reps, &|enc| {
        mm.encode_nt(&ctx, enc, &tiny, &tx, &ty, 1).unwrap()
    });
    eprintln!("overhead: a 1×32 dense_gemv takes {overhead:.3} ms per dispatch");
    for (k, n) in [(576usize, 49152usize), (1536, 576)] {
        let wd = weight(n * k, 3);
        let x = weight(k, 4);
        let xb = ctx.storage("x", bytemuck::cast_slice(&x)).unwrap();
        let yb = ctx.storage_zeroed("y", (n * 4) as u64).unwrap();
        let dense = GpuWeight::dense(&ctx, &wd, n, k).unwrap();
        let mut rows: Vec<(String, GpuWeight)> = Vec::new();
        for (bits, group, sym) in [
            (4, 32, true),
            (4, 128, false),
            (8, 32, true),
            (8, 128, true),
        ] {
            let q = quant::quantize(&wd, n, k, bits, group, sym).unwrap();
            rows.push((
                format!("q{bits} g{group} sym={sym}"),
                GpuWeight::quant(&ctx, &q).unwrap(),
            ));
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            let g = quant::GgufBlockMatrix::quantize(ty, &wd, n, k).unwrap();
            rows.push((ty.name().to_string(), GpuWeight::gguf(&ctx, &g).unwrap()));
            rows.push((
                format!("{} repacked", ty.name()),
                GpuWeight::quant(&ctx, &g.to_quant().unwrap()).unwrap(),
            ));
        }
        // The dense baseline at its own best rows-per-invocation (it prefers fewer).
        let mut base = f64::INFINITY;
        for (wg, spread) in [
            (8, true),
            (16, true),
            (32, true),
            (8, false),
            (16, false),
            (32, false),
        ] {
            let d = QMatmul {
                tuning: Tuning {
                    wg,
                    spread,
                    ..mm.tuning
                },
                ..mm
            };
            let ms = time_ms(&ctx, reps, &|enc| {
                d.encode_nt(&ctx, enc, &dense, &xb, &yb, 1).unwrap()
            });
            eprintln!("k={k} n={n} m=1: dense_gemv wg={wg} spread={spread}: {ms:.2} ms");
            base = base.min(ms);
        }
        let tiled = MatmulNt::new(&ctx);
        let tiled_ms = time_ms(&ctx, 1, &|enc| {
            tiled.encode(&ctx, enc, &xb, &dense.data, &yb, 1, k, n)
        });
        eprintln!(
            "k={k} n={n} m=1: best dense_gemv {base:.2} ms, matmul_nt (tiled) {tiled_ms:.2} ms"
        );
        for (name, w) in &rows {
            let ms = time_ms(&ctx, reps, &|enc| {
                mm.encode_nt(&ctx, enc, w, &xb, &yb, 1).unwrap()
            });
            eprintln!("  {name:<18} {ms:8.2} ms  {:.2}× dense_gemv", base / ms);
        }
    }
}
