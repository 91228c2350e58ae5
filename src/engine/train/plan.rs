//! Memory planning: every buffer a trainer allocates, computed from the file's header,
//! the LoRA setting, the options and the device's limits before anything is allocated
//! ([`GpuTrainer::plan`], [`GpuTrainer::plan_windows`]); the head's split into chunks; the
//! checks of options and adapters.

use super::residency::{head_layout, slot_specs, Cover};
use super::stats::StatsPass;
use super::{GpuTrainer, TrainOptions};
use crate::engine::plan::{Category, MemoryPlan};
use crate::engine::weights::{plan_matrix, PROJ_NAMES};
use crate::kernels::ops::adamw::norm_scratch_len;
use crate::kernels::ops::attention::MAX_HEAD_DIM;
use crate::kernels::ops::embedding::SegmentBuffers;
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, LoraConfig, Proj, Span};
use crate::train::prefix::default_span;
use crate::{Error, Result};

/// The head's split: vocabulary rows per chunk (= the logits chunk width) and the number
/// of chunks.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadSplit {
    pub(super) chunk: usize,
    pub(super) chunks: usize,
}

pub(super) fn binding_limit(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
}

/// At most `vocab_chunk` rows, and few enough that the t × chunk logits and the chunk's
/// rows in f32 each fit one binding (the f32 bound for every format keeps the split
/// independent of how the file stores the head; packed rows are smaller).
pub(super) fn head_split(
    c: &LlamaConfig,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
) -> Result<HeadSplit> {
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

/// Per-block activation widths (f32 per row), in [`BlockActs`] order, without x.
pub(super) fn block_widths(c: &LlamaConfig) -> [(&'static str, usize); 13] {
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

pub(super) fn scratch_widths(c: &LlamaConfig, rank: usize) -> [(&'static str, usize); 14] {
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

impl GpuTrainer<'_> {
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
}

pub(super) fn check_options(c: &LlamaConfig, lora: &LoraConfig, opts: &TrainOptions) -> Result<()> {
    if opts.seq_len < 1 || opts.seq_len > c.context_length {
        return Err(Error::Invalid(format!(
            "the sequence length must be between 1 and {1} tokens, the model's context (it is {0})",
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

pub(super) fn check_adapters(c: &LlamaConfig, lora: &Lora<f32>) -> Result<()> {
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

/// The plan of a trainer for `spans` ([`Cover`]) with `n_exits` exit adapters: exactly
/// the buffers [`GpuTrainer::with_windows`] allocates, in the same steps.
pub(super) fn plan_spans(
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
    let mut plan = MemoryPlan::default();
    plan_weights(&mut plan, file, opts, spans, &cover, split)?;
    plan_activations(&mut plan, c, lora, opts, &cover, split);
    let lens = plan_adapters(&mut plan, c, lora, n_exits);
    plan_exit_and_readbacks(&mut plan, c.hidden, lora.rank, opts.seq_len, &cover, &lens);
    if let Some(pass) = stats {
        pass.plan(&mut plan, c);
    }
    Ok(plan)
}

fn f32s(n: usize) -> u64 {
    n as u64 * 4
}

/// The frozen weights: the slots, the final norm, and the head in chunks as the file
/// stores it.
fn plan_weights(
    plan: &mut MemoryPlan,
    file: &ModelFile,
    opts: &TrainOptions,
    spans: &[Span],
    cover: &Cover,
    split: HeadSplit,
) -> Result<()> {
    let (d, vocab) = (file.config.hidden, file.config.vocab);
    let (window, stream) = slot_specs(file, opts, spans, cover)?;
    for slot in window.iter().chain(&stream) {
        slot.plan(plan, d);
    }
    plan.storage("output_norm.weight", Category::Weights, f32s(d));
    let (head_name, head_lay, tag) = head_layout(file, opts)?;
    for i in 0..split.chunks {
        let rows = split.chunk.min(vocab - i * split.chunk);
        let label = format!(" {tag} chunk {i}");
        plan_matrix(plan, file, head_name, &label, (rows, d), head_lay, false)?;
    }
    Ok(())
}

/// The rope table, the blocks' inputs and activation sets, the scratch and the head's
/// buffers, all for rows of `opts.seq_len` tokens.
fn plan_activations(
    plan: &mut MemoryPlan,
    c: &LlamaConfig,
    lora: &LoraConfig,
    opts: &TrainOptions,
    cover: &Cover,
    split: HeadSplit,
) {
    let (t, d) = (opts.seq_len, c.hidden);
    plan.storage("rope table", Category::Scratch, f32s(t * c.head_dim.max(2)));
    let sets = if opts.recompute { 1 } else { cover.cap };
    for i in 0..cover.cap {
        let name = format!("block {i} input");
        plan.storage(name, Category::Activations, f32s(t * d));
    }
    if opts.recompute {
        plan.storage("recompute input", Category::Scratch, f32s(t * d));
    }
    let cat = if opts.recompute {
        Category::Scratch
    } else {
        Category::Activations
    };
    for set in 0..sets {
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
        let name = format!("head positions {part}");
        plan.storage(name, Category::Activations, bytes);
    }
    plan.storage("logits chunk", Category::Scratch, f32s(t * split.chunk));
}

/// Every adapter tensor with its gradient and AdamW moments (the blocks', then the
/// exits'); returns their lengths.
fn plan_adapters(
    plan: &mut MemoryPlan,
    c: &LlamaConfig,
    lora: &LoraConfig,
    n_exits: usize,
) -> Vec<usize> {
    let d = c.hidden;
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
                trained(plan, what, len);
            }
        }
    }
    for k in 0..n_exits {
        for (ab, len) in [("A", lora.rank * d), ("B", d * lora.rank)] {
            trained(plan, format!("exit {k} adapter {ab}"), len);
        }
    }
    lens
}

/// The exit adapter's u and output (when a span ends at an exit), the gradient norm's
/// scratch, and the readback buffers (`lens`: the trained tensors' lengths).
fn plan_exit_and_readbacks(
    plan: &mut MemoryPlan,
    d: usize,
    rank: usize,
    t: usize,
    cover: &Cover,
    lens: &[usize],
) {
    if cover.exit {
        plan.storage("exit adapter u", Category::Activations, f32s(t * rank));
        plan.storage("exit output", Category::Activations, f32s(t * d));
    }
    let partials = norm_scratch_len(lens.iter().copied());
    plan.storage("grad norm partials", Category::Gradients, f32s(partials));
    plan.storage("grad norm", Category::Gradients, 4);
    if cover.prefix {
        plan.other("prefix readback", Category::Readback, f32s(t * d));
    }
    plan.other("loss readback", Category::Readback, f32s(t));
    plan.other("norm readback", Category::Readback, 4);
    let widest = lens.iter().copied().max().unwrap_or(1);
    plan.other("tensor readback", Category::Readback, f32s(widest));
}
