//! The transformer op kernels (src/kernels/ops, shaders/*.wgsl) against their CPU twins:
//! the bodies live in `edge_llm::kernels::ops::checks` so the browser can run them too.
//!
//! Needs a Vulkan adapter (lavapipe is enough: `apt-get install mesa-vulkan-drivers`).
//! Without one the test fails, unless EDGE_LLM_ALLOW_NO_GPU=1 (then it notes and passes).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::context;
use edge_llm::kernels::ops::checks;

#[test]
fn every_op_kernel_matches_its_cpu_twin() {
    let Some(ctx) = context(None) else { return };
    if let Err(e) = pollster::block_on(checks::all(&ctx)) {
        panic!("{e}");
    }
}

/// A device allowing only 32 workgroups per grid dimension: every kernel whose dispatch
/// exceeds 32 workgroups must fold it into a 2-D grid and still match its twin.
#[test]
fn op_kernels_fold_dispatches_over_the_workgroup_limit() {
    let limits = wgpu::Limits {
        max_compute_workgroups_per_dimension: 32,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    assert_eq!(ctx.limits.max_compute_workgroups_per_dimension, 32);
    if let Err(e) = pollster::block_on(checks::all(&ctx)) {
        panic!("{e}");
    }
}

/// A device with a 16 KiB binding limit: the fused cross-entropy splits the LM head into
/// chunks on its own (1000 rows × 24 f32 = 96 KiB), and a kernel whose single buffer is
/// over the limit is refused with a GPU error naming the limit.
#[test]
fn op_kernels_split_or_refuse_under_a_small_binding_limit() {
    use edge_llm::kernels::ops::{cross_entropy, rmsnorm};
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 16 * 1024,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    assert_eq!(cross_entropy::rows_per_part(&ctx, 24, None).unwrap(), 170);
    let targets = [
        Some(3),
        None,
        Some(999),
        Some(0),
        Some(500),
        None,
        Some(311),
    ];
    let cfg = cross_entropy::CeConfig {
        chunk: 96,
        max_part_bytes: None,
    };
    if let Err(e) = pollster::block_on(checks::cross_entropy_case(
        &ctx,
        (7, 24, 1000),
        &targets,
        cfg,
        1,
    )) {
        panic!("{e}");
    }
    let (m, d) = (8, 1024); // x is 32 KiB
    let err = pollster::block_on(rmsnorm::rmsnorm_forward(
        &ctx,
        &vec![1.0; m * d],
        &vec![1.0; d],
        m,
        d,
        1e-5,
    ))
    .unwrap_err();
    assert!(matches!(err, edge_llm::Error::Gpu(_)), "{err}");
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

/// Rough timing (not a check): the backward products against the dense matmul_nt baseline
/// on one SmolLM2 MLP shape, dispatches only (buffers resident). Run with `--ignored`.
#[test]
#[ignore]
fn timing_linear_backward_vs_matmul_nt() {
    use edge_llm::kernels::ops::linear::Gemm;
    use std::time::Instant;
    let Some(ctx) = context(None) else { return };
    let (m, k, n) = (64, 576, 1536);
    let buf = |len: usize| ctx.storage_zeroed("t", len as u64 * 4).unwrap();
    let (x, w, y, dy, dx, dw) = (
        buf(m * k),
        buf(n * k),
        buf(m * n),
        buf(m * n),
        buf(m * k),
        buf(n * k),
    );
    let base = edge_llm::kernels::MatmulNt::new(&ctx);
    let time = |name: &str, f: &dyn Fn(&mut wgpu::CommandEncoder)| {
        let reps = 10;
        let mut enc = ctx.encoder();
        f(&mut enc); // warm-up: pipeline creation
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        let t0 = Instant::now();
        let mut enc = ctx.encoder();
        for _ in 0..reps {
            f(&mut enc);
        }
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e-3) / 1e9;
        eprintln!("{name:<28} {m}×{k}×{n}: {ms:7.2} ms/dispatch  {gflops:6.2} GFLOP/s");
    };
    time("matmul_nt (baseline) y=xWᵀ", &|e| {
        base.encode(&ctx, e, &x, &w, &y, m, k, n)
    });
    time("matmul_nn dx+=dy·W", &|e| {
        Gemm::nn(m, k, n).encode(&ctx, e, &dy, &w, &dx).unwrap()
    });
    time("matmul_tn dW+=dyᵀ·x", &|e| {
        Gemm::tn(m, k, n).encode(&ctx, e, &dy, &x, &dw).unwrap()
    });
}
