//! Two-pass reductions without atomics: squared norms (for gradient clipping) and column
//! sums of per-chunk partial rows (for weight gradients that sum over rows).
//! Shader: shaders/reduce.wgsl. CPU twin: [`crate::reference::optim::sum_squares`].

use super::{groups, launch, read, to_u32, upload, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::Result;

const SOURCE: &str = include_str!("../../../shaders/reduce.wgsl");
const BINDS: &[Bind] = &[Bind::Read, Bind::ReadWrite, Bind::Uniform];
/// Elements one `sumsq_partial` workgroup reduces (ITEMS·WG in the shader).
pub const SUMSQ_SPAN: usize = 16 * WG as usize;

fn spec(entry: &'static str) -> KernelSpec<'static> {
    KernelSpec {
        name: "reduce",
        source: SOURCE,
        entry,
        binds: BINDS,
        constants: &[],
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    rows: u32,
    dst_off: u32,
}

/// Partial words `sumsq_partial` writes for `n` elements.
pub fn sumsq_partials(n: usize) -> usize {
    n.div_ceil(SUMSQ_SPAN)
}

/// Records partial sums of squares of the first `n` values of `src` into
/// `partials[off .. off + sumsq_partials(n)]`.
pub fn encode_sumsq_partial(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    n: usize,
    partials: &wgpu::Buffer,
    off: usize,
) -> Result<()> {
    let p = Params {
        n: to_u32("sumsq n", n)?,
        cols: 0,
        rows: 0,
        dst_off: to_u32("sumsq offset", off)?,
    };
    let u = ctx.uniform("sumsq params", &p);
    launch(
        ctx,
        encoder,
        &spec("sumsq_partial"),
        &[src, partials, &u],
        groups("sumsq", n, SUMSQ_SPAN as u32)?,
    )
}

/// Records dst[off] = Σ partials[0..n] in one workgroup.
pub fn encode_sum_partials(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    partials: &wgpu::Buffer,
    n: usize,
    dst: &wgpu::Buffer,
    off: usize,
) -> Result<()> {
    let p = Params {
        n: to_u32("sum n", n)?,
        cols: 0,
        rows: 0,
        dst_off: to_u32("sum offset", off)?,
    };
    let u = ctx.uniform("sum params", &p);
    launch(ctx, encoder, &spec("sum_partials"), &[partials, dst, &u], 1)
}

/// Records dst[c] += Σ_r partial[r·cols + c] for r < rows.
pub fn encode_col_sums_add(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    partial: &wgpu::Buffer,
    rows: usize,
    cols: usize,
    dst: &wgpu::Buffer,
) -> Result<()> {
    let p = Params {
        n: 0,
        cols: to_u32("col_sums cols", cols)?,
        rows: to_u32("col_sums rows", rows)?,
        dst_off: 0,
    };
    let u = ctx.uniform("col_sums params", &p);
    launch(
        ctx,
        encoder,
        &spec("col_sums_add"),
        &[partial, dst, &u],
        groups("col_sums", cols, WG)?,
    )
}

/// Σ x² over several slices on the GPU, in the two passes the optimizer uses.
/// Twin: [`crate::reference::optim::sum_squares`].
pub async fn sum_squares(ctx: &GpuContext, slices: &[&[f32]]) -> Result<f32> {
    let total: usize = slices.iter().map(|s| sumsq_partials(s.len())).sum();
    let partials = zeros(ctx, "sumsq partials", total)?;
    let out = zeros(ctx, "sumsq out", 1)?;
    let bufs = slices
        .iter()
        .map(|s| upload(ctx, "sumsq src", s))
        .collect::<Result<Vec<_>>>()?;
    let mut enc = ctx.encoder();
    let mut off = 0;
    for (b, s) in bufs.iter().zip(slices) {
        encode_sumsq_partial(ctx, &mut enc, b, s.len(), &partials, off)?;
        off += sumsq_partials(s.len());
    }
    encode_sum_partials(ctx, &mut enc, &partials, total, &out, 0)?;
    ctx.queue.submit([enc.finish()]);
    Ok(read(ctx, &out, 1).await?[0])
}
