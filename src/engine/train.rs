//! LoRA training on the GPU: a [`Backend`] whose forward and backward passes are composed
//! from the kernel library, with the base weights frozen (f32, packed or sparse) and the
//! adapters, their gradients and AdamW moments resident on the device.
//!
//! One row of t ≤ `seq_len` tokens is one command buffer: embedding rows (gathered on the
//! CPU from the GGUF bytes) → per block the forward of [`GpuModel`](super::GpuModel) with
//! every activation the backward needs kept → the n rows with a target gathered by position
//! (as on the CPU: the head is a step's largest matmul, and a row of ARC-Easy answers has a
//! few dozen targets in 256 positions) → final norm → the fused, vocabulary-chunked
//! cross-entropy head on those rows (the n × vocab logits never exist) → its backward,
//! scattered back to the n positions (zeros elsewhere; both by embedding.wgsl's gather and
//! scatter-add with positions for ids) → per block, from the top, the backward pass:
//! projections' input gradients through the frozen weights
//! (`FrozenWeight::encode_nn`: qmatmul, or the sparse kernels through a transposed copy),
//! LoRA dA/dB accumulated, SwiGLU, attention, RoPE and RMSNorm backward. Only the per-row
//! losses are read back. LoRA dropout masks are a hash of (seed, layer, projection,
//! element) computed in the shader, as the CPU reference does, so none is stored
//! ([`crate::reference::Dropout`]).
//!
//! Memory is planned first ([`GpuTrainer::plan`]), checked against the device's limits and
//! the user's budget, and allocated once. With `recompute`, only each block's input is kept
//! and the block's forward is run again just before its backward (one set of block
//! activations instead of one per layer). The LM head is held as the file stores it (Q8_0
//! or Q4_x codes, a compressed file's quantized codes, or f32) in chunks of vocabulary
//! rows, each one logits chunk wide and within one binding, read in place by the qmatmul
//! kernels ([`crate::kernels::ops::cross_entropy`]): neither the n × vocab logits nor an
//! f32 copy of a packed head ever exists. The head's buffers are sized for n = t, so the
//! plan does not depend on the row.
//!
//! Adaptive layer tuning ([`GpuTrainer::with_windows`], [`Backend::set_span`]) runs as on
//! the CPU backend: the frozen blocks below a window forward only (no dropout, nothing
//! kept) in place through the first activation set, or not at all when the window's input
//! is in the host-memory [`PrefixCache`]; the window's blocks keep their activations; an
//! exit adds its adapter (the LoRA kernels on an identity projection) before the final
//! norm and head; backward stops at the window's first block; AdamW steps only the
//! window's tensors and its exit's, each with its own step count. Only the window's
//! blocks are resident, in window slots (one per block of the longest window, each sized
//! for the blocks it takes in turn; [`Backend::set_span`] uploads them). The other blocks
//! are kept on the host as the file stores them and, when they run, are uploaded one at
//! a time into a stream slot sized for the largest of them, without a sparse weight's
//! transposed copy; a queue write lands before the next submission, so the commands
//! reading the slot's previous block are submitted before it is rewritten. A trainer for
//! every block has one window slot per block and no stream slot: everything stays
//! resident. Activations are sized for the longest window.

use super::gpu_model::{
    cpu_gather, default_path, layout, plan_matrix, proj_tensor, read_mapped, Gather, Layout,
    WeightFormat, PROJ_NAMES,
};
use super::plan::{Category, MemoryPlan, PlanEntry};
use crate::compress::file::{self as cfile, Packed, TensorFormat};
use crate::compress::profile::{BlockFisher, LayerHessians};
use crate::compress::prune::Hessian;
use crate::compress::quant::{GgufBlockMatrix, QuantMatrix};
use crate::gguf::quant as gq;
use crate::kernels::context::GpuContext;
use crate::kernels::ops::adamw::{encode_adamw, encode_grad_norm2, norm_scratch_len, Slot};
use crate::kernels::ops::attention::{
    encode_attention_backward, encode_attention_forward, MAX_HEAD_DIM,
};
use crate::kernels::ops::cross_entropy::{
    encode_cross_entropy_backward, encode_cross_entropy_forward, target_words, upload_head, Head,
    HeadSource,
};
use crate::kernels::ops::embedding::{
    encode_embedding_backward, encode_embedding_forward, SegmentBuffers, Segments,
};
use crate::kernels::ops::lora::{encode_lora_backward, encode_lora_forward, LoraShape};
use crate::kernels::ops::reduce::encode_col_sums_add;
use crate::kernels::ops::rmsnorm::{encode_rmsnorm_backward, encode_rmsnorm_forward};
use crate::kernels::ops::rope::{encode_rope, RopeTable};
use crate::kernels::ops::stats::{encode_fisher_acc, encode_gram_acc};
use crate::kernels::ops::swiglu::{encode_swiglu_backward, encode_swiglu_forward};
use crate::kernels::qmatmul::{
    role, FrozenWeight, GpuWeight, HostWeight, Path, QMatmul, RoleBuffers, ROLES,
};
use crate::kernels::spmatmul::HostSparseWeight;
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::ops::AttnShape;
use crate::reference::optim::AdamW;
use crate::reference::{lora_dropout, Lora, LoraConfig, Owner, Proj, Span};
use crate::train::prefix::{bump_versions, check_span, default_span, PrefixCache};
use crate::train::CpuBackend;
use crate::train::{derive_seed, Backend, LossSum, ParamState, Row, Tensor};
use crate::{Error, Result};
use serde::Serialize;

/// Default vocabulary rows per logits chunk of the fused head.
pub const DEFAULT_VOCAB_CHUNK: usize = 8192;

/// What the trainer allocates for, chosen before anything is allocated.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub format: WeightFormat,
    /// Longest row (tokens) a step takes: every activation is sized for it.
    pub seq_len: usize,
    /// Keep only each block's input and run the block's forward again before its backward.
    pub recompute: bool,
    /// Vocabulary rows per logits chunk (lowered further to fit one binding).
    pub vocab_chunk: usize,
    /// Matmul kernel shape; None: [`default_path`] for the adapter.
    pub path: Option<Path>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            format: WeightFormat::Packed,
            seq_len: 256,
            recompute: false,
            vocab_chunk: DEFAULT_VOCAB_CHUNK,
            path: None,
        }
    }
}

/// The head's split: vocabulary rows per chunk (= the logits chunk width) and the number
/// of chunks.
#[derive(Clone, Copy, Debug)]
struct HeadSplit {
    chunk: usize,
    chunks: usize,
}

/// The calibration statistics a profiling trainer ([`GpuTrainer::for_statistics`])
/// accumulates: one kind per trainer, so a tab never holds both sets (for SmolLM2-135M,
/// 402 MB of Hessians and 425 MB of Fisher diagonal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsPass {
    /// XᵀX of each block's four projection inputs (n1, attn, n2, act), forward only.
    Hessians,
    /// The mean squared base-weight gradient of each projection (forward and backward).
    Fisher,
}

impl StatsPass {
    /// The options of a profiling trainer for rows of up to `seq_len` tokens: the Hessian
    /// pass runs its blocks through one activation set (no backward needs the others);
    /// the Fisher pass keeps every block's activations (no second forward).
    pub fn options(self, seq_len: usize) -> TrainOptions {
        TrainOptions {
            seq_len,
            recompute: self == StatsPass::Hessians,
            ..TrainOptions::default()
        }
    }

    /// Per block, each statistics matrix as (label, rows, cols): the Hessians of n1, attn,
    /// n2 and act (k×k), or each projection's Fisher diagonal (n×k, [`Proj::ALL`] order).
    fn matrices(self, c: &LlamaConfig) -> Vec<(String, usize, usize)> {
        match self {
            StatsPass::Hessians => [
                ("n1", c.hidden),
                ("attn", c.q_dim()),
                ("n2", c.hidden),
                ("act", c.ffn),
            ]
            .into_iter()
            .map(|(name, k)| (format!("hessian {name}"), k, k))
            .collect(),
            StatsPass::Fisher => Proj::ALL
                .iter()
                .map(|p| {
                    let (k, n) = p.shape(c);
                    (format!("fisher {}", PROJ_NAMES[p.index()]), n, k)
                })
                .collect(),
        }
    }
}

/// A profiling trainer's statistics: per block, the matrices of [`StatsPass::matrices`],
/// and one readback buffer as large as the largest.
struct Stats {
    pass: StatsPass,
    mats: Vec<Vec<wgpu::Buffer>>,
    read: wgpu::Buffer,
    /// The Fisher pass's weight per row (1 / the rows with a target).
    scale: f32,
}

fn binding_limit(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
}

/// At most `vocab_chunk` rows, and few enough that the t × chunk logits and the chunk's
/// rows in f32 each fit one binding (the f32 bound for every format keeps the split
/// independent of how the file stores the head; packed rows are smaller).
fn head_split(c: &LlamaConfig, opts: &TrainOptions, limits: &wgpu::Limits) -> Result<HeadSplit> {
    let limit = binding_limit(limits);
    let chunk = opts
        .vocab_chunk
        .min((limit / (4 * c.hidden as u64)) as usize)
        .min((limit / (4 * opts.seq_len as u64)) as usize)
        .min(c.vocab);
    if chunk == 0 {
        return Err(Error::Gpu(format!(
            "a head row of {} f32 or a logits column of {} rows exceeds the {limit}-byte \
             binding limit (max_storage_buffer_binding_size)",
            c.hidden, opts.seq_len
        )));
    }
    Ok(HeadSplit {
        chunk,
        chunks: c.vocab.div_ceil(chunk),
    })
}

/// The LM head's tensor, its layout (as [`GpuModel`](super::GpuModel) holds its head) and
/// the format's name in the plan's labels.
fn head_layout(file: &ModelFile, opts: &TrainOptions) -> Result<(&'static str, Layout, String)> {
    let c = &file.config;
    let name = if c.tied_embeddings {
        "token_embd.weight"
    } else {
        "output.weight"
    };
    let lay = layout(file, name, c.vocab, c.hidden, opts.format)?;
    let tag = match lay {
        Layout::Dense => "f32".to_string(),
        Layout::Packed(ty) => ty.name().to_string(),
        Layout::Compressed(TensorFormat::Quant { bits, .. }) => format!("{bits}-bit"),
        Layout::Compressed(_) => {
            return Err(Error::Model(format!(
                "{name}: a sparse LM head is not supported; compress the projections only"
            )))
        }
    };
    Ok((name, lay, tag))
}

/// The head on the host in its layout, to be uploaded in chunks.
enum HostHead {
    Dense(Vec<f32>),
    Quant(QuantMatrix),
}

impl HostHead {
    fn read(file: &ModelFile, name: &str, lay: Layout) -> Result<Self> {
        let (vocab, d) = (file.config.vocab, file.config.hidden);
        Ok(match lay {
            Layout::Dense => HostHead::Dense(file.tensor_f32(name, &[d, vocab])?),
            Layout::Packed(ty) => {
                let raw = file.gguf.tensor_data(&file.bytes, name)?;
                HostHead::Quant(GgufBlockMatrix::from_bytes(ty, vocab, d, raw)?.to_quant()?)
            }
            Layout::Compressed(_) => match cfile::read_tensor(&file.gguf, &file.bytes, name)? {
                Some(Packed::Quant(q)) => HostHead::Quant(q),
                _ => {
                    return Err(Error::Model(format!(
                        "{name}: not a quantized compressed tensor"
                    )))
                }
            },
        })
    }

    fn source(&self) -> HeadSource<'_> {
        match self {
            HostHead::Dense(e) => HeadSource::Dense(e),
            HostHead::Quant(q) => HeadSource::Quant(q),
        }
    }
}

/// The activations one block keeps for its backward pass (t rows each).
struct BlockActs {
    x: wgpu::Buffer,
    n1: wgpu::Buffer,
    rstd1: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    attn: wgpu::Buffer,
    lse: wgpu::Buffer,
    h: wgpu::Buffer,
    n2: wgpu::Buffer,
    rstd2: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    act: wgpu::Buffer,
    /// LoRA u = drop(x)·Aᵀ per targeted projection, [`Proj`] order.
    u: Vec<Option<wgpu::Buffer>>,
}

/// Per-block activation widths (f32 per row), in [`BlockActs`] order, without x.
fn block_widths(c: &LlamaConfig) -> [(&'static str, usize); 13] {
    let (d, qd, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
    [
        ("n1", d),
        ("rstd1", 1),
        ("q", qd),
        ("k", kv),
        ("v", kv),
        ("attn", qd),
        ("lse", c.n_heads),
        ("h", d),
        ("n2", d),
        ("rstd2", 1),
        ("gate", f),
        ("up", f),
        ("act", f),
    ]
}

/// Buffers every block reuses.
struct Scratch {
    /// A recomputed block's output (discarded), and before the blocks' backward the
    /// head's input: the rows with a target, gathered.
    spare: wgpu::Buffer,
    o: wgpu::Buffer,
    drop: wgpu::Buffer,
    du: wgpu::Buffer,
    delta: wgpu::Buffer,
    dx: wgpu::Buffer,
    dn: wgpu::Buffer,
    dtmp: wgpu::Buffer,
    dact: wgpu::Buffer,
    dgate: wgpu::Buffer,
    dup: wgpu::Buffer,
    dattn: wgpu::Buffer,
    dq: wgpu::Buffer,
    dk: wgpu::Buffer,
    dv: wgpu::Buffer,
    // The head, on the n ≤ t rows with a target (the buffers hold t).
    y: wgpu::Buffer,
    yn: wgpu::Buffer,
    rstd_out: wgpu::Buffer,
    /// The positions with a target: the gather's indices and the scatter's segments.
    head_pos: SegmentBuffers,
    targets: wgpu::Buffer,
    loss: wgpu::Buffer,
    ce_lse: wgpu::Buffer,
    ce_scratch: wgpu::Buffer,
    ce_stats: wgpu::Buffer,
    loss_read: wgpu::Buffer,
    /// Adapters and moments are read back through this one buffer (the widest tensor).
    tensor_read: wgpu::Buffer,
    norm_partials: wgpu::Buffer,
    norm2: wgpu::Buffer,
    norm_read: wgpu::Buffer,
}

fn scratch_widths(c: &LlamaConfig, rank: usize) -> [(&'static str, usize); 14] {
    let (d, qd, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
    [
        ("recompute out / head rows", d),
        ("projection out", d),
        ("dropout", d.max(qd).max(f)),
        ("lora du", rank),
        ("attention delta", c.n_heads),
        ("dx", d),
        ("dn", d),
        ("dtmp", d.max(qd)),
        ("dact", f),
        ("dgate", f),
        ("dup", f),
        ("dattn", qd),
        ("dq", qd),
        ("dk", kv),
    ]
}

/// One block's weights as the kernels read them: handles of the slot buffers it was
/// written into.
struct BlockWeights {
    attn_norm: wgpu::Buffer,
    ffn_norm: wgpu::Buffer,
    w: Vec<FrozenWeight>,
}

/// One block on the host, as it is uploaded: the norms and each projection in the form
/// the file stores it (packed, quantized, sparse with its transposed copy when a window
/// trains the block, or f32 under [`WeightFormat::F32`]).
struct HostBlock {
    norms: [Vec<f32>; 2],
    w: Vec<HostWeight>,
}

impl HostBlock {
    fn read(file: &ModelFile, l: usize, opts: &TrainOptions, grad: bool) -> Result<Self> {
        let d = file.config.hidden;
        let norm = |n: &str| file.tensor_f32(&format!("blk.{l}.{n}.weight"), &[d]);
        let mut w = Vec::with_capacity(7);
        for p in Proj::ALL {
            let (k, n) = p.shape(&file.config);
            let name = proj_tensor(l, p);
            let lay = layout(file, &name, n, k, opts.format)?;
            w.push(host_proj(file, &name, (n, k), lay, grad)?);
        }
        Ok(HostBlock {
            norms: [norm("attn_norm")?, norm("ffn_norm")?],
            w,
        })
    }
}

/// A projection on the host in its layout (`grad`: a sparse one with its transposed copy).
fn host_proj(
    file: &ModelFile,
    name: &str,
    (rows, cols): (usize, usize),
    lay: Layout,
    grad: bool,
) -> Result<HostWeight> {
    let named = |e: Error| Error::Model(format!("{name}: {e}"));
    Ok(match lay {
        Layout::Dense => {
            let w = file.tensor_f32(name, &[cols, rows])?;
            HostWeight::dense(&w, rows, cols).map_err(named)?
        }
        Layout::Packed(ty) => {
            let raw = file.gguf.tensor_data(&file.bytes, name)?;
            HostWeight::quant(&GgufBlockMatrix::from_bytes(ty, rows, cols, raw)?.to_quant()?)
        }
        Layout::Compressed(_) => match cfile::read_tensor(&file.gguf, &file.bytes, name)? {
            Some(Packed::Quant(q)) => HostWeight::quant(&q),
            Some(Packed::Sparse24(w)) => {
                HostWeight::Sparse(HostSparseWeight::sparse24(&w, grad).map_err(named)?)
            }
            Some(Packed::Unstructured(w)) => {
                HostWeight::Sparse(HostSparseWeight::unstructured(&w, grad).map_err(named)?)
            }
            None => return Err(Error::Model(format!("missing tensor {name}"))),
        },
    })
}

/// The buffers of block `l`'s projection `p` as [`plan_matrix`] plans them (`grad`: with
/// a sparse weight's transposed copy), as (role, label, bytes).
fn matrix_roles(
    file: &ModelFile,
    l: usize,
    p: Proj,
    opts: &TrainOptions,
    grad: bool,
) -> Result<Vec<(usize, String, u64)>> {
    use role::*;
    let (k, n) = p.shape(&file.config);
    let name = proj_tensor(l, p);
    let lay = layout(file, &name, n, k, opts.format)?;
    let mut one = MemoryPlan::default();
    plan_matrix(&mut one, file, &name, "", (n, k), lay, grad)?;
    let fwd: &[usize] = match lay {
        Layout::Compressed(TensorFormat::Sparse24 { .. }) => &[DATA, SCALES, PATTERN],
        Layout::Compressed(TensorFormat::Unstructured { .. }) => &[DATA, SCALES, PATTERN, ROW_PTR],
        _ => &[DATA, SCALES],
    };
    let sparse = fwd.len() > 2;
    let copy: &[usize] = if grad && sparse {
        &[T_MASKS, T_ROW_PTR, T_VALUES]
    } else {
        &[]
    };
    if one.entries.len() != fwd.len() + copy.len() {
        return Err(Error::Model(format!(
            "{name}: {} buffers planned, {} expected",
            one.entries.len(),
            fwd.len() + copy.len()
        )));
    }
    let roles = fwd.iter().chain(copy);
    Ok(roles
        .zip(one.entries)
        .map(|(&r, e)| (r, e.name, e.bytes))
        .collect())
}

/// A slot: buffers holding one block's weights at a time, the two norms and per
/// projection one buffer per role ([`ROLES`]) as large as the largest of the blocks
/// uploaded into it, so blocks of different formats take turns in it.
struct SlotSpec {
    /// The blocks uploaded into it over a run.
    blocks: Vec<usize>,
    /// With the input-gradient side (window slots: their blocks train).
    grad: bool,
    /// Labels of the two norms' buffers.
    norms: [String; 2],
    /// Per projection, per role: (label, bytes); None where no block has the role.
    bufs: Vec<[Option<(String, u64)>; 7]>,
}

impl SlotSpec {
    /// A slot named `name` for `blocks`. A slot that only ever holds one block is labelled
    /// with that block's tensor names (the trainer for every block plans each block as
    /// resident, under the names it always had).
    fn new(
        file: &ModelFile,
        opts: &TrainOptions,
        name: &str,
        blocks: Vec<usize>,
        grad: bool,
    ) -> Result<Self> {
        let single = (blocks.len() == 1).then(|| blocks[0]);
        let norms = ["attn_norm", "ffn_norm"].map(|n| match single {
            Some(l) => format!("blk.{l}.{n}.weight"),
            None => format!("{name} {n}"),
        });
        let mut bufs = Vec::with_capacity(7);
        for p in Proj::ALL {
            let mut roles: [Option<(String, u64)>; 7] = Default::default();
            for &l in &blocks {
                for (r, label, bytes) in matrix_roles(file, l, p, opts, grad)? {
                    let label = match single {
                        Some(_) => label,
                        None => format!("{name} {} {}", PROJ_NAMES[p.index()], ROLES[r]),
                    };
                    let e = roles[r].get_or_insert((label, 0));
                    e.1 = e.1.max(bytes);
                }
            }
            bufs.push(roles);
        }
        Ok(SlotSpec {
            blocks,
            grad,
            norms,
            bufs,
        })
    }

    fn plan(&self, plan: &mut MemoryPlan, d: usize) {
        for n in &self.norms {
            plan.storage(n, Category::Weights, d as u64 * 4);
        }
        for (label, bytes) in self.bufs.iter().flatten().flatten() {
            plan.storage(label, Category::Weights, *bytes);
        }
    }

    fn alloc(&self, ctx: &GpuContext, d: usize) -> Result<WeightSlot> {
        let norms = [
            ctx.storage_zeroed(&self.norms[0], d as u64 * 4)?,
            ctx.storage_zeroed(&self.norms[1], d as u64 * 4)?,
        ];
        let mut bufs = Vec::with_capacity(7);
        for roles in &self.bufs {
            let mut b: RoleBuffers = Default::default();
            for (r, spec) in roles.iter().enumerate() {
                if let Some((label, bytes)) = spec {
                    b[r] = Some(ctx.storage_zeroed(label, *bytes)?);
                }
            }
            bufs.push(b);
        }
        Ok(WeightSlot {
            blocks: self.blocks.clone(),
            grad: self.grad,
            norms,
            bufs,
            holds: None,
        })
    }
}

/// The slots of a trainer for `spans`, sized before anything is allocated: one window
/// slot per block of the longest span (slot i holds the i-th block of the span that
/// trains, so it is sized by the i-th blocks of all spans), and a stream slot for the
/// blocks some span leaves outside it (run forward only, one at a time, from host
/// copies); none when one span covers every block (a trainer for every block).
fn slot_specs(
    file: &ModelFile,
    opts: &TrainOptions,
    spans: &[Span],
    cover: &Cover,
) -> Result<(Vec<SlotSpec>, Option<SlotSpec>)> {
    let mut window = Vec::with_capacity(cover.cap);
    for i in 0..cover.cap {
        let mut blocks: Vec<usize> = spans
            .iter()
            .filter(|s| i < s.layers.len())
            .map(|s| s.layers.start + i)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        window.push(SlotSpec::new(
            file,
            opts,
            &format!("window slot {i}"),
            blocks,
            true,
        )?);
    }
    let streamed: Vec<usize> = (0..cover.depth)
        .filter(|l| spans.iter().any(|s| !s.layers.contains(l)))
        .collect();
    let stream = if streamed.is_empty() {
        None
    } else {
        Some(SlotSpec::new(file, opts, "stream slot", streamed, false)?)
    };
    Ok((window, stream))
}

/// An allocated slot ([`SlotSpec`]) and the block it holds, with that block's weights
/// read from it.
struct WeightSlot {
    blocks: Vec<usize>,
    grad: bool,
    norms: [wgpu::Buffer; 2],
    bufs: Vec<RoleBuffers>,
    holds: Option<(usize, BlockWeights)>,
}

impl WeightSlot {
    fn bytes(&self) -> u64 {
        let bufs = self.bufs.iter().flatten().flatten();
        self.norms.iter().chain(bufs).map(wgpu::Buffer::size).sum()
    }

    /// The weights of block `l` if this slot holds it.
    fn weights(&self, l: usize) -> Option<&BlockWeights> {
        self.holds.as_ref().filter(|h| h.0 == l).map(|h| &h.1)
    }

    /// Writes block `l` into this slot. A queue write lands before the next submission:
    /// the commands reading the block it held must have been submitted.
    fn fill(&mut self, queue: &wgpu::Queue, l: usize, host: &HostBlock) -> Result<()> {
        if !self.blocks.contains(&l) {
            return Err(Error::Invalid(format!(
                "block {l} was not planned for this slot (blocks {:?})",
                self.blocks
            )));
        }
        self.holds = None;
        for (b, n) in self.norms.iter().zip(&host.norms) {
            queue.write_buffer(b, 0, bytemuck::cast_slice(n));
        }
        let mut w = Vec::with_capacity(7);
        for (h, b) in host.w.iter().zip(&self.bufs) {
            w.push(h.write(queue, b, self.grad)?);
        }
        let weights = BlockWeights {
            attn_norm: self.norms[0].clone(),
            ffn_norm: self.norms[1].clone(),
            w,
        };
        self.holds = Some((l, weights));
        Ok(())
    }
}

/// One adapter tensor with its gradient and moments.
struct Trained {
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    n: usize,
}

/// What a set of spans needs: blocks `0..depth` (held on the host; frozen ones run
/// forward only), `cap` blocks' activations and window slots (the longest span), the
/// input-gradient side of the blocks any span trains, and the exit buffers when a span
/// ends at an exit.
struct Cover {
    depth: usize,
    cap: usize,
    grad: Vec<bool>,
    exit: bool,
    /// A span starts above block 0: its input is read back into the prefix cache.
    prefix: bool,
}

impl Cover {
    fn of(n_layers: usize, spans: &[Span]) -> Result<Self> {
        let mut c = Cover {
            depth: 0,
            cap: 0,
            grad: vec![false; n_layers],
            exit: false,
            prefix: false,
        };
        for s in spans {
            if s.layers.is_empty() || s.layers.end > n_layers {
                return Err(Error::Invalid(format!(
                    "window {:?} does not fit {n_layers} blocks",
                    s.layers
                )));
            }
            c.depth = c.depth.max(s.layers.end);
            c.cap = c.cap.max(s.layers.len());
            c.exit |= s.exit.is_some();
            c.prefix |= s.layers.start > 0;
            for l in s.layers.clone() {
                c.grad[l] = true;
            }
        }
        if spans.is_empty() {
            return Err(Error::Invalid("no windows to plan".into()));
        }
        Ok(c)
    }
}

/// LoRA training on the GPU.
pub struct GpuTrainer<'c> {
    ctx: &'c GpuContext,
    pub config: LlamaConfig,
    lora_config: LoraConfig,
    opts: TrainOptions,
    split: HeadSplit,
    mm: QMatmul,
    /// Blocks `0..cover.depth` on the host, as they are uploaded, where they may be
    /// uploaded again (None: a block only ever held by its own window slot).
    host: Vec<Option<HostBlock>>,
    /// Slot i holds the i-th block of the window that trains; the blocks outside the
    /// window slots run from the stream slot, one at a time.
    window_slots: Vec<WeightSlot>,
    stream: Option<WeightSlot>,
    cover: Cover,
    output_norm: wgpu::Buffer,
    /// The LM head in chunks of `split.chunk` vocabulary rows, as the file stores it.
    head: Vec<GpuWeight>,
    gather: Gather,
    rope: RopeTable,
    /// One per block of the longest span, or one shared set with `recompute`.
    acts: Vec<BlockActs>,
    /// Block inputs with `recompute` (one per block of the longest span), else empty.
    inputs: Vec<wgpu::Buffer>,
    s: Scratch,
    /// `pairs[l][proj]` = indices into `trained` of (A, B).
    pairs: Vec<Vec<Option<(usize, usize)>>>,
    trained: Vec<Trained>,
    /// Per exit: its block count and the indices into `trained` of (A, B).
    exits: Vec<(usize, (usize, usize))>,
    /// The exit adapter's u and output z (when a planned span ends at an exit).
    exit_bufs: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// What each of `trained` belongs to, and its AdamW steps (bias correction when
    /// tensors train in windows, kept as [`crate::train::CpuBackend`] keeps them).
    owners: Vec<Owner>,
    steps: Vec<u64>,
    /// The spans this trainer was planned for, and the one trained now (None: every block
    /// to the last exit, or the head).
    windows: Vec<Span>,
    span: Option<Span>,
    /// Hidden states entering a window, kept in host memory as on the CPU backend, with
    /// per-block optimizer-update counts that say when one is stale.
    pub cache: PrefixCache,
    versions: Vec<u64>,
    /// Where a window's input is read back into the cache (when one starts above block 0).
    prefix_read: Option<wgpu::Buffer>,
    /// What a profiling trainer accumulates (None: a trainer that trains).
    stats: Option<Stats>,
    plan: MemoryPlan,
    allocated: u64,
}

impl<'c> GpuTrainer<'c> {
    /// Every buffer [`GpuTrainer::new`] allocates, from the file's header, the LoRA setting,
    /// the options and the device's limits (which decide how the head is split). Sparse
    /// projections of a compressed file are also read: their codes size the transposed
    /// copies the input gradient uses.
    pub fn plan(
        file: &ModelFile,
        lora: &LoraConfig,
        opts: &TrainOptions,
        limits: &wgpu::Limits,
    ) -> Result<MemoryPlan> {
        let all = Span {
            layers: 0..file.config.n_layers,
            exit: None,
        };
        plan_spans(file, lora, 0, opts, limits, &[all], None)
    }

    /// The GPU memory of adaptive layer tuning over `windows` (what
    /// [`GpuTrainer::with_windows`] allocates, with one exit per exit index the windows
    /// name): window slots for the longest window, each as large as the blocks it takes
    /// (with their input-gradient side: sparse transposed copies), one stream slot as large
    /// as the largest block some window leaves outside it (the frozen blocks run forward
    /// only, one at a time, without saved activations), activations for the longest
    /// window, all LoRA and exit state, and the exit's u and output.
    pub fn plan_windows(
        file: &ModelFile,
        lora: &LoraConfig,
        opts: &TrainOptions,
        limits: &wgpu::Limits,
        windows: &[Span],
    ) -> Result<MemoryPlan> {
        let n_exits = windows
            .iter()
            .filter_map(|w| w.exit)
            .max()
            .map_or(0, |k| k + 1);
        plan_spans(file, lora, n_exits, opts, limits, windows, None)
    }

    /// Plans, checks the plan against the device's limits, then uploads the frozen weights
    /// and `lora` and allocates everything else once. Trains every block (to the last exit
    /// when `lora` has one after the last block); [`GpuTrainer::with_windows`] for layer
    /// windows.
    pub fn new(
        ctx: &'c GpuContext,
        file: &ModelFile,
        lora: &Lora<f32>,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let afters: Vec<usize> = lora.exits.iter().map(|e| e.after).collect();
        let all = default_span(file.config.n_layers, &afters);
        Self::with_windows(ctx, file, lora, opts, &[all])
    }

    /// Like [`GpuTrainer::new`], sized for adaptive layer tuning over `windows` (spans
    /// whose exits index `lora.exits`): [`Backend::set_span`] then accepts any of them.
    pub fn with_windows(
        ctx: &'c GpuContext,
        file: &ModelFile,
        lora: &Lora<f32>,
        opts: &TrainOptions,
        windows: &[Span],
    ) -> Result<Self> {
        Self::build(ctx, file, lora, opts, windows, None)
    }

    /// The adapter of a profiling trainer: rank 1 on q, no dropout, B = 0, so the model
    /// computes exactly the base model's outputs and base-weight gradients (the trainer
    /// needs some adapter; this is the smallest).
    fn stats_lora(c: &LlamaConfig) -> Lora<f32> {
        let lc = LoraConfig {
            rank: 1,
            alpha: 1.0,
            dropout: 0.0,
            targets: vec![Proj::Q],
        };
        Lora::new(c, lc, 0)
    }

    /// The plan of [`GpuTrainer::for_statistics`]: a trainer for every block with the
    /// rank-1 profiling adapter, plus one f32 buffer per statistics matrix and block and
    /// their readback buffer.
    pub fn plan_statistics(
        file: &ModelFile,
        pass: StatsPass,
        opts: &TrainOptions,
        limits: &wgpu::Limits,
    ) -> Result<MemoryPlan> {
        let c = &file.config;
        let lc = Self::stats_lora(c).config;
        let all = default_span(c.n_layers, &[]);
        plan_spans(file, &lc, 0, opts, limits, &[all], Some(pass))
    }

    /// A trainer that measures calibration statistics for profiling
    /// ([`GpuTrainer::collect_hessians`] or [`GpuTrainer::fisher_diagonal`], by `pass`)
    /// instead of training; planned as [`GpuTrainer::plan_statistics`].
    pub fn for_statistics(
        ctx: &'c GpuContext,
        file: &ModelFile,
        pass: StatsPass,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let lora = Self::stats_lora(&file.config);
        let all = default_span(file.config.n_layers, &[]);
        Self::build(ctx, file, &lora, opts, &[all], Some(pass))
    }

    fn build(
        ctx: &'c GpuContext,
        file: &ModelFile,
        lora: &Lora<f32>,
        opts: &TrainOptions,
        windows: &[Span],
        pass: Option<StatsPass>,
    ) -> Result<Self> {
        let c = file.config.clone();
        let lc = lora.config.clone();
        check_adapters(&c, lora)?;
        let afters: Vec<usize> = lora.exits.iter().map(|e| e.after).collect();
        for w in windows {
            check_span(c.n_layers, &afters, w)?;
        }
        let cover = Cover::of(c.n_layers, windows)?;
        let exits = lora.exits.len();
        let plan = plan_spans(file, &lc, exits, opts, &ctx.limits, windows, pass)?;
        plan.check(&ctx.limits)?;
        let split = head_split(&c, opts, &ctx.limits)?;
        let t = opts.seq_len;
        let (d, vocab) = (c.hidden, c.vocab);
        let mut allocated = 0u64;
        let mut track = |b: wgpu::Buffer| {
            allocated += b.size();
            b
        };
        let zeros = |name: &str, len: usize| ctx.storage_zeroed(name, len as u64 * 4);
        let norm = |name: &str| -> Result<wgpu::Buffer> {
            let w = file.tensor_f32(name, &[d])?;
            ctx.storage(name, bytemuck::cast_slice(&w))
        };

        // Slots first (sized as planned), then the blocks: a slot only this block goes
        // into takes it now, and the host keeps the blocks a slot may take again (the
        // first window is uploaded once the trainer exists).
        let (window_specs, stream_spec) = slot_specs(file, opts, windows, &cover)?;
        let mut window_slots = Vec::with_capacity(window_specs.len());
        for spec in &window_specs {
            window_slots.push(spec.alloc(ctx, d)?);
        }
        let stream = match &stream_spec {
            Some(spec) => Some(spec.alloc(ctx, d)?),
            None => None,
        };
        // Slots, the head and the rope table are allocated by their types.
        let mut untracked: u64 = window_slots
            .iter()
            .chain(&stream)
            .map(WeightSlot::bytes)
            .sum();
        let mut host_blocks = Vec::with_capacity(cover.depth);
        for l in 0..cover.depth {
            let hb = HostBlock::read(file, l, opts, cover.grad[l])?;
            let mut again = stream.as_ref().is_some_and(|s| s.blocks.contains(&l));
            for slot in window_slots.iter_mut().filter(|s| s.blocks.contains(&l)) {
                if slot.blocks.len() == 1 {
                    slot.fill(&ctx.queue, l, &hb)?;
                } else {
                    again = true;
                }
            }
            host_blocks.push(again.then_some(hb));
        }
        let output_norm = track(norm("output_norm.weight")?);
        let (head_name, head_lay, _) = head_layout(file, opts)?;
        let host = HostHead::read(file, head_name, head_lay)?;
        let head = upload_head(ctx, host.source(), (vocab, d), split.chunk)
            .map_err(|e| Error::Gpu(format!("{head_name}: {e}")))?;
        drop(host);
        untracked += head.iter().map(GpuWeight::bytes).sum::<u64>();
        let embd = "token_embd.weight";
        let info = file
            .gguf
            .tensor(embd)
            .ok_or_else(|| Error::Model(format!("missing tensor {embd}")))?;
        let gather = cpu_gather(file, embd, info.ty, vocab, d)?;
        let rope = RopeTable::new(ctx, c.head_dim, t, c.rope_theta as f64)?;
        untracked += rope.buffer.size();

        let sets = if opts.recompute { 1 } else { cover.cap };
        let mut inputs = Vec::new();
        let mut block_inputs = Vec::with_capacity(cover.cap);
        for i in 0..cover.cap {
            block_inputs.push(track(zeros(&format!("block {i} input"), t * d)?));
        }
        let mut acts = Vec::with_capacity(sets);
        let mut block_inputs = block_inputs.into_iter();
        for set in 0..sets {
            let mut b = Vec::with_capacity(13);
            for (name, w) in block_widths(&c) {
                b.push(track(zeros(&format!("block {set} {name}"), t * w)?));
            }
            let mut u = vec![None; 7];
            for &p in &lc.targets {
                let name = format!("block {set} lora u {}", PROJ_NAMES[p.index()]);
                u[p.index()] = Some(track(zeros(&name, t * lc.rank)?));
            }
            let x = if opts.recompute {
                // The shared set's input is a copy of the kept input of the block it runs.
                track(zeros("recompute input", t * d)?)
            } else {
                block_inputs.next().expect("one input per layer")
            };
            let mut b = b.into_iter();
            let mut next = || b.next().expect("13 activation buffers");
            acts.push(BlockActs {
                x,
                n1: next(),
                rstd1: next(),
                q: next(),
                k: next(),
                v: next(),
                attn: next(),
                lse: next(),
                h: next(),
                n2: next(),
                rstd2: next(),
                gate: next(),
                up: next(),
                act: next(),
                u,
            });
        }
        if opts.recompute {
            inputs.extend(block_inputs);
        }

        let mut sc = Vec::with_capacity(14);
        for (name, w) in scratch_widths(&c, lc.rank) {
            sc.push(track(zeros(name, t * w)?));
        }
        let mut sc = sc.into_iter();
        let mut next = || sc.next().expect("14 scratch buffers");
        let (spare, o, drop_, du, delta, dx, dn, dtmp, dact, dgate, dup, dattn, dq, dk) = (
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
        );
        // In `Lora::tensors_mut` order, so checkpoints move between this and the CPU.
        let mut trained = Vec::new();
        let mut owners = Vec::new();
        let mut pairs = Vec::with_capacity(c.n_layers);
        let mut lens = Vec::new();
        let mut upload = |what: String, vals: &[f32], owner: Owner| -> Result<usize> {
            let n = vals.len();
            trained.push(Trained {
                param: track(ctx.storage(&what, bytemuck::cast_slice(vals))?),
                grad: track(zeros(&format!("{what} grad"), n)?),
                m: track(zeros(&format!("{what} m"), n)?),
                v: track(zeros(&format!("{what} v"), n)?),
                n,
            });
            owners.push(owner);
            lens.push(n);
            Ok(trained.len() - 1)
        };
        for (l, ll) in lora.layers.iter().enumerate() {
            let mut row = vec![None; 7];
            for p in Proj::ALL.into_iter().filter(|p| lc.targets.contains(p)) {
                let pair = ll[p.index()].as_ref().ok_or_else(|| {
                    Error::Invalid(format!("LoRA adapter: layer {l} has no {p:?} adapter"))
                })?;
                let what = |ab: &str| format!("lora {} (layer {l}) {ab}", PROJ_NAMES[p.index()]);
                let ia = upload(what("A"), &pair.a, Owner::Layer(l))?;
                let ib = upload(what("B"), &pair.b, Owner::Layer(l))?;
                row[p.index()] = Some((ia, ib));
            }
            pairs.push(row);
        }
        let mut exits = Vec::with_capacity(lora.exits.len());
        for (k, e) in lora.exits.iter().enumerate() {
            let ia = upload(format!("exit {k} adapter A"), &e.pair.a, Owner::Exit(k))?;
            let ib = upload(format!("exit {k} adapter B"), &e.pair.b, Owner::Exit(k))?;
            exits.push((e.after, (ia, ib)));
        }
        let exit_bufs = if cover.exit {
            Some((
                track(zeros("exit adapter u", t * lc.rank)?),
                track(zeros("exit output", t * d)?),
            ))
        } else {
            None
        };
        let readback = |name: &str, bytes: u64| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let prefix_read = cover
            .prefix
            .then(|| track(readback("prefix readback", (t * d * 4) as u64)));
        let head_pos = SegmentBuffers::zeroed(ctx, "head positions", t)?;
        untracked += [&head_pos.uniq, &head_pos.starts, &head_pos.order]
            .map(wgpu::Buffer::size)
            .iter()
            .sum::<u64>();
        let s = Scratch {
            spare,
            o,
            drop: drop_,
            du,
            delta,
            dx,
            dn,
            dtmp,
            dact,
            dgate,
            dup,
            dattn,
            dq,
            dk,
            dv: track(zeros("dv", t * c.kv_dim())?),
            y: track(zeros("final x", t * d)?),
            yn: track(zeros("final normed x", t * d)?),
            rstd_out: track(zeros("final rstd", t)?),
            head_pos,
            targets: track(zeros("targets", t)?),
            loss: track(zeros("row losses", t)?),
            ce_lse: track(zeros("head lse", t)?),
            ce_stats: track(zeros("head stats", 3 * t)?),
            ce_scratch: track(zeros("logits chunk", t * split.chunk)?),
            tensor_read: track(readback(
                "tensor readback",
                (lens.iter().copied().max().unwrap_or(1) * 4) as u64,
            )),
            norm_partials: track(zeros("grad norm partials", norm_scratch_len(lens))?),
            norm2: track(zeros("grad norm", 1)?),
            loss_read: track(readback("loss readback", (t * 4) as u64)),
            norm_read: track(readback("norm readback", 4)),
        };
        let stats = match pass {
            Some(pass) => {
                let mats = pass.matrices(&c);
                let mut per_block = Vec::with_capacity(c.n_layers);
                for l in 0..c.n_layers {
                    let mut bufs = Vec::with_capacity(mats.len());
                    for (name, rows, cols) in &mats {
                        bufs.push(track(zeros(&format!("block {l} {name}"), rows * cols)?));
                    }
                    per_block.push(bufs);
                }
                let largest = mats.iter().map(|m| m.1 * m.2).max().unwrap_or(1);
                let read = track(readback("statistics readback", (largest * 4) as u64));
                Some(Stats {
                    pass,
                    mats: per_block,
                    read,
                    scale: 1.0,
                })
            }
            None => None,
        };
        let allocated = allocated + untracked;
        let mut trainer = Self {
            ctx,
            mm: QMatmul {
                path: opts.path.unwrap_or_else(|| default_path(ctx)),
                ..QMatmul::new(ctx)
            },
            config: c,
            lora_config: lc,
            opts: opts.clone(),
            split,
            host: host_blocks,
            window_slots,
            stream,
            cover,
            output_norm,
            head,
            gather,
            rope,
            acts,
            inputs,
            s,
            pairs,
            steps: vec![0; trained.len()],
            trained,
            exits,
            exit_bufs,
            owners,
            windows: windows.to_vec(),
            span: None,
            cache: PrefixCache::with_max_bytes(CpuBackend::DEFAULT_CACHE_BYTES),
            versions: vec![0; file.config.n_layers],
            prefix_read,
            stats,
            plan,
            allocated,
        };
        trainer.load(windows[0].layers.clone())?;
        Ok(trainer)
    }

    /// The plan this trainer was built from.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Bytes of the GPU buffers this trainer allocated; all are allocated at construction,
    /// so this is also the peak.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// The options this trainer was built with.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// Chunks the LM head is held in, and vocabulary rows per chunk (= per logits chunk).
    pub fn head_split(&self) -> (usize, usize) {
        (self.split.chunks, self.split.chunk)
    }

    fn check_row(&self, row: &Row) -> Result<()> {
        row.check(
            self.config.vocab,
            self.opts.seq_len,
            "the GPU trainer's planned sequence length",
        )
    }

    /// The embedding rows of `tokens`, written into `x`.
    fn write_embedding(&self, tokens: &[u32], x: &wgpu::Buffer) -> Result<()> {
        let d = self.config.hidden;
        let Gather::Cpu {
            ty,
            row_bytes,
            bytes,
        } = &self.gather
        else {
            return Err(Error::Invalid(
                "GPU trainer: embedding not on the CPU".into(),
            ));
        };
        let mut rows = vec![0.0f32; tokens.len() * d];
        for (row, &tok) in rows.chunks_mut(d).zip(tokens) {
            let src = &bytes[tok as usize * row_bytes..][..*row_bytes];
            gq::dequantize(*ty, src, row).map_err(Error::Invalid)?;
        }
        self.ctx
            .queue
            .write_buffer(x, 0, bytemuck::cast_slice(&rows));
        Ok(())
    }

    fn shape(&self, p: Proj, t: usize) -> LoraShape {
        let (k, n) = p.shape(&self.config);
        LoraShape {
            m: t,
            k,
            n,
            rank: self.lora_config.rank,
            scale: self.lora_config.alpha / self.lora_config.rank as f32,
        }
    }

    fn dropout(&self, seed: Option<u64>, l: usize, p: Proj) -> Option<crate::reference::Dropout> {
        seed.and_then(|s| lora_dropout(s, l, p, self.lora_config.dropout))
    }

    /// y = x·Wᵀ (+ LoRA of x, saving u) for block `l`'s projection `p` (weights `w`).
    #[allow(clippy::too_many_arguments)]
    fn proj_forward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        (l, w): (usize, &BlockWeights),
        p: Proj,
        a: &BlockActs,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let ctx = self.ctx;
        w.w[p.index()].encode_nt(&self.mm, ctx, enc, x, y, t)?;
        if let (Some((ia, ib)), Some(u)) = (self.pairs[l][p.index()], &a.u[p.index()]) {
            let ab = (&self.trained[ia].param, &self.trained[ib].param);
            let drop = self.dropout(seed, l, p).map(|d| (d, &self.s.drop));
            encode_lora_forward(ctx, enc, x, ab, drop, u, y, self.shape(p, t))?;
        }
        Ok(())
    }

    /// Block `l` (weights `w`) forward on t rows from `a.x` into `out`, keeping its
    /// activations in `a`.
    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        w: &BlockWeights,
        a: &BlockActs,
        out: &wgpu::Buffer,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.config);
        let (d, eps) = (c.hidden, c.norm_eps);
        let lw = (l, w);
        let o = &self.s.o;
        encode_rmsnorm_forward(ctx, enc, &a.x, &w.attn_norm, &a.n1, &a.rstd1, t, d, eps)?;
        self.proj_forward(enc, lw, Proj::Q, a, &a.n1, &a.q, t, seed)?;
        self.proj_forward(enc, lw, Proj::K, a, &a.n1, &a.k, t, seed)?;
        self.proj_forward(enc, lw, Proj::V, a, &a.n1, &a.v, t, seed)?;
        let style = c.rope_style;
        encode_rope(ctx, enc, &a.q, &self.rope, t, c.n_heads, 0, style, false)?;
        encode_rope(ctx, enc, &a.k, &self.rope, t, c.n_kv_heads, 0, style, false)?;
        let sh = self.attn_shape(t);
        encode_attention_forward(ctx, enc, &a.q, &a.k, &a.v, &a.attn, &a.lse, sh)?;
        self.proj_forward(enc, lw, Proj::O, a, &a.attn, o, t, seed)?;
        let bytes = (t * d * 4) as u64;
        enc.copy_buffer_to_buffer(&a.x, 0, &a.h, 0, bytes);
        encode_col_sums_add(ctx, enc, o, 1, t * d, &a.h)?;
        encode_rmsnorm_forward(ctx, enc, &a.h, &w.ffn_norm, &a.n2, &a.rstd2, t, d, eps)?;
        self.proj_forward(enc, lw, Proj::Gate, a, &a.n2, &a.gate, t, seed)?;
        self.proj_forward(enc, lw, Proj::Up, a, &a.n2, &a.up, t, seed)?;
        encode_swiglu_forward(ctx, enc, &a.gate, &a.up, &a.act, t * c.ffn)?;
        self.proj_forward(enc, lw, Proj::Down, a, &a.act, o, t, seed)?;
        enc.copy_buffer_to_buffer(&a.h, 0, out, 0, bytes);
        encode_col_sums_add(ctx, enc, o, 1, t * d, out)
    }

    fn attn_shape(&self, t: usize) -> AttnShape {
        let c = &self.config;
        AttnShape {
            t,
            s: t,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        }
    }

    /// dx (+)= dy·W for projection `p` (`acc`: added, else written) and the LoRA terms:
    /// dx += LoRA's input gradient, dA/dB accumulated.
    #[allow(clippy::too_many_arguments)]
    fn proj_backward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        p: Proj,
        a: &BlockActs,
        (dy, x): (&wgpu::Buffer, &wgpu::Buffer),
        dx: &wgpu::Buffer,
        acc: bool,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let ctx = self.ctx;
        let w = &self.block(l)?.w[p.index()];
        if let Some(st) = self.stats.as_ref().filter(|s| s.pass == StatsPass::Fisher) {
            // The base weight's gradient of this row is dyᵀ·x; its square joins the sum.
            let (k, n) = p.shape(&self.config);
            let f = &st.mats[l][p.index()];
            encode_fisher_acc(ctx, enc, dy, x, f, t, (n, k), st.scale)?;
        }
        if acc {
            let k = p.shape(&self.config).0;
            w.encode_nn(&self.mm, ctx, enc, dy, &self.s.dtmp, t)?;
            encode_col_sums_add(ctx, enc, &self.s.dtmp, 1, t * k, dx)?;
        } else {
            w.encode_nn(&self.mm, ctx, enc, dy, dx, t)?;
        }
        if let (Some((ia, ib)), Some(u)) = (self.pairs[l][p.index()], &a.u[p.index()]) {
            let (ta, tb) = (&self.trained[ia], &self.trained[ib]);
            let drop = self.dropout(seed, l, p).map(|d| (d, &self.s.drop));
            encode_lora_backward(
                ctx,
                enc,
                dy,
                (x, u),
                (&ta.param, &tb.param),
                drop,
                &self.s.du,
                (dx, &ta.grad, &tb.grad),
                self.shape(p, t),
            )?;
        }
        Ok(())
    }

    /// Block `l` backward: `s.dx` holds the gradient of the block's output and receives
    /// the gradient of its input.
    fn block_backward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        a: &BlockActs,
        t: usize,
        seed: Option<u64>,
    ) -> Result<()> {
        let (ctx, c, w, s) = (self.ctx, &self.config, self.block(l)?, &self.s);
        let d = c.hidden;
        // out = h + down(act): dh = dout + ∂ffn.
        self.proj_backward(
            enc,
            l,
            Proj::Down,
            a,
            (&s.dx, &a.act),
            &s.dact,
            false,
            t,
            seed,
        )?;
        let (gate, up) = (&a.gate, &a.up);
        encode_swiglu_backward(ctx, enc, &s.dact, gate, up, &s.dgate, &s.dup, t * c.ffn)?;
        self.proj_backward(
            enc,
            l,
            Proj::Gate,
            a,
            (&s.dgate, &a.n2),
            &s.dn,
            false,
            t,
            seed,
        )?;
        self.proj_backward(enc, l, Proj::Up, a, (&s.dup, &a.n2), &s.dn, true, t, seed)?;
        let fnorm = &w.ffn_norm;
        encode_rmsnorm_backward(ctx, enc, &s.dn, &a.h, fnorm, &a.rstd2, &s.dx, None, t, d)?;
        // h = x + o(attn): dx = dh + ∂attention.
        self.proj_backward(
            enc,
            l,
            Proj::O,
            a,
            (&s.dx, &a.attn),
            &s.dattn,
            false,
            t,
            seed,
        )?;
        let sh = self.attn_shape(t);
        encode_attention_backward(
            ctx,
            enc,
            &s.dattn,
            (&a.q, &a.k, &a.v),
            (&a.attn, &a.lse),
            &s.delta,
            (&s.dq, &s.dk, &s.dv),
            sh,
        )?;
        let style = c.rope_style;
        encode_rope(ctx, enc, &s.dq, &self.rope, t, c.n_heads, 0, style, true)?;
        encode_rope(ctx, enc, &s.dk, &self.rope, t, c.n_kv_heads, 0, style, true)?;
        self.proj_backward(enc, l, Proj::Q, a, (&s.dq, &a.n1), &s.dn, false, t, seed)?;
        self.proj_backward(enc, l, Proj::K, a, (&s.dk, &a.n1), &s.dn, true, t, seed)?;
        self.proj_backward(enc, l, Proj::V, a, (&s.dv, &a.n1), &s.dn, true, t, seed)?;
        let anorm = &w.attn_norm;
        encode_rmsnorm_backward(ctx, enc, &s.dn, &a.x, anorm, &a.rstd1, &s.dx, None, t, d)
    }

    fn head(&self) -> Head<'_> {
        Head {
            chunks: &self.head,
            vocab: self.config.vocab,
            d: self.config.hidden,
        }
    }

    /// The acts set of the span's `i`-th block.
    fn set(&self, i: usize) -> &BlockActs {
        if self.opts.recompute {
            &self.acts[0]
        } else {
            &self.acts[i]
        }
    }

    /// Where the span's `i`-th block's input is kept.
    fn input(&self, i: usize) -> &wgpu::Buffer {
        if self.opts.recompute {
            &self.inputs[i]
        } else {
            &self.acts[i].x
        }
    }

    /// The span a step trains now: the window set, or every block to the last exit (or
    /// the model's head when there is no exit after the last block).
    fn current_span(&self) -> Span {
        self.span.clone().unwrap_or_else(|| {
            let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
            default_span(self.config.n_layers, &afters)
        })
    }

    /// Refuses a span this trainer's buffers were not planned for: evaluating it needs its
    /// blocks on the host (they run from the window or the stream slot), training it
    /// (`train`) each of its blocks planned for the window slot it goes into (sized for
    /// it, with its gradient side) and activations for all of them.
    fn check_planned(&self, s: &Span, train: bool) -> Result<()> {
        let slots = &self.window_slots;
        let trainable = (s.layers.clone().enumerate())
            .all(|(i, l)| slots.get(i).is_some_and(|w| w.blocks.contains(&l)));
        let ok = s.layers.end <= self.cover.depth
            && (trainable || !train)
            && (s.exit.is_none() || self.exit_bufs.is_some());
        if ok {
            return Ok(());
        }
        let planned: Vec<_> = self.windows.iter().map(|w| (&w.layers, w.exit)).collect();
        Err(Error::Invalid(format!(
            "window {:?} (exit {:?}) was not planned for this GPU trainer (planned: {planned:?}); \
             build it with GpuTrainer::with_windows for the windows it will train",
            s.layers, s.exit
        )))
    }

    /// Forward over one row up to the per-row losses; with `train`, the backward pass too
    /// (gradient of `grad_scale`·Σ loss). Returns the summed loss.
    async fn row(&mut self, row: &Row, train: Option<(f64, Option<u64>)>) -> Result<LossSum> {
        self.check_row(row)?;
        let n = row.n_targets();
        if n == 0 {
            return Ok(LossSum::default());
        }
        let span = self.current_span();
        self.check_planned(&span, train.is_some())?;
        if train.is_some() {
            self.load(span.layers.clone())?;
        }
        let start = span.layers.start;
        self.prefix(&row.tokens, start).await?;
        // Without a backward pass the span's blocks run as the frozen ones do.
        let window = if train.is_some() {
            span.layers.clone()
        } else {
            span.layers.end..span.layers.end
        };
        let t = row.tokens.len();
        // Only the n rows with a target reach the head: their positions (ascending, so
        // the segments' distinct ids are the positions in order) and their targets.
        let (positions, targets): (Vec<u32>, Vec<Option<u32>>) = (0..t as u32)
            .zip(row.targets.iter().copied())
            .filter(|(_, tg)| tg.is_some())
            .unzip();
        let words = target_words(&targets, self.config.vocab)?;
        (self.ctx.queue).write_buffer(&self.s.targets, 0, bytemuck::cast_slice(&words));
        let ctx = self.ctx;
        (self.s.head_pos).write(&ctx.queue, &Segments::new(&positions)?)?;
        let mut enc = self.ctx.encoder();
        self.frozen_blocks(&mut enc, start..window.start, t)?;
        let c = &self.config;
        let exit = match span.exit {
            Some(k) => {
                let (_, (ia, ib)) = self
                    .exits
                    .get(k)
                    .ok_or_else(|| Error::Invalid(format!("the GPU trainer has no exit {k}")))?;
                let (u, z) = self
                    .exit_bufs
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("no exit buffers were planned".into()))?;
                Some((&self.trained[*ia], &self.trained[*ib], u, z))
            }
            None => None,
        };
        let (d, nw) = (c.hidden, window.len());
        let seed = train.and_then(|(_, s)| s);
        let bytes = (t * d * 4) as u64;
        if window.is_empty() {
            enc.copy_buffer_to_buffer(self.input(0), 0, &self.s.y, 0, bytes);
        }
        for (i, l) in window.clone().enumerate() {
            let a = self.set(i);
            if self.opts.recompute {
                enc.copy_buffer_to_buffer(self.input(i), 0, &a.x, 0, bytes);
            }
            let out = if i + 1 < nw {
                self.input(i + 1)
            } else {
                &self.s.y
            };
            self.block_forward(&mut enc, l, self.block(l)?, a, out, t, seed)?;
        }
        let s = &self.s;
        let eps = c.norm_eps;
        // The exit: z = y + s·B·A·y (a LoRA on an identity projection, no dropout).
        let exit_shape = LoraShape {
            k: d,
            n: d,
            ..self.shape(Proj::Q, t)
        };
        let top = match exit {
            Some((ta, tb, u, z)) => {
                enc.copy_buffer_to_buffer(&s.y, 0, z, 0, bytes);
                let ab = (&ta.param, &tb.param);
                encode_lora_forward(ctx, &mut enc, &s.y, ab, None, u, z, exit_shape)?;
                z
            }
            None => &s.y,
        };
        // The head's rows gathered (the final norm is per row, so it runs on them alone),
        // into the spare rows: free until the blocks' backward.
        let (pos, rows) = (&s.head_pos, &s.spare);
        encode_embedding_forward(ctx, &mut enc, &pos.uniq, top, rows, n, d)?;
        let norm = &self.output_norm;
        encode_rmsnorm_forward(ctx, &mut enc, rows, norm, &s.yn, &s.rstd_out, n, d, eps)?;
        let head = self.head();
        encode_cross_entropy_forward(
            ctx,
            &mut enc,
            &self.mm,
            &s.yn,
            &head,
            &s.targets,
            (&s.ce_scratch, &s.ce_stats),
            (&s.loss, &s.ce_lse),
            n,
        )?;
        if let Some((grad_scale, _)) = train {
            let rows_bytes = Some((n * d * 4) as u64);
            enc.clear_buffer(&s.dn, 0, rows_bytes);
            enc.clear_buffer(&s.dx, 0, None);
            // d(grad_scale·Σ loss) = d(mean loss)·grad_scale·n; dtmp is free until the
            // blocks' backward.
            encode_cross_entropy_backward(
                ctx,
                &mut enc,
                &self.mm,
                &s.yn,
                &head,
                (&s.targets, &s.ce_lse),
                (&s.ce_scratch, &s.dtmp),
                &s.dn,
                n,
                ((grad_scale * n as f64) as f32, n),
            )?;
            enc.clear_buffer(&s.dtmp, 0, rows_bytes);
            let rstd = &s.rstd_out;
            encode_rmsnorm_backward(ctx, &mut enc, &s.dn, rows, norm, rstd, &s.dtmp, None, n, d)?;
            // Scattered back to their positions; the other rows' gradient stays 0.
            encode_embedding_backward(ctx, &mut enc, &s.dtmp, pos, &s.dx, d)?;
            if let Some((ta, tb, u, _)) = exit {
                // dy = dz + the adapter's input gradient; dz is read from a copy.
                enc.copy_buffer_to_buffer(&s.dx, 0, &s.dn, 0, bytes);
                encode_lora_backward(
                    ctx,
                    &mut enc,
                    &s.dn,
                    (&s.y, u),
                    (&ta.param, &tb.param),
                    None,
                    &s.du,
                    (&s.dx, &ta.grad, &tb.grad),
                    exit_shape,
                )?;
            }
            for (i, l) in window.clone().enumerate().rev() {
                let a = self.set(i);
                if self.opts.recompute {
                    enc.copy_buffer_to_buffer(self.input(i), 0, &a.x, 0, bytes);
                    let w = self.block(l)?;
                    self.block_forward(&mut enc, l, w, a, &s.spare, t, seed)?;
                }
                self.block_backward(&mut enc, l, a, t, seed)?;
            }
        }
        enc.copy_buffer_to_buffer(&s.loss, 0, &s.loss_read, 0, (n * 4) as u64);
        ctx.queue.submit([enc.finish()]);
        let losses = read_mapped(ctx, &s.loss_read, (n * 4) as u64).await?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        if !sum.is_finite() {
            return Err(Error::Invalid(format!(
                "the loss of a row is {sum} (diverged?)"
            )));
        }
        Ok(LossSum { sum, count: n })
    }

    /// Runs blocks `blocks` frozen (nothing kept, no dropout) in place in the first input,
    /// through the first activation set: from a window slot holding the block, else
    /// through the stream slot (which may submit `enc` and replace it).
    fn frozen_blocks(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        blocks: std::ops::Range<usize>,
        t: usize,
    ) -> Result<()> {
        let bytes = (t * self.config.hidden * 4) as u64;
        for l in blocks {
            self.stream_block(enc, l)?;
            let w = self.block(l)?;
            let a = self.set(0);
            if self.opts.recompute {
                enc.copy_buffer_to_buffer(self.input(0), 0, &a.x, 0, bytes);
            }
            self.block_forward(enc, l, w, a, self.input(0), t, None)?;
        }
        Ok(())
    }

    /// Block `l`'s weights in the slot holding it.
    fn block(&self, l: usize) -> Result<&BlockWeights> {
        (self.window_slots.iter().chain(&self.stream))
            .find_map(|s| s.weights(l))
            .ok_or_else(|| Error::Invalid(format!("block {l} is in no slot of the GPU trainer")))
    }

    /// Writes block `l` from its host copy into `slot` (a window slot or the stream slot).
    fn fill(
        queue: &wgpu::Queue,
        host: &[Option<HostBlock>],
        slot: &mut WeightSlot,
        l: usize,
    ) -> Result<()> {
        let host = host.get(l).and_then(Option::as_ref).ok_or_else(|| {
            Error::Invalid(format!(
                "block {l} has no host copy to upload: it was not planned to move"
            ))
        })?;
        slot.fill(queue, l, host)
    }

    /// Puts the blocks `layers` into the window slots (slot i: the i-th) where they are
    /// not already. Called between submissions, so nothing recorded reads the blocks the
    /// slots held.
    fn load(&mut self, layers: std::ops::Range<usize>) -> Result<()> {
        for (i, l) in layers.clone().enumerate() {
            let slot = self.window_slots.get_mut(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "blocks {layers:?} do not fit this GPU trainer's window slots"
                ))
            })?;
            if slot.weights(l).is_none() {
                Self::fill(&self.ctx.queue, &self.host, slot, l)?;
            }
        }
        Ok(())
    }

    /// Makes sure block `l` is in a slot: a block no window slot holds is uploaded into
    /// the stream slot, unless it is there already. That first submits `enc`, which may
    /// hold commands reading the slot's previous block: a queue write lands before the
    /// next submission, so it must not overtake them.
    fn stream_block(&mut self, enc: &mut wgpu::CommandEncoder, l: usize) -> Result<()> {
        if self.block(l).is_ok() {
            return Ok(());
        }
        let slot = self.stream.as_mut().ok_or_else(|| {
            Error::Invalid(format!(
                "block {l} was not planned to run outside a window on this GPU trainer"
            ))
        })?;
        let prev = std::mem::replace(enc, self.ctx.encoder());
        self.ctx.queue.submit([prev.finish()]);
        Self::fill(&self.ctx.queue, &self.host, slot, l)
    }

    /// Writes the hidden state entering block `start` into the first input: from the
    /// prefix cache where valid (extended by the frozen blocks it lacks), else from the
    /// embeddings through the frozen blocks; a state computed here is read back into the
    /// cache when it has room.
    async fn prefix(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        let ctx = self.ctx;
        let bytes = (tokens.len() * self.config.hidden * 4) as u64;
        let cached = if start > 0 {
            self.cache.lookup(tokens, start, &self.versions)
        } else {
            None
        };
        let from = match cached {
            Some((depth, x)) => {
                let x0 = self.input(0);
                ctx.queue.write_buffer(x0, 0, bytemuck::cast_slice(&x));
                depth
            }
            None => {
                self.write_embedding(tokens, self.input(0))?;
                0
            }
        };
        if from == start {
            return Ok(());
        }
        let mut enc = ctx.encoder();
        self.frozen_blocks(&mut enc, from..start, tokens.len())?;
        let keep = (self.prefix_read.as_ref()).filter(|_| self.cache.has_room(tokens, bytes));
        if let Some(rb) = keep {
            enc.copy_buffer_to_buffer(self.input(0), 0, rb, 0, bytes);
        }
        ctx.queue.submit([enc.finish()]);
        if let Some(rb) = keep {
            let x = read_mapped(ctx, rb, bytes).await?;
            self.cache.store(tokens, start, &self.versions, &x);
        }
        Ok(())
    }

    /// The first n values of `b`, through the planned readback buffer.
    async fn read_tensor(&self, b: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let bytes = (n * 4) as u64;
        let mut enc = self.ctx.encoder();
        enc.copy_buffer_to_buffer(b, 0, &self.s.tensor_read, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        read_mapped(self.ctx, &self.s.tensor_read, bytes).await
    }

    /// The adapters' current values, as the CPU reference holds them.
    pub async fn read_adapters(&self) -> Result<Lora<f32>> {
        self.read_lora(|t| &t.param).await
    }

    /// The accumulated gradients, shaped like the adapters (for tests against the CPU).
    pub async fn gradients(&self) -> Result<Lora<f32>> {
        self.read_lora(|t| &t.grad).await
    }

    /// One buffer of every trained tensor (`which`), shaped like the adapters.
    async fn read_lora(&self, which: fn(&Trained) -> &wgpu::Buffer) -> Result<Lora<f32>> {
        let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
        let mut lora = Lora::new(&self.config, self.lora_config.clone(), 0).with_exits(
            &afters,
            self.config.hidden,
            0,
        );
        for (dst, (_, (ia, ib))) in lora.exits.iter_mut().zip(&self.exits) {
            dst.pair.a = self
                .read_tensor(which(&self.trained[*ia]), dst.pair.a.len())
                .await?;
            dst.pair.b = self
                .read_tensor(which(&self.trained[*ib]), dst.pair.b.len())
                .await?;
        }
        for (l, row) in self.pairs.iter().enumerate() {
            for (pi, pair) in row.iter().enumerate() {
                if let (Some((ia, ib)), Some(dst)) = (pair, lora.layers[l][pi].as_mut()) {
                    dst.a = self
                        .read_tensor(which(&self.trained[*ia]), dst.a.len())
                        .await?;
                    dst.b = self
                        .read_tensor(which(&self.trained[*ib]), dst.b.len())
                        .await?;
                }
            }
        }
        Ok(lora)
    }

    fn clear_grads(&self, enc: &mut wgpu::CommandEncoder) {
        for tr in &self.trained {
            enc.clear_buffer(&tr.grad, 0, None);
        }
    }

    /// This profiling trainer's statistics, zeroed, if it was built for `pass`.
    fn start_stats(&mut self, pass: StatsPass) -> Result<&mut Stats> {
        let ctx = self.ctx;
        let st = (self.stats.as_mut().filter(|s| s.pass == pass)).ok_or_else(|| {
            Error::Invalid(format!(
                "this GPU trainer does not collect {pass:?} statistics: build it with \
                 GpuTrainer::for_statistics"
            ))
        })?;
        let mut enc = ctx.encoder();
        for b in st.mats.iter().flatten() {
            enc.clear_buffer(b, 0, None);
        }
        ctx.queue.submit([enc.finish()]);
        Ok(st)
    }

    /// Every statistics matrix, read back block by block.
    async fn read_stats(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        let ctx = self.ctx;
        let st = (self.stats.as_ref()).ok_or_else(|| Error::Invalid("no statistics".into()))?;
        let mut out = Vec::with_capacity(st.mats.len());
        for block in &st.mats {
            let mut mats = Vec::with_capacity(block.len());
            for b in block {
                let mut enc = ctx.encoder();
                enc.copy_buffer_to_buffer(b, 0, &st.read, 0, b.size());
                ctx.queue.submit([enc.finish()]);
                mats.push(read_mapped(ctx, &st.read, b.size()).await?);
            }
            out.push(mats);
        }
        Ok(out)
    }

    /// XᵀX of every block's projection inputs over `rows` (one forward per row without
    /// dropout, through every block and no head), as the CPU's
    /// [`crate::compress::profile::collect_hessians`] sums them. `progress(done, total)`
    /// counts rows the GPU has finished.
    pub async fn collect_hessians(
        &mut self,
        rows: &[Row],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<LayerHessians>> {
        for row in rows {
            self.check_row(row)?;
        }
        self.start_stats(StatsPass::Hessians)?;
        let (ctx, c) = (self.ctx, &self.config);
        let st = (self.stats.as_ref()).ok_or_else(|| Error::Invalid("no statistics".into()))?;
        let ks = [c.hidden, c.q_dim(), c.hidden, c.ffn];
        let mut tokens = 0;
        for (i, row) in rows.iter().enumerate() {
            let t = row.tokens.len();
            let x0 = self.input(0);
            self.write_embedding(&row.tokens, x0)?;
            let a = self.set(0);
            let mut enc = ctx.encoder();
            for l in 0..c.n_layers {
                if self.opts.recompute {
                    enc.copy_buffer_to_buffer(x0, 0, &a.x, 0, (t * c.hidden * 4) as u64);
                }
                self.block_forward(&mut enc, l, self.block(l)?, a, x0, t, None)?;
                let inputs = [&a.n1, &a.attn, &a.n2, &a.act];
                for ((x, h), &k) in inputs.into_iter().zip(&st.mats[l]).zip(&ks) {
                    encode_gram_acc(ctx, &mut enc, x, h, t, k)?;
                }
            }
            // A word read back: the row is done when progress says so.
            enc.copy_buffer_to_buffer(x0, 0, &st.read, 0, 4);
            ctx.queue.submit([enc.finish()]);
            let probe = read_mapped(ctx, &st.read, 4).await?;
            if !probe[0].is_finite() {
                return Err(Error::Invalid(format!(
                    "calibration row {i}: the hidden state is {} (diverged?)",
                    probe[0]
                )));
            }
            tokens += t;
            progress(i + 1, rows.len());
        }
        let sums = self.read_stats().await?;
        sums.into_iter()
            .map(|m| {
                let [n1, attn, n2, act]: [Vec<f32>; 4] = m
                    .try_into()
                    .map_err(|_| Error::Invalid("four Hessians per block".into()))?;
                let h = |k: usize, mut s: Vec<f32>| {
                    s.truncate(k * k);
                    Hessian::from_sum(k, &s, tokens)
                };
                Ok(LayerHessians {
                    n1: h(ks[0], n1)?,
                    attn: h(ks[1], attn)?,
                    n2: h(ks[2], n2)?,
                    act: h(ks[3], act)?,
                })
            })
            .collect()
    }

    /// The diagonal empirical Fisher of every projection's base weights over `rows`: the
    /// mean over the rows with a target of the squared gradient of the row's mean loss
    /// (one forward and backward per row, no dropout; the profiling adapter's B = 0 leaves
    /// the base gradients as without it), as the CPU's
    /// [`crate::compress::profile::fisher_diagonal`] computes it.
    pub async fn fisher_diagonal(
        &mut self,
        rows: &[Row],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<BlockFisher>> {
        for row in rows {
            self.check_row(row)?;
        }
        let used = rows.iter().filter(|r| r.n_targets() > 0).count();
        if used == 0 {
            return Err(crate::compress::profile::no_fisher_rows());
        }
        self.start_stats(StatsPass::Fisher)?.scale = 1.0 / used as f32;
        for (i, row) in rows.iter().enumerate() {
            let n = row.n_targets();
            if n > 0 {
                // grad_scale·n = 1: the gradient of the row's mean loss.
                self.row(row, Some((1.0 / n as f64, None))).await?;
            }
            progress(i + 1, rows.len());
        }
        let mut enc = self.ctx.encoder();
        self.clear_grads(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        let c = &self.config;
        Ok(self
            .read_stats()
            .await?
            .into_iter()
            .map(|block| {
                (block.into_iter().zip(Proj::ALL))
                    .map(|(mut f, p)| {
                        let (k, n) = p.shape(c);
                        f.truncate(n * k);
                        f
                    })
                    .collect()
            })
            .collect())
    }
}

/// How [`fit_budget`] decided.
#[derive(Clone, Debug)]
pub struct Fit {
    pub options: TrainOptions,
    pub plan: MemoryPlan,
    /// What was changed from the requested options to fit, in words (empty: nothing).
    pub changes: Vec<String>,
    /// When rows had to be shortened (`options.seq_len` below the requested length): the
    /// factor to multiply gradient accumulation by, so an optimizer step still sees as many
    /// tokens. 1 otherwise.
    pub accum_factor: usize,
}

/// A fitted plan as `edge-llm plan --json` prints it and the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport<'a> {
    pub total_bytes: u64,
    pub budget_bytes: Option<u64>,
    pub changes: &'a [String],
    pub seq_len: usize,
    pub accum_factor: usize,
    pub recompute: bool,
    pub format: String,
    /// Chunks the LM head is held in (each in the file's format), and vocabulary rows per
    /// chunk and per logits chunk.
    pub head_chunks: usize,
    pub logits_chunk: usize,
    pub buffers: usize,
    /// Non-empty categories, in [`Category::ALL`] order.
    pub by_category: Vec<CategoryBytes>,
    /// The largest buffers, largest first.
    pub largest: Vec<&'a PlanEntry>,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
}

/// Bytes of one category of a plan.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CategoryBytes {
    pub category: Category,
    pub bytes: u64,
}

impl Fit {
    /// The report of this fit for model `c` on a device with `limits`, listing the `top`
    /// largest buffers.
    pub fn report(
        &self,
        c: &LlamaConfig,
        limits: &wgpu::Limits,
        budget: Option<u64>,
        top: usize,
    ) -> Result<FitReport<'_>> {
        let split = head_split(c, &self.options, limits)?;
        let mut largest: Vec<_> = self.plan.entries.iter().collect();
        largest.sort_by_key(|e| std::cmp::Reverse(e.bytes));
        largest.truncate(top);
        Ok(FitReport {
            total_bytes: self.plan.total(),
            budget_bytes: budget,
            changes: &self.changes,
            seq_len: self.options.seq_len,
            accum_factor: self.accum_factor,
            recompute: self.options.recompute,
            format: format!("{:?}", self.options.format),
            head_chunks: split.chunks,
            logits_chunk: split.chunk,
            buffers: self.plan.entries.len(),
            by_category: self
                .plan
                .by_category()
                .into_iter()
                .filter(|&(_, bytes)| bytes > 0)
                .map(|(category, bytes)| CategoryBytes { category, bytes })
                .collect(),
            largest,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
        })
    }
}

/// Logits chunk widths tried, widest first, when the budget is tight.
const BUDGET_CHUNKS: [usize; 2] = [1024, 256];

/// The shortest rows [`fit_budget`] chunks sequences into before it refuses.
pub const MIN_CHUNKED_SEQ: usize = 32;

/// The options that fit `budget` bytes of GPU memory (and the device's limits): `opts` if
/// it fits, else, cumulatively, with layer recompute, packed weights, narrower logits
/// chunks, and finally shorter rows (sequence chunking: the data is packed into the longest
/// rows of at least [`MIN_CHUNKED_SEQ`] tokens that fit, and [`Fit::accum_factor`] says how
/// much more gradient accumulation keeps the tokens per optimizer step). When nothing fits,
/// the error names the smallest plan's size and what would fit. Nothing is allocated.
pub fn fit_budget(
    file: &ModelFile,
    lora: &LoraConfig,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    budget: Option<u64>,
) -> Result<Fit> {
    fit_budget_windows(file, lora, opts, limits, budget, None)
}

/// [`fit_budget`] for adaptive layer tuning over `windows` (planned as
/// [`GpuTrainer::plan_windows`]); None: every block, as [`GpuTrainer::plan`].
pub fn fit_budget_windows(
    file: &ModelFile,
    lora: &LoraConfig,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    budget: Option<u64>,
    windows: Option<&[Span]>,
) -> Result<Fit> {
    let plan_of = |o: &TrainOptions| match windows {
        Some(w) => GpuTrainer::plan_windows(file, lora, o, limits, w),
        None => GpuTrainer::plan(file, lora, o, limits),
    };
    let plan = plan_of(opts)?;
    plan.check(limits)?;
    let Some(budget) = budget else {
        return Ok(Fit {
            options: opts.clone(),
            plan,
            changes: Vec::new(),
            accum_factor: 1,
        });
    };
    let mut tries = vec![(opts.clone(), Vec::<String>::new())];
    let mut cur = opts.clone();
    let mut changes = Vec::new();
    if !cur.recompute {
        cur.recompute = true;
        changes.push("layer recompute on".to_string());
        tries.push((cur.clone(), changes.clone()));
    }
    if cur.format != WeightFormat::Packed {
        cur.format = WeightFormat::Packed;
        changes.push("packed weights".to_string());
        tries.push((cur.clone(), changes.clone()));
    }
    for chunk in BUDGET_CHUNKS {
        if head_split(&file.config, &cur, limits)?.chunk > chunk {
            cur.vocab_chunk = chunk;
            changes.push(format!("logits chunk {chunk}"));
            tries.push((cur.clone(), changes.clone()));
        }
    }
    let mut smallest = None;
    for (o, ch) in tries {
        let p = plan_of(&o)?;
        if p.check(limits).is_ok() && p.total() <= budget {
            return Ok(Fit {
                options: o,
                plan: p,
                changes: ch,
                accum_factor: 1,
            });
        }
        smallest = Some((o, p, ch));
    }
    let (o, p, ch) = smallest.expect("at least one candidate");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    // The longest sequence the smallest settings fit in the budget.
    let fits = |t: usize| -> bool {
        let o = TrainOptions {
            seq_len: t,
            ..o.clone()
        };
        plan_of(&o).is_ok_and(|p| p.check(limits).is_ok() && p.total() <= budget)
    };
    let longest = fits(1).then(|| {
        let (mut lo, mut hi) = (1, o.seq_len);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    });
    if let Some(t) = longest.filter(|&t| t >= MIN_CHUNKED_SEQ) {
        let factor = o.seq_len.div_ceil(t);
        let options = TrainOptions { seq_len: t, ..o };
        let plan = plan_of(&options)?;
        let mut changes = ch;
        changes.push(format!(
            "rows of {t} tokens instead of {} with {factor}× gradient accumulation",
            opts.seq_len
        ));
        return Ok(Fit {
            options,
            plan,
            changes,
            accum_factor: factor,
        });
    }
    let advice = if let Some(lo) = longest {
        format!(
            "--seq-len {lo} would fit, or a budget of at least {} bytes",
            p.total()
        )
    } else {
        let small = TrainOptions {
            seq_len: 1,
            ..o.clone()
        };
        let one = plan_of(&small)?;
        let w = one.by_category()[0].1;
        format!(
            "even --seq-len 1 needs {} bytes ({}; the frozen weights alone {})",
            one.total(),
            mib(one.total()),
            mib(w)
        )
    };
    Err(Error::Invalid(format!(
        "memory budget of {budget} bytes ({}) is too small to tune at --seq-len {}: the \
         smallest plan (layer recompute, packed weights, logits chunk {}) needs {} bytes \
         ({}); {advice}",
        mib(budget),
        o.seq_len,
        o.vocab_chunk
            .min(head_split(&file.config, &o, limits)?.chunk),
        p.total(),
        mib(p.total())
    )))
}

fn check_options(c: &LlamaConfig, lora: &LoraConfig, opts: &TrainOptions) -> Result<()> {
    if opts.seq_len < 1 || opts.seq_len > c.context_length {
        return Err(Error::Invalid(format!(
            "sequence length {} outside 1..={} (the model's context)",
            opts.seq_len, c.context_length
        )));
    }
    if opts.vocab_chunk == 0 {
        return Err(Error::Invalid(
            "the vocabulary chunk must be at least 1".into(),
        ));
    }
    if c.head_dim > MAX_HEAD_DIM {
        return Err(Error::Model(format!(
            "head_dim {} exceeds the attention kernel's {MAX_HEAD_DIM}",
            c.head_dim
        )));
    }
    if lora.targets.is_empty() || lora.rank == 0 {
        return Err(Error::Invalid(
            "GPU training needs LoRA adapters (a rank and at least one target)".into(),
        ));
    }
    Ok(())
}

fn check_adapters(c: &LlamaConfig, lora: &Lora<f32>) -> Result<()> {
    let bad = |why: String| Err(Error::Invalid(format!("LoRA adapter: {why}")));
    if lora.layers.len() != c.n_layers {
        return bad(format!(
            "{} layers, the model has {}",
            lora.layers.len(),
            c.n_layers
        ));
    }
    for (l, ll) in lora.layers.iter().enumerate() {
        for p in Proj::ALL {
            let (k, n) = p.shape(c);
            let targeted = lora.config.targets.contains(&p);
            match &ll[p.index()] {
                None if !targeted => {}
                Some(q)
                    if targeted
                        && q.rank == lora.config.rank
                        && q.a.len() == q.rank * k
                        && q.b.len() == n * q.rank => {}
                _ => return bad(format!("layer {l} {p:?}: not the configured shape/targets")),
            }
        }
    }
    let (r, d) = (lora.config.rank, c.hidden);
    let mut last = 0;
    for (k, e) in lora.exits.iter().enumerate() {
        let p = &e.pair;
        if e.after <= last
            || e.after > c.n_layers
            || p.rank != r
            || p.a.len() != r * d
            || p.b.len() != d * r
        {
            return bad(format!(
                "exit {k} (after block {}): not a rank-{r} exit",
                e.after
            ));
        }
        last = e.after;
    }
    Ok(())
}

impl Backend for GpuTrainer<'_> {
    async fn accumulate(
        &mut self,
        rows: &[&Row],
        grad_scale: f64,
        dropout_seed: u64,
    ) -> Result<LossSum> {
        let mut out = LossSum::default();
        for (r, row) in rows.iter().enumerate() {
            let seed = derive_seed(dropout_seed, &[r as u64]);
            let loss = self.row(row, Some((grad_scale, Some(seed)))).await?;
            out.add(loss);
        }
        Ok(out)
    }

    async fn apply(&mut self, opt: &AdamW, t: u64, max_grad_norm: Option<f64>) -> Result<f64> {
        let ctx = self.ctx;
        let grads: Vec<(&wgpu::Buffer, usize)> =
            self.trained.iter().map(|tr| (&tr.grad, tr.n)).collect();
        let mut enc = ctx.encoder();
        encode_grad_norm2(ctx, &mut enc, &grads, &self.s.norm_partials, &self.s.norm2)?;
        enc.copy_buffer_to_buffer(&self.s.norm2, 0, &self.s.norm_read, 0, 4);
        ctx.queue.submit([enc.finish()]);
        let norm2 = read_mapped(ctx, &self.s.norm_read, 4).await?[0];
        let norm = (norm2 as f64).sqrt();
        let mut enc = ctx.encoder();
        if !norm.is_finite() {
            self.clear_grads(&mut enc);
            ctx.queue.submit([enc.finish()]);
            return Err(Error::Invalid(format!(
                "gradient norm is {norm} at step {t}; the step was skipped"
            )));
        }
        // Only the span's tensors step, each with its own count (as on the CPU): one AdamW
        // dispatch group per distinct count.
        let span = self.span.clone();
        let mut groups: std::collections::BTreeMap<u64, Vec<Slot<'_>>> = Default::default();
        for ((tr, o), steps) in self.trained.iter().zip(&self.owners).zip(&mut self.steps) {
            let active = match (&span, *o) {
                (None, _) => true,
                (Some(s), Owner::Layer(l)) => s.layers.contains(&l),
                (Some(s), Owner::Exit(k)) => s.exit == Some(k),
            };
            if !active {
                continue;
            }
            *steps = if span.is_some() { *steps + 1 } else { t };
            groups.entry(*steps).or_default().push(Slot {
                param: &tr.param,
                grad: &tr.grad,
                m: &tr.m,
                v: &tr.v,
                n: tr.n,
            });
        }
        let max = max_grad_norm.map(|m| m as f32);
        for (steps, slots) in &groups {
            encode_adamw(ctx, &mut enc, slots, &self.s.norm2, opt, *steps, max)?;
        }
        for tr in &self.trained {
            enc.clear_buffer(&tr.grad, 0, None);
        }
        ctx.queue.submit([enc.finish()]);
        bump_versions(&mut self.versions, self.span.as_ref());
        Ok(norm)
    }

    async fn eval(&mut self, rows: &[&Row]) -> Result<LossSum> {
        let mut out = LossSum::default();
        for row in rows {
            out.add(self.row(row, None).await?);
        }
        Ok(out)
    }

    async fn save(&mut self) -> Result<ParamState> {
        let (mut tensors, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for tr in &self.trained {
            tensors.push(Tensor(self.read_tensor(&tr.param, tr.n).await?));
            m.push(Tensor(self.read_tensor(&tr.m, tr.n).await?));
            v.push(Tensor(self.read_tensor(&tr.v, tr.n).await?));
        }
        Ok(ParamState {
            lora: self.lora_config.clone(),
            tensors,
            m,
            v,
            exits: self.exits.iter().map(|e| e.0).collect(),
            steps: self.steps.clone(),
        })
    }

    async fn adapters(&mut self) -> Result<Lora<f32>> {
        self.read_adapters().await
    }

    fn gpu_bytes(&self) -> u64 {
        self.allocated
    }

    async fn load(&mut self, state: &ParamState) -> Result<()> {
        let exits: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
        if state.exits != exits {
            return Err(Error::Invalid(format!(
                "checkpoint exits {:?} differ from the model's {exits:?}",
                state.exits
            )));
        }
        if state.lora != self.lora_config {
            return Err(Error::Invalid(format!(
                "checkpoint LoRA config {:?} differs from the model's {:?}",
                state.lora, self.lora_config
            )));
        }
        let n = self.trained.len();
        let ok = state.tensors.len() == n
            && state.m.len() == n
            && state.v.len() == n
            && self.trained.iter().enumerate().all(|(i, tr)| {
                state.tensors[i].0.len() == tr.n
                    && state.m[i].0.len() == tr.n
                    && state.v[i].0.len() == tr.n
            });
        if !ok {
            return Err(Error::Invalid(
                "checkpoint tensors do not match the model's LoRA shapes".into(),
            ));
        }
        let q = &self.ctx.queue;
        for (i, tr) in self.trained.iter().enumerate() {
            q.write_buffer(&tr.param, 0, bytemuck::cast_slice(&state.tensors[i].0));
            q.write_buffer(&tr.m, 0, bytemuck::cast_slice(&state.m[i].0));
            q.write_buffer(&tr.v, 0, bytemuck::cast_slice(&state.v[i].0));
        }
        self.steps = if state.steps.len() == n {
            state.steps.clone()
        } else {
            vec![0; n]
        };
        // Every block may have changed: no cached prefix is valid any more.
        bump_versions(&mut self.versions, None);
        let mut enc = self.ctx.encoder();
        self.clear_grads(&mut enc);
        q.submit([enc.finish()]);
        Ok(())
    }

    fn set_span(&mut self, span: Option<&Span>) -> Result<()> {
        if let Some(s) = span {
            let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
            check_span(self.config.n_layers, &afters, s)?;
            self.check_planned(s, true)?;
            self.load(s.layers.clone())?;
        }
        self.span = span.cloned();
        Ok(())
    }
}

/// The plan of a trainer for `spans` ([`Cover`]) with `n_exits` exit adapters: exactly
/// the buffers [`GpuTrainer::with_windows`] allocates.
fn plan_spans(
    file: &ModelFile,
    lora: &LoraConfig,
    n_exits: usize,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    spans: &[Span],
    stats: Option<StatsPass>,
) -> Result<MemoryPlan> {
    let c = &file.config;
    check_options(c, lora, opts)?;
    let cover = Cover::of(c.n_layers, spans)?;
    let split = head_split(c, opts, limits)?;
    let t = opts.seq_len;
    let (d, vocab) = (c.hidden, c.vocab);
    let f32s = |n: usize| n as u64 * 4;
    let mut plan = MemoryPlan::default();
    let (window, stream) = slot_specs(file, opts, spans, &cover)?;
    for slot in window.iter().chain(&stream) {
        slot.plan(&mut plan, d);
    }
    plan.storage("output_norm.weight", Category::Weights, f32s(d));
    let (head_name, head_lay, tag) = head_layout(file, opts)?;
    for i in 0..split.chunks {
        let rows = split.chunk.min(vocab - i * split.chunk);
        let label = format!(" {tag} chunk {i}");
        plan_matrix(
            &mut plan,
            file,
            head_name,
            &label,
            (rows, d),
            head_lay,
            false,
        )?;
    }
    plan.storage("rope table", Category::Scratch, f32s(t * c.head_dim.max(2)));
    let sets = if opts.recompute { 1 } else { cover.cap };
    for i in 0..cover.cap {
        plan.storage(
            format!("block {i} input"),
            Category::Activations,
            f32s(t * d),
        );
    }
    if opts.recompute {
        plan.storage("recompute input", Category::Scratch, f32s(t * d));
    }
    for set in 0..sets {
        let cat = if opts.recompute {
            Category::Scratch
        } else {
            Category::Activations
        };
        for (name, w) in block_widths(c) {
            plan.storage(format!("block {set} {name}"), cat, f32s(t * w));
        }
        for &p in &lora.targets {
            let name = format!("block {set} lora u {}", PROJ_NAMES[p.index()]);
            plan.storage(name, cat, f32s(t * lora.rank));
        }
    }
    for (name, w) in scratch_widths(c, lora.rank) {
        plan.storage(name, Category::Scratch, f32s(t * w));
    }
    plan.storage("dv", Category::Scratch, f32s(t * c.kv_dim()));
    for (name, w) in [
        ("final x", d),
        ("final normed x", d),
        ("final rstd", 1),
        ("targets", 1),
        ("row losses", 1),
        ("head lse", 1),
        ("head stats", 3),
    ] {
        plan.storage(name, Category::Activations, f32s(t * w));
    }
    let [uniq, starts, order] = SegmentBuffers::bytes(t);
    for (part, bytes) in [("uniq", uniq), ("starts", starts), ("order", order)] {
        plan.storage(
            format!("head positions {part}"),
            Category::Activations,
            bytes,
        );
    }
    plan.storage("logits chunk", Category::Scratch, f32s(t * split.chunk));
    let mut lens = Vec::new();
    let mut trained = |plan: &mut MemoryPlan, what: String, len: usize| {
        plan.storage(what.clone(), Category::Lora, f32s(len));
        plan.storage(format!("{what} grad"), Category::Gradients, f32s(len));
        plan.storage(format!("{what} m"), Category::Optimizer, f32s(len));
        plan.storage(format!("{what} v"), Category::Optimizer, f32s(len));
        lens.push(len);
    };
    for l in 0..c.n_layers {
        for &p in &lora.targets {
            let (k, n) = p.shape(c);
            for (ab, len) in [("A", lora.rank * k), ("B", n * lora.rank)] {
                let what = format!("lora {} (layer {l}) {ab}", PROJ_NAMES[p.index()]);
                trained(&mut plan, what, len);
            }
        }
    }
    for k in 0..n_exits {
        for (ab, len) in [("A", lora.rank * d), ("B", d * lora.rank)] {
            trained(&mut plan, format!("exit {k} adapter {ab}"), len);
        }
    }
    if cover.exit {
        plan.storage("exit adapter u", Category::Activations, f32s(t * lora.rank));
        plan.storage("exit output", Category::Activations, f32s(t * d));
    }
    plan.storage(
        "grad norm partials",
        Category::Gradients,
        f32s(norm_scratch_len(lens.iter().copied())),
    );
    plan.storage("grad norm", Category::Gradients, 4);
    if cover.prefix {
        plan.other("prefix readback", Category::Readback, f32s(t * d));
    }
    plan.other("loss readback", Category::Readback, f32s(t));
    plan.other("norm readback", Category::Readback, 4);
    let widest = lens.iter().copied().max().unwrap_or(1);
    plan.other("tensor readback", Category::Readback, f32s(widest));
    if let Some(pass) = stats {
        let mats = pass.matrices(c);
        for l in 0..c.n_layers {
            for (name, rows, cols) in &mats {
                let label = format!("block {l} {name}");
                plan.storage(label, Category::Statistics, f32s(rows * cols));
            }
        }
        let largest = mats.iter().map(|m| m.1 * m.2).max().unwrap_or(1);
        plan.other("statistics readback", Category::Readback, f32s(largest));
    }
    Ok(plan)
}
