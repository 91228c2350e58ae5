//! `edge-llm bench kernels`: the matmul kernels on the default model's shapes, timed side
//! by side in one run. Every kernel records `iters` dispatches into one encoder on
//! resident buffers (no uploads in the timed region); the time is read from GPU timestamp
//! queries where the adapter offers them (inside encoders), else from the wall clock
//! from the submit to the readback of a word copied after the work (so the same code times
//! in the browser).
//!
//! `dense_f32` is the FASTEST dense f32 kernel we have for each shape — the tiled
//! `matmul_nt`, the GEMV-structured dense variant of `qmatmul`, or the sparse kernels'
//! tiling run on the unpruned weight — so each ratio compares against the best dense
//! baseline in the same run, not a weak one. GFLOP/s count dense-equivalent work
//! (2·m·k·n) for every kernel; GB/s count the bytes a kernel must read and write once
//! (weight as stored + x + y). Two ceilings are measured first, in the same run: the
//! copy bandwidth (a 64 MiB buffer copy) and the FMA peak (the FMA-chain kernel,
//! [`super::roofline`]); every row gives its GFLOP/s and GB/s as percentages of them.

use super::context::GpuContext;
use super::matmul::MatmulNt;
use super::qmatmul::{GpuWeight, QMatmul};
use super::roofline::FmaChain;
use super::spmatmul::GpuSparseMatrix;
use crate::formats::quant::{quantize, GgufBlockMatrix};
use crate::formats::sparse::{
    prune_magnitude, prune_magnitude_2of4, Sparse24Matrix, UnstructuredMatrix, ValueType,
};
use crate::gguf::GgmlType;
use crate::Result;
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
    /// `gflops` as a percentage of the adapter's measured FMA peak (`fma_peak`'s row).
    pub pct_peak_flops: f64,
    /// `gbps` as a percentage of the adapter's measured copy bandwidth (`copy_bandwidth`).
    pub pct_peak_bandwidth: f64,
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
    /// A word copied at the end of each timed encoder and read back: the end of the work,
    /// awaited the same way natively and in the browser (which cannot block on a poll).
    fence: (wgpu::Buffer, wgpu::Buffer),
}

impl Timer {
    fn new(ctx: &GpuContext) -> Result<Self> {
        let fence = (
            ctx.storage_zeroed("bench fence", 4)?,
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench fence readback"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        );
        let f = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if !ctx.features.contains(f) {
            return Ok(Self { query: None, fence });
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
            fence,
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

/// Seconds for the work `record` puts into one encoder: from GPU timestamps around it where
/// the adapter has them (a zero reading falls back), else the wall clock from the submit
/// to the fence's readback.
async fn time_work(
    ctx: &GpuContext,
    timer: &Timer,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    let mut enc = ctx.encoder();
    if let Some((set, _)) = &timer.query {
        enc.write_timestamp(set, 0);
    }
    record(&mut enc)?;
    if let Some((set, buf)) = &timer.query {
        enc.write_timestamp(set, 1);
        enc.resolve_query_set(set, 0..2, buf, 0);
    }
    enc.copy_buffer_to_buffer(&timer.fence.0, 0, &timer.fence.1, 0, 4);
    let t0 = web_time::Instant::now();
    ctx.queue.submit([enc.finish()]);
    ctx.map_read(&timer.fence.1, 4).await?;
    let wall = t0.elapsed().as_secs_f64();
    match &timer.query {
        Some((_, buf)) => {
            let bytes = ctx.read_buffer(buf).await?;
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            let ns = ts[1].saturating_sub(ts[0]) as f64 * ctx.queue.get_timestamp_period() as f64;
            Ok(if ns > 0.0 { ns * 1e-9 } else { wall })
        }
        None => Ok(wall),
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
    time_work(ctx, timer, |enc| {
        for _ in 0..iters {
            match op {
                Op::Tiled(w) => MatmulNt::new(ctx).encode(ctx, enc, x, w, y, m, k, n),
                Op::Q(q, w) => q.encode_nt(ctx, enc, w, x, y, m)?,
                Op::Sparse(s) => s.encode(ctx, enc, x, y, m)?,
            }
        }
        Ok(())
    })
    .await
}

/// A ceiling's row: `secs` for `flops` and `bytes` (each at 100 % of itself).
fn peak_row(
    kernel: &str,
    secs: f64,
    flops: f64,
    bytes: u64,
    iters: usize,
    timer: &Timer,
) -> BenchRow {
    BenchRow {
        kernel: kernel.into(),
        m: 0,
        k: 0,
        n: 0,
        ms: secs * 1e3,
        gflops: flops / secs * 1e-9,
        gbps: bytes as f64 / secs * 1e-9,
        pct_peak_flops: if flops > 0.0 { 100.0 } else { 0.0 },
        pct_peak_bandwidth: if bytes > 0 { 100.0 } else { 0.0 },
        vs_dense: f64::NAN,
        weight_bytes: 0,
        iters,
        timer: timer.name(),
        best_of: None,
    }
}

/// The arithmetic ceiling: the FMA chain ([`FmaChain`]) over enough invocations to fill
/// the adapter, dispatched until about `target_s` of work; the best of three timings.
async fn fma_peak(ctx: &GpuContext, timer: &Timer, target_s: f64) -> Result<BenchRow> {
    let k = FmaChain {
        invocations: 1 << 16,
        chain: 1024,
    };
    let out = ctx.storage_zeroed("fma chain out", k.invocations as u64 * 4)?;
    let out = &out;
    let run = |iters: usize| {
        time_work(ctx, timer, move |enc| {
            (0..iters).try_for_each(|_| k.encode(ctx, enc, out))
        })
    };
    run(1).await?; // pipeline creation is not timed
    let once = run(1).await?;
    let iters = ((target_s / once.max(1e-6)) as usize).clamp(1, 200);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(run(iters).await? / iters as f64);
    }
    Ok(peak_row("fma_peak", best, k.flops(), 0, iters, timer))
}

/// The bandwidth ceiling: a 64 MiB buffer-to-buffer copy (bytes read plus written), the
/// most a memory-bound kernel can hope to move on this adapter.
async fn copy_bandwidth(ctx: &GpuContext, timer: &Timer) -> Result<BenchRow> {
    const BYTES: u64 = 64 << 20;
    let a = ctx.storage_zeroed("copy src", BYTES)?;
    let b = ctx.storage_zeroed("copy dst", BYTES)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let secs = time_work(ctx, timer, |enc| {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, BYTES);
            Ok(())
        })
        .await?;
        best = best.min(secs);
    }
    let mut row = peak_row("copy_bandwidth", best, 0.0, 2 * BYTES, 3, timer);
    row.weight_bytes = BYTES as usize;
    Ok(row)
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
    let fma = fma_peak(ctx, &timer, opts.target_s).await?;
    let (peak_gbps, peak_gflops) = (copy.gbps, fma.gflops);
    for row in [copy, fma] {
        progress(&row);
        rows.push(row);
    }
    let pct = |v: f64, peak: f64| {
        if peak > 0.0 {
            100.0 * v / peak
        } else {
            f64::NAN
        }
    };
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
                let gflops = 2.0 * (m * k * n) as f64 / secs * 1e-9;
                let gbps = io as f64 / secs * 1e-9;
                BenchRow {
                    kernel,
                    m,
                    k,
                    n,
                    ms: secs * 1e3,
                    gflops,
                    gbps,
                    pct_peak_flops: pct(gflops, peak_gflops),
                    pct_peak_bandwidth: pct(gbps, peak_gbps),
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
