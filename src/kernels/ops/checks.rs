//! Every op kernel against its CPU twin, on shapes that do not divide the workgroup or tile
//! sizes (1 row, 1 column, odd sizes) and the head layout of the real model. The bodies run
//! natively (tests/gpu_ops.rs) and can run in a browser unchanged: each returns an `Err`
//! naming the kernel, the shape and the worst error on a mismatch.
//!
//! Tolerance rule, as for every kernel: |gpu − cpu| ≤ max(rel·(|gpu| + |cpu|), abs)
//! ([`Tol::close`]).

use crate::kernels::context::GpuContext;
use crate::model::RopeStyle;
use crate::reference::ops::{self, AttnShape, Dropout, LoraPair};
use crate::reference::optim;
use crate::tolerance::{compare, Tol};
use crate::{Error, Result};

use super::{adamw, attention, cross_entropy, embedding, linear, lora, rmsnorm, rope, swiglu};

/// Sums of up to a few thousand f32 products in [-1, 1) in a different order than the CPU
/// (16-wide tiles vs. matrixmultiply's blocks): rounding grows like √k·ε·|partial sums|,
/// about 1e-4 at k ≈ 1500 when the result cancels to near zero. A wrong index or a missed
/// tile gives errors of order 0.1 to 10.
pub const MATMUL_TOL: Tol = Tol::new(1e-4, 1e-3);
/// Per-element ops (swiglu, rope with a CPU-built table, gathers): a few ulps.
pub const ELEMENTWISE_TOL: Tol = Tol::new(1e-5, 1e-6);
/// One reduction over a row (rmsnorm) or a column (its weight gradient, embedding
/// gradient): a different summation order over at most a few hundred terms.
pub const REDUCTION_TOL: Tol = Tol::new(1e-4, 1e-5);
/// Attention: dot products of head_dim terms, a softmax with online rescaling (exp of
/// differences computed in another order) and sums over up to s keys.
pub const ATTENTION_TOL: Tol = Tol::new(2e-4, 2e-5);
/// Chunked cross-entropy: logits are sums over d, the log-sum-exp is merged across chunks
/// with rescaling, and d_hidden sums over the whole vocabulary.
pub const CROSS_ENTROPY_TOL: Tol = Tol::new(2e-4, 1e-4);
/// AdamW: one update per element, but the step divides by √v̂ + eps, which amplifies the
/// f32 rounding of the clipping factor and of v when v is tiny.
pub const ADAMW_TOL: Tol = Tol::new(1e-4, 1e-6);

/// Deterministic values in [-1, 1) (a small LCG: no RNG state needed in the browser).
pub fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs every check below; the first failure is returned.
pub async fn all(ctx: &GpuContext) -> Result<()> {
    linear_backward(ctx).await?;
    rmsnorm(ctx).await?;
    rope(ctx).await?;
    swiglu(ctx).await?;
    embedding(ctx).await?;
    attention(ctx).await?;
    lora(ctx).await?;
    cross_entropy(ctx).await?;
    adamw(ctx).await?;
    Ok(())
}

/// matmul_nn and matmul_tn against matmul_nn_acc / matmul_tn_acc, accumulating into
/// non-zero gradients.
pub async fn linear_backward(ctx: &GpuContext) -> Result<()> {
    let shapes = [
        (1, 1, 1),
        (1, 7, 1),
        (3, 1, 5),
        (17, 15, 33),
        (33, 70, 17),
        (5, 576, 192),
    ];
    for (seed, &(m, k, n)) in shapes.iter().enumerate() {
        let seed = seed as u32 * 10;
        let dy = values(m * n, seed);
        let w = values(n * k, seed + 1);
        let x = values(m * k, seed + 2);
        let dx0 = values(m * k, seed + 3);
        let dw0 = values(n * k, seed + 4);
        let mut want = dx0.clone();
        ops::matmul_nn_acc(&dy, &w, m, k, n, &mut want);
        let got = linear::matmul_nn(ctx, &dy, &w, &dx0, (m, k, n)).await?;
        compare(
            &format!("matmul_nn m={m} k={k} n={n}"),
            &got,
            &want,
            MATMUL_TOL,
        )?;
        let mut want = dw0.clone();
        ops::matmul_tn_acc(&dy, &x, m, k, n, &mut want);
        let got = linear::matmul_tn(ctx, &dy, &x, &dw0, (m, k, n)).await?;
        compare(
            &format!("matmul_tn m={m} k={k} n={n}"),
            &got,
            &want,
            MATMUL_TOL,
        )?;
    }
    Ok(())
}

/// rmsnorm forward (y, rstd) and backward (dx, dw accumulated) against the twins; m = 70
/// spans three dw chunks of 32 rows, d = 300 two column blocks of 256.
pub async fn rmsnorm(ctx: &GpuContext) -> Result<()> {
    for (seed, &(m, d)) in [(1, 1), (1, 7), (3, 5), (70, 300), (5, 576)]
        .iter()
        .enumerate()
    {
        let seed = 100 + seed as u32 * 10;
        let eps = 1e-5f32;
        let x = values(m * d, seed);
        let w = values(d, seed + 1);
        let dy = values(m * d, seed + 2);
        let dx0 = values(m * d, seed + 3);
        let dw0 = values(d, seed + 4);
        let (want_y, want_r) = ops::rmsnorm_forward(&x, &w, m, d, eps);
        let (y, r) = rmsnorm::rmsnorm_forward(ctx, &x, &w, m, d, eps).await?;
        compare(
            &format!("rmsnorm_forward y m={m} d={d}"),
            &y,
            &want_y,
            REDUCTION_TOL,
        )?;
        compare(
            &format!("rmsnorm_forward rstd m={m} d={d}"),
            &r,
            &want_r,
            REDUCTION_TOL,
        )?;
        let (mut want_dx, mut want_dw) = (dx0.clone(), dw0.clone());
        ops::rmsnorm_backward(&dy, &x, &w, &want_r, m, d, &mut want_dx, Some(&mut want_dw));
        let (dx, dw) =
            rmsnorm::rmsnorm_backward(ctx, &dy, &x, &w, &want_r, m, d, &dx0, &dw0).await?;
        compare(
            &format!("rmsnorm_backward dx m={m} d={d}"),
            &dx,
            &want_dx,
            REDUCTION_TOL,
        )?;
        compare(
            &format!("rmsnorm_backward dw m={m} d={d}"),
            &dw,
            &want_dw,
            REDUCTION_TOL,
        )?;
    }
    Ok(())
}

/// rope forward/backward, both pair styles, with pos0 > 0, the real model's head_dim 64 and
/// theta, and tiny heads.
pub async fn rope(ctx: &GpuContext) -> Result<()> {
    let shapes = [
        (1, 1, 2, 0),
        (3, 2, 4, 5),
        (7, 9, 64, 0),
        (5, 3, 64, 1000),
        (1, 4, 64, 2047),
    ];
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        for (seed, &(m, heads, hd, pos0)) in shapes.iter().enumerate() {
            let theta = 100_000.0;
            let x = values(m * heads * hd, 200 + seed as u32);
            let what = format!("rope {style:?} m={m} heads={heads} head_dim={hd} pos0={pos0}");
            let mut want = x.clone();
            ops::rope_forward(&mut want, m, heads, hd, pos0, theta, style);
            let got = rope::rope_forward(ctx, &x, m, heads, hd, pos0, theta, style).await?;
            compare(&format!("{what} forward"), &got, &want, ELEMENTWISE_TOL)?;
            let mut want = x.clone();
            ops::rope_backward(&mut want, m, heads, hd, pos0, theta, style);
            let got = rope::rope_backward(ctx, &x, m, heads, hd, pos0, theta, style).await?;
            compare(&format!("{what} backward"), &got, &want, ELEMENTWISE_TOL)?;
        }
    }
    Ok(())
}

/// swiglu forward/backward on sizes around the workgroup size, with gates up to ±8.
pub async fn swiglu(ctx: &GpuContext) -> Result<()> {
    for (seed, &n) in [1usize, 7, 255, 257, 1536 * 3 + 1].iter().enumerate() {
        let seed = 300 + seed as u32 * 10;
        let gate: Vec<f32> = values(n, seed).iter().map(|v| 8.0 * v).collect();
        let up = values(n, seed + 1);
        let dh = values(n, seed + 2);
        let got = swiglu::swiglu_forward(ctx, &gate, &up).await?;
        compare(
            &format!("swiglu_forward n={n}"),
            &got,
            &ops::swiglu_forward(&gate, &up),
            ELEMENTWISE_TOL,
        )?;
        let (dg, du) = swiglu::swiglu_backward(ctx, &dh, &gate, &up).await?;
        let (want_dg, want_du) = ops::swiglu_backward(&dh, &gate, &up);
        compare(
            &format!("swiglu_backward dgate n={n}"),
            &dg,
            &want_dg,
            ELEMENTWISE_TOL,
        )?;
        compare(
            &format!("swiglu_backward dup n={n}"),
            &du,
            &want_du,
            ELEMENTWISE_TOL,
        )?;
    }
    Ok(())
}

/// embedding gather and gradient with repeated tokens (the gradient sums them), one row,
/// one column, and a width over the workgroup size.
pub async fn embedding(ctx: &GpuContext) -> Result<()> {
    let cases: [(usize, usize, &[u32]); 4] = [
        (1, 1, &[0]),
        (5, 3, &[4, 4, 0, 2, 4, 0]),
        (11, 300, &[10, 3, 3, 7, 0, 10, 10, 1]),
        (50, 17, &[49]),
    ];
    for (seed, &(vocab, d, tokens)) in cases.iter().enumerate() {
        let seed = 400 + seed as u32 * 10;
        let table = values(vocab * d, seed);
        let dout = values(tokens.len() * d, seed + 1);
        let dtable0 = values(vocab * d, seed + 2);
        let what = format!("vocab={vocab} d={d} tokens={tokens:?}");
        let got = embedding::embedding_forward(ctx, tokens, &table, d).await?;
        compare(
            &format!("embedding_forward {what}"),
            &got,
            &ops::embedding_forward(tokens, &table, d),
            ELEMENTWISE_TOL,
        )?;
        let mut want = dtable0.clone();
        ops::embedding_backward(&dout, tokens, d, &mut want);
        let got = embedding::embedding_backward(ctx, &dout, tokens, d, &dtable0).await?;
        compare(
            &format!("embedding_backward {what}"),
            &got,
            &want,
            REDUCTION_TOL,
        )?;
    }
    if embedding::embedding_forward(ctx, &[3], &[0.0; 6], 2)
        .await
        .is_ok()
    {
        return Err(Error::Gpu(
            "embedding_forward accepted token 3 of a 3-row table".into(),
        ));
    }
    Ok(())
}

/// attention forward/backward: GQA 4/2 and 9/3 (the real model) with head_dim 64, a cache
/// shape (t < s) and a single generated row, more than one 64-key block, odd head_dim.
pub async fn attention(ctx: &GpuContext) -> Result<()> {
    let shapes = [
        (1, 1, 1, 1, 1),
        (5, 5, 4, 2, 64),
        (7, 7, 9, 3, 64),
        (3, 10, 9, 3, 64),
        (1, 13, 4, 2, 64),
        (70, 70, 4, 2, 16),
        (67, 131, 2, 1, 3),
    ];
    for (seed, &(t, s, n_heads, n_kv_heads, head_dim)) in shapes.iter().enumerate() {
        let seed = 500 + seed as u32 * 10;
        let sh = AttnShape {
            t,
            s,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        // Scaled so the softmax is far from uniform (scores up to about ±6).
        let q: Vec<f32> = values(t * n_heads * head_dim, seed)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let k: Vec<f32> = values(s * n_kv_heads * head_dim, seed + 1)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let v = values(s * n_kv_heads * head_dim, seed + 2);
        let dout = values(t * n_heads * head_dim, seed + 3);
        let what = format!("t={t} s={s} H={n_heads} Hkv={n_kv_heads} hd={head_dim}");
        let (want_out, probs) = ops::attention_forward(&q, &k, &v, sh);
        let (out, lse) = attention::attention_forward(ctx, &q, &k, &v, sh).await?;
        compare(
            &format!("attention_forward out {what}"),
            &out,
            &want_out,
            ATTENTION_TOL,
        )?;
        let (want_dq, want_dk, want_dv) = ops::attention_backward(&dout, &q, &k, &v, &probs, sh);
        let (dq, dk, dv) =
            attention::attention_backward(ctx, &dout, &q, &k, &v, &out, &lse, sh).await?;
        compare(
            &format!("attention_backward dq {what}"),
            &dq,
            &want_dq,
            ATTENTION_TOL,
        )?;
        compare(
            &format!("attention_backward dk {what}"),
            &dk,
            &want_dk,
            ATTENTION_TOL,
        )?;
        compare(
            &format!("attention_backward dv {what}"),
            &dv,
            &want_dv,
            ATTENTION_TOL,
        )?;
    }
    Ok(())
}

/// LoRA forward/backward with and without a dropout mask, rank 1 and 8, accumulating into
/// non-zero y, dx, dA, dB.
pub async fn lora(ctx: &GpuContext) -> Result<()> {
    for (seed, &(m, k, n, rank)) in [
        (1, 1, 1, 1),
        (5, 17, 33, 8),
        (19, 576, 192, 8),
        (3, 64, 7, 1),
    ]
    .iter()
    .enumerate()
    {
        for dropout in [false, true] {
            let seed = 600 + seed as u32 * 20 + dropout as u32 * 10;
            let scale = 2.0f32;
            let pair = LoraPair {
                a: values(rank * k, seed),
                b: values(n * rank, seed + 1),
                rank,
                k,
                n,
            };
            let x = values(m * k, seed + 2);
            let y0 = values(m * n, seed + 3);
            let dy = values(m * n, seed + 4);
            let dx0 = values(m * k, seed + 5);
            let dp0 = LoraPair {
                a: values(rank * k, seed + 6),
                b: values(n * rank, seed + 7),
                rank,
                k,
                n,
            };
            // Inverted dropout with p = 0.25: kept values scaled by 4/3.
            let drop = Dropout::new(seed as u64, 3, 0.25).filter(|_| dropout);
            let mask: Option<Vec<f32>> = drop.map(|d| d.mask(m * k));
            let mask = mask.as_deref();
            let what = format!("m={m} k={k} n={n} rank={rank} dropout={dropout}");
            let mut want_y = y0.clone();
            let want_u = ops::lora_forward(&x, &pair, scale, m, mask, &mut want_y);
            let (y, u) = lora::lora_forward(ctx, &x, &pair, scale, m, drop, &y0).await?;
            compare(&format!("lora_forward y {what}"), &y, &want_y, MATMUL_TOL)?;
            compare(&format!("lora_forward u {what}"), &u, &want_u, MATMUL_TOL)?;
            let (mut want_dx, mut want_dp) = (dx0.clone(), dp0.clone());
            ops::lora_backward(
                &dy,
                &x,
                &want_u,
                &pair,
                scale,
                m,
                mask,
                &mut want_dx,
                &mut want_dp,
            );
            let (dx, da, db) =
                lora::lora_backward(ctx, &dy, &x, &want_u, &pair, scale, m, drop, &dx0, &dp0)
                    .await?;
            compare(
                &format!("lora_backward dx {what}"),
                &dx,
                &want_dx,
                MATMUL_TOL,
            )?;
            compare(
                &format!("lora_backward dA {what}"),
                &da,
                &want_dp.a,
                MATMUL_TOL,
            )?;
            compare(
                &format!("lora_backward dB {what}"),
                &db,
                &want_dp.b,
                MATMUL_TOL,
            )?;
        }
    }
    Ok(())
}

/// How [`cross_entropy_case`] stores the head: dense f32, or quantized codes read in place
/// (groups of 32, as the trainer holds a GGUF Q8_0 / Q4_x head after its lossless repack).
#[derive(Clone, Copy, Debug)]
pub enum HeadFormat {
    Dense,
    Quant { bits: u32, symmetric: bool },
}

/// The head formats every cross-entropy case runs in: f32, Q8_0's and Q4_1's layouts.
pub const HEAD_FORMATS: [HeadFormat; 3] = [
    HeadFormat::Dense,
    HeadFormat::Quant {
        bits: 8,
        symmetric: true,
    },
    HeadFormat::Quant {
        bits: 4,
        symmetric: false,
    },
];

/// One fused cross-entropy case in every [`HEAD_FORMATS`] and both matmul paths, against
/// linear_forward + cross_entropy_forward/backward on the full logits of the head's
/// dequantized values: per-row loss, mean and d_hidden.
pub async fn cross_entropy_case(
    ctx: &GpuContext,
    shape: (usize, usize, usize),
    targets: &[Option<u32>],
    cfg: cross_entropy::CeConfig,
    seed: u32,
) -> Result<()> {
    for format in HEAD_FORMATS {
        cross_entropy_case_in(ctx, shape, targets, cfg, format, seed).await?;
    }
    Ok(())
}

/// [`cross_entropy_case`] for one head format.
pub async fn cross_entropy_case_in(
    ctx: &GpuContext,
    (t, d, vocab): (usize, usize, usize),
    targets: &[Option<u32>],
    cfg: cross_entropy::CeConfig,
    format: HeadFormat,
    seed: u32,
) -> Result<()> {
    use crate::formats::quant;
    use crate::kernels::qmatmul::{Path, QMatmul};
    use cross_entropy::{upload_head, Head, HeadSource};
    let hidden: Vec<f32> = values(t * d, seed).iter().map(|x| 2.0 * x).collect();
    let raw = values(vocab * d, seed + 1);
    let rows = cross_entropy::head_chunk_rows(ctx, t, d, cfg)?;
    let (chunks, e) = match format {
        HeadFormat::Dense => (
            upload_head(ctx, HeadSource::Dense(&raw), (vocab, d), rows)?,
            raw,
        ),
        HeadFormat::Quant { bits, symmetric } => {
            let q = quant::quantize(&raw, vocab, d, bits, quant::BLOCK, symmetric)?;
            let chunks = upload_head(ctx, HeadSource::Quant(&q), (vocab, d), rows)?;
            (chunks, q.dequantize())
        }
    };
    let head = Head {
        chunks: &chunks,
        vocab,
        d,
    };
    let logits = ops::linear_forward(&hidden, &e, t, d, vocab);
    let (want_mean, want_n) = ops::cross_entropy_forward(&logits, targets, vocab);
    let want_rows: Vec<f32> = (0..t)
        .map(|i| {
            ops::cross_entropy_forward(
                &logits[i * vocab..(i + 1) * vocab],
                &targets[i..i + 1],
                vocab,
            )
            .0
        })
        .collect();
    let dloss = 1.5f32;
    let dlogits = ops::cross_entropy_backward(&logits, targets, vocab, dloss);
    let mut want_dh = vec![0.0f32; t * d];
    ops::matmul_nn_acc(&dlogits, &e, t, d, vocab, &mut want_dh);
    let paths = [
        QMatmul::new(ctx),
        QMatmul {
            path: Path::Gemv,
            ..QMatmul::new(ctx)
        },
    ];
    for mm in paths {
        let what = format!(
            "t={t} d={d} vocab={vocab} {format:?} {} chunks of {rows} rows ({:?})",
            chunks.len(),
            mm.path
        );
        let fwd = cross_entropy::cross_entropy_forward(ctx, &mm, &hidden, &head, targets).await?;
        compare(
            &format!("cross_entropy_forward loss rows {what}"),
            &fwd.loss,
            &want_rows,
            CROSS_ENTROPY_TOL,
        )?;
        compare(
            &format!("cross_entropy_forward mean {what}"),
            &[fwd.mean],
            &[want_mean],
            CROSS_ENTROPY_TOL,
        )?;
        if fwd.counted != want_n {
            return Err(Error::Gpu(format!(
                "cross_entropy_forward {what}: {} counted rows, twin {want_n}",
                fwd.counted
            )));
        }
        let dh = cross_entropy::cross_entropy_backward(
            ctx,
            &mm,
            &hidden,
            &head,
            (targets, &fwd.lse),
            dloss,
        )
        .await?;
        compare(
            &format!("cross_entropy_backward d_hidden {what}"),
            &dh,
            &want_dh,
            CROSS_ENTROPY_TOL,
        )?;
    }
    Ok(())
}

/// Fused cross-entropy: a vocabulary not divisible by the chunk, ignored rows, a head in
/// chunks bounded by an explicit buffer size below the binding limit, one row, one chunk
/// covering all, and a batch with no target at all; every head format.
pub async fn cross_entropy(ctx: &GpuContext) -> Result<()> {
    use cross_entropy::CeConfig;
    let targets = [
        Some(3),
        None,
        Some(999),
        Some(0),
        Some(500),
        None,
        Some(311),
    ];
    let split = CeConfig {
        chunk: 4096,
        max_part_bytes: Some(300 * 24 * 4),
    }; // chunks of 300 rows
    cross_entropy_case(ctx, (7, 24, 1000), &targets, split, 700).await?;
    let narrow = CeConfig {
        chunk: 96,
        max_part_bytes: None,
    };
    cross_entropy_case(ctx, (7, 24, 1000), &targets, narrow, 705).await?;
    let whole = CeConfig {
        chunk: 4096,
        max_part_bytes: None,
    };
    cross_entropy_case(ctx, (7, 24, 1000), &targets, whole, 710).await?;
    cross_entropy_case(
        ctx,
        (1, 1, 5),
        &[Some(4)],
        CeConfig {
            chunk: 2,
            max_part_bytes: None,
        },
        720,
    )
    .await?;
    cross_entropy_case(
        ctx,
        (3, 64, 257),
        &[None, None, None],
        CeConfig {
            chunk: 64,
            max_part_bytes: None,
        },
        730,
    )
    .await?;
    cross_entropy_case(
        ctx,
        (33, 40, 777),
        &[Some(776); 33],
        CeConfig {
            chunk: 256,
            max_part_bytes: Some(100 * 40 * 4),
        },
        740,
    )
    .await?;
    Ok(())
}

/// The squared norm over several buffers (sizes around the 4096-element partial span) and
/// two AdamW steps over three tensors, clipped (the norm is above max_norm) and not.
pub async fn adamw(ctx: &GpuContext) -> Result<()> {
    let slices = [values(1, 800), values(4097, 801), values(9000, 802)];
    let views: Vec<&[f32]> = slices.iter().map(|s| &s[..]).collect();
    let want = optim::sum_squares(&views) as f32;
    let got = super::reduce::sum_squares(ctx, &views).await?;
    compare(
        "sum_squares over 1 + 4097 + 9000",
        &[got],
        &[want],
        REDUCTION_TOL,
    )?;

    let cfg = optim::AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    for max_norm in [Some(1.0f32), None] {
        let mut tensors: Vec<adamw::Tensor> = [1usize, 257, 3000]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let seed = 810 + i as u32 * 10;
                adamw::Tensor {
                    param: values(n, seed),
                    grad: values(n, seed + 1),
                    m: values(n, seed + 2).iter().map(|x| 0.1 * x).collect(),
                    v: values(n, seed + 3).iter().map(|x| 0.01 * x.abs()).collect(),
                }
            })
            .collect();
        for t in 1..=2u64 {
            let mut want = tensors.clone();
            let want_norm = {
                let mut grads: Vec<&mut [f32]> = want.iter_mut().map(|x| &mut x.grad[..]).collect();
                match max_norm {
                    Some(mn) => optim::clip_grad_norm(&mut grads, mn as f64),
                    None => {
                        optim::sum_squares(&grads.iter().map(|g| &**g).collect::<Vec<_>>()).sqrt()
                    }
                }
            };
            for x in want.iter_mut() {
                optim::adamw_step(&cfg, t, &mut x.param, &x.grad, &mut x.m, &mut x.v);
            }
            let (got, norm) = adamw::adamw_step(ctx, &tensors, &cfg, t, max_norm).await?;
            let what = format!("adamw step {t} max_norm {max_norm:?}");
            compare(
                &format!("{what} norm"),
                &[norm],
                &[want_norm as f32],
                REDUCTION_TOL,
            )?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                compare(
                    &format!("{what} tensor {i} param"),
                    &g.param,
                    &w.param,
                    ADAMW_TOL,
                )?;
                compare(&format!("{what} tensor {i} m"), &g.m, &w.m, ADAMW_TOL)?;
                compare(&format!("{what} tensor {i} v"), &g.v, &w.v, ADAMW_TOL)?;
            }
            // The next step starts from the GPU's state with fresh gradients.
            tensors = got;
            for (i, x) in tensors.iter_mut().enumerate() {
                x.grad = values(x.param.len(), 900 + t as u32 * 10 + i as u32);
            }
        }
    }
    Ok(())
}
