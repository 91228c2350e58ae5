//! GPU matmul_nt (shaders/matmul.wgsl) against its CPU twin, reference::ops::matmul_nt,
//! on shapes that do not divide the 16×16 tile, under the WebGPU baseline limits.
//!
//! Needs a Vulkan adapter (lavapipe is enough: `apt-get install mesa-vulkan-drivers`).
//! Without one the test fails, unless EDGE_LLM_ALLOW_NO_GPU=1 (then it notes and passes).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::context;
use edge_llm::kernels::ops::checks::MATMUL_TOL;
use edge_llm::kernels::{matmul_nt, GpuContext, MatmulNt};
use edge_llm::reference::ops;
use edge_llm::tolerance::Tol;
use edge_llm::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The gemm rule of the op checks: |gpu − cpu| ≤ max(rel·(|gpu| + |cpu|), abs).
/// Both sides sum k f32 products of values in [-1, 1) in a different order (16-wide tiles
/// vs. matrixmultiply's blocking). The rounding error of such a sum grows like
/// √k·ε·(size of the partial sums), about 1e-4 at k = 1536 where the output cancels to
/// near zero: abs (1e-3) covers that with margin up to k ≈ 4096 and rel (1e-4) the large
/// outputs. A wrong index or a missed tile gives errors of order 0.1 to 10, far above both.
const TOL: Tol = MATMUL_TOL;

/// The shapes (m, k, n): degenerate edges, sizes that do not divide 16, and the shapes of
/// SmolLM2-135M's projections (hidden 576, ffn 1536) for one token and for a batch.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 1),
    (3, 1, 5),
    (1, 16, 16),
    (16, 16, 16),
    (17, 15, 33),
    (33, 70, 17),
    (1, 576, 192),
    (5, 576, 576),
    (64, 576, 1536),
    (64, 1536, 576),
];

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Compares one shape; returns the worst |gpu − cpu| seen.
fn check_shape(ctx: &GpuContext, m: usize, k: usize, n: usize, rng: &mut ChaCha8Rng) -> f32 {
    let x = random(m * k, rng);
    let w = random(n * k, rng);
    let want = ops::matmul_nt(&x, &w, m, k, n);
    let got = pollster::block_on(matmul_nt(ctx, &x, &w, m, k, n))
        .unwrap_or_else(|e| panic!("{m}×{k}·{n}×{k}ᵀ: {e}"));
    assert_eq!(got.len(), m * n);
    let mut worst = 0.0f32;
    for (i, (&g, &c)) in got.iter().zip(&want).enumerate() {
        let err = (g - c).abs();
        let tol = TOL.bound(g.abs() + c.abs());
        assert!(
            err <= tol,
            "m={m} k={k} n={n}: y[{}, {}] gpu {g} cpu {c} (|diff| {err} > tolerance {tol})",
            i / n,
            i % n
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn matmul_nt_matches_cpu_twin() {
    let Some(ctx) = context(None) else { return };
    eprintln!("adapter: {}", ctx.describe());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(m, k, n) in SHAPES {
        let worst = check_shape(&ctx, m, k, n, &mut rng);
        eprintln!("matmul_nt {m:>3}×{k:<4}·{n:>4}×{k:<4}ᵀ  max |gpu−cpu| = {worst:.2e}");
    }
}

/// A device that allows only 2 workgroups per grid dimension forces the wrapper to split
/// the product into several dispatches.
#[test]
fn matmul_nt_splits_dispatches_over_the_workgroup_limit() {
    let limits = wgpu::Limits {
        max_compute_workgroups_per_dimension: 2,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    assert_eq!(ctx.limits.max_compute_workgroups_per_dimension, 2);
    let (m, k, n) = (70, 33, 50); // 5 × 4 tiles → 3 × 2 dispatches
    assert_eq!(MatmulNt::plan(m as u32, n as u32, 2).len(), 6);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    check_shape(&ctx, m, k, n, &mut rng);
}

/// A product whose buffers exceed max_storage_buffer_binding_size is refused with
/// Error::Gpu, not a wgpu panic.
#[test]
fn matmul_nt_refuses_buffers_over_the_binding_limit() {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 4096,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    let (m, k, n) = (2, 1024, 3); // x is 8 KiB
    let err = pollster::block_on(matmul_nt(
        &ctx,
        &vec![0.0; m * k],
        &vec![0.0; n * k],
        m,
        k,
        n,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

#[test]
fn matmul_nt_rejects_mismatched_lengths_and_handles_empty_shapes() {
    let Some(ctx) = context(None) else { return };
    let err = pollster::block_on(matmul_nt(&ctx, &[1.0; 5], &[1.0; 6], 2, 3, 2)).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        pollster::block_on(matmul_nt(&ctx, &[], &[], 2, 0, 3)).unwrap(),
        vec![0.0; 6]
    );
    assert_eq!(
        pollster::block_on(matmul_nt(&ctx, &[], &[1.0; 4], 0, 2, 2)).unwrap(),
        Vec::<f32>::new()
    );
}
