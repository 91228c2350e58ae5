//! The GPU kernels in a real browser: headless Chromium's WebGPU (SwiftShader) through
//! wasm-bindgen-test. Run by scripts/test.sh (`wasm_cargo test --test web`); see
//! webdriver.json for the browser flags.
#![cfg(target_arch = "wasm32")]

use edge_llm::kernels::ops::checks::MATMUL_TOL;
use edge_llm::kernels::{matmul_nt, GpuContext};
use edge_llm::reference::ops;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Deterministic values in [-1, 1) (a small LCG: no rand state needed in the browser).
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

async fn context() -> GpuContext {
    GpuContext::new(None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[wasm_bindgen_test]
async fn adapter_is_browser_webgpu() {
    let ctx = context().await;
    assert_eq!(
        ctx.info.backend,
        wgpu::Backend::BrowserWebGpu,
        "{}",
        ctx.describe()
    );
    assert!(
        ctx.describe()["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[wasm_bindgen_test]
async fn matmul_nt_matches_cpu_twin_on_awkward_shapes() {
    let ctx = context().await;
    for (m, k, n) in [(33, 70, 17), (1, 576, 192), (3, 1, 5)] {
        let x = values(m * k, 1 + m as u32);
        let w = values(n * k, 2 + n as u32);
        let want = ops::matmul_nt(&x, &w, m, k, n);
        let got = matmul_nt(&ctx, &x, &w, m, k, n)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), m * n);
        for (i, (&g, &c)) in got.iter().zip(&want).enumerate() {
            assert!(
                MATMUL_TOL.close(g, c),
                "m={m} k={k} n={n} y[{i}]: gpu {g} cpu {c}"
            );
        }
    }
}

/// The same test bodies as the native kernel tests (tests/gpu_ops.rs), in the browser.
#[wasm_bindgen_test]
async fn op_kernels_match_cpu_twins() {
    let ctx = context().await;
    edge_llm::kernels::ops::checks::all(&ctx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The roofline's FMA chain against its twin (Tint compiles it too).
#[wasm_bindgen_test]
async fn fma_chain_matches_cpu_twin() {
    let ctx = context().await;
    edge_llm::kernels::roofline::check_fma_chain(&ctx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `edge-llm bench kernels`' roofline table in the browser (SwiftShader): the FMA peak and
/// the copy bandwidth, then every kernel on the q/o projection's shape at one and 256 rows
/// with its share of both, printed to the test's output.
#[wasm_bindgen_test]
async fn roofline_table_in_the_browser() {
    use edge_llm::kernels::bench::{bench_kernels, BenchOptions};
    let ctx = context().await;
    let opts = BenchOptions {
        shapes: vec![(576, 576)],
        seq: vec![1, 256],
        target_s: 0.02,
    };
    console_log!("kernel m k n ms GFLOP/s %FMA GB/s %BW ({})", ctx.info.name);
    let rows = bench_kernels(&ctx, &opts, &mut |r| {
        console_log!(
            "{} {} {} {} {:.3} {:.2} {:.1} {:.2} {:.1}",
            r.kernel,
            r.m,
            r.k,
            r.n,
            r.ms,
            r.gflops,
            r.pct_peak_flops,
            r.gbps,
            r.pct_peak_bandwidth
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let peak = rows
        .iter()
        .find(|r| r.kernel == "fma_peak")
        .expect("an FMA peak row");
    assert!(peak.gflops > 0.0 && peak.pct_peak_flops == 100.0);
    for r in rows.iter().filter(|r| r.m > 0) {
        assert!(
            r.pct_peak_flops.is_finite() && r.pct_peak_bandwidth.is_finite() && r.ms > 0.0,
            "{r:?}"
        );
    }
}

/// The test bodies of tests/gpu_spmatmul.rs on a subset of its shapes, in the browser.
#[wasm_bindgen_test]
async fn sparse_matmul_kernels_match_cpu_twins() {
    let ctx = context().await;
    edge_llm::kernels::spmatmul::checks::browser_subset(&ctx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The test bodies of tests/gpu_qmatmul.rs on a subset of its variants, in the browser.
#[wasm_bindgen_test]
async fn quantized_matmul_kernels_match_cpu_twins() {
    let ctx = context().await;
    edge_llm::kernels::qmatmul::checks::browser_subset(&ctx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
