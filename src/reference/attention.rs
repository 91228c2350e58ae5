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

/// Query rows per causal block: a block's rows attend to keys up to its last row's, so
/// blocks skip most of the masked triangle (the products shrink to about (½ + ROWS/2t) of
/// t×s) while staying large enough for the GEMM.
const ROWS: usize = 64;

impl AttnShape {
    /// The causal row blocks: (first row, end row, keys the block reads).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let (t, s) = (self.t, self.s);
        (0..t)
            .step_by(ROWS)
            .map(move |r0| (r0, (r0 + ROWS).min(t), s - t + (r0 + ROWS).min(t)))
    }

    /// Multiply-adds ×2 of one t'×s'×hd product per block and head (forward has two such
    /// products, backward four).
    fn flops(&self) -> u64 {
        let per: usize = self.blocks().map(|(r0, r1, kend)| (r1 - r0) * kend).sum();
        (2 * per * self.head_dim * self.n_heads) as u64
    }
}

/// Causal grouped-query attention. q `[t][H·hd]`, k and v `[s][Hkv·hd]`. Query head h reads
/// KV head h / (H/Hkv). Returns (out `[t][H·hd]`, probs `[H][t][s]`).
pub fn attention_forward<T: Real>(q: &[T], k: &[T], v: &[T], sh: AttnShape) -> (Vec<T>, Vec<T>) {
    profile::time(profile::Op::Attention, 2 * sh.flops(), || {
        forward(q, k, v, sh)
    })
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
        for (r0, r1, kend) in sh.blocks() {
            let (rows, p) = (r1 - r0, &mut p[r0 * s..r1 * s]);
            // S = scale · Q_h·K_khᵀ over the keys the block reads (the rest stays 0)
            let qh = &q[r0 * qw + h * hd..];
            let (sw, qs, ks) = (s as isize, qw as isize, kw as isize);
            T::gemm(
                rows,
                hd,
                kend,
                scale,
                qh,
                qs,
                1,
                &k[kh..],
                1,
                ks,
                T::zero(),
                p,
                sw,
                1,
            );
            for (i, row) in p.chunks_mut(s).enumerate() {
                softmax_causal(row, s - t + r0 + i);
            }
            // O_h = P·V_kh
            let o = &mut o[r0 * hd..r1 * hd];
            let hw = hd as isize;
            T::gemm(
                rows,
                kend,
                hd,
                T::one(),
                p,
                sw,
                1,
                &v[kh..],
                ks,
                1,
                T::zero(),
                o,
                hw,
                1,
            );
        }
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
    profile::time(profile::Op::Attention, 4 * sh.flops(), || {
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
        let (sw, qs, ks, hw) = (s as isize, qw as isize, kw as isize, hd as isize);
        for (r0, r1, kend) in sh.blocks() {
            let rows = r1 - r0;
            let (p, ds) = (&p[r0 * s..r1 * s], &mut ds[r0 * s..r1 * s]);
            let d_o = &dout[r0 * qw + h * hd..];
            // dP = dO_h·V_khᵀ over the block's keys (into ds), dV_kh += Pᵀ·dO_h
            T::gemm(
                rows,
                hd,
                kend,
                T::one(),
                d_o,
                qs,
                1,
                &v[kh..],
                1,
                ks,
                T::zero(),
                ds,
                sw,
                1,
            );
            T::gemm(
                kend,
                rows,
                hd,
                T::one(),
                p,
                1,
                sw,
                d_o,
                qs,
                1,
                T::one(),
                dv,
                hw,
                1,
            );
            // Softmax backward: dS_j = scale · p_j (dP_j − Σ p·dP), 0 where masked (p = 0).
            for (pr, dr) in p.chunks(s).zip(ds.chunks_mut(s)) {
                let (pr, dr) = (&pr[..kend], &mut dr[..kend]);
                let dot: T = pr.iter().zip(dr.iter()).map(|(&a, &b)| a * b).sum();
                for (d, &pj) in dr.iter_mut().zip(pr) {
                    *d = scale * pj * (*d - dot);
                }
            }
            // dQ_h = dS·K_kh, dK_kh += dSᵀ·Q_h
            let dq = &mut dq[r0 * hd..r1 * hd];
            let qh = &q[r0 * qw + h * hd..];
            T::gemm(
                rows,
                kend,
                hd,
                T::one(),
                ds,
                sw,
                1,
                &k[kh..],
                ks,
                1,
                T::zero(),
                dq,
                hw,
                1,
            );
            T::gemm(
                kend,
                rows,
                hd,
                T::one(),
                ds,
                1,
                sw,
                qh,
                qs,
                1,
                T::one(),
                dk,
                hw,
                1,
            );
        }
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
