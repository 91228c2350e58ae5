//! The reference's attention (per head, causal row blocks through the GEMM) against a
//! plain loop over heads, rows and keys, in f64: more rows than one block, a KV cache
//! (more keys than queries) and grouped KV heads.

use edge_llm::reference::ops::{attention_backward, attention_forward, AttnShape};
use edge_llm::tolerance::Tol;

/// Both compute the same sums in different orders in f64: |x − y| ≤ 1e-12·(|x| + |y|) +
/// 1e-14 (values of order 1, sums of a few hundred terms; a misplaced block is off by
/// the order of the values).
const ATTN_TOL: Tol<f64> = Tol::new(1e-12, 1e-14);

fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f64 / 500.0 - 1.0) * 1.5)
        .collect()
}

/// The plain loops: out, probs, and (dq, dk, dv) for dout.
#[allow(clippy::type_complexity)]
fn oracle(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], sh: AttnShape) -> [Vec<f64>; 5] {
    let (t, s, hd) = (sh.t, sh.s, sh.head_dim);
    let (qw, kw, group) = (
        sh.n_heads * hd,
        sh.n_kv_heads * hd,
        sh.n_heads / sh.n_kv_heads,
    );
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; t * qw];
    let mut probs = vec![0.0; sh.n_heads * t * s];
    let (mut dq, mut dk, mut dv) = (vec![0.0; t * qw], vec![0.0; s * kw], vec![0.0; s * kw]);
    for h in 0..sh.n_heads {
        let kh = (h / group) * hd;
        for i in 0..t {
            let last = s - t + i;
            let qi = &q[i * qw + h * hd..][..hd];
            let sc: Vec<f64> = (0..=last)
                .map(|j| (0..hd).map(|d| qi[d] * k[j * kw + kh + d]).sum::<f64>() * scale)
                .collect();
            let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|x| x / z).collect();
            let doi = &dout[i * qw + h * hd..][..hd];
            let dp: Vec<f64> = (0..=last)
                .map(|j| (0..hd).map(|d| doi[d] * v[j * kw + kh + d]).sum())
                .collect();
            let dot: f64 = (0..=last).map(|j| p[j] * dp[j]).sum();
            for j in 0..=last {
                probs[(h * t + i) * s + j] = p[j];
                let ds = p[j] * (dp[j] - dot) * scale;
                for d in 0..hd {
                    out[i * qw + h * hd + d] += p[j] * v[j * kw + kh + d];
                    dv[j * kw + kh + d] += p[j] * doi[d];
                    dq[i * qw + h * hd + d] += ds * k[j * kw + kh + d];
                    dk[j * kw + kh + d] += ds * qi[d];
                }
            }
        }
    }
    [out, probs, dq, dk, dv]
}

#[test]
fn blocked_attention_matches_the_plain_loops() {
    for (t, s, n_heads, n_kv_heads, head_dim) in [
        (150, 150, 4, 2, 8),
        (70, 200, 3, 1, 16),
        (1, 9, 2, 2, 4),
        (64, 64, 2, 1, 8),
        (65, 65, 2, 2, 8),
    ] {
        let sh = AttnShape {
            t,
            s,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let (q, k, v) = (values(t * qw, 1), values(s * kw, 2), values(s * kw, 3));
        let dout = values(t * qw, 4);
        let want = oracle(&q, &k, &v, &dout, sh);
        let (out, probs) = attention_forward(&q, &k, &v, sh);
        let (dq, dk, dv) = attention_backward(&dout, &q, &k, &v, &probs, sh);
        for (name, got, want) in [
            ("out", &out, &want[0]),
            ("probs", &probs, &want[1]),
            ("dq", &dq, &want[2]),
            ("dk", &dk, &want[3]),
            ("dv", &dv, &want[4]),
        ] {
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (&x, &y)) in got.iter().zip(want.iter()).enumerate() {
                assert!(ATTN_TOL.close(x, y), "{name}[{i}] t {t} s {s}: {x} vs {y}");
            }
        }
    }
}
