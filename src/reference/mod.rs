//! The CPU reference transformer: plain, explicit forward/backward pairs, generic over
//! f32 (to run the real model) and f64 (to check gradients by finite differences).
//! It is the oracle for the GPU kernels and the engine of the CPU trainer: f32 matrix
//! products go through the packed kernels of [`crate::cpu`], f64 ones (gradient checks
//! only) through `matrixmultiply`.

mod attention;
pub mod matrix;
pub mod model;
pub mod ops;
pub mod optim;
pub mod stats;

pub use model::{
    lora_dropout, Activations, Exit, Grads, KvCache, Lora, LoraConfig, Owner, Proj, Span,
    Transformer,
};
pub use ops::{Dropout, LoraPair};

use crate::cpu::{Op, RowSource};
use num_traits::Float;

/// The scalar types the reference runs in.
pub trait Real: Float + Default + std::fmt::Debug + std::iter::Sum + Send + Sync + 'static {
    /// C[m×n] = alpha·A·B + beta·C with explicit row/column strides (matrixmultiply's
    /// convention): A is m×k, B is k×n.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
        rsc: isize,
        csc: isize,
    );
    /// C = α·A·op(W) + β·C with W read through a [`RowSource`] (shapes and strides as
    /// [`crate::cpu::sgemm_rows`]). This default is the plain oracle: each row of W decoded
    /// once, then a loop in `Self`'s precision (f64's gradient checks); f32 runs the packed
    /// GEMM.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rows(
        op: Op,
        m: usize,
        alpha: Self,
        (a, rsa, csa): (&[Self], isize, isize),
        w: &dyn RowSource,
        beta: Self,
        (c, rsc, csc): (&mut [Self], isize, isize),
    ) {
        let (m, k, n) = crate::cpu::source::dims(op, m, w);
        let (rsa, csa, rsc, csc) = (rsa as usize, csa as usize, rsc as usize, csc as usize);
        for i in 0..m {
            for j in 0..n {
                let x = &mut c[i * rsc + j * csc];
                *x = if beta == Self::zero() {
                    Self::zero()
                } else {
                    beta * *x
                };
            }
        }
        let mut row = vec![0.0f32; w.cols()];
        for r in 0..w.rows() {
            w.row_into(r, 0, &mut row);
            let row: Vec<Self> = row.iter().map(|&v| Self::from_f64(v as f64)).collect();
            for i in 0..m {
                match op {
                    // Column r of C: A's row i against W's row r.
                    Op::Nt => {
                        let dot =
                            (0..k).fold(Self::zero(), |s, p| s + a[i * rsa + p * csa] * row[p]);
                        let x = &mut c[i * rsc + r * csc];
                        *x = *x + alpha * dot;
                    }
                    // Depth r: C's row i gains A[i][r]·W's row r.
                    Op::Nn => {
                        let s = alpha * a[i * rsa + r * csa];
                        for (j, &v) in row.iter().enumerate().take(n) {
                            let x = &mut c[i * rsc + j * csc];
                            *x = *x + s * v;
                        }
                    }
                }
            }
        }
    }
    /// out = silu(gate) ⊙ up, silu(g) = g·σ(g).
    fn swiglu(gate: &[Self], up: &[Self], out: &mut [Self]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * (Self::one() / (Self::one() + (-g).exp())) * u;
        }
    }
    /// SwiGLU backward: dg = dh·u·σ(g)(1 + g(1 − σ(g))), du = dh·g·σ(g).
    fn swiglu_backward(dh: &[Self], gate: &[Self], up: &[Self], dg: &mut [Self], du: &mut [Self]) {
        let one = Self::one();
        for i in 0..dh.len() {
            let (d, g, u) = (dh[i], gate[i], up[i]);
            let sg = one / (one + (-g).exp());
            du[i] = d * g * sg;
            dg[i] = d * u * sg * (one + g * (one - sg));
        }
    }
    /// row = e^(row − max) in place; returns the sum.
    fn exp_sum(row: &mut [Self], max: Self) -> Self {
        let mut sum = Self::zero();
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum = sum + *x;
        }
        sum
    }
    /// out[j] = mask element `start + j` of `d` (0 or 1/(1 − p)).
    fn fill_mask(d: &ops::Dropout, start: u32, out: &mut [Self]) {
        let keep = Self::from_f64(d.keep_scale);
        for (j, x) in out.iter_mut().enumerate() {
            let kept = d.keeps(start.wrapping_add(j as u32));
            *x = if kept { keep } else { Self::zero() };
        }
    }
    fn from_f64(x: f64) -> Self {
        <Self as num_traits::NumCast>::from(x).unwrap_or_else(Self::nan)
    }
    fn to_f64(self) -> f64 {
        <f64 as num_traits::NumCast>::from(self).unwrap_or(f64::NAN)
    }
}

impl Real for f32 {
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
        rsc: isize,
        csc: isize,
    ) {
        crate::cpu::sgemm(
            (m, k, n),
            alpha,
            (a, rsa, csa),
            (b, rsb, csb),
            beta,
            (c, rsc, csc),
        );
    }
    fn gemm_rows(
        op: Op,
        m: usize,
        alpha: Self,
        a: (&[Self], isize, isize),
        w: &dyn RowSource,
        beta: Self,
        c: (&mut [Self], isize, isize),
    ) {
        crate::cpu::sgemm_rows(op, m, alpha, a, w, beta, c);
    }
    fn swiglu(gate: &[Self], up: &[Self], out: &mut [Self]) {
        crate::cpu::vmath::swiglu(gate, up, out);
    }
    fn swiglu_backward(dh: &[Self], gate: &[Self], up: &[Self], dg: &mut [Self], du: &mut [Self]) {
        crate::cpu::vmath::swiglu_backward(dh, gate, up, dg, du);
    }
    fn exp_sum(row: &mut [Self], max: Self) -> Self {
        crate::cpu::vmath::exp_sum(row, max)
    }
    fn fill_mask(d: &ops::Dropout, start: u32, out: &mut [Self]) {
        let keep = d.keep_scale as f32;
        crate::cpu::mask::fill(d.key, d.threshold, start, keep, out);
    }
}
impl Real for f64 {
    // f64 is for gradient checks: matrixmultiply's dgemm, bounds checked as the f32 kernels'.
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
        rsc: isize,
        csc: isize,
    ) {
        crate::cpu::gemm::check_bounds((m, k, n), (a, rsa, csa), (b, rsb, csb), (&*c, rsc, csc));
        if m == 0 || n == 0 {
            return;
        }
        // SAFETY: check_bounds keeps every access inside the slices, strides non-negative.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                c.as_mut_ptr(),
                rsc,
                csc,
            )
        }
    }
}
