//! Calibration statistics of a model pass, the inputs of compression: XᵀX of each
//! projection's input ([`Hessian`], per block [`LayerHessians`]) and the diagonal empirical
//! Fisher of each block's weights ([`BlockFisher`]). The GPU engine's statistics pass
//! (shaders/stats.wgsl) fills them as the CPU reference's passes do
//! (`crate::compress::calibration`); [`gram_acc`] and [`fisher_acc`] are the CPU twins of
//! its two kernels.

use super::ops;
use super::{Proj, Real};
use crate::{Error, Result};

/// Calibration rows converted to f64 at once while accumulating the Hessian.
const HESSIAN_CHUNK: usize = 256;

/// Calibration statistics of one projection's input: S = XᵀX summed over every row seen,
/// and the row count m; H = 2S/m. Projections that share an input (q/k/v, gate/up) share
/// one.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    /// Input features.
    pub k: usize,
    /// Σ x xᵀ, k×k row-major.
    sum: Vec<f64>,
    rows: usize,
}

impl Hessian {
    /// An empty accumulator for inputs of `k` features.
    pub fn new(k: usize) -> Self {
        Hessian {
            k,
            sum: vec![0.0; k * k],
            rows: 0,
        }
    }

    /// Adds calibration rows `x` `[m][k]` (f32 or f64; accumulated in f64).
    pub fn add<T: Real>(&mut self, x: &[T], m: usize) -> Result<()> {
        let k = self.k;
        if m.checked_mul(k) != Some(x.len()) {
            return Err(Error::Invalid(format!(
                "hessian: {} input values are not {m}×{k}",
                x.len()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid("hessian: non-finite input".into()));
        }
        for rows in x.chunks(HESSIAN_CHUNK * k.max(1)) {
            let r = rows.len() / k.max(1);
            let xf: Vec<f64> = rows.iter().map(|v| Real::to_f64(*v)).collect();
            // S[k×k] += xᵀ·x.
            crate::reference::ops::matmul_tn_acc(&xf, &xf, r, k, k, &mut self.sum);
        }
        self.rows += m;
        Ok(())
    }

    /// The statistics of an XᵀX summed elsewhere (the GPU's f32 `[k][k]` sum over `rows`
    /// calibration rows), widened to f64.
    pub fn from_sum(k: usize, sum: &[f32], rows: usize) -> Result<Self> {
        if k.checked_mul(k) != Some(sum.len()) {
            return Err(Error::Invalid(format!(
                "hessian: {} summed values are not {k}×{k}",
                sum.len()
            )));
        }
        if sum.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid("hessian: non-finite input".into()));
        }
        Ok(Hessian {
            k,
            sum: sum.iter().map(|&v| v as f64).collect(),
            rows,
        })
    }

    /// Calibration rows accumulated (m).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// H = 2·XᵀX/m, k×k row-major.
    pub fn matrix(&self) -> Vec<f64> {
        let f = 2.0 / self.rows.max(1) as f64;
        self.sum.iter().map(|v| v * f).collect()
    }

    /// ‖x_j‖₂ over the calibration rows, per input feature (Wanda's column weights).
    pub fn column_norms(&self) -> Vec<f64> {
        (0..self.k)
            .map(|j| self.sum[j * self.k + j].sqrt())
            .collect()
    }

    /// The layer's output error ‖X·Wᵀ − X·Ŵᵀ‖²_F / (m·n), the mean squared output error per
    /// element over the calibration rows, computed from S without the outputs. Panics if
    /// `w` or `w_hat` is not `[n][k]`.
    pub fn output_mse<T: Real>(&self, w: &[T], w_hat: &[T], n: usize) -> f64 {
        let k = self.k;
        assert_eq!(w.len(), n * k, "output_mse: W is not {n}×{k}");
        assert_eq!(w_hat.len(), n * k, "output_mse: Ŵ is not {n}×{k}");
        let mut total = 0.0;
        let mut d = vec![0.0f64; k];
        for r in 0..n {
            for (j, dj) in d.iter_mut().enumerate() {
                *dj = Real::to_f64(w[r * k + j]) - Real::to_f64(w_hat[r * k + j]);
            }
            for (i, &di) in d.iter().enumerate() {
                if di != 0.0 {
                    let row = &self.sum[i * k..(i + 1) * k];
                    total += di * row.iter().zip(&d).map(|(s, e)| s * e).sum::<f64>();
                }
            }
        }
        total / (self.rows.max(1) * n.max(1)) as f64
    }
}

/// The four projection inputs of a block, by the activation `forward_train` saves.
#[derive(Clone, Debug)]
pub struct LayerHessians {
    /// rmsnorm(x): input of q, k, v.
    pub n1: Hessian,
    /// Attention output: input of o.
    pub attn: Hessian,
    /// rmsnorm(h): input of gate, up.
    pub n2: Hessian,
    /// silu(gate)·up: input of down.
    pub act: Hessian,
}

impl LayerHessians {
    /// The statistics of projection `p`'s input.
    pub fn of(&self, p: Proj) -> &Hessian {
        match p {
            Proj::Q | Proj::K | Proj::V => &self.n1,
            Proj::O => &self.attn,
            Proj::Gate | Proj::Up => &self.n2,
            Proj::Down => &self.act,
        }
    }
}

/// h `[k][k]` += xᵀ·x for x `[t][k]` (sums in f64): the twin of the GPU's accumulation
/// [`crate::kernels::ops::stats::gram_acc`].
pub fn gram_acc(h: &mut [f32], x: &[f32], t: usize, k: usize) {
    assert!(
        h.len() == k * k && x.len() == t * k,
        "gram_acc: not {t}×{k}"
    );
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut s = vec![0.0f64; k * k];
    ops::matmul_tn_acc(&xf, &xf, t, k, k, &mut s);
    for (d, v) in h.iter_mut().zip(s) {
        *d += v as f32;
    }
}

/// f `[n][k]` += s·(dyᵀ·x)² elementwise for dy `[t][n]` and x `[t][k]` (one row's squared
/// weight gradient, sums in f64): the twin of [`crate::kernels::ops::stats::fisher_acc`].
#[allow(clippy::too_many_arguments)]
pub fn fisher_acc(f: &mut [f32], dy: &[f32], x: &[f32], t: usize, n: usize, k: usize, s: f32) {
    assert!(
        f.len() == n * k && dy.len() == t * n && x.len() == t * k,
        "fisher_acc: not {t}×{n} and {t}×{k}"
    );
    let dyf: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut g = vec![0.0f64; n * k];
    ops::matmul_tn_acc(&dyf, &xf, t, k, n, &mut g);
    for (d, v) in f.iter_mut().zip(g) {
        *d += (s as f64 * v * v) as f32;
    }
}

/// One block's diagonal empirical Fisher: for each projection (in [`Proj::ALL`] order), the
/// mean over calibration rows of the squared gradient of the row's mean loss with respect
/// to each weight.
pub type BlockFisher = Vec<Vec<f32>>;

/// The error of a Fisher diagonal over rows of which none has a target (CPU and GPU).
pub fn no_fisher_rows() -> Error {
    Error::Data("fisher: no calibration row has a target to take the loss gradient of".into())
}
