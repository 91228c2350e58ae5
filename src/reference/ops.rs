//! Forward/backward pairs of every op of the LLaMA block, on row-major slices.
//!
//! Conventions: activations are `[rows][cols]`; a weight is `[out][in]` so a linear layer
//! is y = x·Wᵀ. Backward functions ADD into their gradient outputs (`d*`), so gradients
//! from several uses (residual branches, tied embeddings) accumulate without copies.

pub use super::attention::{attention_backward, attention_forward, AttnShape};
use super::Real;
use crate::cpu::{par, profile};
use std::sync::{Arc, Mutex};

/// Elements per task of the elementwise ops split over threads.
const ELEMENTWISE_CHUNK: usize = 1 << 14;
use crate::model::RopeStyle;

/// y[m×n] = x[m×k] · w[n×k]ᵀ (a linear layer without bias; `w` is `[out][in]`).
pub fn matmul_nt<T: Real>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    crate::cpu::profile::time(
        crate::cpu::profile::Op::MatmulNt,
        2 * (m * k * n) as u64,
        || {
            let mut y = vec![T::zero(); m * n];
            T::gemm(
                m,
                k,
                n,
                T::one(),
                x,
                k as isize,
                1,
                w,
                1,
                k as isize,
                T::zero(),
                &mut y,
                n as isize,
                1,
            );
            y
        },
    )
}

/// dx[m×k] += dy[m×n] · w[n×k] (the input gradient of [`matmul_nt`]).
pub fn matmul_nn_acc<T: Real>(dy: &[T], w: &[T], m: usize, k: usize, n: usize, dx: &mut [T]) {
    crate::cpu::profile::time(
        crate::cpu::profile::Op::MatmulNnAcc,
        2 * (m * k * n) as u64,
        || {
            T::gemm(
                m,
                n,
                k,
                T::one(),
                dy,
                n as isize,
                1,
                w,
                k as isize,
                1,
                T::one(),
                dx,
                k as isize,
                1,
            );
        },
    )
}

/// dw[n×k] += dy[m×n]ᵀ · x[m×k] (the weight gradient of [`matmul_nt`]).
pub fn matmul_tn_acc<T: Real>(dy: &[T], x: &[T], m: usize, k: usize, n: usize, dw: &mut [T]) {
    crate::cpu::profile::time(
        crate::cpu::profile::Op::MatmulTnAcc,
        2 * (m * k * n) as u64,
        || {
            T::gemm(
                n,
                m,
                k,
                T::one(),
                dy,
                1,
                n as isize,
                x,
                k as isize,
                1,
                T::one(),
                dw,
                k as isize,
                1,
            );
        },
    )
}

/// Linear layer forward: y = x·Wᵀ.
pub fn linear_forward<T: Real>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    matmul_nt(x, w, m, k, n)
}

/// Linear layer backward: dx += dy·W, and dw += dyᵀ·x when the weight is trained.
pub fn linear_backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: &[T],
    (m, k, n): (usize, usize, usize),
    dx: &mut [T],
    dw: Option<&mut [T]>,
) {
    matmul_nn_acc(dy, w, m, k, n, dx);
    if let Some(dw) = dw {
        matmul_tn_acc(dy, x, m, k, n, dw);
    }
}

/// A LoRA adapter on a linear layer of shape `[n][k]`: y += scale · (drop(x)·Aᵀ)·Bᵀ with
/// A `[r][k]`, B `[n][r]`, scale = α/r.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair<T> {
    pub a: Vec<T>,
    pub b: Vec<T>,
    pub rank: usize,
    pub k: usize,
    pub n: usize,
}

impl<T: Real> LoraPair<T> {
    pub fn zeros(rank: usize, k: usize, n: usize) -> Self {
        Self {
            a: vec![T::zero(); rank * k],
            b: vec![T::zero(); n * rank],
            rank,
            k,
            n,
        }
    }
}

/// LoRA forward: adds scale·(drop(x)·Aᵀ)·Bᵀ into `y` and returns u = drop(x)·Aᵀ `[m][r]`,
/// which the backward pass needs. `mask` is the dropout mask already scaled by 1/(1−p).
pub fn lora_forward<T: Real>(
    x: &[T],
    p: &LoraPair<T>,
    scale: T,
    m: usize,
    mask: Option<&[T]>,
    y: &mut [T],
) -> Vec<T> {
    let (k, n, r) = (p.k, p.n, p.rank);
    let u = match mask {
        Some(mk) => {
            let xd = masked(x, mk);
            matmul_nt(&xd, &p.a, m, k, r)
        }
        None => matmul_nt(x, &p.a, m, k, r),
    };
    lora_gemm(
        m,
        r,
        n,
        scale,
        &u,
        r as isize,
        1,
        &p.b,
        1,
        r as isize,
        T::one(),
        y,
        n as isize,
        1,
    );
    u
}

/// x ⊙ mask (LoRA's dropped-out input), split over threads.
fn masked<T: Real>(x: &[T], mask: &[T]) -> Vec<T> {
    profile::time(profile::Op::Dropout, 0, || {
        let mut out = vec![T::zero(); x.len()];
        par::chunks_mut(&mut out, ELEMENTWISE_CHUNK, |c, part| {
            let o = c * ELEMENTWISE_CHUNK;
            for ((y, &a), &b) in part.iter_mut().zip(&x[o..]).zip(&mask[o..]) {
                *y = a * b;
            }
        });
        out
    })
}

/// [`Real::gemm`] timed as a LoRA product (the profile's "matmul other").
#[allow(clippy::too_many_arguments)]
fn lora_gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: &[T],
    rsa: isize,
    csa: isize,
    b: &[T],
    rsb: isize,
    csb: isize,
    beta: T,
    c: &mut [T],
    rsc: isize,
    csc: isize,
) {
    let flops = 2 * (m * k * n) as u64;
    crate::cpu::profile::time(crate::cpu::profile::Op::MatmulOther, flops, || {
        T::gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    })
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of a 64-bit input.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub use crate::cpu::mask::hash32;

/// Inverted LoRA dropout as a counter-based function: element `i` of a mask is dropped
/// when `hash32(hash32(i) ^ key) < threshold`, kept values are scaled by 1/(1 − p). The
/// GPU evaluates the same function (shaders/lora.wgsl), so a mask is never stored or
/// uploaded: backward recomputes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub key: u32,
    /// round(p·2³²): the drop probability in 32-bit fixed point.
    pub threshold: u32,
    /// 1/(1 − p).
    pub keep_scale: f64,
}

impl Dropout {
    /// The mask of `stream` (e.g. layer·7 + projection) under `seed`; None when p = 0.
    pub fn new(seed: u64, stream: u64, p: f64) -> Option<Self> {
        if p <= 0.0 {
            return None;
        }
        let key = splitmix64(seed ^ splitmix64(stream)) as u32;
        let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        Some(Self {
            key,
            threshold,
            keep_scale: 1.0 / (1.0 - p),
        })
    }

    pub fn keeps(&self, i: u32) -> bool {
        crate::cpu::mask::keeps(self.key, self.threshold, i)
    }

    /// The first `n` mask values: 0 or 1/(1 − p).
    pub fn mask<T: Real>(&self, n: usize) -> Vec<T> {
        // Two integer hashes per element (millions per step): split over threads.
        const CHUNK: usize = 1 << 15;
        profile::time(profile::Op::Dropout, 0, || {
            let mut out = vec![T::zero(); n];
            par::chunks_mut(&mut out, CHUNK, |c, part| {
                T::fill_mask(self, (c * CHUNK) as u32, part);
            });
            out
        })
    }
}

/// LoRA backward: da += (scale·dy·B)ᵀ·drop(x), db += scale·dyᵀ·u, dx += (scale·dy·B·A)⊙mask.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward<T: Real>(
    dy: &[T],
    x: &[T],
    u: &[T],
    p: &LoraPair<T>,
    scale: T,
    m: usize,
    mask: Option<&[T]>,
    dx: &mut [T],
    dp: &mut LoraPair<T>,
) {
    let (k, n, r) = (p.k, p.n, p.rank);
    // db[n×r] += scale · dyᵀ·u
    lora_gemm(
        n,
        m,
        r,
        scale,
        dy,
        1,
        n as isize,
        u,
        r as isize,
        1,
        T::one(),
        &mut dp.b,
        r as isize,
        1,
    );
    // du[m×r] = scale · dy·B
    let mut du = vec![T::zero(); m * r];
    lora_gemm(
        m,
        n,
        r,
        scale,
        dy,
        n as isize,
        1,
        &p.b,
        r as isize,
        1,
        T::zero(),
        &mut du,
        r as isize,
        1,
    );
    match mask {
        Some(mk) => {
            let xd = masked(x, mk);
            matmul_tn_acc(&du, &xd, m, k, r, &mut dp.a);
            let mut dxd = vec![T::zero(); m * k];
            matmul_nn_acc(&du, &p.a, m, k, r, &mut dxd);
            profile::time(profile::Op::Dropout, 0, || {
                par::chunks_mut(dx, ELEMENTWISE_CHUNK, |c, part| {
                    let o = c * ELEMENTWISE_CHUNK;
                    for ((d, &g), &mm) in part.iter_mut().zip(&dxd[o..]).zip(&mk[o..]) {
                        *d = *d + g * mm;
                    }
                });
            });
        }
        None => {
            matmul_tn_acc(&du, x, m, k, r, &mut dp.a);
            matmul_nn_acc(&du, &p.a, m, k, r, dx);
        }
    }
}

/// Embedding gather: row `tokens[i]` of `table` `[vocab][d]`.
pub fn embedding_forward<T: Real>(tokens: &[u32], table: &[T], d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(tokens.len() * d);
    for &t in tokens {
        out.extend_from_slice(&table[t as usize * d..(t as usize + 1) * d]);
    }
    out
}

/// Embedding scatter-add: dtable[tokens[i]] += dout[i].
pub fn embedding_backward<T: Real>(dout: &[T], tokens: &[u32], d: usize, dtable: &mut [T]) {
    for (i, &t) in tokens.iter().enumerate() {
        let row = &mut dtable[t as usize * d..(t as usize + 1) * d];
        for (a, &g) in row.iter_mut().zip(&dout[i * d..(i + 1) * d]) {
            *a = *a + g;
        }
    }
}

/// RMSNorm: y = x · r · w with r = 1/√(mean(x²) + eps), per row. Returns (y, r per row).
pub fn rmsnorm_forward<T: Real>(x: &[T], w: &[T], m: usize, d: usize, eps: T) -> (Vec<T>, Vec<T>) {
    profile::time(profile::Op::Elementwise, 0, || {
        let mut y = vec![T::zero(); m * d];
        let mut rstd = vec![T::zero(); m];
        let dn = T::from_f64(d as f64);
        par::rows2(&mut y, d, &mut rstd, 1, |i, yr, r| {
            let row = &x[i * d..(i + 1) * d];
            let ms = row.iter().map(|&v| v * v).sum::<T>() / dn;
            r[0] = T::one() / (ms + eps).sqrt();
            for ((o, &v), &g) in yr.iter_mut().zip(row).zip(w) {
                *o = v * r[0] * g;
            }
        });
        (y, rstd)
    })
}

/// RMSNorm backward: dx += r·w⊙dy − x·r³/d·Σ(dy⊙w⊙x); dw += Σ_rows dy⊙x·r.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    m: usize,
    d: usize,
    dx: &mut [T],
    dw: Option<&mut [T]>,
) {
    profile::time(profile::Op::Elementwise, 0, || {
        let dn = T::from_f64(d as f64);
        par::rows(&mut dx[..m * d], d, |i, dxr| {
            let (xr, gr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let r = rstd[i];
            let dot: T = (0..d).map(|j| gr[j] * w[j] * xr[j]).sum();
            let c = r * r * r * dot / dn;
            for j in 0..d {
                dxr[j] = dxr[j] + r * w[j] * gr[j] - xr[j] * c;
            }
        });
        if let Some(dw) = dw {
            for i in 0..m {
                for j in 0..d {
                    dw[j] = dw[j] + dy[i * d + j] * x[i * d + j] * rstd[i];
                }
            }
        }
    })
}

/// (sin, cos) of sign·pos·θ^(−2i/head_dim) for positions below `n` and i < head_dim/2,
/// by position: the f64 values RoPE used to recompute per row of every call (a sin_cos and
/// a powf per pair, about a million per training step), made once per (θ, head_dim, sign)
/// and regrown, doubling, when a longer sequence comes.
fn rope_table(theta: f64, head_dim: usize, sign: f64, n: usize) -> Arc<Vec<(f64, f64)>> {
    type Tables = Vec<((u64, usize, u64), Arc<Vec<(f64, f64)>>)>;
    static TABLES: Mutex<Tables> = Mutex::new(Vec::new());
    let key = (theta.to_bits(), head_dim, sign.to_bits());
    let half = head_dim / 2;
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let have = tables.iter().position(|(k, _)| *k == key);
    if let Some(i) = have {
        if tables[i].1.len() >= n * half {
            return tables[i].1.clone();
        }
    }
    let len = have.map_or(0, |i| tables[i].1.len() / half.max(1));
    let positions = n.max(2 * len).max(256);
    let freqs: Vec<f64> = (0..half)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let table: Arc<Vec<(f64, f64)>> = Arc::new(
        (0..positions)
            .flat_map(|pos| freqs.iter().map(move |f| (sign * pos as f64 * f).sin_cos()))
            .collect(),
    );
    match have {
        Some(i) => tables[i].1 = table.clone(),
        None => tables.push((key, table.clone())),
    }
    table
}

/// The index pairs RoPE rotates inside a head, and the frequency index of each pair.
fn rope_pairs(style: RopeStyle, head_dim: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let half = head_dim / 2;
    (0..half).map(move |i| match style {
        RopeStyle::Interleaved => (2 * i, 2 * i + 1, i),
        RopeStyle::HalfSplit => (i, i + half, i),
    })
}

/// Rotates each head of each row in place by angle pos·θ^(−2i/head_dim); `sign` −1 rotates
/// back, which is the backward pass (a rotation's transpose is its inverse).
#[allow(clippy::too_many_arguments)]
fn rope_apply<T: Real>(
    x: &mut [T],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
    sign: f64,
) {
    profile::time(profile::Op::Elementwise, 0, || {
        let (width, half) = (n_heads * head_dim, head_dim / 2);
        let table = rope_table(theta, head_dim, sign, pos0 + m);
        par::rows(&mut x[..m * width], width, |row, xr| {
            let angles = &table[(pos0 + row) * half..(pos0 + row + 1) * half];
            for (a, b, i) in rope_pairs(style, head_dim) {
                let (s, c) = (T::from_f64(angles[i].0), T::from_f64(angles[i].1));
                for h in 0..n_heads {
                    let base = h * head_dim;
                    let (x0, x1) = (xr[base + a], xr[base + b]);
                    xr[base + a] = x0 * c - x1 * s;
                    xr[base + b] = x0 * s + x1 * c;
                }
            }
        });
    })
}

/// RoPE forward in place on `[m][n_heads·head_dim]`, rows at positions pos0, pos0+1, ….
pub fn rope_forward<T: Real>(
    x: &mut [T],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
) {
    rope_apply(x, m, n_heads, head_dim, pos0, theta, style, 1.0);
}

/// RoPE backward in place: rotates the gradient back.
pub fn rope_backward<T: Real>(
    dx: &mut [T],
    m: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f64,
    style: RopeStyle,
) {
    rope_apply(dx, m, n_heads, head_dim, pos0, theta, style, -1.0);
}

/// SwiGLU: h = silu(gate) ⊙ up, silu(g) = g·σ(g).
pub fn swiglu_forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    profile::time(profile::Op::Elementwise, 0, || {
        let mut h = vec![T::zero(); gate.len()];
        par::chunks_mut(&mut h, ELEMENTWISE_CHUNK, |c, part| {
            let o = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + part.len();
            T::swiglu(&gate[o.clone()], &up[o], part);
        });
        h
    })
}

/// SwiGLU backward: (dgate, dup).
pub fn swiglu_backward<T: Real>(dh: &[T], gate: &[T], up: &[T]) -> (Vec<T>, Vec<T>) {
    profile::time(profile::Op::Elementwise, 0, || {
        let mut dg = vec![T::zero(); dh.len()];
        let mut du = vec![T::zero(); dh.len()];
        let w = ELEMENTWISE_CHUNK;
        par::rows2(&mut dg, w, &mut du, w, |c, dgc, duc| {
            let o = c * w..c * w + dgc.len();
            T::swiglu_backward(&dh[o.clone()], &gate[o.clone()], &up[o], dgc, duc);
        });
        (dg, du)
    })
}

/// log-softmax of one row.
pub fn log_softmax<T: Real>(row: &[T]) -> Vec<T> {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let lse = row.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
    row.iter().map(|&v| v - lse).collect()
}

/// Mean softmax cross-entropy over the rows whose target is `Some`. `logits` `[m][vocab]`.
/// Returns (loss, number of counted rows); a batch with no target gives (0, 0).
pub fn cross_entropy_forward<T: Real>(
    logits: &[T],
    targets: &[Option<u32>],
    vocab: usize,
) -> (T, usize) {
    crate::cpu::profile::time(crate::cpu::profile::Op::Loss, 0, || {
        let mut total = T::zero();
        let mut n = 0;
        for (i, tg) in targets.iter().enumerate() {
            if let Some(tg) = *tg {
                let row = &logits[i * vocab..(i + 1) * vocab];
                let max = row.iter().copied().fold(T::neg_infinity(), T::max);
                let lse = row.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
                total = total + lse - row[tg as usize];
                n += 1;
            }
        }
        if n == 0 {
            (T::zero(), 0)
        } else {
            (total / T::from_f64(n as f64), n)
        }
    })
}

/// Cross-entropy backward: dlogits = (softmax − onehot)·dloss/n on counted rows, 0 elsewhere.
pub fn cross_entropy_backward<T: Real>(
    logits: &[T],
    targets: &[Option<u32>],
    vocab: usize,
    dloss: T,
) -> Vec<T> {
    crate::cpu::profile::time(crate::cpu::profile::Op::Loss, 0, || {
        let n = targets.iter().filter(|t| t.is_some()).count();
        let mut d = vec![T::zero(); logits.len()];
        if n == 0 {
            return d;
        }
        let g = dloss / T::from_f64(n as f64);
        for (i, tg) in targets.iter().enumerate() {
            if let Some(tg) = *tg {
                let row = &logits[i * vocab..(i + 1) * vocab];
                let lp = log_softmax(row);
                let drow = &mut d[i * vocab..(i + 1) * vocab];
                for (dv, l) in drow.iter_mut().zip(lp) {
                    *dv = l.exp() * g;
                }
                drow[tg as usize] = drow[tg as usize] - g;
            }
        }
        d
    })
}
