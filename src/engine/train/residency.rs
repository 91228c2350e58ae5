//! Window residency: which blocks' frozen weights are on the device. A trainer holds
//! window slots (one per block of the longest window, each sized for the blocks it takes
//! in turn) and, when some window leaves blocks outside it, one stream slot the frozen
//! blocks run from one at a time; every block it may upload again stays on the host as
//! the file stores it ([`HostBlock`]).

use super::{GpuTrainer, TrainOptions};
use crate::engine::block::BlockWeights;
use crate::engine::plan::{Category, MemoryPlan};
use crate::engine::weights::{layout, plan_matrix, proj_tensor, Layout, PROJ_NAMES};
use crate::formats::packed::{self as cfile, Packed, TensorFormat};
use crate::formats::quant::{GgufBlockMatrix, QuantMatrix};
use crate::kernels::context::GpuContext;
use crate::kernels::ops::cross_entropy::HeadSource;
use crate::kernels::spmatmul::HostSparseWeight;
use crate::kernels::weights::{role, HostWeight, RoleBuffers, ROLES};
use crate::model::ModelFile;
use crate::reference::{Proj, Span};
use crate::train::prefix::default_span;
use crate::{Error, Result};

/// The LM head's tensor, its layout (as [`GpuModel`](super::GpuModel) holds its head) and
/// the format's name in the plan's labels.
pub(super) fn head_layout(
    file: &ModelFile,
    opts: &TrainOptions,
) -> Result<(&'static str, Layout, String)> {
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
pub(super) enum HostHead {
    Dense(Vec<f32>),
    Quant(QuantMatrix),
}

impl HostHead {
    pub(super) fn read(file: &ModelFile, name: &str, lay: Layout) -> Result<Self> {
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

    pub(super) fn source(&self) -> HeadSource<'_> {
        match self {
            HostHead::Dense(e) => HeadSource::Dense(e),
            HostHead::Quant(q) => HeadSource::Quant(q),
        }
    }
}

/// One block on the host, as it is uploaded: the norms and each projection in the form
/// the file stores it (packed, quantized, sparse with its transposed copy when a window
/// trains the block, or f32 under [`WeightFormat::F32`]).
pub(super) struct HostBlock {
    pub(super) norms: [Vec<f32>; 2],
    pub(super) w: Vec<HostWeight>,
}

impl HostBlock {
    pub(super) fn read(
        file: &ModelFile,
        l: usize,
        opts: &TrainOptions,
        grad: bool,
    ) -> Result<Self> {
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
pub(super) fn host_proj(
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
pub(super) fn matrix_roles(
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
pub(super) struct SlotSpec {
    /// The blocks uploaded into it over a run.
    pub(super) blocks: Vec<usize>,
    /// With the input-gradient side (window slots: their blocks train).
    pub(super) grad: bool,
    /// Labels of the two norms' buffers.
    pub(super) norms: [String; 2],
    /// Per projection, per role: (label, bytes); None where no block has the role.
    pub(super) bufs: Vec<[Option<(String, u64)>; 7]>,
}

impl SlotSpec {
    /// A slot named `name` for `blocks`. A slot that only ever holds one block is labelled
    /// with that block's tensor names (the trainer for every block plans each block as
    /// resident, under the names it always had).
    pub(super) fn new(
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

    pub(super) fn plan(&self, plan: &mut MemoryPlan, d: usize) {
        for n in &self.norms {
            plan.storage(n, Category::Weights, d as u64 * 4);
        }
        for (label, bytes) in self.bufs.iter().flatten().flatten() {
            plan.storage(label, Category::Weights, *bytes);
        }
    }

    pub(super) fn alloc(&self, ctx: &GpuContext, d: usize) -> Result<WeightSlot> {
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
pub(super) fn slot_specs(
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
pub(super) struct WeightSlot {
    pub(super) blocks: Vec<usize>,
    pub(super) grad: bool,
    pub(super) norms: [wgpu::Buffer; 2],
    pub(super) bufs: Vec<RoleBuffers>,
    pub(super) holds: Option<(usize, BlockWeights)>,
}

impl WeightSlot {
    pub(super) fn bytes(&self) -> u64 {
        let bufs = self.bufs.iter().flatten().flatten();
        self.norms.iter().chain(bufs).map(wgpu::Buffer::size).sum()
    }

    /// The weights of block `l` if this slot holds it.
    pub(super) fn weights(&self, l: usize) -> Option<&BlockWeights> {
        self.holds.as_ref().filter(|h| h.0 == l).map(|h| &h.1)
    }

    /// Writes block `l` into this slot. A queue write lands before the next submission:
    /// the commands reading the block it held must have been submitted.
    pub(super) fn fill(&mut self, queue: &wgpu::Queue, l: usize, host: &HostBlock) -> Result<()> {
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

/// What a set of spans needs: blocks `0..depth` (held on the host; frozen ones run
/// forward only), `cap` blocks' activations and window slots (the longest span), the
/// input-gradient side of the blocks any span trains, and the exit buffers when a span
/// ends at an exit.
pub(super) struct Cover {
    pub(super) depth: usize,
    pub(super) cap: usize,
    pub(super) grad: Vec<bool>,
    pub(super) exit: bool,
    /// A span starts above block 0: its input is read back into the prefix cache.
    pub(super) prefix: bool,
}

impl Cover {
    pub(super) fn of(n_layers: usize, spans: &[Span]) -> Result<Self> {
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

impl GpuTrainer<'_> {
    /// The span a step trains now: the window set, or every block to the last exit (or
    /// the model's head when there is no exit after the last block).
    pub(super) fn current_span(&self) -> Span {
        self.span.clone().unwrap_or_else(|| {
            let afters: Vec<usize> = self.exits.iter().map(|e| e.0).collect();
            default_span(self.config.n_layers, &afters)
        })
    }

    /// Refuses a span this trainer's buffers were not planned for: evaluating it needs its
    /// blocks on the host (they run from the window or the stream slot), training it
    /// (`train`) each of its blocks planned for the window slot it goes into (sized for
    /// it, with its gradient side) and activations for all of them.
    pub(super) fn check_planned(&self, s: &Span, train: bool) -> Result<()> {
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

    /// Block `l`'s weights in the slot holding it.
    pub(super) fn block(&self, l: usize) -> Result<&BlockWeights> {
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
    pub(super) fn load_window(&mut self, layers: std::ops::Range<usize>) -> Result<()> {
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
    pub(super) fn stream_block(&mut self, enc: &mut wgpu::CommandEncoder, l: usize) -> Result<()> {
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
}
