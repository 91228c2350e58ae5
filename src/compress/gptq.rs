//! GPTQ (Frantar et al. 2023): quantization of one weight `[n][k]` to the packed
//! [`QuantMatrix`] the GPU kernels read, with error feedback from calibration inputs.
//!
//! Columns are rounded left to right by the same OBS sweep as SparseGPT
//! ([`super::prune::obs_sweep`]): each column's rounding error, divided by [U]_jj (U the
//! upper Cholesky factor of the damped H⁻¹), is pushed onto the columns not yet rounded,
//! so later columns absorb what earlier ones lost.
//!
//! Scales: [`quantize`] derives each group's (s, z) from the
//! values it rounds. GPTQ must fix them before rounding the group (the error feedback
//! moves values while the group is being rounded), so a group's (s, z) are computed —
//! by exactly `quantize`'s formulas, f16-rounded — from the group's values as the sweep
//! reaches its first column (already carrying the feedback from earlier columns), and its
//! codes are then rounded against them, clamped to the code range. Groups never straddle a sweep block (the block must
//! be a multiple of the group). Codes and scales are packed here in `quantize`'s layout;
//! with no feedback (a diagonal Hessian) the result is bit-identical to `quantize`
//! (tested), so the kernels read GPTQ and RTN weights alike.

use super::prune::{obs_sweep, prepare, ObsOptions};
use crate::formats::quant::{put_code, quantize, QuantMatrix, BITS, BLOCK, GROUPS};
use crate::reference::stats::Hessian;
use crate::reference::Real;
use crate::{Error, Result};
use half::f16;

/// How to quantize.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Code width: 2, 3, 4 or 8.
    pub bits: u32,
    /// Columns per scale group: 32, 64 or 128.
    pub group: usize,
    /// Symmetric (scale only) or asymmetric (scale and zero), as
    /// [`quantize`].
    pub symmetric: bool,
    /// Sweep block and dampening.
    pub obs: ObsOptions,
}

fn f16_checked(v: f32, what: &str) -> Result<f16> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Error::Invalid(format!(
            "gptq: {what} = {v} does not fit in f16"
        )))
    }
}

/// One group's rounding grid, computed as [`quantize`] does.
#[derive(Clone, Copy, Debug)]
struct Grid {
    s: f32,
    z: f32,
    /// The f16 bits as stored: symmetric s; asymmetric s | z << 16.
    stored: u32,
}

impl Grid {
    fn new(vals: &[f32], bits: u32, symmetric: bool) -> Result<Grid> {
        let half = 1u32 << (bits - 1);
        if symmetric {
            let amax = vals.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let sh = f16_checked(amax / (half - 1) as f32, "scale")?;
            let s = sh.to_f32();
            Ok(Grid {
                s,
                z: -(half as f32) * s,
                stored: sh.to_bits() as u32,
            })
        } else {
            let top = (u32::MAX >> (32 - bits)) as f32;
            let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sh = f16_checked((max - min) / top, "scale")?;
            let zh = f16_checked(min, "zero")?;
            Ok(Grid {
                s: sh.to_f32(),
                z: zh.to_f32(),
                stored: sh.to_bits() as u32 | ((zh.to_bits() as u32) << 16),
            })
        }
    }

    /// The code of `v` and the value a kernel decodes from it (`s·code + z` in f32).
    fn round(&self, v: f32, bits: u32, symmetric: bool) -> (u32, f32) {
        let half = 1u32 << (bits - 1);
        let top = (u32::MAX >> (32 - bits)) as f32;
        let code = if self.s == 0.0 {
            if symmetric {
                half
            } else {
                0
            }
        } else if symmetric {
            let qmax = (half - 1) as f32;
            ((v / self.s).round().clamp(-qmax, qmax) as i32 + half as i32) as u32
        } else {
            ((v - self.z) / self.s).round().clamp(0.0, top) as u32
        };
        (code, self.s * code as f32 + self.z)
    }
}

/// GPTQ-quantizes `w` `[n][k]` (f32 or f64) with the calibration statistics `hess` of its
/// input. Also returns the dense values the sweep rounded to (equal to
/// `dequantize()` of the result, which a test checks).
pub fn gptq_with_dense<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    hess: &Hessian,
    opts: GptqOptions,
) -> Result<(QuantMatrix, Vec<f32>)> {
    let GptqOptions {
        bits,
        group,
        symmetric,
        obs,
    } = opts;
    let bad = |m: String| Err(Error::Invalid(format!("gptq: {m}")));
    if !BITS.contains(&bits) {
        return bad(format!("{bits} bits (supported: {BITS:?})"));
    }
    if !GROUPS.contains(&group) {
        return bad(format!("group {group} (supported: {GROUPS:?})"));
    }
    if obs.block == 0 || !obs.block.is_multiple_of(group) {
        return bad(format!(
            "block {} is not a positive multiple of the group {group}",
            obs.block
        ));
    }
    if n.checked_mul(k) != Some(w.len()) {
        return bad(format!("{} weights are not {n}×{k}", w.len()));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return bad("non-finite weight".into());
    }
    if hess.k != k {
        return bad(format!("Hessian of {} features for k = {k}", hess.k));
    }
    let mut q = QuantMatrix {
        rows: n,
        cols: k,
        bits,
        group,
        symmetric,
        data: Vec::new(),
        scales: Vec::new(),
    };
    let (wpr, swpr) = (q.words_per_row(), q.scale_words_per_row());
    q.data = vec![0; n * wpr];
    q.scales = vec![0; n * swpr];
    let mut dense = vec![0.0f32; n * k];
    let mut wf: Vec<f64> = w.iter().map(|v| Real::to_f64(*v)).collect();
    let u = prepare(hess, &mut wf, n, obs.damp)?;
    let mut grids: Vec<Grid> = Vec::with_capacity(n);
    obs_sweep(&mut wf, n, k, &u, obs.block, |c, out| {
        let i = c.j - c.j0;
        let g = c.j / group;
        if c.j.is_multiple_of(group) {
            grids.clear();
            let end = (i + group).min(c.bw);
            for r in 0..n {
                let vals: Vec<f32> = c.w1[r * c.bw + i..r * c.bw + end]
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let grid = Grid::new(&vals, bits, symmetric)?;
                let sw = &mut q.scales[r * swpr..(r + 1) * swpr];
                if symmetric {
                    sw[g / 2] |= grid.stored << (16 * (g % 2));
                } else {
                    sw[g] = grid.stored;
                }
                grids.push(grid);
            }
        }
        let b = c.j / BLOCK;
        for (r, o) in out.iter_mut().enumerate() {
            let (code, v) = grids[r].round(c.w1[r * c.bw + i] as f32, bits, symmetric);
            let words = &mut q.data[r * wpr + b * bits as usize..r * wpr + (b + 1) * bits as usize];
            put_code(words, bits, c.j % BLOCK, code);
            dense[r * k + c.j] = v;
            *o = v as f64;
        }
        Ok(())
    })?;
    Ok((q, dense))
}

/// GPTQ-quantizes `w` `[n][k]` into the kernels' packed format (see the module doc).
pub fn gptq<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    hess: &Hessian,
    opts: GptqOptions,
) -> Result<QuantMatrix> {
    gptq_with_dense(w, n, k, hess, opts).map(|(q, _)| q)
}

/// GPTQ or round-to-nearest, whichever gives the lower calibration output error
/// ([`Hessian::output_mse`]); returns the matrix, whether GPTQ won, and its error. GPTQ's
/// greedy feedback can lose at 2 bits, where the fed-back error overflows the fixed
/// group grids (measured in tests/compress.rs); the check costs about one more sweep.
pub fn gptq_or_rtn<T: Real>(
    w: &[T],
    n: usize,
    k: usize,
    hess: &Hessian,
    opts: GptqOptions,
) -> Result<(QuantMatrix, bool, f64)> {
    let (g, dense) = gptq_with_dense(w, n, k, hess, opts)?;
    let wf: Vec<f32> = w.iter().map(|v| Real::to_f64(*v) as f32).collect();
    let r = quantize(&wf, n, k, opts.bits, opts.group, opts.symmetric)?;
    let e_g = hess.output_mse(&wf, &dense, n);
    let e_r = hess.output_mse(&wf, &r.dequantize(), n);
    Ok(if e_g < e_r {
        (g, true, e_g)
    } else {
        (r, false, e_r)
    })
}
