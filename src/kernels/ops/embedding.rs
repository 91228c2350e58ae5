//! Token embedding gather and its gradient (a per-token segment sum, no atomics).
//! Shader: shaders/embedding.wgsl. CPU twins: [`crate::reference::ops::embedding_forward`],
//! [`crate::reference::ops::embedding_backward`].
//!
//! Both are a gather / scatter-add of rows by an index list, so the GPU trainer also uses
//! them with positions for ids: the rows with a target gathered for the LM head, and their
//! gradient scattered back ([`SegmentBuffers::zeroed`] + [`SegmentBuffers::write`], planned
//! once).

use super::{check_len, groups, launch, read, to_u32, upload, upload_words, zeros, WG};
use crate::kernels::context::GpuContext;
use crate::kernels::program::{Bind, KernelSpec};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/embedding.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    col_blocks: u32,
    _pad: u32,
}

/// Refuses a token id outside the table (the shader would read clamped garbage).
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(Error::Invalid(format!(
            "embedding: token {t} outside a vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// Records out `[n][d]` = rows `tokens` of table (`tokens` holds n u32 ids, checked by the
/// caller with [`check_tokens`]).
pub fn encode_embedding_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    tokens: &wgpu::Buffer,
    table: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
    d: usize,
) -> Result<()> {
    let spec = KernelSpec {
        name: "embedding",
        source: SOURCE,
        entry: "embedding_forward",
        binds: &[Bind::Read, Bind::Read, Bind::ReadWrite, Bind::Uniform],
        constants: &[],
    };
    let p = Params {
        n: to_u32("embedding rows", n)?,
        d: to_u32("embedding width", d)?,
        col_blocks: 0,
        _pad: 0,
    };
    let u = ctx.uniform("embedding params", &p);
    launch(
        ctx,
        encoder,
        &spec,
        &[tokens, table, out, &u],
        groups("embedding", n * d, WG)?,
    )
}

/// The token positions grouped by token id, made on the CPU from the batch's tokens:
/// `uniq[u]` is a distinct token and `order[starts[u]..starts[u+1]]` its positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    pub uniq: Vec<u32>,
    pub starts: Vec<u32>,
    pub order: Vec<u32>,
}

impl Segments {
    pub fn new(tokens: &[u32]) -> Result<Self> {
        to_u32("embedding tokens", tokens.len())?;
        let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
        order.sort_by_key(|&i| (tokens[i as usize], i));
        let (mut uniq, mut starts) = (Vec::new(), Vec::new());
        for (q, &i) in order.iter().enumerate() {
            let t = tokens[i as usize];
            if uniq.last() != Some(&t) {
                uniq.push(t);
                starts.push(q as u32);
            }
        }
        starts.push(order.len() as u32);
        Ok(Self {
            uniq,
            starts,
            order,
        })
    }
}

/// [`Segments`] uploaded: three u32 buffers.
#[derive(Debug)]
pub struct SegmentBuffers {
    pub uniq: wgpu::Buffer,
    pub starts: wgpu::Buffer,
    pub order: wgpu::Buffer,
    pub distinct: usize,
}

impl SegmentBuffers {
    pub fn new(ctx: &GpuContext, s: &Segments) -> Result<Self> {
        Ok(Self {
            uniq: upload_words(ctx, "embedding uniq", &s.uniq)?,
            starts: upload_words(ctx, "embedding starts", &s.starts)?,
            order: upload_words(ctx, "embedding order", &s.order)?,
            distinct: s.uniq.len(),
        })
    }

    /// The bytes of (uniq, starts, order) for up to `n` ids: what [`SegmentBuffers::zeroed`]
    /// allocates, for a memory plan.
    pub fn bytes(n: usize) -> [u64; 3] {
        let w = |k: usize| (k as u64 * 4).max(4);
        [w(n), w(n + 1), w(n)]
    }

    /// Empty buffers for up to `n` ids, refilled with [`SegmentBuffers::write`]: a caller
    /// that plans its memory allocates them once instead of per batch.
    pub fn zeroed(ctx: &GpuContext, label: &str, n: usize) -> Result<Self> {
        let [u, s, o] = Self::bytes(n);
        Ok(Self {
            uniq: ctx.storage_zeroed(&format!("{label} uniq"), u)?,
            starts: ctx.storage_zeroed(&format!("{label} starts"), s)?,
            order: ctx.storage_zeroed(&format!("{label} order"), o)?,
            distinct: 0,
        })
    }

    /// Writes `s` into these buffers (landing before the next submission), refusing more
    /// ids than they were made for.
    pub fn write(&mut self, queue: &wgpu::Queue, s: &Segments) -> Result<()> {
        let parts = [
            (&self.uniq, &s.uniq),
            (&self.starts, &s.starts),
            (&self.order, &s.order),
        ];
        if parts.iter().any(|(b, v)| v.len() as u64 * 4 > b.size()) {
            return Err(Error::Invalid(format!(
                "embedding: {} ids exceed segment buffers made for {}",
                s.order.len(),
                self.order.size() / 4
            )));
        }
        for (b, v) in parts.into_iter().filter(|(_, v)| !v.is_empty()) {
            queue.write_buffer(b, 0, bytemuck::cast_slice(v));
        }
        self.distinct = s.uniq.len();
        Ok(())
    }
}

/// Records dtable[tokens[i]] += dout[i] for every row i, as per-token sums.
pub fn encode_embedding_backward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dout: &wgpu::Buffer,
    segments: &SegmentBuffers,
    dtable: &wgpu::Buffer,
    d: usize,
) -> Result<()> {
    let spec = KernelSpec {
        name: "embedding",
        source: SOURCE,
        entry: "embedding_backward",
        binds: &[
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
            Bind::Uniform,
        ],
        constants: &[],
    };
    let col_blocks = groups("embedding columns", d, WG)?;
    let p = Params {
        n: to_u32("embedding distinct tokens", segments.distinct)?,
        d: to_u32("embedding width", d)?,
        col_blocks,
        _pad: 0,
    };
    let u = ctx.uniform("embedding params", &p);
    let g = to_u32("embedding groups", segments.distinct * col_blocks as usize)?;
    launch(
        ctx,
        encoder,
        &spec,
        &[
            &segments.uniq,
            &segments.starts,
            &segments.order,
            dout,
            dtable,
            &u,
        ],
        g,
    )
}

/// Embedding gather on the GPU. Twin: `embedding_forward`.
pub async fn embedding_forward(
    ctx: &GpuContext,
    tokens: &[u32],
    table: &[f32],
    d: usize,
) -> Result<Vec<f32>> {
    if d == 0 || !table.len().is_multiple_of(d) {
        return Err(Error::Invalid(format!(
            "embedding: table of {} values is not [vocab][{d}]",
            table.len()
        )));
    }
    check_tokens(tokens, table.len() / d)?;
    let (tb, eb) = (
        upload_words(ctx, "tokens", tokens)?,
        upload(ctx, "table", table)?,
    );
    let ob = zeros(ctx, "embedding out", tokens.len() * d)?;
    let mut enc = ctx.encoder();
    encode_embedding_forward(ctx, &mut enc, &tb, &eb, &ob, tokens.len(), d)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &ob, tokens.len() * d).await
}

/// Embedding gradient on the GPU, adding into a copy of `dtable`. Twin: `embedding_backward`.
pub async fn embedding_backward(
    ctx: &GpuContext,
    dout: &[f32],
    tokens: &[u32],
    d: usize,
    dtable: &[f32],
) -> Result<Vec<f32>> {
    check_len("embedding dout", dout.len(), tokens.len() * d)?;
    if d == 0 || !dtable.len().is_multiple_of(d) {
        return Err(Error::Invalid(format!(
            "embedding: dtable of {} values is not [vocab][{d}]",
            dtable.len()
        )));
    }
    check_tokens(tokens, dtable.len() / d)?;
    let seg = SegmentBuffers::new(ctx, &Segments::new(tokens)?)?;
    let (db, tb) = (upload(ctx, "dout", dout)?, upload(ctx, "dtable", dtable)?);
    let mut enc = ctx.encoder();
    encode_embedding_backward(ctx, &mut enc, &db, &seg, &tb, d)?;
    ctx.queue.submit([enc.finish()]);
    read(ctx, &tb, dtable.len()).await
}
