//! The one tolerance type of the crate's checks and tests: two computations of the same
//! numbers (a GPU kernel and its CPU twin, f32 and f64, two summation orders) agree when
//!
//! |x − y| ≤ max(rel·scale, abs).
//!
//! Each named tolerance states its scale where it is declared: |x| + |y| for elementwise
//! comparisons ([`Tol::close`], the rule of the kernel checks), the reference's range or
//! max |·| for whole vectors (logits, gradients), |reference| for one sum (a loss).
//! Generic over f32 and f64 so that each check compares in the precision it computes in.

use crate::{Error, Result};
use num_traits::{ConstZero, Float};

/// A named tolerance: an error is allowed when it is at most max(rel·scale, abs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol<T = f32> {
    pub rel: T,
    pub abs: T,
}

impl<T: Float + ConstZero> Tol<T> {
    /// |x − y| ≤ max(rel·scale, abs).
    pub const fn new(rel: T, abs: T) -> Self {
        Tol { rel, abs }
    }

    /// A purely relative tolerance: |x − y| ≤ rel·scale.
    pub const fn relative(rel: T) -> Self {
        Tol { rel, abs: T::ZERO }
    }

    /// A purely absolute tolerance: |x − y| ≤ abs.
    pub const fn absolute(abs: T) -> Self {
        Tol { rel: T::ZERO, abs }
    }

    /// The largest error allowed at `scale`: max(rel·scale, abs).
    pub fn bound(self, scale: T) -> T {
        (self.rel * scale).max(self.abs)
    }

    /// Whether `err` is within the tolerance at `scale` (a NaN error never is).
    pub fn allows(self, err: T, scale: T) -> bool {
        err <= self.bound(scale)
    }

    /// The elementwise rule: |x − y| ≤ max(rel·(|x| + |y|), abs).
    pub fn close(self, x: T, y: T) -> bool {
        self.allows((x - y).abs(), x.abs() + y.abs())
    }

    /// Against a reference value: |x − want| ≤ max(rel·|want|, abs).
    pub fn close_to(self, x: T, want: T) -> bool {
        self.allows((x - want).abs(), want.abs())
    }
}

/// Compares a GPU result `got` to its CPU twin's `want` elementwise by the rule
/// |gpu − cpu| ≤ max(rel·(|gpu| + |cpu|), abs); returns the worst |diff|, or an error naming
/// `what`, the first element out of tolerance and the worst error.
pub fn compare(what: &str, got: &[f32], want: &[f32], tol: Tol) -> Result<f32> {
    if got.len() != want.len() {
        return Err(Error::Gpu(format!(
            "{what}: {} values from the GPU, {} from the CPU twin",
            got.len(),
            want.len()
        )));
    }
    let mut worst = 0.0f32;
    let mut first_bad = None;
    for (i, (&g, &c)) in got.iter().zip(want).enumerate() {
        let err = (g - c).abs();
        let bound = tol.bound(g.abs() + c.abs());
        if err.is_nan() || err > bound {
            first_bad.get_or_insert((i, g, c, bound));
            if err.is_nan() {
                worst = f32::NAN;
            }
        }
        if err > worst {
            worst = err;
        }
    }
    match first_bad {
        None => Ok(worst),
        Some((i, g, c, bound)) => Err(Error::Gpu(format!(
            "{what}: element {i}: gpu {g} cpu {c} (tolerance {bound}); max |gpu−cpu| = {worst:e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_takes_the_larger_bound() {
        let t = Tol {
            rel: 1e-3,
            abs: 1e-2,
        };
        assert_eq!(t.bound(1.0), 1e-2);
        assert_eq!(t.bound(100.0), 1e-3 * 100.0);
        assert!(t.close(1.0, 1.005) && !t.close(1.0, 1.02));
        assert!(!Tol::<f64>::relative(1e-9).allows(f64::NAN, 1.0));
        assert!(Tol::<f64>::absolute(1e-4).close_to(1e6 + 1e-5, 1e6));
        assert!(Tol::<f32>::relative(0.5).close_to(1.4, 1.0));
    }
}
