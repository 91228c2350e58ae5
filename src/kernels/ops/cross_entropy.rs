//! Softmax cross-entropy fused with the LM head, over vocabulary chunks: the [T × vocab]
//! logits never exist, only a [T × chunk] scratch. The head E `[vocab][d]` is a list of
//! frozen weights of consecutive vocabulary rows ("chunks"), each held as the file stores
//! it (dense f32, or quantized codes read in place), so a Q8_0 head costs a quarter of its
//! f32 copy. Each chunk's logits are made by [`QMatmul::encode_nt`] and its share of
//! d_hidden by [`QMatmul::encode_nn`] into a scratch, then added. An ignored row costs as
//! much as a counted one, so the GPU trainer passes only the rows with a target. Shader:
//! shaders/cross_entropy.wgsl (+ qmatmul.wgsl, reduce.wgsl's column-sum add).
//! CPU twins: [`crate::reference::ops::linear_forward`] on the dequantized head, then
//! [`crate::reference::ops::cross_entropy_forward`] / [`crate::reference::ops::cross_entropy_backward`].

use super::reduce::encode_col_sums_add;
use super::{check_len, groups, launch, read, to_u32, upload, upload_words, zeros, WG};
use crate::formats::quant::QuantMatrix;
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::kernels::qmatmul::{GpuWeight, QMatmul};
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

/// The LM head on the GPU: E `[vocab][d]` as consecutive chunks of vocabulary rows, in
/// order (each chunk's rows are one logits chunk).
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub chunks: &'a [GpuWeight],
    pub vocab: usize,
    pub d: usize,
}

impl Head<'_> {
    /// The widest chunk: the logits scratch holds t × this.
    pub fn width(&self) -> usize {
        self.chunks.iter().map(|w| w.rows).max().unwrap_or(0)
    }
}

/// The rows of an f32 head chunk one buffer may hold on this device, optionally lowered by
/// `max_part_bytes`. Chunks are bounded by it whatever their format, so the split does not
/// depend on how the file stores the head.
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

/// How the convenience functions chunk: at most `chunk` vocabulary rows per chunk, and
/// optionally a chunk buffer size below the device's binding limit (to test the split).
#[derive(Clone, Copy, Debug)]
pub struct CeConfig {
    pub chunk: usize,
    pub max_part_bytes: Option<u64>,
}

/// Vocabulary rows per head chunk for t rows of hidden state of width d under `cfg`.
pub fn head_chunk_rows(ctx: &GpuContext, t: usize, d: usize, cfg: CeConfig) -> Result<usize> {
    Ok(chunk_width(ctx, t, cfg.chunk.max(1))?.min(rows_per_part(ctx, d, cfg.max_part_bytes)?))
}

/// The head as stored on the host: dense f32 `[vocab][d]` or quantized codes.
#[derive(Clone, Copy, Debug)]
pub enum HeadSource<'a> {
    Dense(&'a [f32]),
    Quant(&'a QuantMatrix),
}

/// Rows `r0..r1` of a quantized matrix (codes and scales are stored row by row).
fn quant_rows(q: &QuantMatrix, r0: usize, r1: usize) -> QuantMatrix {
    let (wpr, swpr) = (q.words_per_row(), q.scale_words_per_row());
    QuantMatrix {
        rows: r1 - r0,
        cols: q.cols,
        bits: q.bits,
        group: q.group,
        symmetric: q.symmetric,
        data: q.data[r0 * wpr..r1 * wpr].to_vec(),
        scales: q.scales[r0 * swpr..r1 * swpr].to_vec(),
    }
}

/// Uploads E `[vocab][d]` as chunks of `rows` vocabulary rows (the last may be shorter),
/// each in the source's format.
pub fn upload_head(
    ctx: &GpuContext,
    src: HeadSource<'_>,
    (vocab, d): (usize, usize),
    rows: usize,
) -> Result<Vec<GpuWeight>> {
    let (got_rows, got_cols) = match src {
        HeadSource::Dense(e) => (e.len() / d.max(1), d),
        HeadSource::Quant(q) => (q.rows, q.cols),
    };
    let lengths_ok = match src {
        HeadSource::Dense(e) => e.len() == vocab * d,
        HeadSource::Quant(q) => {
            q.data.len() == q.rows * q.words_per_row()
                && q.scales.len() == q.rows * q.scale_words_per_row()
        }
    };
    if rows == 0 || got_rows != vocab || got_cols != d || !lengths_ok {
        return Err(Error::Invalid(format!(
            "cross_entropy: a head of {got_rows}×{got_cols} for a vocabulary of {vocab} and \
             width {d}, in chunks of {rows} rows"
        )));
    }
    (0..vocab)
        .step_by(rows)
        .map(|r0| {
            let r1 = (r0 + rows).min(vocab);
            match src {
                HeadSource::Dense(e) => GpuWeight::dense(ctx, &e[r0 * d..r1 * d], r1 - r0, d),
                HeadSource::Quant(q) => GpuWeight::quant(ctx, &quant_rows(q, r0, r1)),
            }
        })
        .collect()
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

/// The chunks with their first vocabulary row, checked to tile the vocabulary.
fn chunks<'a>(head: &Head<'a>) -> Result<Vec<(usize, &'a GpuWeight)>> {
    let mut out = Vec::with_capacity(head.chunks.len());
    let mut v0 = 0;
    for w in head.chunks {
        if w.rows == 0 || w.cols != head.d {
            break;
        }
        out.push((v0, w));
        v0 += w.rows;
    }
    if head.vocab == 0 || v0 != head.vocab || out.len() != head.chunks.len() {
        return Err(Error::Invalid(format!(
            "cross_entropy: {} head chunks do not tile a vocabulary of {} rows of width {}",
            head.chunks.len(),
            head.vocab,
            head.d
        )));
    }
    Ok(out)
}

/// Records the forward pass: per-row loss (0 for ignored rows) and lse (saved for
/// backward). `targets` holds t i32 (−1 = ignored); `scratch` t·[`Head::width`] words;
/// `stats` 3·t.
#[allow(clippy::too_many_arguments)]
pub fn encode_cross_entropy_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    mm: &QMatmul,
    hidden: &wgpu::Buffer,
    head: &Head<'_>,
    targets: &wgpu::Buffer,
    (scratch, stats): (&wgpu::Buffer, &wgpu::Buffer),
    (loss, lse): (&wgpu::Buffer, &wgpu::Buffer),
    t: usize,
) -> Result<()> {
    use Bind::*;
    let t32 = to_u32("cross_entropy rows", t)?;
    for (n, (v0, w)) in chunks(head)?.into_iter().enumerate() {
        mm.encode_nt(ctx, encoder, w, hidden, scratch, t)?;
        let params = Params {
            t: t32,
            cw: to_u32("cross_entropy chunk", w.rows)?,
            v0: to_u32("cross_entropy v0", v0)?,
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

/// Records the backward pass for d(mean loss) = `dloss`: d_hidden += Σ_chunks dz·E_chunk,
/// each chunk's product made in `dtmp` (t·d words) and added. `counted` is the number of
/// rows with a target. The head is frozen: no gradient of E is made.
#[allow(clippy::too_many_arguments)]
pub fn encode_cross_entropy_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    mm: &QMatmul,
    hidden: &wgpu::Buffer,
    head: &Head<'_>,
    (targets, lse): (&wgpu::Buffer, &wgpu::Buffer),
    (scratch, dtmp): (&wgpu::Buffer, &wgpu::Buffer),
    dhidden: &wgpu::Buffer,
    t: usize,
    (dloss, counted): (f32, usize),
) -> Result<()> {
    use Bind::*;
    let chunks = chunks(head)?;
    if counted == 0 {
        return Ok(()); // the twin: no counted row, no gradient
    }
    let t32 = to_u32("cross_entropy rows", t)?;
    for (v0, w) in chunks {
        mm.encode_nt(ctx, encoder, w, hidden, scratch, t)?;
        let params = Params {
            t: t32,
            cw: to_u32("cross_entropy chunk", w.rows)?,
            v0: to_u32("cross_entropy v0", v0)?,
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
            groups("cross_entropy dlogits", t * w.rows, WG)?,
        )?;
        mm.encode_nn(ctx, encoder, w, scratch, dtmp, t)?;
        encode_col_sums_add(ctx, encoder, dtmp, 1, t * head.d, dhidden)?;
    }
    Ok(())
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

/// Fused LM head + cross-entropy forward on the GPU over a resident head. Twin:
/// `linear_forward` (dequantized head) then `cross_entropy_forward`.
pub async fn cross_entropy_forward(
    ctx: &GpuContext,
    mm: &QMatmul,
    hidden: &[f32],
    head: &Head<'_>,
    targets: &[Option<u32>],
) -> Result<CeForward> {
    let (t, d) = (targets.len(), head.d);
    check_len("cross_entropy hidden", hidden.len(), t * d)?;
    let words = target_words(targets, head.vocab)?;
    let (hb, tb) = (
        upload(ctx, "hidden", hidden)?,
        upload_words(ctx, "targets", &words)?,
    );
    let (scratch, stats) = (
        zeros(ctx, "logits chunk", t * head.width())?,
        zeros(ctx, "ce stats", 3 * t)?,
    );
    let (lb, sb) = (zeros(ctx, "loss", t)?, zeros(ctx, "lse", t)?);
    let mut enc = ctx.encoder();
    encode_cross_entropy_forward(
        ctx,
        &mut enc,
        mm,
        &hb,
        head,
        &tb,
        (&scratch, &stats),
        (&lb, &sb),
        t,
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

/// Fused LM head + cross-entropy backward on the GPU over a resident head: d_hidden. Twin:
/// `cross_entropy_backward`, then `matmul_nn_acc` through the dequantized head.
pub async fn cross_entropy_backward(
    ctx: &GpuContext,
    mm: &QMatmul,
    hidden: &[f32],
    head: &Head<'_>,
    (targets, lse): (&[Option<u32>], &[f32]),
    dloss: f32,
) -> Result<Vec<f32>> {
    let (t, d) = (targets.len(), head.d);
    check_len("cross_entropy hidden", hidden.len(), t * d)?;
    check_len("cross_entropy lse", lse.len(), t)?;
    let words = target_words(targets, head.vocab)?;
    let (hb, tb, lb) = (
        upload(ctx, "hidden", hidden)?,
        upload_words(ctx, "targets", &words)?,
        upload(ctx, "lse", lse)?,
    );
    let scratch = zeros(ctx, "logits chunk", t * head.width())?;
    let dtmp = zeros(ctx, "dhidden chunk", t * d)?;
    let dh = zeros(ctx, "dhidden", t * d)?;
    let counted = targets.iter().filter(|t| t.is_some()).count();
    let mut enc = ctx.encoder();
    encode_cross_entropy_backward(
        ctx,
        &mut enc,
        mm,
        &hb,
        head,
        (&tb, &lb),
        (&scratch, &dtmp),
        &dh,
        t,
        (dloss, counted),
    )?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &dh, t * d).await
}
