//! Sparse matmul kernels (shaders/spmatmul.wgsl) against their CPU twins in
//! compress::sparse: the bodies live in `edge_llm::kernels::spmatmul::checks` so the
//! browser runs them too. Plus an ignored timing comparison with dense `MatmulNt`.
//!
//! Needs a Vulkan adapter (lavapipe is enough). Without one the tests fail, unless
//! EDGE_LLM_ALLOW_NO_GPU=1 (then they note and pass).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{check, context};
use edge_llm::formats::sparse::{self as sp, Sparse24Matrix, UnstructuredMatrix, ValueType};
use edge_llm::kernels::spmatmul::{checks, SparseWeight};
use edge_llm::kernels::MatmulNt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

#[test]
fn spmatmul_matches_cpu_twins() {
    let Some(ctx) = context(None) else { return };
    check(checks::all(&ctx));
}

#[test]
fn spmatmul_folds_grids_and_refuses_over_the_binding_limit() {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 64 << 10,
        max_compute_workgroups_per_dimension: 8,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    check(checks::small_limits(&ctx));
}

/// Milliseconds per product at m = 256 on SmolLM2-135M's projection shapes: dense f32
/// `MatmulNt` vs 2:4 vs 50 % unstructured (each value type), REPS dispatches between
/// synchronised submits. `cargo test --release --test gpu_spmatmul -- --ignored --nocapture`
#[test]
#[ignore]
fn spmatmul_timing() {
    const REPS: usize = 5;
    let Some(ctx) = context(None) else { return };
    eprintln!("adapter: {}", ctx.info.name);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let m = 256;
    let time = |f: &dyn Fn(&mut wgpu::CommandEncoder)| -> f64 {
        let once = || {
            let mut e = ctx.encoder();
            f(&mut e);
            ctx.queue.submit([e.finish()]);
            ctx.device
                .poll(wgpu::PollType::wait_indefinitely())
                .expect("poll");
        };
        once(); // warm-up: pipeline compile and first bind
        let t = Instant::now();
        let mut e = ctx.encoder();
        for _ in 0..REPS {
            f(&mut e);
        }
        ctx.queue.submit([e.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        t.elapsed().as_secs_f64() * 1e3 / REPS as f64
    };
    for (k, n) in [(576, 576), (576, 1536), (1536, 576)] {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let xb = ctx.storage("x", bytemuck::cast_slice(&x)).unwrap();
        let dyb = ctx
            .storage("dy", bytemuck::cast_slice(&vec![0.5f32; m * n]))
            .unwrap();
        let yb = ctx.storage_zeroed("y", (m * n * 4) as u64).unwrap();
        let dxb = ctx.storage_zeroed("dx", (m * k * 4) as u64).unwrap();
        let wb = ctx.storage("w", bytemuck::cast_slice(&w)).unwrap();
        let dense = MatmulNt::new(&ctx);
        let t_dense = time(&|e| dense.encode(&ctx, e, &xb, &wb, &yb, m, k, n));
        let line = format!(
            "k={k:<4} n={n:<4} m={m}: dense {t_dense:7.2} ms ({:.0} KiB) |",
            (n * k * 4) as f64 / 1024.0
        );
        // The same tiling at 0 % sparsity: what the sparse kernels gain from sparsity alone.
        let full = SparseWeight::unstructured(
            &ctx,
            &UnstructuredMatrix::pack(&w, n, k, ValueType::F32).unwrap(),
            false,
        )
        .unwrap();
        let t_full = time(&|e| full.encode_nt(&ctx, e, &xb, &yb, m).unwrap());
        let line = format!("{line} unstructured 0% {t_full:7.2} ms |");
        let w24 = sp::prune_magnitude_2of4(&w, n, k);
        let w50 = sp::prune_magnitude(&w, n, k, 0.5);
        for ty in ValueType::ALL {
            let p24 = Sparse24Matrix::pack(&w24, n, k, ty).unwrap();
            let p50 = UnstructuredMatrix::pack(&w50, n, k, ty).unwrap();
            let s24 = SparseWeight::sparse24(&ctx, &p24, true).unwrap();
            let s50 = SparseWeight::unstructured(&ctx, &p50, true).unwrap();
            let a = time(&|e| s24.encode_nt(&ctx, e, &xb, &yb, m).unwrap());
            let b = time(&|e| s50.encode_nt(&ctx, e, &xb, &yb, m).unwrap());
            let c = time(&|e| s24.encode_nn(&ctx, e, &dyb, &dxb, m).unwrap());
            let d = time(&|e| s50.encode_nn(&ctx, e, &dyb, &dxb, m).unwrap());
            let kib = |b: usize| b as f64 / 1024.0;
            eprintln!(
                "{line} {ty:?}: 2:4 {a:7.2} ms ({:.2}x dense, {:.2}x 0%; {:.0} KiB) \
                 | 50% {b:7.2} ms ({:.2}x, {:.2}x; {:.0} KiB) | dx=dy·W: 2:4 {c:7.2} ms, 50% {d:7.2} ms",
                t_dense / a,
                t_full / a,
                kib(p24.bytes()),
                t_dense / b,
                t_full / b,
                kib(p50.bytes()),
            );
        }
    }
}
