//! `edge-llm bench kernels`: the matmul kernels on the default model's shapes, timed side
//! by side in one run. Every kernel records `iters` dispatches into one encoder on
//! resident buffers (no uploads in the timed region); the time is read from GPU timestamp
//! queries where the adapter offers them (inside encoders), else from the wall clock
//! around a synchronised submit.
//!
//! `dense_f32` is the FASTEST dense f32 kernel we have for each shape — the tiled
//! `matmul_nt`, the GEMV-structured dense variant of `qmatmul`, or the sparse kernels'
//! tiling run on the unpruned weight — so each ratio compares against the best dense
//! baseline in the same run, not a weak one. GFLOP/s count dense-equivalent work
//! (2·m·k·n) for every kernel; GB/s count the bytes a kernel must read and write once
//! (weight as stored + x + y).

use super::context::GpuContext;
use super::matmul::MatmulNt;
use super::qmatmul::{GpuWeight, QMatmul};
use super::spmatmul::GpuSparseMatrix;
use crate::formats::quant::{quantize, GgufBlockMatrix};
use crate::formats::sparse::{
    prune_magnitude, prune_magnitude_2of4, Sparse24Matrix, UnstructuredMatrix, ValueType,
};
use crate::gguf::GgmlType;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The (in, out) shapes of the default model's matmuls: q/o, k/v, gate/up, down, LM head.
pub const SHAPES: [(usize, usize); 5] = [
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
];
/// Rows of x: decoding (1) and a training sequence (256).
pub const SEQ: [usize; 2] = [1, 256];
/// Quantization group of the packed q-formats benchmarked.
const GROUP: usize = 32;

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub kernel: String,
    /// Rows of x.
    pub m: usize,
    /// In features.
    pub k: usize,
    /// Out features.
    pub n: usize,
    pub ms: f64,
    pub gflops: f64,
    pub gbps: f64,
    /// Time of `dense_f32` divided by this kernel's time.
    pub vs_dense: f64,
    /// Bytes of the weight as the kernel reads it.
    pub weight_bytes: usize,
    pub iters: usize,
    /// "timestamp" or "wall".
    pub timer: &'static str,
    /// For `dense_f32`: which dense kernel was fastest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_of: Option<String>,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub shapes: Vec<(usize, usize)>,
    pub seq: Vec<usize>,
    /// Target seconds of timed work per kernel (at least one dispatch, at most 50).
    pub target_s: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            shapes: SHAPES.to_vec(),
            seq: SEQ.to_vec(),
            target_s: 0.5,
        }
    }
}

/// One resident operand and how to record a product with it.
enum Op {
    Tiled(wgpu::Buffer),
    Q(QMatmul, GpuWeight),
    Sparse(GpuSparseMatrix),
}

struct Timer {
    query: Option<(wgpu::QuerySet, wgpu::Buffer)>,
}

impl Timer {
    fn new(ctx: &GpuContext) -> Result<Self> {
        let f = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if !ctx.features.contains(f) {
            return Ok(Self { query: None });
        }
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(Self {
            query: Some((set, buf)),
        })
    }

    fn name(&self) -> &'static str {
        if self.query.is_some() {
            "timestamp"
        } else {
            "wall"
        }
    }
}

/// Seconds for `iters` back-to-back products.
async fn time(
    ctx: &GpuContext,
    timer: &Timer,
    op: &Op,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    (m, k, n): (usize, usize, usize),
    iters: usize,
) -> Result<f64> {
    let mut enc = ctx.encoder();
    if let Some((set, _)) = &timer.query {
        enc.write_timestamp(set, 0);
    }
    for _ in 0..iters {
        match op {
            Op::Tiled(w) => MatmulNt::new(ctx).encode(ctx, &mut enc, x, w, y, m, k, n),
            Op::Q(q, w) => q.encode_nt(ctx, &mut enc, w, x, y, m)?,
            Op::Sparse(s) => s.encode(ctx, &mut enc, x, y, m)?,
        }
    }
    if let Some((set, buf)) = &timer.query {
        enc.write_timestamp(set, 1);
        enc.resolve_query_set(set, 0..2, buf, 0);
    }
    let t0 = web_time::Instant::now();
    ctx.queue.submit([enc.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
    let wall = t0.elapsed().as_secs_f64();
    match &timer.query {
        Some((_, buf)) => {
            let bytes = ctx.read_buffer(buf).await?;
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            let ns = ts[1].saturating_sub(ts[0]) as f64 * ctx.queue.get_timestamp_period() as f64;
            // A timer that reads zero (some drivers) falls back to the wall clock.
            Ok(if ns > 0.0 { ns * 1e-9 } else { wall })
        }
        None => Ok(wall),
    }
}

/// The bandwidth ceiling: a 64 MiB buffer-to-buffer copy (bytes read plus written), the
/// most a memory-bound kernel can hope to move on this adapter.
async fn copy_bandwidth(ctx: &GpuContext, timer: &Timer) -> Result<BenchRow> {
    const BYTES: u64 = 64 << 20;
    let a = ctx.storage_zeroed("copy src", BYTES)?;
    let b = ctx.storage_zeroed("copy dst", BYTES)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut enc = ctx.encoder();
        if let Some((set, _)) = &timer.query {
            enc.write_timestamp(set, 0);
        }
        enc.copy_buffer_to_buffer(&a, 0, &b, 0, BYTES);
        if let Some((set, buf)) = &timer.query {
            enc.write_timestamp(set, 1);
            enc.resolve_query_set(set, 0..2, buf, 0);
        }
        let t0 = web_time::Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        let mut secs = t0.elapsed().as_secs_f64();
        if let Some((_, buf)) = &timer.query {
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&ctx.read_buffer(buf).await?);
            let ns = ts[1].saturating_sub(ts[0]) as f64 * ctx.queue.get_timestamp_period() as f64;
            if ns > 0.0 {
                secs = ns * 1e-9;
            }
        }
        best = best.min(secs);
    }
    Ok(BenchRow {
        kernel: "copy_bandwidth".into(),
        m: 0,
        k: 0,
        n: 0,
        ms: best * 1e3,
        gflops: 0.0,
        gbps: 2.0 * BYTES as f64 / best * 1e-9,
        vs_dense: f64::NAN,
        weight_bytes: BYTES as usize,
        iters: 3,
        timer: timer.name(),
        best_of: None,
    })
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Runs the benchmark, calling `progress(row)` as each kernel finishes.
pub async fn bench_kernels(
    ctx: &GpuContext,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let timer = Timer::new(ctx)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut rows = Vec::new();
    let copy = copy_bandwidth(ctx, &timer).await?;
    progress(&copy);
    rows.push(copy);
    for &(k, n) in &opts.shapes {
        let w = random(&mut rng, n * k);
        // Build every operand once per shape; the dense ones may not fit a binding.
        let mut ops: Vec<(String, usize, Op)> = Vec::new();
        let dense_bytes = n * k * 4;
        if ctx
            .check_storage_binding("dense weight", dense_bytes as u64)
            .is_ok()
        {
            ops.push((
                "dense_f32_tiled".into(),
                dense_bytes,
                Op::Tiled(ctx.storage("w", bytemuck::cast_slice(&w))?),
            ));
            ops.push((
                "dense_f32_gemv".into(),
                dense_bytes,
                Op::Q(QMatmul::new(ctx), GpuWeight::dense(ctx, &w, n, k)?),
            ));
            // The sparse kernels' tiling on the unpruned weight: a dense product in that
            // structure (its bitmask walk makes it an upper bound on a dedicated kernel).
            let blocked = UnstructuredMatrix::pack(&w, n, k, ValueType::F32)?;
            ops.push((
                "dense_f32_blocked".into(),
                blocked.bytes(),
                Op::Sparse(GpuSparseMatrix::unstructured(ctx, &blocked, None)?),
            ));
        }
        for bits in [8u32, 4, 3, 2] {
            let q = quantize(&w, n, k, bits, GROUP, true)?;
            ops.push((
                format!("q{bits}"),
                q.bytes(),
                Op::Q(QMatmul::new(ctx), GpuWeight::quant(ctx, &q)?),
            ));
        }
        for (name, ty) in [
            ("gguf_q8_0", GgmlType::Q8_0),
            ("gguf_q4_1", GgmlType::Q4_1),
            ("gguf_q4_0", GgmlType::Q4_0),
        ] {
            let g = GgufBlockMatrix::quantize(ty, &w, n, k)?;
            ops.push((
                name.into(),
                g.bytes(),
                Op::Q(QMatmul::new(ctx), GpuWeight::gguf(ctx, &g)?),
            ));
        }
        let w24 = prune_magnitude_2of4(&w, n, k);
        for (name, ty) in [
            ("sparse_2of4", ValueType::F32),
            ("sparse_2of4_int4", ValueType::Int4),
        ] {
            let s = Sparse24Matrix::pack(&w24, n, k, ty)?;
            ops.push((
                name.into(),
                s.bytes(),
                Op::Sparse(GpuSparseMatrix::sparse24(ctx, &s)?),
            ));
        }
        let w50 = prune_magnitude(&w, n, k, 0.5);
        for (name, ty) in [
            ("sparse_unstructured50", ValueType::F32),
            ("sparse_unstructured50_int4", ValueType::Int4),
        ] {
            let s = UnstructuredMatrix::pack(&w50, n, k, ty)?;
            ops.push((
                name.into(),
                s.bytes(),
                Op::Sparse(GpuSparseMatrix::unstructured(ctx, &s, None)?),
            ));
        }

        for &m in &opts.seq {
            let x = ctx.storage("x", bytemuck::cast_slice(&random(&mut rng, m * k)))?;
            let y = ctx.storage_zeroed("y", (m * n * 4) as u64)?;
            let mut measured = Vec::new();
            for (name, wbytes, op) in &ops {
                // Warm-up (pipeline creation, shader JIT, first bind) is not timed; one
                // timed product sizes the run.
                time(ctx, &timer, op, &x, &y, (m, k, n), 1).await?;
                let once = time(ctx, &timer, op, &x, &y, (m, k, n), 1).await?;
                let iters = ((opts.target_s / once.max(1e-6)) as usize).clamp(1, 50);
                let secs = if iters == 1 {
                    once
                } else {
                    time(ctx, &timer, op, &x, &y, (m, k, n), iters).await? / iters as f64
                };
                measured.push((name.clone(), *wbytes, secs, iters));
            }
            let (best_name, best_s, best_iters) = measured
                .iter()
                .filter(|(nm, ..)| nm.starts_with("dense_f32"))
                .map(|(nm, _, s, it)| (nm.clone(), *s, *it))
                .fold((String::new(), f64::INFINITY, 0), |a, b| {
                    if b.1 < a.1 {
                        b
                    } else {
                        a
                    }
                });
            let mk = |kernel: String,
                      wbytes: usize,
                      secs: f64,
                      iters: usize,
                      best_of: Option<String>| {
                let io = wbytes + (m * k + m * n) * 4;
                BenchRow {
                    kernel,
                    m,
                    k,
                    n,
                    ms: secs * 1e3,
                    gflops: 2.0 * (m * k * n) as f64 / secs * 1e-9,
                    gbps: io as f64 / secs * 1e-9,
                    vs_dense: if best_s.is_finite() {
                        best_s / secs
                    } else {
                        f64::NAN
                    },
                    weight_bytes: wbytes,
                    iters,
                    timer: timer.name(),
                    best_of,
                }
            };
            if best_s.is_finite() {
                let row = mk(
                    "dense_f32".into(),
                    dense_bytes,
                    best_s,
                    best_iters,
                    Some(best_name),
                );
                progress(&row);
                rows.push(row);
            }
            for (name, wbytes, secs, iters) in measured {
                let row = mk(name, wbytes, secs, iters, None);
                progress(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
