//! The optimizer, on the CPU: AdamW as PyTorch's `torch.optim.AdamW` (decoupled weight
//! decay, bias correction) and global gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_`. The twin of the GPU kernels in
//! `src/kernels/ops/adamw.rs` and `reduce.rs`.

use super::Real;

/// AdamW hyper-parameters (PyTorch names and defaults, except lr).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// The bias corrections (1 − β1ᵗ, 1 − β2ᵗ) of step `t` (counted from 1).
    pub fn bias_corrections(&self, t: u64) -> (f64, f64) {
        let t = t.min(i32::MAX as u64) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

/// Σ x² over several slices, accumulated in f64.
pub fn sum_squares<T: Real>(slices: &[&[T]]) -> f64 {
    slices
        .iter()
        .flat_map(|s| s.iter())
        .map(|&x| {
            let x = x.to_f64();
            x * x
        })
        .sum()
}

/// The factor `clip_grad_norm` scales every gradient by: min(1, max_norm / (norm + 1e-6)).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Scales all gradients together so their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm<T: Real>(grads: &mut [&mut [T]], max_norm: f64) -> f64 {
    let norm = {
        let views: Vec<&[T]> = grads.iter().map(|g| &**g).collect();
        sum_squares(&views).sqrt()
    };
    let c = T::from_f64(clip_coefficient(norm, max_norm));
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x = *x * c;
        }
    }
    norm
}

/// One AdamW step `t` (from 1) on one parameter tensor, in place:
/// p ← p − lr·wd·p; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps), PyTorch's order of operations.
pub fn adamw_step<T: Real>(
    cfg: &AdamW,
    t: u64,
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let (bc1, bc2) = cfg.bias_corrections(t);
    let f = T::from_f64;
    let (b1, b2) = (f(cfg.beta1), f(cfg.beta2));
    let decay = f(1.0 - cfg.lr * cfg.weight_decay);
    let step = f(cfg.lr / bc1);
    let bc2_sqrt = f(bc2.sqrt());
    let eps = f(cfg.eps);
    for i in 0..param.len() {
        let g = grad[i];
        param[i] = param[i] * decay;
        m[i] = b1 * m[i] + (T::one() - b1) * g;
        v[i] = b2 * v[i] + (T::one() - b2) * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        param[i] = param[i] - step * m[i] / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Step 1 and 2 by hand, lr 0.1, β 0.9/0.999, eps 1e-8, wd 0.1, from p = 1, g = 0.5 then
    /// g = −0.25.
    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let cfg = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (mut p, mut m, mut v) = (vec![1.0f64], vec![0.0], vec![0.0]);
        adamw_step(&cfg, 1, &mut p, &[0.5], &mut m, &mut v);
        // p = 1·(1 − 0.01) = 0.99; m = 0.05; v = 0.00025; m̂ = 0.5; v̂ = 0.25; √v̂ = 0.5
        // p = 0.99 − 0.1·0.5/(0.5 + 1e-8)
        let want_p1 = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
        assert!((m[0] - 0.05).abs() < 1e-15, "{m:?}");
        assert!((v[0] - 0.00025).abs() < 1e-15, "{v:?}");
        assert!((p[0] - want_p1).abs() < 1e-12, "{} vs {want_p1}", p[0]);
        adamw_step(&cfg, 2, &mut p, &[-0.25], &mut m, &mut v);
        // m = 0.9·0.05 − 0.1·0.25 = 0.02; v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225
        // m̂ = 0.02/0.19; v̂ = 0.00031225/0.001999
        let m2 = 0.02;
        let v2 = 0.999 * 0.00025 + 0.001 * 0.0625;
        let mh = m2 / (1.0 - 0.81);
        let vh: f64 = v2 / (1.0 - 0.999f64 * 0.999);
        let want_p2 = want_p1 * 0.99 - 0.1 * mh / (vh.sqrt() + 1e-8);
        assert!((m[0] - m2).abs() < 1e-15);
        assert!((v[0] - v2).abs() < 1e-15);
        assert!((p[0] - want_p2).abs() < 1e-12, "{} vs {want_p2}", p[0]);
    }

    #[test]
    fn no_weight_decay_and_zero_grad_leave_params() {
        let cfg = AdamW {
            weight_decay: 0.0,
            ..Default::default()
        };
        let (mut p, mut m, mut v) = (vec![0.3f32, -2.0], vec![0.0; 2], vec![0.0; 2]);
        adamw_step(&cfg, 1, &mut p, &[0.0, 0.0], &mut m, &mut v);
        assert_eq!(p, vec![0.3, -2.0]);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
        // norm of (3, 4) and (12) is 13.
        let (mut a, mut b) = (vec![3.0f64, 4.0], vec![12.0]);
        let norm = clip_grad_norm(&mut [&mut a[..], &mut b[..]], 1.0);
        assert!((norm - 13.0).abs() < 1e-12);
        let c = 1.0 / (13.0 + 1e-6);
        assert!((a[0] - 3.0 * c).abs() < 1e-12 && (a[1] - 4.0 * c).abs() < 1e-12);
        assert!((b[0] - 12.0 * c).abs() < 1e-12);
        let mut small = vec![0.1f64, 0.2];
        clip_grad_norm(&mut [&mut small[..]], 1.0);
        assert_eq!(small, vec![0.1, 0.2]);
    }
}
