//! The whole LLaMA forward pass on the GPU for inference, composed from the kernel library,
//! with a KV cache: an [`Lm`](crate::eval::Lm), so perplexity, multiple-choice scoring,
//! generation and exit voting run on the GPU unchanged, in the browser too.
//!
//! Per appended chunk of t tokens at positions pos0..: embedding gather → per block (the
//! block shared with training, `engine::block`): rmsnorm, q/k/v (+ LoRA), RoPE on q and k,
//! k/v copied into the cache at pos0, attention over the s = pos0 + t cached positions, o
//! (+ LoRA) added to the residual, rmsnorm, gate/up (+ LoRA), SwiGLU, down (+ LoRA) added to
//! the residual → final norm → head. All of it is recorded into one command encoder per
//! chunk; only the logits are read back.
//!
//! With early exits in the adapter (`Lora::exits`, edge mode) [`GpuModel::append_exits_async`]
//! gives every exit's logits in the same pass: after block `after` of each exit, z = x +
//! s·B·A·x (the LoRA kernel on an identity projection, into a copy of the residual), the
//! final norm and the head; blocks past the deepest exit are not run. Its chunks hold
//! max_t / exits rows, so every exit's logits fit the one readback buffer.
//!
//! Memory is sized first ([`GpuModel::plan`]) and allocated once in [`GpuModel::new`].

use super::block::{
    block_forward, BlockBufs, BlockKernels, BlockWeights, Keys, ProjLora, Residual,
};
use super::gpu_lora::{check_lora, upload_lora, GpuLora};
use super::plan::{Category, MemoryPlan};
pub use super::weights::WeightFormat;
use super::weights::{
    compressed_embedding, cpu_gather, layout, plan_matrix, proj_tensor, read_mapped, upload_matrix,
    upload_proj, Gather, Layout, PROJ_NAMES,
};
use crate::eval::{Logits, Readout};
use crate::kernels::context::GpuContext;
use crate::kernels::ops::attention::MAX_HEAD_DIM;
use crate::kernels::ops::embedding::encode_embedding_forward;
use crate::kernels::ops::lora::{encode_lora_forward, LoraShape};
use crate::kernels::ops::rmsnorm::encode_rmsnorm_forward;
use crate::kernels::ops::rope::RopeTable;
use crate::kernels::qmatmul::{GpuWeight, Path, QMatmul};
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{Lora, Proj};
use crate::{Error, Result};

/// Construction options.
#[derive(Clone, Debug)]
pub struct GpuModelOptions {
    pub format: WeightFormat,
    /// Positions the KV cache holds (default min(context_length, [`DEFAULT_MAX_LEN`])).
    pub max_len: Option<usize>,
    /// Rows per forward chunk: activations and logits are sized for this many; longer
    /// appends run in chunks of it.
    pub max_t: usize,
    /// Matmul kernel shape; None: [`default_path`] for the adapter.
    pub path: Option<Path>,
}

/// Default cache length cap: enough for chat and evaluation, 94 MB of KV for SmolLM2-135M.
pub const DEFAULT_MAX_LEN: usize = 2048;
/// Default rows per chunk: 12.6 MB of logits for a 49152-token vocabulary.
pub const DEFAULT_MAX_T: usize = 64;

impl Default for GpuModelOptions {
    fn default() -> Self {
        Self {
            format: WeightFormat::Packed,
            max_len: None,
            max_t: DEFAULT_MAX_T,
            path: None,
        }
    }
}

/// GEMV for every chunk on CPU adapters (lavapipe, SwiftShader), where the 16×16 tiles are
/// slower: SmolLM2-135M packed, a 16-token prefill took 10.1 s tiled and 1.0 s as GEMV on
/// lavapipe. Real GPUs keep the automatic choice (tiles above a few rows).
pub fn default_path(ctx: &GpuContext) -> Path {
    if ctx.is_software() {
        Path::Gemv
    } else {
        Path::Auto
    }
}

/// A block's weights and its KV cache.
struct Layer {
    w: BlockWeights,
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
}

/// Activation scratch for `max_t` rows, reused by every layer.
struct Scratch {
    tokens: wgpu::Buffer,
    x: wgpu::Buffer,
    n: wgpu::Buffer,
    rstd: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    attn: wgpu::Buffer,
    o: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    act: wgpu::Buffer,
    lse: wgpu::Buffer,
    logits: wgpu::Buffer,
}

/// Rows per chunk when `exits` exits are read back: every exit's logits of a chunk share
/// the readback buffer.
fn exit_rows(max_t: usize, exits: usize) -> usize {
    (max_t / exits.max(1)).max(1)
}

/// Rows of logits the readback buffer holds: a plain chunk's, or every exit's of an exit
/// chunk (more only when there are more exits than rows per chunk).
fn readback_rows(max_t: usize, exits: usize) -> usize {
    max_t.max(exits * exit_rows(max_t, exits))
}

/// Resolved sizes.
#[derive(Clone, Copy, Debug)]
struct Dims {
    max_len: usize,
    max_t: usize,
}

fn dims(c: &LlamaConfig, opts: &GpuModelOptions) -> Result<Dims> {
    let max_len = opts
        .max_len
        .unwrap_or(c.context_length.min(DEFAULT_MAX_LEN));
    if max_len == 0 || max_len > c.context_length {
        return Err(Error::Invalid(format!(
            "GPU model: max_len {max_len} outside 1..={} (the model's context)",
            c.context_length
        )));
    }
    if opts.max_t == 0 {
        return Err(Error::Invalid("GPU model: max_t must be at least 1".into()));
    }
    if c.head_dim > MAX_HEAD_DIM {
        return Err(Error::Model(format!(
            "head_dim {} exceeds the attention kernel's {MAX_HEAD_DIM}",
            c.head_dim
        )));
    }
    Ok(Dims {
        max_len,
        max_t: opts.max_t.min(max_len),
    })
}

/// The LLaMA forward pass on the GPU with a KV cache.
pub struct GpuModel<'c> {
    ctx: &'c GpuContext,
    pub config: LlamaConfig,
    pub format: WeightFormat,
    max_len: usize,
    max_t: usize,
    len: usize,
    mm: QMatmul,
    layers: Vec<Layer>,
    output_norm: wgpu::Buffer,
    head: GpuWeight,
    gather: Gather,
    rope: RopeTable,
    s: Scratch,
    lora: Option<GpuLora>,
    /// The exit adapter's output z `[max_t][d]` (Some when the adapter has exits).
    exit_z: Option<wgpu::Buffer>,
    /// Positions cached in every block: exit passes fill only the blocks up to the deepest
    /// exit, so plain appends need `deep_len == len`.
    deep_len: usize,
    readback: wgpu::Buffer,
    plan: MemoryPlan,
    allocated: u64,
}

impl<'c> GpuModel<'c> {
    /// Every buffer [`GpuModel::new`] allocates for this file, options and adapter (its
    /// settings and exits; no value is read), computed from the header alone (no tensor
    /// is read).
    pub fn plan(
        file: &ModelFile,
        opts: &GpuModelOptions,
        lora: Option<&Lora<f32>>,
    ) -> Result<MemoryPlan> {
        let c = &file.config;
        let Dims { max_len, max_t } = dims(c, opts)?;
        let (d, kv, f, vocab) = (c.hidden, c.kv_dim(), c.ffn, c.vocab);
        let mut plan = MemoryPlan::default();
        let f32s = |n: usize| n as u64 * 4;
        for l in 0..c.n_layers {
            plan.storage(
                format!("blk.{l}.attn_norm.weight"),
                Category::Weights,
                f32s(d),
            );
            plan.storage(
                format!("blk.{l}.ffn_norm.weight"),
                Category::Weights,
                f32s(d),
            );
            for p in Proj::ALL {
                let (k, n) = p.shape(c);
                let name = proj_tensor(l, p);
                let lay = layout(file, &name, n, k, opts.format)?;
                plan_matrix(&mut plan, file, &name, "", (n, k), lay, false)?;
            }
            let cache = f32s(max_len * kv);
            plan.storage(format!("kv cache k (layer {l})"), Category::KvCache, cache);
            plan.storage(format!("kv cache v (layer {l})"), Category::KvCache, cache);
        }
        plan.storage("output_norm.weight", Category::Weights, f32s(d));
        let embd = "token_embd.weight";
        let embd_layout = layout(file, embd, vocab, d, opts.format)?;
        if c.tied_embeddings {
            plan_matrix(&mut plan, file, embd, "", (vocab, d), embd_layout, false)?;
        } else {
            let out = "output.weight";
            let lay = layout(file, out, vocab, d, opts.format)?;
            plan_matrix(&mut plan, file, out, "", (vocab, d), lay, false)?;
            if embd_layout == Layout::Dense {
                plan.storage(embd, Category::Weights, f32s(vocab * d));
            }
        }
        plan.storage(
            "rope table",
            Category::Activations,
            f32s(max_len * c.head_dim),
        );
        let rows = [
            ("tokens", 1),
            ("x (residual)", d),
            ("normed x", d),
            ("rstd", 1),
            ("q", c.q_dim()),
            ("k", kv),
            ("v", kv),
            ("attention out", c.q_dim()),
            ("projection out", d),
            ("gate", f),
            ("up", f),
            ("swiglu out", f),
            ("attention lse", c.n_heads),
            ("logits", vocab),
        ];
        for (name, width) in rows {
            plan.storage(name, Category::Activations, f32s(max_t * width));
        }
        let n_exits = lora.map_or(0, |l| l.exits.len());
        if let Some(lo) = lora {
            let lc = &lo.config;
            for l in 0..c.n_layers {
                for &p in &lc.targets {
                    let (k, n) = p.shape(c);
                    let what = format!("lora {} (layer {l})", PROJ_NAMES[p.index()]);
                    plan.storage(format!("{what} A"), Category::Lora, f32s(lc.rank * k));
                    plan.storage(format!("{what} B"), Category::Lora, f32s(n * lc.rank));
                }
            }
            plan.storage("lora u", Category::Lora, f32s(max_t * lc.rank));
            for k in 0..n_exits {
                plan.storage(
                    format!("exit {k} adapter A"),
                    Category::Lora,
                    f32s(lc.rank * d),
                );
                plan.storage(
                    format!("exit {k} adapter B"),
                    Category::Lora,
                    f32s(d * lc.rank),
                );
            }
            if n_exits > 0 {
                plan.storage("exit output", Category::Activations, f32s(max_t * d));
            }
        }
        let rb = readback_rows(max_t, n_exits);
        plan.other("logits readback", Category::Readback, f32s(rb * vocab));
        Ok(plan)
    }

    /// Plans, checks the plan against the device's limits (naming any buffer that cannot
    /// fit), then uploads the weights and allocates the cache and scratch once.
    pub fn new(
        ctx: &'c GpuContext,
        file: &ModelFile,
        opts: &GpuModelOptions,
        lora: Option<&Lora<f32>>,
    ) -> Result<Self> {
        let c = file.config.clone();
        let plan = Self::plan(file, opts, lora)?;
        plan.check(&ctx.limits)?;
        let Dims { max_len, max_t } = dims(&c, opts)?;
        let (d, kv, f, vocab) = (c.hidden, c.kv_dim(), c.ffn, c.vocab);
        let mut allocated = 0u64;
        let mut track = |b: wgpu::Buffer| {
            allocated += b.size();
            b
        };
        let norm = |name: &str| -> Result<wgpu::Buffer> {
            let w = file.tensor_f32(name, &[d])?;
            ctx.storage(name, bytemuck::cast_slice(&w))
        };
        let zeros = |name: &str, len: usize| ctx.storage_zeroed(name, len as u64 * 4);

        let mut layers = Vec::with_capacity(c.n_layers);
        let mut weight_bytes = 0u64;
        for l in 0..c.n_layers {
            let attn_norm = track(norm(&format!("blk.{l}.attn_norm.weight"))?);
            let ffn_norm = track(norm(&format!("blk.{l}.ffn_norm.weight"))?);
            let mut w = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (k, n) = p.shape(&c);
                let name = proj_tensor(l, p);
                let lay = layout(file, &name, n, k, opts.format)?;
                let gw = upload_proj(ctx, file, &name, (n, k), lay, false)?;
                weight_bytes += gw.bytes();
                w.push(gw);
            }
            let k_cache = track(zeros(&format!("kv cache k (layer {l})"), max_len * kv)?);
            let v_cache = track(zeros(&format!("kv cache v (layer {l})"), max_len * kv)?);
            layers.push(Layer {
                w: BlockWeights {
                    attn_norm,
                    ffn_norm,
                    w,
                },
                k_cache,
                v_cache,
            });
        }
        let output_norm = track(norm("output_norm.weight")?);
        let embd = "token_embd.weight";
        let embd_layout = layout(file, embd, vocab, d, opts.format)?;
        let (head, gather) = if c.tied_embeddings {
            let head = upload_matrix(ctx, file, embd, vocab, d, embd_layout)?;
            let gather = match embd_layout {
                Layout::Dense => Gather::Gpu(head.data.clone()),
                Layout::Packed(ty) => cpu_gather(file, embd, ty, vocab, d)?,
                Layout::Compressed(_) => return Err(compressed_embedding()),
            };
            (head, gather)
        } else {
            let out = "output.weight";
            let head = upload_matrix(
                ctx,
                file,
                out,
                vocab,
                d,
                layout(file, out, vocab, d, opts.format)?,
            )?;
            let gather = match embd_layout {
                Layout::Dense => {
                    let w = file.tensor_f32(embd, &[d, vocab])?;
                    Gather::Gpu(track(ctx.storage(embd, bytemuck::cast_slice(&w))?))
                }
                Layout::Packed(ty) => cpu_gather(file, embd, ty, vocab, d)?,
                Layout::Compressed(_) => return Err(compressed_embedding()),
            };
            (head, gather)
        };
        weight_bytes += head.data.size() + head.scales.size();
        let rope = RopeTable::new(ctx, c.head_dim, max_len, c.rope_theta as f64)?;
        let rope_bytes = rope.buffer.size();
        let s = Scratch {
            tokens: track(zeros("tokens", max_t)?),
            x: track(zeros("x (residual)", max_t * d)?),
            n: track(zeros("normed x", max_t * d)?),
            rstd: track(zeros("rstd", max_t)?),
            q: track(zeros("q", max_t * c.q_dim())?),
            k: track(zeros("k", max_t * kv)?),
            v: track(zeros("v", max_t * kv)?),
            attn: track(zeros("attention out", max_t * c.q_dim())?),
            o: track(zeros("projection out", max_t * d)?),
            gate: track(zeros("gate", max_t * f)?),
            up: track(zeros("up", max_t * f)?),
            act: track(zeros("swiglu out", max_t * f)?),
            lse: track(zeros("attention lse", max_t * c.n_heads)?),
            logits: track(zeros("logits", max_t * vocab)?),
        };
        let lora = match lora {
            Some(lo) => Some(upload_lora(ctx, &c, lo, max_t, &mut track)?),
            None => None,
        };
        let n_exits = lora.as_ref().map_or(0, |l| l.exits.len());
        let exit_z = match n_exits {
            0 => None,
            _ => Some(track(zeros("exit output", max_t * d)?)),
        };
        let readback = track(ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits readback"),
            size: (readback_rows(max_t, n_exits) * vocab * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }));
        let allocated = allocated + weight_bytes + rope_bytes;
        Ok(Self {
            ctx,
            config: c,
            format: opts.format,
            max_len,
            max_t,
            len: 0,
            mm: QMatmul {
                path: opts.path.unwrap_or_else(|| default_path(ctx)),
                ..QMatmul::new(ctx)
            },
            layers,
            output_norm,
            head,
            gather,
            rope,
            s,
            lora,
            exit_z,
            deep_len: 0,
            readback,
            plan,
            allocated,
        })
    }

    /// The plan this model was built from.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Bytes of the GPU buffers this model allocated (sum of their sizes).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Rows per forward chunk.
    pub fn max_t(&self) -> usize {
        self.max_t
    }

    /// Forgets positions from `len` on (only moves the length: later appends overwrite the
    /// cache from there).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.deep_len = self.deep_len.min(self.len);
    }

    /// Replaces the adapter values (same ranks and targets as at construction), e.g. after
    /// a training step; no allocation.
    pub fn set_lora(&mut self, lora: &Lora<f32>) -> Result<()> {
        let g = self
            .lora
            .as_mut()
            .ok_or_else(|| Error::Invalid("GPU model was built without LoRA".into()))?;
        check_lora(&self.config, lora, g.rank, &g.pairs)?;
        let afters: Vec<usize> = g.exits.iter().map(|e| e.after).collect();
        let given: Vec<usize> = lora.exits.iter().map(|e| e.after).collect();
        if afters != given {
            return Err(Error::Invalid(format!(
                "LoRA adapter: exits after blocks {given:?}, but the GPU model was built for \
                 {afters:?}: build it again with this adapter"
            )));
        }
        g.scale = lora.scale();
        for (ge, le) in g.exits.iter().zip(&lora.exits) {
            let q = &self.ctx.queue;
            q.write_buffer(&ge.a, 0, bytemuck::cast_slice(&le.pair.a));
            q.write_buffer(&ge.b, 0, bytemuck::cast_slice(&le.pair.b));
        }
        for (gl, ll) in g.pairs.iter().zip(&lora.layers) {
            for (gp, lp) in gl.iter().zip(ll) {
                if let (Some((a, b)), Some(p)) = (gp, lp) {
                    self.ctx
                        .queue
                        .write_buffer(a, 0, bytemuck::cast_slice(&p.a));
                    self.ctx
                        .queue
                        .write_buffer(b, 0, bytemuck::cast_slice(&p.b));
                }
            }
        }
        Ok(())
    }

    /// The block counts after which the adapter's early exits sit, shallow to deep (empty
    /// without exits).
    pub fn exits(&self) -> Vec<usize> {
        self.lora
            .as_ref()
            .map(|g| g.exits.iter().map(|e| e.after).collect())
            .unwrap_or_default()
    }

    /// Refuses tokens outside the vocabulary or past the cache.
    fn check_append(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        if self.len + tokens.len() > self.max_len {
            return Err(Error::Invalid(format!(
                "context of {} tokens exceeds the GPU model's {} (max_len)",
                self.len + tokens.len(),
                self.max_len
            )));
        }
        Ok(())
    }

    /// Appends `tokens` and returns the logits of every appended position, `[n][vocab]`
    /// (runs in chunks of [`GpuModel::max_t`] rows).
    pub async fn append_async(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_append(tokens)?;
        if self.deep_len < self.len {
            return Err(Error::Invalid(format!(
                "the KV cache holds positions {}..{} for the blocks up to the deepest exit \
                 only (an exit-voting pass): truncate to {} or less before a plain append",
                self.deep_len, self.len, self.deep_len
            )));
        }
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab);
        for chunk in tokens.chunks(self.max_t) {
            out.extend(self.forward_chunk(chunk).await?);
            self.len += chunk.len();
            self.deep_len = self.len;
        }
        Ok(out)
    }

    /// Appends `tokens` and returns each exit's logits of every appended position,
    /// `[exit][n·vocab]` (chunks of max_t / exits rows). Blocks past the deepest exit are
    /// not run, so their cache serves only further exit appends (or a plain one after
    /// truncating back).
    pub async fn append_exits_async(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let n_exits = self.lora.as_ref().map_or(0, |g| g.exits.len());
        if n_exits == 0 {
            return Err(Error::Invalid(
                "exit voting needs an adapter with early exits (this GPU model has none)".into(),
            ));
        }
        self.check_append(tokens)?;
        let vocab = self.config.vocab;
        let deepest = self.exits().last().copied().unwrap_or(0);
        let mut out = vec![Vec::with_capacity(tokens.len() * vocab); n_exits];
        for chunk in tokens.chunks(exit_rows(self.max_t, n_exits)) {
            let logits = self.forward_exits_chunk(chunk).await?;
            for (o, l) in out.iter_mut().zip(logits.chunks(chunk.len() * vocab)) {
                o.extend_from_slice(l);
            }
            if deepest == self.layers.len() && self.deep_len == self.len {
                self.deep_len += chunk.len();
            }
            self.len += chunk.len();
        }
        Ok(out)
    }

    /// Records the t tokens' embedding rows into the residual `x`.
    fn encode_gather(&self, enc: &mut wgpu::CommandEncoder, tokens: &[u32]) -> Result<()> {
        let (ctx, t, d) = (self.ctx, tokens.len(), self.config.hidden);
        match &self.gather {
            Gather::Gpu(table) => {
                ctx.queue
                    .write_buffer(&self.s.tokens, 0, bytemuck::cast_slice(tokens));
                encode_embedding_forward(ctx, enc, &self.s.tokens, table, &self.s.x, t, d)
            }
            Gather::Cpu { .. } => {
                let rows = self.gather.cpu_rows(tokens, d)?;
                ctx.queue
                    .write_buffer(&self.s.x, 0, bytemuck::cast_slice(&rows));
                Ok(())
            }
        }
    }

    /// Records the final norm of `y` and the head into the logits scratch (t rows).
    fn encode_head(
        &self,
        enc: &mut wgpu::CommandEncoder,
        y: &wgpu::Buffer,
        t: usize,
    ) -> Result<()> {
        let (ctx, c, s) = (self.ctx, &self.config, &self.s);
        encode_rmsnorm_forward(
            ctx,
            enc,
            y,
            &self.output_norm,
            &s.n,
            &s.rstd,
            t,
            c.hidden,
            c.norm_eps,
        )?;
        self.mm.encode_nt(ctx, enc, &self.head, &s.n, &s.logits, t)
    }

    async fn forward_chunk(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (ctx, t) = (self.ctx, tokens.len());
        let mut enc = ctx.encoder();
        self.encode_gather(&mut enc, tokens)?;
        for l in 0..self.layers.len() {
            self.encode_block(&mut enc, l, t)?;
        }
        self.encode_head(&mut enc, &self.s.x, t)?;
        let bytes = (t * self.config.vocab * 4) as u64;
        enc.copy_buffer_to_buffer(&self.s.logits, 0, &self.readback, 0, bytes);
        ctx.queue.submit([enc.finish()]);
        read_mapped(ctx, &self.readback, bytes).await
    }

    /// One chunk through the blocks up to the deepest exit; each exit's logits are copied
    /// into the readback buffer in turn: `[exit][t][vocab]`.
    async fn forward_exits_chunk(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (ctx, t, d) = (self.ctx, tokens.len(), self.config.hidden);
        let (Some(g), Some(z)) = (&self.lora, &self.exit_z) else {
            return Err(Error::Invalid("this GPU model has no early exits".into()));
        };
        let mut enc = ctx.encoder();
        self.encode_gather(&mut enc, tokens)?;
        let per_exit = (t * self.config.vocab * 4) as u64;
        let sh = LoraShape {
            m: t,
            k: d,
            n: d,
            rank: g.rank,
            scale: g.scale,
        };
        let mut done = 0;
        for (k, e) in g.exits.iter().enumerate() {
            for l in done..e.after {
                self.encode_block(&mut enc, l, t)?;
            }
            done = e.after;
            // z = x + s·B·A·x: a LoRA on an identity projection, into a copy of x.
            enc.copy_buffer_to_buffer(&self.s.x, 0, z, 0, (t * d * 4) as u64);
            encode_lora_forward(ctx, &mut enc, &self.s.x, (&e.a, &e.b), None, &g.u, z, sh)?;
            self.encode_head(&mut enc, z, t)?;
            let off = k as u64 * per_exit;
            enc.copy_buffer_to_buffer(&self.s.logits, 0, &self.readback, off, per_exit);
        }
        ctx.queue.submit([enc.finish()]);
        read_mapped(ctx, &self.readback, g.exits.len() as u64 * per_exit).await
    }

    /// The LoRA term of block `l`'s projection `p` on t rows, if the adapter has one.
    fn proj_lora(&self, l: usize, p: Proj, t: usize) -> Option<ProjLora<'_>> {
        let g = self.lora.as_ref()?;
        let (a, b) = g.pairs[l][p.index()].as_ref()?;
        let (k, n) = p.shape(&self.config);
        let shape = LoraShape {
            m: t,
            k,
            n,
            rank: g.rank,
            scale: g.scale,
        };
        Some(ProjLora {
            ab: (a, b),
            drop: None,
            u: &g.u,
            shape,
        })
    }

    /// One block on t rows at positions len.., reading and updating the residual `x`
    /// ([`block_forward`] with the KV cache).
    fn encode_block(&self, enc: &mut wgpu::CommandEncoder, l: usize, t: usize) -> Result<()> {
        let (s, lw) = (&self.s, &self.layers[l]);
        let kernels = BlockKernels {
            ctx: self.ctx,
            mm: &self.mm,
            config: &self.config,
            rope: &self.rope,
        };
        // One normed-x and rstd scratch serves both norms: nothing is kept.
        let bufs = BlockBufs {
            x: &s.x,
            n1: &s.n,
            rstd1: &s.rstd,
            q: &s.q,
            k: &s.k,
            v: &s.v,
            attn: &s.attn,
            lse: &s.lse,
            n2: &s.n,
            rstd2: &s.rstd,
            gate: &s.gate,
            up: &s.up,
            act: &s.act,
            o: &s.o,
            residual: Residual::InPlace,
        };
        let keys = Keys::Cache {
            k: &lw.k_cache,
            v: &lw.v_cache,
            pos0: self.len,
        };
        let lora = |p: Proj| self.proj_lora(l, p, t);
        block_forward(&kernels, enc, &lw.w, &lora, &bufs, keys, t)
    }
}

/// The evaluation functions' model: awaits the logits' readback, so it also runs in the
/// browser; the head's logits, or every early exit's in one pass (exit voting).
impl crate::eval::Lm for GpuModel<'_> {
    fn vocab(&self) -> usize {
        self.config.vocab
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn len(&self) -> usize {
        self.len
    }
    /// Only moves the length: later appends overwrite the cache from there.
    fn truncate(&mut self, len: usize) {
        GpuModel::truncate(self, len)
    }
    fn exits(&self) -> Vec<usize> {
        GpuModel::exits(self)
    }
    fn append<'a>(&'a mut self, tokens: &'a [u32], readout: Readout) -> Logits<'a> {
        Box::pin(async move {
            match readout {
                Readout::Head => Ok(vec![self.append_async(tokens).await?]),
                Readout::Exits => self.append_exits_async(tokens).await,
            }
        })
    }
}
