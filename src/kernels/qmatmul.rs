//! Matmuls with a frozen packed weight read in place: y = x·Wᵀ (forward) and dx = dy·W
//! (input gradient), for [`QuantMatrix`] (2/3/4/8 bits, groups of 32/64/128, symmetric or
//! not), GGUF Q4_0/Q4_1/Q8_0 blocks, and dense f32 through the same GEMV structure (the
//! like-for-like baseline).
//!
//! Shaders: one body, shaders/qmatmul.wgsl, behind a decoder per format family:
//! shaders/qmatmul_packed.wgsl (packed and dense), shaders/qmatmul_gguf.wgsl (GGUF).
//! CPU twins: [`crate::formats::quant::qmatmul_nt`], [`crate::formats::quant::qmatmul_nn`],
//! [`crate::formats::quant::gguf_matmul_nt`], [`crate::formats::quant::gguf_matmul_nn`].
//!
//! Two paths: GEMV for small m (decoding is memory-bound: one pass over the packed words,
//! dequantized in registers) and 16×16 tiles for large m (the W tile is dequantized into
//! workgroup memory once and reused by 16 rows of x).

use super::context::{GpuContext, Kernel};
use super::program::{Bind, KernelSpec};
use crate::formats::quant::{GgufBlockMatrix, QuantMatrix, BLOCK};
use crate::gguf::GgmlType;
use crate::{Error, Result};

/// The one kernel body behind a per-format decoder (see shaders/qmatmul.wgsl's header).
const SOURCE: &str = concat!(
    include_str!("../../shaders/qmatmul_packed.wgsl"),
    include_str!("../../shaders/qmatmul.wgsl")
);
const SOURCE_GGUF: &str = concat!(
    include_str!("../../shaders/qmatmul_gguf.wgsl"),
    include_str!("../../shaders/qmatmul.wgsl")
);
const BINDS: &[Bind] = &[
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::ReadWrite,
    Bind::Uniform,
];
/// The shaders' workgroup reduction buffer (`MAX_WG`).
const MAX_WG: u32 = 256;
/// Up to this many rows of x the GEMV path is used ([`Path::Auto`]); above it the tiles
/// reuse each dequantized weight for 16 rows.
pub const GEMV_MAX_M: usize = 4;
/// `gemv_nt_vec4` takes smaller workgroups (down to 8) rather than leave cores idle.
pub const MIN_WORKGROUPS: usize = 8;
/// Rows of W per invocation of `gemv_nt_vec4`.
const VEC4_ROWS: usize = 8;

/// The uniform block of both shaders (`Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    bpr: u32,
    swpr: u32,
    _pad: [u32; 3],
}

/// How a [`GpuWeight`] stores W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Quant {
        bits: u32,
        group: u32,
        symmetric: bool,
    },
    /// Plain row-major f32 (`BITS = 32` in shaders/qmatmul.wgsl).
    Dense,
    Gguf(GgmlType),
}

/// A frozen weight W[rows×cols] resident on the GPU.
#[derive(Debug)]
pub struct GpuWeight {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    pub data: wgpu::Buffer,
    /// Packed scales ([`Format::Quant`]); a 16-byte placeholder otherwise.
    pub scales: wgpu::Buffer,
    pub(super) scale_words_per_row: usize,
}

impl GpuWeight {
    /// Uploads a packed weight; refuses one larger than a storage binding.
    pub fn quant(ctx: &GpuContext, q: &QuantMatrix) -> Result<Self> {
        let what = format!("qmatmul weight ({}×{} {}-bit)", q.rows, q.cols, q.bits);
        Ok(Self {
            format: Format::Quant {
                bits: q.bits,
                group: q.group as u32,
                symmetric: q.symmetric,
            },
            rows: q.rows,
            cols: q.cols,
            data: ctx.storage(&what, bytemuck::cast_slice(&q.data))?,
            scales: ctx.storage(&format!("{what} scales"), bytemuck::cast_slice(&q.scales))?,
            scale_words_per_row: q.scale_words_per_row(),
        })
    }

    /// Uploads GGUF blocks as they are; refuses a tensor larger than a storage binding or
    /// than u32 byte offsets can address.
    pub fn gguf(ctx: &GpuContext, g: &GgufBlockMatrix) -> Result<Self> {
        let what = format!("qmatmul weight ({}×{} {})", g.rows, g.cols, g.ty.name());
        if g.bytes() > u32::MAX as usize {
            return Err(Error::Gpu(format!("{what}: over 4 GiB")));
        }
        Ok(Self {
            format: Format::Gguf(g.ty),
            rows: g.rows,
            cols: g.cols,
            data: ctx.storage(&what, bytemuck::cast_slice(&g.data))?,
            scales: ctx.storage("qmatmul placeholder", &[0; 16])?,
            scale_words_per_row: 0,
        })
    }

    /// Uploads a dense row-major f32 weight (for the like-for-like GEMV baseline).
    pub fn dense(ctx: &GpuContext, w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(w.len()) {
            return Err(Error::Invalid(format!(
                "dense weight: {} values for {rows}×{cols}",
                w.len()
            )));
        }
        Ok(Self {
            format: Format::Dense,
            rows,
            cols,
            data: ctx.storage(
                &format!("qmatmul weight ({rows}×{cols} f32)"),
                bytemuck::cast_slice(w),
            )?,
            scales: ctx.storage("qmatmul placeholder", &[0; 16])?,
            scale_words_per_row: 0,
        })
    }

    fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    /// Bytes of its buffers (data and scales or placeholder).
    pub fn bytes(&self) -> u64 {
        self.data.size() + self.scales.size()
    }
}

/// Which kernel shape to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// GEMV up to [`GEMV_MAX_M`] rows of x, register tiles above.
    Auto,
    Gemv,
    /// One output per invocation in 16×16 workgroup tiles (tiled_nt, tiled_nn).
    Tiled,
    /// 4×4 outputs per invocation in 64×64 tiles (reg_nt, reg_nn).
    Register,
}

/// The output tile side of the register-tiled kernels (shaders/qmatmul.wgsl's RT).
const REG_TILE: usize = 64;

/// GEMV workgroup shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Invocations per workgroup of `gemv_nt` (≤ 256).
    pub wg: u32,
    /// Invocations sharing one output row in `gemv_nt` (a power of two dividing `wg`).
    pub split: u32,
    /// Invocations per workgroup of `gemv_nn` (each owns one block of 32 columns).
    pub nn_wg: u32,
    /// Use `gemv_nt_vec4` where it applies (4/8-bit or dense, k a multiple of 32).
    pub vec4: bool,
    /// `gemv_nt_vec4`: neighbouring invocations take neighbouring rows (else each takes 8
    /// consecutive rows).
    pub spread: bool,
}

impl Tuning {
    /// CPU adapters (lavapipe, SwiftShader) run invocations as SIMD lanes and pay per
    /// load instruction (each is a loop over the lanes): 8 rows per lane (no barrier),
    /// vec4 loads, each x block loaded once for the 8 rows. On lavapipe at m = 1 this runs
    /// 4-bit about 2.3–2.9× and 8-bit 2–2.7× faster than the same structure in dense f32
    /// (tests/gpu_qmatmul.rs, qmatmul_timing_m1).
    pub const CPU: Tuning = Tuning {
        wg: 16,
        split: 1,
        nn_wg: 8,
        vec4: true,
        spread: true,
    };
    /// Real GPUs: 16 lanes per row read consecutive blocks (coalesced) and reduce in
    /// workgroup memory.
    pub const GPU: Tuning = Tuning {
        wg: 64,
        split: 16,
        nn_wg: 64,
        vec4: false,
        spread: true,
    };

    pub fn for_adapter(ctx: &GpuContext) -> Tuning {
        if ctx.is_software() {
            Self::CPU
        } else {
            Self::GPU
        }
    }

    fn check(&self) -> Result<()> {
        let ok = self.wg >= 1
            && self.wg <= MAX_WG
            && self.split.is_power_of_two()
            && self.wg.is_multiple_of(self.split)
            && self.nn_wg >= 1
            && self.nn_wg <= MAX_WG;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("qmatmul: bad GEMV tuning {self:?}")))
        }
    }
}

/// The quantized matmul kernels: path choice and GEMV tuning; pipelines are cached in the
/// context per variant.
#[derive(Clone, Copy, Debug)]
pub struct QMatmul {
    pub path: Path,
    pub tuning: Tuning,
}

impl QMatmul {
    pub const NAME: &'static str = "qmatmul";

    /// Automatic path, tuning for this adapter.
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            path: Path::Auto,
            tuning: Tuning::for_adapter(ctx),
        }
    }

    fn kernel(&self, ctx: &GpuContext, format: Format, entry: &str, wg: u32) -> Kernel {
        let wg = if entry == "gemv_nn" {
            self.tuning.nn_wg
        } else {
            wg
        };
        let (wg, split) = (wg as f64, self.tuning.split as f64);
        let spread = if self.tuning.spread { 1.0 } else { 0.0 };
        let (name, source, constants): (&str, &str, Vec<(&str, f64)>) = match format {
            Format::Quant {
                bits,
                group,
                symmetric,
            } => (
                Self::NAME,
                SOURCE,
                vec![
                    ("BITS", bits as f64),
                    ("GROUP", group as f64),
                    ("SYMMETRIC", if symmetric { 1.0 } else { 0.0 }),
                    ("WG", wg),
                    ("SPLIT", split),
                    ("SPREAD", spread),
                ],
            ),
            Format::Dense => (
                Self::NAME,
                SOURCE,
                vec![
                    ("BITS", 32.0),
                    ("WG", wg),
                    ("SPLIT", split),
                    ("SPREAD", spread),
                ],
            ),
            Format::Gguf(ty) => (
                "qmatmul_gguf",
                SOURCE_GGUF,
                vec![("TYPE", ty as u32 as f64), ("WG", wg), ("SPLIT", split)],
            ),
        };
        ctx.build(&KernelSpec {
            name,
            source,
            entry,
            binds: BINDS,
            constants: &constants,
        })
    }

    fn gemv(&self, m: usize) -> bool {
        match self.path {
            Path::Auto => m <= GEMV_MAX_M,
            Path::Gemv => true,
            Path::Tiled | Path::Register => false,
        }
    }

    /// Records y[m×n] = x[m×k]·Wᵀ. `x` holds m·k f32 and `y` m·n f32.
    pub fn encode_nt(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        w: &GpuWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        self.encode(ctx, encoder, w, x, y, m, false)
    }

    /// Records dx[m×k] = dy[m×n]·W. `dy` holds m·n f32 and `dx` m·k f32 (overwritten).
    pub fn encode_nn(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        w: &GpuWeight,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        m: usize,
    ) -> Result<()> {
        self.encode(ctx, encoder, w, dy, dx, m, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        w: &GpuWeight,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        m: usize,
        nn: bool,
    ) -> Result<()> {
        self.tuning.check()?;
        let (k, n) = (w.cols, w.rows);
        let name = if nn { "qmatmul nn" } else { "qmatmul nt" };
        let (in_len, out_len) = if nn { (m * n, m * k) } else { (m * k, m * n) };
        if input.size() < (in_len * 4) as u64 || output.size() < (out_len * 4) as u64 {
            return Err(Error::Invalid(format!(
                "{name}: buffers of {} and {} bytes for m={m} k={k} n={n}",
                input.size(),
                output.size()
            )));
        }
        if matches!(w.format, Format::Gguf(_)) && !k.is_multiple_of(BLOCK) {
            return Err(Error::Invalid(format!(
                "{name}: GGUF k = {k} not a multiple of 32"
            )));
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok(()); // the caller's zeroed output is the empty sum
        }
        let bpr = w.blocks_per_row();
        let gemv = self.gemv(m);
        let mut wg_used = self.tuning.wg;
        let vec4 = self.tuning.vec4
            && k.is_multiple_of(BLOCK)
            && matches!(w.format, Format::Dense | Format::Quant { bits: 4 | 8, .. });
        let (entry, groups) = match (nn, gemv) {
            (false, true) if vec4 => {
                let mut wg = self.tuning.wg as usize;
                while wg > 8 && n.div_ceil(wg * VEC4_ROWS) * m < MIN_WORKGROUPS {
                    wg /= 2;
                }
                wg_used = wg as u32;
                ("gemv_nt_vec4", n.div_ceil(wg * VEC4_ROWS) * m)
            }
            (false, true) => {
                let rows_per_wg = (self.tuning.wg / self.tuning.split) as usize;
                ("gemv_nt", n.div_ceil(rows_per_wg) * m)
            }
            (true, true) => ("gemv_nn", bpr.div_ceil(self.tuning.nn_wg as usize) * m),
            (false, false) if self.path == Path::Tiled => {
                ("tiled_nt", m.div_ceil(16) * n.div_ceil(16))
            }
            (true, false) if self.path == Path::Tiled => ("tiled_nn", m.div_ceil(16) * bpr),
            (false, false) => ("reg_nt", m.div_ceil(REG_TILE) * n.div_ceil(REG_TILE)),
            (true, false) => ("reg_nn", m.div_ceil(REG_TILE) * k.div_ceil(REG_TILE)),
        };
        let groups = u32::try_from(groups)
            .map_err(|_| Error::Gpu(format!("{name}: {groups} workgroups")))?;
        let to_u32 = |v: usize| {
            u32::try_from(v).map_err(|_| Error::Invalid(format!("{name}: size {v} over u32")))
        };
        let params = Params {
            m: to_u32(m)?,
            k: to_u32(k)?,
            n: to_u32(n)?,
            bpr: to_u32(bpr)?,
            swpr: to_u32(w.scale_words_per_row)?,
            _pad: [0; 3],
        };
        let kernel = self.kernel(ctx, w.format, entry, wg_used);
        let uniform = ctx.uniform("qmatmul params", &params);
        let bind = ctx.bind(&kernel, &[&w.data, &w.scales, input, output, &uniform]);
        ctx.dispatch(encoder, &kernel, &bind, groups)
    }
}

async fn run(
    ctx: &GpuContext,
    mm: &QMatmul,
    w: &GpuWeight,
    input: &[f32],
    m: usize,
    nn: bool,
) -> Result<Vec<f32>> {
    let (k, n) = (w.cols, w.rows);
    let (in_len, out_len) = if nn { (m * n, m * k) } else { (m * k, m * n) };
    let name = if nn { "qmatmul nn" } else { "qmatmul nt" };
    if input.len() != in_len {
        return Err(Error::Invalid(format!(
            "{name}: input has {} values, expected {in_len} (m={m} k={k} n={n})",
            input.len()
        )));
    }
    let xb = ctx.storage(&format!("{name} input"), bytemuck::cast_slice(input))?;
    let yb = ctx.storage_zeroed(&format!("{name} output"), (out_len * 4) as u64)?;
    let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut encoder = ctx.encoder();
    if nn {
        mm.encode_nn(ctx, &mut encoder, w, &xb, &yb, m)?;
    } else {
        mm.encode_nt(ctx, &mut encoder, w, &xb, &yb, m)?;
    }
    let out = ctx.finish_read_f32(encoder, &yb).await?;
    if let Some(e) = validation.pop().await {
        return Err(Error::Gpu(format!("{name} (m={m} k={k} n={n}): {e}")));
    }
    Ok(out[..out_len].to_vec())
}

/// y = x·Wᵀ for a resident weight: upload x, run, read back.
pub async fn run_nt(
    ctx: &GpuContext,
    mm: &QMatmul,
    w: &GpuWeight,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    run(ctx, mm, w, x, m, false).await
}

/// dx = dy·W for a resident weight: upload dy, run, read back.
pub async fn run_nn(
    ctx: &GpuContext,
    mm: &QMatmul,
    w: &GpuWeight,
    dy: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    run(ctx, mm, w, dy, m, true).await
}

/// y[m×n] = x[m×k]·Wᵀ on the GPU (uploads W too: for tests and one-off products).
pub async fn qmatmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    w: &QuantMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    run_nt(ctx, &QMatmul::new(ctx), &GpuWeight::quant(ctx, w)?, x, m).await
}

/// dx[m×k] = dy[m×n]·W on the GPU.
pub async fn qmatmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    w: &QuantMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    run_nn(ctx, &QMatmul::new(ctx), &GpuWeight::quant(ctx, w)?, dy, m).await
}

/// y[m×n] = x[m×k]·Wᵀ for GGUF blocks on the GPU.
pub async fn gguf_matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    w: &GgufBlockMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    run_nt(ctx, &QMatmul::new(ctx), &GpuWeight::gguf(ctx, w)?, x, m).await
}

/// dx[m×k] = dy[m×n]·W for GGUF blocks on the GPU.
pub async fn gguf_matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    w: &GgufBlockMatrix,
    m: usize,
) -> Result<Vec<f32>> {
    run_nn(ctx, &QMatmul::new(ctx), &GpuWeight::gguf(ctx, w)?, dy, m).await
}

/// Test bodies shared by the native tests and the browser (wasm-bindgen-test).
pub mod checks {
    use super::*;
    use crate::formats::quant::{self, BITS, GROUPS};
    use crate::reference::ops;
    use crate::tolerance::{compare as compare_with, Tol};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// |gpu − cpu| ≤ max(rel·(|gpu| + |cpu|), abs). Both sides decode identical codes and
    /// scales into identical f32 weights (s·code is exact), so they differ only in the
    /// order of k f32 products of magnitude < 1 being summed: about √k·ε·(partial sums)
    /// ≈ 1e-5 at k = 1536. A wrong code, scale or index gives errors of order 0.01 to 1.
    pub const QMATMUL_TOL: Tol = Tol::new(1e-4, 2e-4);

    /// (m, k, n): every m ∈ {1, 3, 37}, k ∈ {1, 45, 200} (not multiples of any group or
    /// of the 32-code block) and n ∈ {1, 5, 70} appears; k = 96 takes the vec4 GEMV.
    pub const SHAPES: &[(usize, usize, usize)] = &[
        (1, 45, 70),
        (3, 1, 5),
        (37, 200, 1),
        (1, 200, 5),
        (3, 45, 70),
        (37, 1, 70),
        (3, 96, 70),
    ];
    /// SmolLM2-135M's k (hidden 576, ffn 1536), decoding and batched.
    pub const MODEL_SHAPES: &[(usize, usize, usize)] =
        &[(1, 576, 70), (3, 1536, 40), (37, 576, 20)];
    /// GGUF needs k a multiple of 32.
    pub const GGUF_SHAPES: &[(usize, usize, usize)] = &[
        (1, 32, 1),
        (3, 64, 5),
        (37, 96, 70),
        (1, 576, 70),
        (3, 1536, 5),
    ];

    fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Err naming `what` and the worst element when got and want differ beyond
    /// [`QMATMUL_TOL`]; the worst |diff| otherwise.
    pub fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<f32> {
        compare_with(what, got, want, QMATMUL_TOL)
    }

    /// Every kernel path: both GEMV tunings (vec4 with either row assignment, and the
    /// split-k reduction) and the tiles.
    fn variants() -> Vec<(&'static str, QMatmul)> {
        vec![
            (
                "gemv/cpu",
                QMatmul {
                    path: Path::Gemv,
                    tuning: Tuning::CPU,
                },
            ),
            (
                "gemv/cpu-blocked",
                QMatmul {
                    path: Path::Gemv,
                    tuning: Tuning {
                        spread: false,
                        ..Tuning::CPU
                    },
                },
            ),
            (
                "gemv/gpu",
                QMatmul {
                    path: Path::Gemv,
                    tuning: Tuning::GPU,
                },
            ),
            (
                "tiled",
                QMatmul {
                    path: Path::Tiled,
                    tuning: Tuning::CPU,
                },
            ),
            (
                "register",
                QMatmul {
                    path: Path::Register,
                    tuning: Tuning::CPU,
                },
            ),
        ]
    }

    /// Forward and input gradient of one resident weight vs the twins, every variant.
    async fn check_weight(
        ctx: &GpuContext,
        label: &str,
        w: &GpuWeight,
        (m, k, n): (usize, usize, usize),
        twin_nt: &dyn Fn(&[f32]) -> Vec<f32>,
        twin_nn: &dyn Fn(&[f32]) -> Vec<f32>,
        rng: &mut ChaCha8Rng,
    ) -> Result<f32> {
        let x = random(m * k, rng);
        let dy = random(m * n, rng);
        let (want_y, want_dx) = (twin_nt(&x), twin_nn(&dy));
        let mut worst = 0.0f32;
        for (vname, mm) in variants() {
            let what = format!("{label} {vname} m={m} k={k} n={n}");
            let y = run_nt(ctx, &mm, w, &x, m).await?;
            worst = worst.max(compare(&format!("{what} forward"), &y, &want_y)?);
            let dx = run_nn(ctx, &mm, w, &dy, m).await?;
            worst = worst.max(compare(&format!("{what} input gradient"), &dx, &want_dx)?);
        }
        Ok(worst)
    }

    /// Every bits × group × symmetry on awkward shapes, plus the model's k on a few.
    pub async fn quant_formats(ctx: &GpuContext) -> Result<f32> {
        quant_formats_on(ctx, &GROUPS, &[true, false], &|group| {
            if group == 64 {
                SHAPES.iter().chain(MODEL_SHAPES).copied().collect()
            } else {
                SHAPES.to_vec()
            }
        })
        .await
    }

    /// A subset small enough for a browser's software WebGPU (SwiftShader): every bit
    /// width, group 32 symmetric and 128 asymmetric, on awkward shapes; GGUF and dense.
    pub async fn browser_subset(ctx: &GpuContext) -> Result<()> {
        error_budgets()?;
        let shapes = |_| vec![(1, 45, 70), (37, 200, 1), (3, 96, 5)];
        quant_formats_on(ctx, &[32], &[true], &shapes).await?;
        quant_formats_on(ctx, &[128], &[false], &shapes).await?;
        gguf_formats(ctx).await?;
        dense(ctx).await?;
        Ok(())
    }

    async fn quant_formats_on(
        ctx: &GpuContext,
        groups: &[usize],
        syms: &[bool],
        shapes_of: &dyn Fn(usize) -> Vec<(usize, usize, usize)>,
    ) -> Result<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut worst = 0.0f32;
        for bits in BITS {
            for &group in groups {
                for &sym in syms {
                    let shapes = shapes_of(group);
                    for (m, k, n) in shapes {
                        let wd = random(n * k, &mut rng);
                        let q = quant::quantize(&wd, n, k, bits, group, sym)?;
                        let gw = GpuWeight::quant(ctx, &q)?;
                        let label = format!("qmatmul {bits}b g{group} sym={sym}");
                        worst = worst.max(
                            check_weight(
                                ctx,
                                &label,
                                &gw,
                                (m, k, n),
                                &|x| quant::qmatmul_nt(x, &q, m),
                                &|dy| quant::qmatmul_nn(dy, &q, m),
                                &mut rng,
                            )
                            .await?,
                        );
                    }
                }
            }
        }
        Ok(worst)
    }

    /// GGUF Q4_0/Q4_1/Q8_0 blocks vs their twins, read in place and repacked.
    pub async fn gguf_formats(ctx: &GpuContext) -> Result<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut worst = 0.0f32;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for &(m, k, n) in GGUF_SHAPES {
                let wd = random(n * k, &mut rng);
                let g = GgufBlockMatrix::quantize(ty, &wd, n, k)?;
                let gw = GpuWeight::gguf(ctx, &g)?;
                worst = worst.max(
                    check_weight(
                        ctx,
                        &format!("gguf {}", ty.name()),
                        &gw,
                        (m, k, n),
                        &|x| quant::gguf_matmul_nt(x, &g, m),
                        &|dy| quant::gguf_matmul_nn(dy, &g, m),
                        &mut rng,
                    )
                    .await?,
                );
                // The lossless repack into the packed layout gives the same products.
                let gq = GpuWeight::quant(ctx, &g.to_quant()?)?;
                worst = worst.max(
                    check_weight(
                        ctx,
                        &format!("gguf {} repacked", ty.name()),
                        &gq,
                        (m, k, n),
                        &|x| quant::gguf_matmul_nt(x, &g, m),
                        &|dy| quant::gguf_matmul_nn(dy, &g, m),
                        &mut rng,
                    )
                    .await?,
                );
            }
        }
        Ok(worst)
    }

    /// The dense f32 variant (the benchmark baseline) vs reference::ops.
    pub async fn dense(ctx: &GpuContext) -> Result<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut worst = 0.0f32;
        for &(m, k, n) in SHAPES.iter().chain(MODEL_SHAPES) {
            let wd = random(n * k, &mut rng);
            let gw = GpuWeight::dense(ctx, &wd, n, k)?;
            worst = worst.max(
                check_weight(
                    ctx,
                    "dense",
                    &gw,
                    (m, k, n),
                    &|x| ops::matmul_nt(x, &wd, m, k, n),
                    &|dy| {
                        let mut dx = vec![0.0; m * k];
                        ops::matmul_nn_acc(dy, &wd, m, k, n, &mut dx);
                        dx
                    },
                    &mut rng,
                )
                .await?,
            );
        }
        Ok(worst)
    }

    /// Quantization error budgets per bit width on the model's k = 576 (CPU only).
    pub fn error_budgets() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let (rows, cols) = (16, 576);
        let w = random(rows * cols, &mut rng);
        quant::check_error_budgets(&w, rows, cols)
    }

    /// A weight over `max_storage_buffer_binding_size` is refused with Error::Gpu naming
    /// the limit. Needs a context whose limit is below 64 KiB.
    pub async fn refuses_oversized(ctx: &GpuContext) -> Result<()> {
        let (n, k) = (64, 1024); // 4-bit codes: 32 KiB; dense: 256 KiB
        let q = quant::quantize(&vec![0.5; n * k], n, k, 4, 32, true)?;
        if (q.data.len() * 4) as u64 <= ctx.limits.max_storage_buffer_binding_size {
            return Err(Error::Invalid(
                "refuses_oversized needs a context with a binding limit below 32 KiB".into(),
            ));
        }
        match GpuWeight::quant(ctx, &q) {
            Err(Error::Gpu(e)) if e.contains("max_storage_buffer_binding_size") => Ok(()),
            Err(e) => Err(Error::Gpu(format!("qmatmul: wrong refusal: {e}"))),
            Ok(_) => Err(Error::Gpu(format!(
                "qmatmul: a {}-byte weight was accepted under a {}-byte binding limit",
                q.bytes(),
                ctx.limits.max_storage_buffer_binding_size
            ))),
        }
    }

    /// Everything above on `ctx` (a default-limits context).
    pub async fn all(ctx: &GpuContext) -> Result<()> {
        error_budgets()?;
        quant_formats(ctx).await?;
        gguf_formats(ctx).await?;
        dense(ctx).await?;
        Ok(())
    }
}
