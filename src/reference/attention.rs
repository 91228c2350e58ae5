//! Causal grouped-query attention, forward and backward, one query head per task (in
//! parallel natively). Each head's products are matrix products through [`Real::gemm`]:
//! the scores S = Q·Kᵀ over every key (the masked ones are then zeroed, which wastes under
//! half the flops of an already small product and keeps the kernel the one fast GEMM),
//! the outputs P·V, and in the backward pass dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q.

use super::Real;
use crate::cpu::{par, profile};

/// Shapes of a grouped-query attention call: `t` query rows at positions s−t … s−1
/// attending causally to `s` key rows (s > t when a KV cache holds earlier positions).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub t: usize,
    pub s: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn flops(&self) -> u64 {
        // Two t×s×hd products per head forward (four backward), counted in full.
        (4 * self.t * self.s * self.head_dim * self.n_heads) as u64
    }
}

/// Causal grouped-query attention. q `[t][H·hd]`, k and v `[s][Hkv·hd]`. Query head h reads
/// KV head h / (H/Hkv). Returns (out `[t][H·hd]`, probs `[H][t][s]`).
pub fn attention_forward<T: Real>(q: &[T], k: &[T], v: &[T], sh: AttnShape) -> (Vec<T>, Vec<T>) {
    profile::time(profile::Op::Attention, sh.flops(), || forward(q, k, v, sh))
}

fn forward<T: Real>(q: &[T], k: &[T], v: &[T], sh: AttnShape) -> (Vec<T>, Vec<T>) {
    let AttnShape {
        t,
        s,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = sh;
    let (qw, kw, group) = (n_heads * hd, n_kv_heads * hd, n_heads / n_kv_heads);
    let scale = T::one() / T::from_f64(hd as f64).sqrt();
    let mut probs = vec![T::zero(); n_heads * t * s];
    // Each head's output [t][hd], then interleaved into out's columns.
    let mut heads = vec![T::zero(); n_heads * t * hd];
    let mut work: Vec<(&mut [T], &mut [T])> = probs
        .chunks_mut(t * s)
        .zip(heads.chunks_mut(t * hd))
        .collect();
    par::chunks_mut(&mut work, 1, |h, w| {
        let (p, o) = &mut w[0];
        let kh = (h / group) * hd;
        // S = scale · Q_h·K_khᵀ
        T::gemm(
            t,
            hd,
            s,
            scale,
            &q[h * hd..],
            qw as isize,
            1,
            &k[kh..],
            1,
            kw as isize,
            T::zero(),
            p,
            s as isize,
            1,
        );
        for (i, row) in p.chunks_mut(s).enumerate() {
            softmax_causal(row, s - t + i);
        }
        // O_h = P·V_kh
        T::gemm(
            t,
            s,
            hd,
            T::one(),
            p,
            s as isize,
            1,
            &v[kh..],
            kw as isize,
            1,
            T::zero(),
            o,
            hd as isize,
            1,
        );
    });
    let mut out = vec![T::zero(); t * qw];
    for (h, o) in heads.chunks(t * hd).enumerate() {
        for (i, row) in o.chunks(hd).enumerate() {
            out[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(row);
        }
    }
    (out, probs)
}

/// Softmax of `row[..=last]` in place; the masked rest set to 0.
fn softmax_causal<T: Real>(row: &mut [T], last: usize) {
    let (live, masked) = row.split_at_mut(last + 1);
    masked.iter_mut().for_each(|x| *x = T::zero());
    let max = live.iter().copied().fold(T::neg_infinity(), T::max);
    let inv = T::one() / T::exp_sum(live, max);
    live.iter_mut().for_each(|x| *x = *x * inv);
}

/// Attention backward: (dq, dk, dv) from dout and the saved probabilities.
pub fn attention_backward<T: Real>(
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    sh: AttnShape,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    profile::time(profile::Op::Attention, 2 * sh.flops(), || {
        backward(dout, q, k, v, probs, sh)
    })
}

fn backward<T: Real>(
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    sh: AttnShape,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let AttnShape {
        t,
        s,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = sh;
    let (qw, kw, group) = (n_heads * hd, n_kv_heads * hd, n_heads / n_kv_heads);
    let scale = T::one() / T::from_f64(hd as f64).sqrt();
    // Per query head: dq_h [t][hd], dk_h and dv_h [s][hd], and a dS scratch [t][s];
    // summed into the KV heads afterwards.
    let per = t * hd + 2 * s * hd + t * s;
    let mut bufs = vec![T::zero(); n_heads * per];
    par::chunks_mut(&mut bufs, per, |h, buf| {
        let kh = (h / group) * hd;
        let p = &probs[h * t * s..(h + 1) * t * s];
        let (dq, rest) = buf.split_at_mut(t * hd);
        let (dk, rest) = rest.split_at_mut(s * hd);
        let (dv, ds) = rest.split_at_mut(s * hd);
        let d_o = &dout[h * hd..];
        // dP = dO_h·V_khᵀ (into ds), dV_kh = Pᵀ·dO_h
        T::gemm(
            t,
            hd,
            s,
            T::one(),
            d_o,
            qw as isize,
            1,
            &v[kh..],
            1,
            kw as isize,
            T::zero(),
            ds,
            s as isize,
            1,
        );
        T::gemm(
            s,
            t,
            hd,
            T::one(),
            p,
            1,
            s as isize,
            d_o,
            qw as isize,
            1,
            T::zero(),
            dv,
            hd as isize,
            1,
        );
        // Softmax backward: dS_j = scale · p_j (dP_j − Σ p·dP), 0 where masked (p = 0).
        for (pr, dr) in p.chunks(s).zip(ds.chunks_mut(s)) {
            let dot: T = pr.iter().zip(dr.iter()).map(|(&a, &b)| a * b).sum();
            for (d, &pj) in dr.iter_mut().zip(pr) {
                *d = scale * pj * (*d - dot);
            }
        }
        // dQ_h = dS·K_kh, dK_kh = dSᵀ·Q_h
        T::gemm(
            t,
            s,
            hd,
            T::one(),
            ds,
            s as isize,
            1,
            &k[kh..],
            kw as isize,
            1,
            T::zero(),
            dq,
            hd as isize,
            1,
        );
        T::gemm(
            s,
            t,
            hd,
            T::one(),
            ds,
            1,
            s as isize,
            &q[h * hd..],
            qw as isize,
            1,
            T::zero(),
            dk,
            hd as isize,
            1,
        );
    });
    let mut dq = vec![T::zero(); t * qw];
    let mut dk = vec![T::zero(); s * kw];
    let mut dv = vec![T::zero(); s * kw];
    for (h, buf) in bufs.chunks(per).enumerate() {
        let kh = (h / group) * hd;
        let (dqh, rest) = buf.split_at(t * hd);
        let (dkh, rest) = rest.split_at(s * hd);
        let dvh = &rest[..s * hd];
        for (i, row) in dqh.chunks(hd).enumerate() {
            dq[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(row);
        }
        for (j, (rk, rv)) in dkh.chunks(hd).zip(dvh.chunks(hd)).enumerate() {
            let o = j * kw + kh;
            for (d, &g) in dk[o..o + hd].iter_mut().zip(rk) {
                *d = *d + g;
            }
            for (d, &g) in dv[o..o + hd].iter_mut().zip(rv) {
                *d = *d + g;
            }
        }
    }
    (dq, dk, dv)
}
