//! Construction: checks the adapter and windows, plans ([`plan_spans`]) and checks the plan
//! against the device's limits, then allocates every buffer once, in named steps: the
//! weight slots and host blocks, the head, the activations, the adapters with their
//! gradients and moments, the scratch, and a profiling trainer's statistics.

use super::plan::{
    block_widths, check_adapters, head_split, plan_spans, scratch_widths, HeadSplit,
};
use super::residency::{head_layout, slot_specs, Cover, HostBlock, HostHead, WeightSlot};
use super::stats::{Stats, StatsPass};
use super::{Alloc, BlockActs, GpuTrainer, Scratch, TrainOptions, Trained};
use crate::engine::gpu_model::default_path;
use crate::engine::weights::{cpu_gather, Gather, PROJ_NAMES};
use crate::kernels::context::GpuContext;
use crate::kernels::ops::adamw::norm_scratch_len;
use crate::kernels::ops::cross_entropy::upload_head;
use crate::kernels::ops::embedding::SegmentBuffers;
use crate::kernels::ops::rope::RopeTable;
use crate::kernels::qmatmul::{GpuWeight, QMatmul};
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, LoraConfig, Owner, Proj, Span};
use crate::train::prefix::{check_span, PrefixCache};
use crate::{Error, Result};

/// The frozen blocks' residency: window slots, the stream slot, and the host copies of
/// the blocks a slot may take again.
struct Residency {
    window_slots: Vec<WeightSlot>,
    stream: Option<WeightSlot>,
    host: Vec<Option<HostBlock>>,
}

/// The model's ends: the final norm, the LM head in chunks, the embedding gather and the
/// rope table.
struct Ends {
    output_norm: wgpu::Buffer,
    head: Vec<GpuWeight>,
    gather: Gather,
    rope: RopeTable,
}

/// The trained tensors, in `Lora::tensors_mut` order (so checkpoints move between this and
/// the CPU), with their owners and where each projection's and exit's pair is.
struct Adapters {
    trained: Vec<Trained>,
    owners: Vec<Owner>,
    pairs: Vec<Vec<Option<(usize, usize)>>>,
    exits: Vec<(usize, (usize, usize))>,
}

impl<'c> GpuTrainer<'c> {
    pub(super) fn build(
        ctx: &'c GpuContext,
        file: &ModelFile,
        lora: &Lora<f32>,
        opts: &TrainOptions,
        windows: &[Span],
        pass: Option<StatsPass>,
    ) -> Result<Self> {
        let c = &file.config;
        let lc = &lora.config;
        check_adapters(c, lora)?;
        let afters: Vec<usize> = lora.exits.iter().map(|e| e.after).collect();
        for w in windows {
            check_span(c.n_layers, &afters, w)?;
        }
        let cover = Cover::of(c.n_layers, windows)?;
        let exits = lora.exits.len();
        let plan = plan_spans(file, lc, exits, opts, &ctx.limits, windows, pass)?;
        plan.check(&ctx.limits)?;
        let split = head_split(c, opts, &ctx.limits)?;
        let mut alloc = Alloc {
            ctx,
            t: opts.seq_len,
            bytes: 0,
        };

        let res = residency(ctx, file, opts, windows, &cover)?;
        let ends = ends(ctx, file, opts, split, &mut alloc)?;
        let (acts, inputs) = activations(&mut alloc, c, lc, opts, &cover)?;
        let adapters = adapters(&mut alloc, lora)?;
        let lens: Vec<usize> = adapters.trained.iter().map(|tr| tr.n).collect();
        let s = scratch(&mut alloc, c, lc.rank, split, &lens)?;
        let exit_bufs = if cover.exit {
            let t = alloc.t;
            Some((
                alloc.zeros("exit adapter u", t * lc.rank)?,
                alloc.zeros("exit output", t * c.hidden)?,
            ))
        } else {
            None
        };
        let bytes = (alloc.t * c.hidden * 4) as u64;
        let prefix_read = (cover.prefix).then(|| alloc.readback("prefix readback", bytes));
        let stats = match pass {
            Some(pass) => Some(Stats::alloc(&mut alloc, c, pass)?),
            None => None,
        };
        let slot_bytes: u64 = (res.window_slots.iter().chain(&res.stream))
            .map(WeightSlot::bytes)
            .sum();
        let allocated = alloc.bytes + slot_bytes;
        let mut trainer = Self {
            ctx,
            mm: QMatmul {
                path: opts.path.unwrap_or_else(|| default_path(ctx)),
                ..QMatmul::new(ctx)
            },
            config: c.clone(),
            lora_config: lc.clone(),
            opts: opts.clone(),
            split,
            host: res.host,
            window_slots: res.window_slots,
            stream: res.stream,
            cover,
            output_norm: ends.output_norm,
            head: ends.head,
            gather: ends.gather,
            rope: ends.rope,
            acts,
            inputs,
            s,
            pairs: adapters.pairs,
            steps: vec![0; adapters.trained.len()],
            trained: adapters.trained,
            exits: adapters.exits,
            exit_bufs,
            owners: adapters.owners,
            windows: windows.to_vec(),
            span: None,
            cache: PrefixCache::with_max_bytes(PrefixCache::DEFAULT_MAX_BYTES),
            versions: vec![0; c.n_layers],
            prefix_read,
            stats,
            plan,
            allocated,
        };
        trainer.load_window(windows[0].layers.clone())?;
        Ok(trainer)
    }
}

/// Slots first (sized as planned), then the blocks: a slot only this block goes into
/// takes it now, and the host keeps the blocks a slot may take again (the first window is
/// uploaded once the trainer exists). The slots count their own bytes.
fn residency(
    ctx: &GpuContext,
    file: &ModelFile,
    opts: &TrainOptions,
    windows: &[Span],
    cover: &Cover,
) -> Result<Residency> {
    let d = file.config.hidden;
    let (window_specs, stream_spec) = slot_specs(file, opts, windows, cover)?;
    let mut window_slots = Vec::with_capacity(window_specs.len());
    for spec in &window_specs {
        window_slots.push(spec.alloc(ctx, d)?);
    }
    let stream = match &stream_spec {
        Some(spec) => Some(spec.alloc(ctx, d)?),
        None => None,
    };
    let mut host = Vec::with_capacity(cover.depth);
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
        host.push(again.then_some(hb));
    }
    Ok(Residency {
        window_slots,
        stream,
        host,
    })
}

/// The final norm, the LM head uploaded in chunks of `split.chunk` rows as the file stores
/// it, the embedding gather (on the CPU) and the rope table for `alloc.t` positions.
fn ends(
    ctx: &GpuContext,
    file: &ModelFile,
    opts: &TrainOptions,
    split: HeadSplit,
    alloc: &mut Alloc<'_>,
) -> Result<Ends> {
    let c = &file.config;
    let (d, vocab) = (c.hidden, c.vocab);
    let name = "output_norm.weight";
    let w = file.tensor_f32(name, &[d])?;
    let output_norm = alloc.track(ctx.storage(name, bytemuck::cast_slice(&w))?);
    let (head_name, head_lay, _) = head_layout(file, opts)?;
    let host = HostHead::read(file, head_name, head_lay)?;
    let head = upload_head(ctx, host.source(), (vocab, d), split.chunk)
        .map_err(|e| Error::Gpu(format!("{head_name}: {e}")))?;
    drop(host);
    alloc.bytes += head.iter().map(GpuWeight::bytes).sum::<u64>();
    let embd = "token_embd.weight";
    let info = file
        .gguf
        .tensor(embd)
        .ok_or_else(|| Error::Model(format!("missing tensor {embd}")))?;
    let gather = cpu_gather(file, embd, info.ty, vocab, d)?;
    let rope = RopeTable::new(ctx, c.head_dim, alloc.t, c.rope_theta as f64)?;
    alloc.bytes += rope.buffer.size();
    Ok(Ends {
        output_norm,
        head,
        gather,
        rope,
    })
}

/// The activation sets (one per block of the longest span, or one shared set with
/// `recompute`) and, with `recompute`, the kept block inputs.
fn activations(
    alloc: &mut Alloc<'_>,
    c: &LlamaConfig,
    lc: &LoraConfig,
    opts: &TrainOptions,
    cover: &Cover,
) -> Result<(Vec<BlockActs>, Vec<wgpu::Buffer>)> {
    let (t, d) = (alloc.t, c.hidden);
    let sets = if opts.recompute { 1 } else { cover.cap };
    let mut block_inputs = Vec::with_capacity(cover.cap);
    for i in 0..cover.cap {
        block_inputs.push(alloc.zeros(&format!("block {i} input"), t * d)?);
    }
    let mut acts = Vec::with_capacity(sets);
    let mut block_inputs = block_inputs.into_iter();
    for set in 0..sets {
        let mut b = Vec::with_capacity(13);
        for (name, w) in block_widths(c) {
            b.push(alloc.zeros(&format!("block {set} {name}"), t * w)?);
        }
        let mut u = vec![None; 7];
        for &p in &lc.targets {
            let name = format!("block {set} lora u {}", PROJ_NAMES[p.index()]);
            u[p.index()] = Some(alloc.zeros(&name, t * lc.rank)?);
        }
        let x = if opts.recompute {
            // The shared set's input is a copy of the kept input of the block it runs.
            alloc.zeros("recompute input", t * d)?
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
    let inputs = if opts.recompute {
        block_inputs.collect()
    } else {
        Vec::new()
    };
    Ok((acts, inputs))
}

/// Uploads every adapter tensor with a zeroed gradient and moments.
fn adapters(alloc: &mut Alloc<'_>, lora: &Lora<f32>) -> Result<Adapters> {
    let lc = &lora.config;
    let mut out = Adapters {
        trained: Vec::new(),
        owners: Vec::new(),
        pairs: Vec::with_capacity(lora.layers.len()),
        exits: Vec::with_capacity(lora.exits.len()),
    };
    let mut upload = |out: &mut Adapters, what: String, vals: &[f32], owner: Owner| {
        let n = vals.len();
        let param = alloc.ctx.storage(&what, bytemuck::cast_slice(vals))?;
        out.trained.push(Trained {
            param: alloc.track(param),
            grad: alloc.zeros(&format!("{what} grad"), n)?,
            m: alloc.zeros(&format!("{what} m"), n)?,
            v: alloc.zeros(&format!("{what} v"), n)?,
            n,
        });
        out.owners.push(owner);
        Ok::<_, Error>(out.trained.len() - 1)
    };
    for (l, ll) in lora.layers.iter().enumerate() {
        let mut row = vec![None; 7];
        for p in Proj::ALL.into_iter().filter(|p| lc.targets.contains(p)) {
            let pair = ll[p.index()].as_ref().ok_or_else(|| {
                Error::Invalid(format!("LoRA adapter: layer {l} has no {p:?} adapter"))
            })?;
            let what = |ab: &str| format!("lora {} (layer {l}) {ab}", PROJ_NAMES[p.index()]);
            let ia = upload(&mut out, what("A"), &pair.a, Owner::Layer(l))?;
            let ib = upload(&mut out, what("B"), &pair.b, Owner::Layer(l))?;
            row[p.index()] = Some((ia, ib));
        }
        out.pairs.push(row);
    }
    for (k, e) in lora.exits.iter().enumerate() {
        let (a, b) = (&e.pair.a, &e.pair.b);
        let ia = upload(&mut out, format!("exit {k} adapter A"), a, Owner::Exit(k))?;
        let ib = upload(&mut out, format!("exit {k} adapter B"), b, Owner::Exit(k))?;
        out.exits.push((e.after, (ia, ib)));
    }
    Ok(out)
}

/// The buffers every block and the head reuse; `lens`: the trained tensors' lengths (the
/// gradient norm's partials and the widest readback).
fn scratch(
    alloc: &mut Alloc<'_>,
    c: &LlamaConfig,
    rank: usize,
    split: HeadSplit,
    lens: &[usize],
) -> Result<Scratch> {
    let (t, d) = (alloc.t, c.hidden);
    let mut sc = Vec::with_capacity(14);
    for (name, w) in scratch_widths(c, rank) {
        sc.push(alloc.zeros(name, t * w)?);
    }
    let mut sc = sc.into_iter();
    let mut next = || sc.next().expect("14 scratch buffers");
    let (spare, o, drop, du, delta, dx, dn, dtmp, dact, dgate, dup, dattn, dq, dk) = (
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
    let head_pos = SegmentBuffers::zeroed(alloc.ctx, "head positions", t)?;
    alloc.bytes += [&head_pos.uniq, &head_pos.starts, &head_pos.order]
        .map(wgpu::Buffer::size)
        .iter()
        .sum::<u64>();
    let widest = lens.iter().copied().max().unwrap_or(1);
    Ok(Scratch {
        spare,
        o,
        drop,
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
        dv: alloc.zeros("dv", t * c.kv_dim())?,
        y: alloc.zeros("final x", t * d)?,
        yn: alloc.zeros("final normed x", t * d)?,
        rstd_out: alloc.zeros("final rstd", t)?,
        head_pos,
        targets: alloc.zeros("targets", t)?,
        loss: alloc.zeros("row losses", t)?,
        ce_lse: alloc.zeros("head lse", t)?,
        ce_stats: alloc.zeros("head stats", 3 * t)?,
        ce_scratch: alloc.zeros("logits chunk", t * split.chunk)?,
        tensor_read: alloc.readback("tensor readback", (widest * 4) as u64),
        norm_partials: alloc.zeros("grad norm partials", norm_scratch_len(lens.iter().copied()))?,
        norm2: alloc.zeros("grad norm", 1)?,
        loss_read: alloc.readback("loss readback", (t * 4) as u64),
        norm_read: alloc.readback("norm readback", 4),
    })
}
