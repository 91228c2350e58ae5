//! Softmax cross-entropy fused with the LM head, over vocabulary chunks: the [T × vocab]
//! logits never exist, only a [T × chunk] scratch. The head weight E `[vocab][d]` may be
//! split over several buffers ("parts") when it exceeds the binding limit; a chunk never
//! crosses a part. Shader: shaders/cross_entropy.wgsl (+ linear_backward.wgsl's gemm).
//! CPU twins: [`crate::reference::ops::linear_forward`] then
//! [`crate::reference::ops::cross_entropy_forward`] / [`crate::reference::ops::cross_entropy_backward`].

use super::linear::Gemm;
use super::{check_len, groups, launch, read, to_u32, upload, upload_words, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/cross_entropy.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    cw: u32,
    v0: u32,
    first: u32,
    g: f32,
    _pad: [u32; 3],
}

/// The LM head on the GPU: E `[vocab][d]` as consecutive parts of `rows_per_part` rows
/// (the last may be shorter).
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub parts: &'a [wgpu::Buffer],
    pub rows_per_part: usize,
    pub vocab: usize,
    pub d: usize,
}

/// The rows of E one buffer may hold on this device, optionally lowered by `max_part_bytes`.
pub fn rows_per_part(ctx: &GpuContext, d: usize, max_part_bytes: Option<u64>) -> Result<usize> {
    let limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size);
    let limit = max_part_bytes.map_or(limit, |m| m.min(limit));
    let rows = (limit / (4 * d.max(1) as u64)) as usize;
    if rows == 0 {
        return Err(Error::Gpu(format!(
            "cross_entropy: one head row of {d} f32 exceeds the {limit}-byte binding limit \
             (max_storage_buffer_binding_size)"
        )));
    }
    Ok(rows)
}

/// The chunk width actually used: at most `chunk`, and small enough that the [T × chunk]
/// scratch fits one binding.
pub fn chunk_width(ctx: &GpuContext, t: usize, chunk: usize) -> Result<usize> {
    let limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size);
    let fit = (limit / (4 * t.max(1) as u64)) as usize;
    let cw = chunk.min(fit);
    if cw == 0 {
        return Err(Error::Gpu(format!(
            "cross_entropy: a logits chunk for {t} rows exceeds the {limit}-byte binding limit \
             (max_storage_buffer_binding_size)"
        )));
    }
    Ok(cw)
}

/// The chunks (part index, first row in the part, width) covering the vocabulary.
fn chunks(head: &Head<'_>, cw: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (p, _) in head.parts.iter().enumerate() {
        let rows = head
            .rows_per_part
            .min(head.vocab.saturating_sub(p * head.rows_per_part));
        let mut c0 = 0;
        while c0 < rows {
            out.push((p, c0, cw.min(rows - c0)));
            c0 += cw;
        }
    }
    out
}

fn spec(entry: &'static str, binds: &'static [Bind]) -> KernelSpec<'static> {
    KernelSpec {
        name: "cross_entropy",
        source: SOURCE,
        entry,
        binds,
        constants: &[],
    }
}

fn check_head(head: &Head<'_>) -> Result<()> {
    if head.vocab == 0
        || head.rows_per_part == 0
        || head.parts.len() != head.vocab.div_ceil(head.rows_per_part)
    {
        return Err(Error::Invalid(format!(
            "cross_entropy: {} head parts of {} rows do not cover a vocabulary of {}",
            head.parts.len(),
            head.rows_per_part,
            head.vocab
        )));
    }
    Ok(())
}

/// Records logits = hidden·E[v0..v0+cw]ᵀ into `scratch` as [t][cw].
fn encode_logits(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    hidden: &wgpu::Buffer,
    head: &Head<'_>,
    (p, c0, cw): (usize, usize, usize),
    scratch: &wgpu::Buffer,
    t: usize,
) -> Result<()> {
    let d = head.d;
    let gemm = Gemm {
        m: t,
        n: cw,
        k: d,
        a_rs: d,
        a_cs: 1,
        b_off: c0 * d,
        b_rs: 1,
        b_cs: d,
        c_rs: cw,
        alpha: 1.0,
        ..Default::default()
    };
    gemm.encode(ctx, encoder, hidden, &head.parts[p], scratch)
}

/// Records the forward pass: per-row loss (0 for ignored rows) and lse (saved for
/// backward). `targets` holds t i32 (−1 = ignored); `scratch` t·cw words; `stats` 3·t.
#[allow(clippy::too_many_arguments)]
pub fn encode_cross_entropy_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    hidden: &wgpu::Buffer,
    head: &Head<'_>,
    targets: &wgpu::Buffer,
    (scratch, stats): (&wgpu::Buffer, &wgpu::Buffer),
    (loss, lse): (&wgpu::Buffer, &wgpu::Buffer),
    t: usize,
    cw: usize,
) -> Result<()> {
    use Bind::*;
    check_head(head)?;
    let t32 = to_u32("cross_entropy rows", t)?;
    for (n, &(p, c0, w)) in chunks(head, cw).iter().enumerate() {
        encode_logits(ctx, encoder, hidden, head, (p, c0, w), scratch, t)?;
        let params = Params {
            t: t32,
            cw: to_u32("cross_entropy chunk", w)?,
            v0: to_u32("cross_entropy v0", p * head.rows_per_part + c0)?,
            first: (n == 0) as u32,
            g: 0.0,
            _pad: [0; 3],
        };
        let u = ctx.uniform("cross_entropy params", &params);
        launch(
            ctx,
            encoder,
            &spec("ce_chunk_stats", &[Read, Read, ReadWrite, Uniform]),
            &[scratch, targets, stats, &u],
            t32,
        )?;
    }
    let params = Params {
        t: t32,
        cw: 0,
        v0: 0,
        first: 0,
        g: 0.0,
        _pad: [0; 3],
    };
    let u = ctx.uniform("cross_entropy params", &params);
    launch(
        ctx,
        encoder,
        &spec("ce_finish", &[Read, Read, ReadWrite, ReadWrite, Uniform]),
        &[stats, targets, loss, lse, &u],
        groups("cross_entropy rows", t, WG)?,
    )
}

/// Records the backward pass for d(mean loss) = `dloss`: d_hidden += Σ_chunks dz·E_chunk
/// and, when given, dE += dzᵀ·hidden (parts laid out as the head's). `counted` is the
/// number of rows with a target.
#[allow(clippy::too_many_arguments)]
pub fn encode_cross_entropy_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    hidden: &wgpu::Buffer,
    head: &Head<'_>,
    (targets, lse): (&wgpu::Buffer, &wgpu::Buffer),
    scratch: &wgpu::Buffer,
    dhidden: &wgpu::Buffer,
    dhead: Option<&[wgpu::Buffer]>,
    (t, cw): (usize, usize),
    (dloss, counted): (f32, usize),
) -> Result<()> {
    use Bind::*;
    check_head(head)?;
    if counted == 0 {
        return Ok(()); // the twin: no counted row, no gradient
    }
    if let Some(dh) = dhead {
        if dh.len() != head.parts.len() {
            return Err(Error::Invalid(
                "cross_entropy: dE parts differ from E parts".into(),
            ));
        }
    }
    let d = head.d;
    let t32 = to_u32("cross_entropy rows", t)?;
    for (p, c0, w) in chunks(head, cw) {
        encode_logits(ctx, encoder, hidden, head, (p, c0, w), scratch, t)?;
        let params = Params {
            t: t32,
            cw: to_u32("cross_entropy chunk", w)?,
            v0: to_u32("cross_entropy v0", p * head.rows_per_part + c0)?,
            first: 0,
            g: dloss / counted as f32,
            _pad: [0; 3],
        };
        let u = ctx.uniform("cross_entropy params", &params);
        launch(
            ctx,
            encoder,
            &spec("ce_dlogits", &[ReadWrite, Read, Read, Uniform]),
            &[scratch, targets, lse, &u],
            groups("cross_entropy dlogits", t * w, WG)?,
        )?;
        let dh = Gemm {
            m: t,
            n: d,
            k: w,
            a_rs: w,
            a_cs: 1,
            b_off: c0 * d,
            b_rs: d,
            b_cs: 1,
            c_rs: d,
            alpha: 1.0,
            accumulate: true,
            ..Default::default()
        };
        dh.encode(ctx, encoder, scratch, &head.parts[p], dhidden)?;
        if let Some(de) = dhead {
            let g = Gemm {
                m: w,
                n: d,
                k: t,
                a_rs: 1,
                a_cs: w,
                b_rs: d,
                b_cs: 1,
                c_off: c0 * d,
                c_rs: d,
                alpha: 1.0,
                accumulate: true,
                ..Default::default()
            };
            g.encode(ctx, encoder, scratch, hidden, &de[p])?;
        }
    }
    Ok(())
}

/// How the convenience functions chunk: `chunk` vocabulary rows per logits chunk, and
/// optionally a head part size below the device's binding limit (to test the split).
#[derive(Clone, Copy, Debug)]
pub struct CeConfig {
    pub chunk: usize,
    pub max_part_bytes: Option<u64>,
}

/// The targets as the shader wants them (i32, −1 = ignored), checked against the vocabulary.
pub fn target_words(targets: &[Option<u32>], vocab: usize) -> Result<Vec<i32>> {
    targets
        .iter()
        .map(|t| match *t {
            None => Ok(-1),
            Some(v) if (v as usize) < vocab && v <= i32::MAX as u32 => Ok(v as i32),
            Some(v) => Err(Error::Invalid(format!(
                "cross_entropy: target {v} outside a vocabulary of {vocab}"
            ))),
        })
        .collect()
}

fn upload_parts(
    ctx: &GpuContext,
    what: &str,
    e: &[f32],
    d: usize,
    rows: usize,
    zero: bool,
) -> Result<Vec<wgpu::Buffer>> {
    e.chunks(rows * d)
        .map(|part| {
            if zero {
                zeros(ctx, what, part.len())
            } else {
                upload(ctx, what, part)
            }
        })
        .collect()
}

/// Forward result of [`cross_entropy_forward`].
#[derive(Clone, Debug)]
pub struct CeForward {
    /// Loss per row (0 on ignored rows).
    pub loss: Vec<f32>,
    /// log Σ exp(logits) per row, for backward.
    pub lse: Vec<f32>,
    /// Mean over counted rows (0 if none) and their number: the twin's result.
    pub mean: f32,
    pub counted: usize,
}

/// Fused LM head + cross-entropy forward on the GPU. Twin: `linear_forward` then
/// `cross_entropy_forward`.
pub async fn cross_entropy_forward(
    ctx: &GpuContext,
    hidden: &[f32],
    e: &[f32],
    targets: &[Option<u32>],
    (d, vocab): (usize, usize),
    cfg: CeConfig,
) -> Result<CeForward> {
    let t = targets.len();
    check_len("cross_entropy hidden", hidden.len(), t * d)?;
    check_len("cross_entropy head", e.len(), vocab * d)?;
    let words = target_words(targets, vocab)?;
    let rows = rows_per_part(ctx, d, cfg.max_part_bytes)?;
    let cw = chunk_width(ctx, t, cfg.chunk.max(1))?;
    let parts = upload_parts(ctx, "head", e, d, rows, false)?;
    let head = Head {
        parts: &parts,
        rows_per_part: rows,
        vocab,
        d,
    };
    let (hb, tb) = (
        upload(ctx, "hidden", hidden)?,
        upload_words(ctx, "targets", &words)?,
    );
    let (scratch, stats) = (
        zeros(ctx, "logits chunk", t * cw)?,
        zeros(ctx, "ce stats", 3 * t)?,
    );
    let (lb, sb) = (zeros(ctx, "loss", t)?, zeros(ctx, "lse", t)?);
    let mut enc = ctx.encoder();
    encode_cross_entropy_forward(
        ctx,
        &mut enc,
        &hb,
        &head,
        &tb,
        (&scratch, &stats),
        (&lb, &sb),
        t,
        cw,
    )?;
    ctx.queue.submit([enc.finish()]);
    let loss = read(ctx, &lb, t).await?;
    let lse = read(ctx, &sb, t).await?;
    let counted = targets.iter().filter(|t| t.is_some()).count();
    let mean = if counted == 0 {
        0.0
    } else {
        (loss.iter().map(|&x| x as f64).sum::<f64>() / counted as f64) as f32
    };
    Ok(CeForward {
        loss,
        lse,
        mean,
        counted,
    })
}

/// Fused LM head + cross-entropy backward on the GPU: (d_hidden, dE if asked). Twin:
/// `cross_entropy_backward`, then `matmul_nn_acc` / `matmul_tn_acc` through the head.
#[allow(clippy::too_many_arguments)]
pub async fn cross_entropy_backward(
    ctx: &GpuContext,
    hidden: &[f32],
    e: &[f32],
    targets: &[Option<u32>],
    lse: &[f32],
    dloss: f32,
    (d, vocab): (usize, usize),
    cfg: CeConfig,
    with_dhead: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let t = targets.len();
    check_len("cross_entropy hidden", hidden.len(), t * d)?;
    check_len("cross_entropy head", e.len(), vocab * d)?;
    check_len("cross_entropy lse", lse.len(), t)?;
    let words = target_words(targets, vocab)?;
    let rows = rows_per_part(ctx, d, cfg.max_part_bytes)?;
    let cw = chunk_width(ctx, t, cfg.chunk.max(1))?;
    let parts = upload_parts(ctx, "head", e, d, rows, false)?;
    let dparts = if with_dhead {
        Some(upload_parts(ctx, "dhead", e, d, rows, true)?)
    } else {
        None
    };
    let head = Head {
        parts: &parts,
        rows_per_part: rows,
        vocab,
        d,
    };
    let (hb, tb, lb) = (
        upload(ctx, "hidden", hidden)?,
        upload_words(ctx, "targets", &words)?,
        upload(ctx, "lse", lse)?,
    );
    let scratch = zeros(ctx, "logits chunk", t * cw)?;
    let dh = zeros(ctx, "dhidden", t * d)?;
    let counted = targets.iter().filter(|t| t.is_some()).count();
    let mut enc = ctx.encoder();
    encode_cross_entropy_backward(
        ctx,
        &mut enc,
        &hb,
        &head,
        (&tb, &lb),
        &scratch,
        &dh,
        dparts.as_deref(),
        (t, cw),
        (dloss, counted),
    )?;
    ctx.queue.submit([enc.finish()]);
    let dhidden = read(ctx, &dh, t * d).await?;
    let dhead = match &dparts {
        Some(ps) => {
            let mut all = Vec::with_capacity(vocab * d);
            for (p, b) in ps.iter().enumerate() {
                let n = rows.min(vocab - p * rows) * d;
                all.extend(read(ctx, b, n).await?);
            }
            Some(all)
        }
        None => None,
    };
    Ok((dhidden, dhead))
}
