//! The transformer op kernels (src/kernels/ops, shaders/*.wgsl) against their CPU twins:
//! the bodies live in `edge_llm::kernels::ops::checks` so the browser can run them too.
//!
//! Needs a Vulkan adapter (lavapipe is enough: `apt-get install mesa-vulkan-drivers`).
//! Without one the test fails, unless EDGE_LLM_ALLOW_NO_GPU=1 (then it notes and passes).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{check, context};
use edge_llm::kernels::ops::checks;

#[test]
fn every_op_kernel_matches_its_cpu_twin() {
    let Some(ctx) = context(None) else { return };
    check(checks::all(&ctx));
}

/// The roofline's FMA chain (the bench's arithmetic ceiling) computes what its twin does.
#[test]
fn fma_chain_matches_its_cpu_twin() {
    let Some(ctx) = context(None) else { return };
    check(edge_llm::kernels::roofline::check_fma_chain(&ctx));
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
    check(checks::all(&ctx));
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
    check(checks::cross_entropy_case(
        &ctx,
        (7, 24, 1000),
        &targets,
        cfg,
        1,
    ));
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

/// The GPU trainer's head gather and gradient scatter: the embedding kernels with row
/// positions for token ids, through segment buffers allocated once for t positions and
/// rewritten per row (fewer, all, the last only), against the CPU twins; more positions
/// than planned are refused.
#[test]
fn rows_gathered_and_scattered_by_position_through_planned_segments_match_the_cpu() {
    use edge_llm::kernels::ops::embedding::{
        encode_embedding_backward, encode_embedding_forward, SegmentBuffers, Segments,
    };
    use edge_llm::reference::ops;
    let Some(ctx) = context(None) else { return };
    let (t, d) = (37, 70); // neither divides the 256-wide workgroups
    let x = checks::values(t * d, 1);
    let upload = |v: &[f32]| ctx.storage("t", bytemuck::cast_slice(v)).unwrap();
    let read = |b: &wgpu::Buffer, len: usize| -> Vec<f32> {
        let bytes = pollster::block_on(ctx.read_buffer(b)).unwrap();
        bytemuck::cast_slice::<u8, f32>(&bytes)[..len].to_vec()
    };
    let mut seg = SegmentBuffers::zeroed(&ctx, "positions", t).unwrap();
    let planned: u64 = SegmentBuffers::bytes(t).iter().sum();
    let sizes = [&seg.uniq, &seg.starts, &seg.order].map(wgpu::Buffer::size);
    assert_eq!(sizes.iter().sum::<u64>(), planned);
    let (xb, rows) = (
        upload(&x),
        ctx.storage_zeroed("rows", (t * d * 4) as u64).unwrap(),
    );
    let all: Vec<u32> = (0..t as u32).collect();
    for positions in [vec![0, 5, 17, 36], all, vec![36]] {
        let n = positions.len();
        seg.write(&ctx.queue, &Segments::new(&positions).unwrap())
            .unwrap();
        let dh = checks::values(n * d, n as u32);
        let dx0 = checks::values(t * d, 7);
        let (dhb, dxb) = (upload(&dh), upload(&dx0));
        let mut enc = ctx.encoder();
        encode_embedding_forward(&ctx, &mut enc, &seg.uniq, &xb, &rows, n, d).unwrap();
        encode_embedding_backward(&ctx, &mut enc, &dhb, &seg, &dxb, d).unwrap();
        ctx.queue.submit([enc.finish()]);
        let what = format!("{n} positions");
        assert_eq!(
            read(&rows, n * d),
            ops::embedding_forward(&positions, &x, d),
            "{what}"
        );
        let mut want = dx0.clone();
        ops::embedding_backward(&dh, &positions, d, &mut want);
        assert_eq!(read(&dxb, t * d), want, "{what}");
    }
    let over: Vec<u32> = (0..t as u32 + 1).collect();
    let err = seg.write(&ctx.queue, &Segments::new(&over).unwrap());
    assert!(
        err.is_err(),
        "{} positions written into buffers for {t}",
        t + 1
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
