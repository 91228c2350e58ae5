//! The linear layer and the embedding over a [`Mat`]: a dense matrix goes through the
//! slice ops of [`super::ops`], a packed one through [`Real::gemm_rows`] (the CPU GEMM
//! decoding its panels in place for f32, the plain loop for f64), timed under the same
//! profile ops.

use super::ops;
use super::Real;
use crate::cpu::profile::{self, Op as P};
use crate::cpu::Op;
use crate::model::Mat;

/// y[m×n] = x[m×k]·Wᵀ with W `[n][k]`.
pub fn linear_forward<T: Real>(x: &[T], w: &Mat<T>, m: usize, k: usize, n: usize) -> Vec<T> {
    match w {
        Mat::Dense(w) => ops::linear_forward(x, w, m, k, n),
        Mat::Packed(p) => profile::time(P::MatmulNt, 2 * (m * k * n) as u64, || {
            let mut y = vec![T::zero(); m * n];
            let src = p.source();
            assert_eq!(
                (src.rows(), src.cols()),
                (n, k),
                "linear_forward: weight shape"
            );
            let (a, c) = ((x, k as isize, 1), (&mut y[..], n as isize, 1));
            T::gemm_rows(Op::Nt, m, T::one(), a, src, T::zero(), c);
            y
        }),
    }
}

/// dx += dy·W, and dw += dyᵀ·x when the weight is trained (a trained weight is dense).
pub fn linear_backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: &Mat<T>,
    (m, k, n): (usize, usize, usize),
    dx: &mut [T],
    dw: Option<&mut [T]>,
) {
    match w {
        Mat::Dense(w) => ops::linear_backward(dy, x, w, (m, k, n), dx, dw),
        Mat::Packed(p) => {
            profile::time(P::MatmulNnAcc, 2 * (m * k * n) as u64, || {
                let src = p.source();
                assert_eq!(
                    (src.rows(), src.cols()),
                    (n, k),
                    "linear_backward: weight shape"
                );
                let (a, c) = ((dy, n as isize, 1), (&mut *dx, k as isize, 1));
                T::gemm_rows(Op::Nn, m, T::one(), a, src, T::one(), c);
            });
            if let Some(dw) = dw {
                ops::matmul_tn_acc(dy, x, m, k, n, dw);
            }
        }
    }
}

/// Embedding gather: row `tokens[i]` of `table` `[vocab][d]`.
pub fn embedding_forward<T: Real>(tokens: &[u32], table: &Mat<T>, d: usize) -> Vec<T> {
    match table {
        Mat::Dense(t) => ops::embedding_forward(tokens, t, d),
        Mat::Packed(p) => {
            let src = p.source();
            let mut row = vec![0.0f32; d];
            let mut out = Vec::with_capacity(tokens.len() * d);
            for &t in tokens {
                src.row_into(t as usize, 0, &mut row);
                out.extend(row.iter().map(|&v| T::from_f64(v as f64)));
            }
            out
        }
    }
}
