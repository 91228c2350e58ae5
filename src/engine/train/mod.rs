//! LoRA training on the GPU: a [`Backend`](crate::train::Backend) whose forward and backward
//! passes are composed from the kernel library, with the base weights frozen (f32, packed or
//! sparse) and the adapters, their gradients and AdamW moments resident on the device.
//!
//! One row of t ≤ `seq_len` tokens is one command buffer: embedding rows (gathered on the CPU
//! from the GGUF bytes) → per block the forward of [`GpuModel`](super::GpuModel) with every
//! activation the backward needs kept → the n rows with a target gathered by position (as on
//! the CPU: the head is a step's largest matmul, and a row of ARC-Easy answers has a few dozen
//! targets in 256 positions) → final norm → the fused, vocabulary-chunked cross-entropy head on
//! those rows (the n × vocab logits never exist) → its backward, scattered back to the n
//! positions (zeros elsewhere; both by embedding.wgsl's gather and scatter-add with positions
//! for ids) → per block, from the top, the backward pass: projections' input gradients through
//! the frozen weights (`FrozenWeight::encode_nn`: qmatmul, or the sparse kernels through a
//! transposed copy), LoRA dA/dB accumulated, SwiGLU, attention, RoPE and RMSNorm backward. Only
//! the per-row losses are read back. LoRA dropout masks are a hash of (seed, layer, projection,
//! element) computed in the shader, as the CPU reference does, so none is stored
//! ([`crate::reference::Dropout`]).
//!
//! Memory is planned first ([`GpuTrainer::plan`]), checked against the device's limits and the
//! user's budget, and allocated once. With `recompute`, only each block's input is kept and the
//! block's forward is run again just before its backward (one set of block activations instead
//! of one per layer). The LM head is held as the file stores it (Q8_0 or Q4_x codes, a
//! compressed file's quantized codes, or f32) in chunks of vocabulary rows, each one logits
//! chunk wide and within one binding, read in place by the qmatmul kernels
//! ([`crate::kernels::ops::cross_entropy`]): neither the n × vocab logits nor an f32 copy of a
//! packed head ever exists. The head's buffers are sized for n = t, so the plan does not depend
//! on the row.
//!
//! Adaptive layer tuning ([`GpuTrainer::with_windows`],
//! [`Backend::set_span`](crate::train::Backend::set_span)) runs as on the CPU backend: the
//! frozen blocks below a window forward only (no dropout, nothing kept) in place through the
//! first activation set, or not at all when the window's input is in the host-memory
//! [`PrefixCache`]; the window's blocks keep their activations; an exit adds its adapter (the
//! LoRA kernels on an identity projection) before the final norm and head; backward stops at
//! the window's first block; AdamW steps only the window's tensors and its exit's, each with
//! its own step count. Only the window's blocks are resident, in window slots (one per block of
//! the longest window, each sized for the blocks it takes in turn;
//! [`Backend::set_span`](crate::train::Backend::set_span) uploads them). The other blocks are
//! kept on the host as the file stores them and, when they run, are uploaded one at a time into
//! a stream slot sized for the largest of them, without a sparse weight's transposed copy; a
//! queue write lands before the next submission, so the commands reading the slot's previous
//! block are submitted before it is rewritten. A trainer for every block has one window slot
//! per block and no stream slot: everything stays resident. Activations are sized for the
//! longest window.
//!
//! One job per file: `plan` sizes every buffer, `residency` decides which blocks' weights are
//! on the device, `build` allocates and uploads, `step` runs a row forward and backward (the
//! block itself is [`crate::engine::block`], shared with inference), `stats` measures
//! compression's statistics, `budget` fits a memory budget and `backend` makes the trainer a
//! [`Backend`](crate::train::Backend). Windows and the prefix cache are
//! [`crate::train::prefix`], shared with the CPU backend.

mod backend;
mod budget;
mod build;
mod plan;
mod residency;
mod stats;
mod step;

pub use budget::{fit_budget, fit_budget_windows, CategoryBytes, Fit, FitReport, MIN_CHUNKED_SEQ};
pub use stats::StatsPass;

use super::gpu_model::WeightFormat;
use super::plan::MemoryPlan;
use super::weights::Gather;
use crate::kernels::context::GpuContext;
use crate::kernels::ops::embedding::SegmentBuffers;
use crate::kernels::ops::rope::RopeTable;
use crate::kernels::qmatmul::{GpuWeight, Path, QMatmul};
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, LoraConfig, Owner, Span};
use crate::train::prefix::{default_span, PrefixCache};
use crate::train::Row;
use crate::Result;
use plan::HeadSplit;
use residency::{Cover, HostBlock, WeightSlot};
use stats::Stats;

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

/// One adapter tensor with its gradient and moments.
struct Trained {
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    n: usize,
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
    /// whose exits index `lora.exits`): [`Backend::set_span`](crate::train::Backend::set_span)
    /// then accepts any of them.
    pub fn with_windows(
        ctx: &'c GpuContext,
        file: &ModelFile,
        lora: &Lora<f32>,
        opts: &TrainOptions,
        windows: &[Span],
    ) -> Result<Self> {
        Self::build(ctx, file, lora, opts, windows, None)
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
}

/// Allocates buffers of `t` rows and counts the bytes of everything allocated.
pub(super) struct Alloc<'c> {
    pub ctx: &'c GpuContext,
    pub t: usize,
    pub bytes: u64,
}

impl Alloc<'_> {
    fn track(&mut self, b: wgpu::Buffer) -> wgpu::Buffer {
        self.bytes += b.size();
        b
    }

    /// A zeroed storage buffer of `len` f32.
    pub fn zeros(&mut self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        let b = self.ctx.storage_zeroed(name, len as u64 * 4)?;
        Ok(self.track(b))
    }

    /// A buffer the CPU maps to read `bytes` back.
    pub fn readback(&mut self, name: &str, bytes: u64) -> wgpu::Buffer {
        let b = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.track(b)
    }
}
