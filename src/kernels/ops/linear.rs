//! The backward forms of a dense f32 linear layer y = x·Wᵀ, on one strided product kernel.
//! Shader: shaders/linear_backward.wgsl. CPU twins: [`crate::reference::ops::matmul_nn_acc`]
//! (dx += dy·W) and [`crate::reference::ops::matmul_tn_acc`] (dW += dyᵀ·x).

use super::{check_len, launch, read, to_u32, upload};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::{Error, Result};

const SPEC: KernelSpec<'static> = KernelSpec {
    name: "linear_backward",
    source: include_str!("../../../shaders/linear_backward.wgsl"),
    entry: "gemm",
    binds: &[Bind::Read, Bind::Read, Bind::ReadWrite, Bind::Uniform],
    constants: &[],
};

/// The output tile edge of one workgroup (`TILE` in the shader).
pub const TILE: usize = 16;

/// One strided product C[m×n] = alpha·A·B (+ C), element (r, i) of A at
/// `a_off + r·a_rs + i·a_cs`, (i, c) of B at `b_off + i·b_rs + c·b_cs`, and (r, c) of C at
/// `c_off + r·c_rs + c`. Offsets and strides are in f32 elements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_off: usize,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b_off: usize,
    pub b_rs: usize,
    pub b_cs: usize,
    pub c_off: usize,
    pub c_rs: usize,
    pub alpha: f32,
    pub accumulate: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    accumulate: u32,
    alpha: f32,
    _pad: [u32; 2],
}

/// The last element index (+1) a strided `rows × cols` view touches.
fn extent(off: usize, rows: usize, rs: usize, cols: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(off)?
        .checked_add(1)
}

impl Gemm {
    /// dx[m×k] (+)= dy[m×n]·w[n×k], as `matmul_nn_acc`.
    pub fn nn(m: usize, k: usize, n: usize) -> Self {
        Gemm {
            m,
            n: k,
            k: n,
            a_rs: n,
            a_cs: 1,
            b_rs: k,
            b_cs: 1,
            c_rs: k,
            alpha: 1.0,
            accumulate: true,
            ..Default::default()
        }
    }

    /// dw[n×k] (+)= dy[m×n]ᵀ·x[m×k], as `matmul_tn_acc`.
    pub fn tn(m: usize, k: usize, n: usize) -> Self {
        Gemm {
            m: n,
            n: k,
            k: m,
            a_rs: 1,
            a_cs: n,
            b_rs: k,
            b_cs: 1,
            c_rs: k,
            alpha: 1.0,
            accumulate: true,
            ..Default::default()
        }
    }

    /// y[m×n] (+)= x[m×k]·w[n×k]ᵀ, as `matmul_nt`.
    pub fn nt(m: usize, k: usize, n: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            a_rs: k,
            a_cs: 1,
            b_rs: 1,
            b_cs: k,
            c_rs: n,
            alpha: 1.0,
            accumulate: false,
            ..Default::default()
        }
    }

    /// Records the product into `encoder`, after checking that every view lies inside its
    /// buffer (a view past the end would read clamped garbage, not fail).
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        c: &wgpu::Buffer,
    ) -> Result<()> {
        if self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let views = [
            (
                "A",
                a,
                extent(self.a_off, self.m, self.a_rs, self.k, self.a_cs),
            ),
            (
                "B",
                b,
                extent(self.b_off, self.k, self.b_rs, self.n, self.b_cs),
            ),
            ("C", c, extent(self.c_off, self.m, self.c_rs, self.n, 1)),
        ];
        for (what, buf, end) in views {
            let end =
                end.ok_or_else(|| Error::Invalid(format!("gemm {self:?}: {what} overflows")))?;
            if end as u64 * 4 > buf.size() {
                return Err(Error::Invalid(format!(
                    "gemm {self:?}: {what} reaches element {end}, past its buffer of {} bytes",
                    buf.size()
                )));
            }
        }
        let tiles_m = self.m.div_ceil(TILE);
        let tiles_n = self.n.div_ceil(TILE);
        let u = |what, v| to_u32(what, v);
        let params = Params {
            m: u("m", self.m)?,
            n: u("n", self.n)?,
            k: u("k", self.k)?,
            tiles_n: u("tiles", tiles_n)?,
            a_off: u("a_off", self.a_off)?,
            a_rs: u("a_rs", self.a_rs)?,
            a_cs: u("a_cs", self.a_cs)?,
            b_off: u("b_off", self.b_off)?,
            b_rs: u("b_rs", self.b_rs)?,
            b_cs: u("b_cs", self.b_cs)?,
            c_off: u("c_off", self.c_off)?,
            c_rs: u("c_rs", self.c_rs)?,
            accumulate: self.accumulate as u32,
            alpha: self.alpha,
            _pad: [0; 2],
        };
        let groups = to_u32("gemm tiles", tiles_m * tiles_n)?;
        let uniform = ctx.uniform("gemm params", &params);
        launch(ctx, encoder, &SPEC, &[a, b, c, &uniform], groups)
    }
}

/// Records dx[m×k] += dy[m×n]·w[n×k] (the input gradient of y = x·wᵀ).
#[allow(clippy::too_many_arguments)]
pub fn encode_matmul_nn(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dy: &wgpu::Buffer,
    w: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    Gemm::nn(m, k, n).encode(ctx, encoder, dy, w, dx)
}

/// Records dw[n×k] += dy[m×n]ᵀ·x[m×k] (the weight gradient of y = x·wᵀ).
#[allow(clippy::too_many_arguments)]
pub fn encode_matmul_tn(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    dw: &wgpu::Buffer,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    Gemm::tn(m, k, n).encode(ctx, encoder, dy, x, dw)
}

/// c += a·b by `gemm` on the GPU (upload, run, read back); returns the new c. Each
/// operand is (name, values, expected length).
async fn accumulate(
    ctx: &GpuContext,
    what: &str,
    [a, b, c]: [(&str, &[f32], usize); 3],
    gemm: Gemm,
) -> Result<Vec<f32>> {
    for (name, v, len) in [a, b, c] {
        check_len(&format!("{what} {name}"), v.len(), len)?;
    }
    let (ab, bb, cb) = (
        upload(ctx, a.0, a.1)?,
        upload(ctx, b.0, b.1)?,
        upload(ctx, c.0, c.1)?,
    );
    let mut enc = ctx.encoder();
    gemm.encode(ctx, &mut enc, &ab, &bb, &cb)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &cb, c.2).await
}

/// dx += dy·w on the GPU (upload, run, read back); returns the new dx. Twin: `matmul_nn_acc`.
pub async fn matmul_nn(
    ctx: &GpuContext,
    dy: &[f32],
    w: &[f32],
    dx: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let ops = [("dy", dy, m * n), ("w", w, n * k), ("dx", dx, m * k)];
    accumulate(ctx, "matmul_nn", ops, Gemm::nn(m, k, n)).await
}

/// dw += dyᵀ·x on the GPU (upload, run, read back); returns the new dw. Twin: `matmul_tn_acc`.
pub async fn matmul_tn(
    ctx: &GpuContext,
    dy: &[f32],
    x: &[f32],
    dw: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let ops = [("dy", dy, m * n), ("x", x, m * k), ("dw", dw, n * k)];
    accumulate(ctx, "matmul_tn", ops, Gemm::tn(m, k, n)).await
}
