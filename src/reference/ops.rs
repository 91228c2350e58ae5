//! (being written)
use super::Real;

/// y[m×n] = x[m×k] · w[n×k]ᵀ (a linear layer without bias; `w` is `[out][in]`).
pub fn matmul_nt<T: Real>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    let mut y = vec![T::zero(); m * n];
    T::gemm(m, k, n, T::one(), x, k as isize, 1, w, 1, k as isize, T::zero(), &mut y, n as isize, 1);
    y
}
