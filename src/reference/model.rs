//! The whole LLaMA-family transformer on the CPU: forward (with an optional KV cache for
//! generation), and a training forward that saves what the explicit backward pass reads.
//!
//! Block: h = x + Wo·attn(rope(Wq·n1), rope(Wk·n1), Wv·n1), n1 = rmsnorm(x)
//!        y = h + Wdown·(silu(Wgate·n2) ⊙ Wup·n2),           n2 = rmsnorm(h)
//! Head:  logits = rmsnorm(y_last)·Eᵀ (tied) — every projection may carry a LoRA adapter.

use super::matrix as mx;
use super::ops::{self, AttnShape, Dropout, LoraPair};
use super::Real;
use crate::model::{LayerWeights, Mat, Weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The seven linear projections of a block, in PEFT's naming order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// (in, out) features of this projection for a config.
    pub fn shape(self, c: &crate::model::LlamaConfig) -> (usize, usize) {
        match self {
            Proj::Q => (c.hidden, c.q_dim()),
            Proj::K | Proj::V => (c.hidden, c.kv_dim()),
            Proj::O => (c.q_dim(), c.hidden),
            Proj::Gate | Proj::Up => (c.hidden, c.ffn),
            Proj::Down => (c.ffn, c.hidden),
        }
    }

    /// This projection's weight `[out][in]` in a block.
    pub fn weight<T>(self, l: &LayerWeights<T>) -> &Mat<T> {
        match self {
            Proj::Q => &l.wq,
            Proj::K => &l.wk,
            Proj::V => &l.wv,
            Proj::O => &l.wo,
            Proj::Gate => &l.w_gate,
            Proj::Up => &l.w_up,
            Proj::Down => &l.w_down,
        }
    }

    pub fn weight_mut<T>(self, l: &mut LayerWeights<T>) -> &mut Mat<T> {
        match self {
            Proj::Q => &mut l.wq,
            Proj::K => &mut l.wk,
            Proj::V => &mut l.wv,
            Proj::O => &mut l.wo,
            Proj::Gate => &mut l.w_gate,
            Proj::Up => &mut l.w_up,
            Proj::Down => &mut l.w_down,
        }
    }
}

/// LoRA hyper-parameters (PEFT's names: r, lora_alpha, lora_dropout, target_modules).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    /// The reference setting: r 8, α 16, dropout 0.1, all seven projections.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: Proj::ALL.to_vec(),
        }
    }
}

/// LoRA adapters for every layer: `layers[l][proj.index()]`, and the early exits' adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora<T> {
    pub config: LoraConfig,
    pub layers: Vec<[Option<LoraPair<T>>; 7]>,
    /// Early exits (adaptive layer tuning), shallow to deep; empty for plain LoRA.
    pub exits: Vec<Exit<T>>,
}

/// An early exit after block `after` (a count of blocks, 1..=n_layers). Its only trainable
/// part is a rank-r residual adapter on the hidden state, z = y + s·B·A·y (A `[r][d]`,
/// B `[d][r]`, B = 0 at first); z then goes through the model's own final norm and tied LM
/// head, so an exit costs 2·r·d parameters instead of a 28 M-parameter head copy.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit<T> {
    pub after: usize,
    pub pair: LoraPair<T>,
}

impl<T: Real> Lora<T> {
    /// PEFT's initialisation: A ~ U(−1/√k, 1/√k) (Kaiming-uniform with a=√5), B = 0, so the
    /// adapted model starts equal to the base model.
    pub fn new(c: &crate::model::LlamaConfig, config: LoraConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = (0..c.n_layers)
            .map(|_| {
                std::array::from_fn(|i| {
                    let p = Proj::ALL[i];
                    config.targets.contains(&p).then(|| {
                        let (k, n) = p.shape(c);
                        let mut pair = LoraPair::zeros(config.rank, k, n);
                        let bound = 1.0 / (k as f64).sqrt();
                        for a in &mut pair.a {
                            *a = T::from_f64(rng.random_range(-bound..bound));
                        }
                        pair
                    })
                })
            })
            .collect();
        Self {
            config,
            layers,
            exits: Vec::new(),
        }
    }

    /// Adds exits after the given block counts (ascending, each in 1..=n_layers), with
    /// PEFT's initialisation drawn from `seed` (B = 0: an exit starts as the plain head).
    pub fn with_exits(mut self, after: &[usize], hidden: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = hidden;
        self.exits = after
            .iter()
            .map(|&after| {
                let mut pair = LoraPair::zeros(self.config.rank, d, d);
                let bound = 1.0 / (d as f64).sqrt();
                for a in &mut pair.a {
                    *a = T::from_f64(rng.random_range(-bound..bound));
                }
                Exit { after, pair }
            })
            .collect();
        self
    }

    /// Same structure, all zeros (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        Self {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|l| {
                    std::array::from_fn(|i| {
                        l[i].as_ref().map(|p| LoraPair::zeros(p.rank, p.k, p.n))
                    })
                })
                .collect(),
            exits: self
                .exits
                .iter()
                .map(|e| Exit {
                    after: e.after,
                    pair: LoraPair::zeros(e.pair.rank, e.pair.k, e.pair.n),
                })
                .collect(),
        }
    }

    pub fn scale(&self) -> T {
        T::from_f64(self.config.alpha as f64 / self.config.rank as f64)
    }

    /// Every trainable tensor, in a fixed order (layer, projection, A then B; then the
    /// exits, A then B).
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<T>> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            for p in l.iter_mut().flatten() {
                v.push(&mut p.a);
                v.push(&mut p.b);
            }
        }
        for e in &mut self.exits {
            v.push(&mut e.pair.a);
            v.push(&mut e.pair.b);
        }
        v
    }

    /// What each tensor of [`Self::tensors_mut`] belongs to, in the same order.
    pub fn owners(&self) -> Vec<Owner> {
        let mut v = Vec::new();
        for (l, ps) in self.layers.iter().enumerate() {
            for _ in ps.iter().flatten() {
                v.extend([Owner::Layer(l); 2]);
            }
        }
        for k in 0..self.exits.len() {
            v.extend([Owner::Exit(k); 2]);
        }
        v
    }

    pub fn n_params(&self) -> usize {
        let exits: usize = self
            .exits
            .iter()
            .map(|e| e.pair.a.len() + e.pair.b.len())
            .sum();
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.a.len() + p.b.len())
            .sum::<usize>()
            + exits
    }
}

/// The block or exit a trainable tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Layer(usize),
    Exit(usize),
}

/// What a training forward covers: blocks `layers` carry gradients (the blocks below run
/// frozen, without dropout; those above are not run), and the loss is read at exit `exit`
/// (an index into [`Lora::exits`]) or, with None, at the model's own head after the last
/// block of `layers` (which must then be the model's last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub layers: std::ops::Range<usize>,
    pub exit: Option<usize>,
}

/// Keys and values (after RoPE) of the positions seen so far, per layer.
#[derive(Clone, Debug, Default)]
pub struct KvCache<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
    pub len: usize,
}

impl<T: Real> KvCache<T> {
    pub fn new(n_layers: usize) -> Self {
        Self {
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            len: 0,
        }
    }

    /// Forgets every position from `len` on (to score several continuations of a prefix).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.truncate(len * kv_dim);
            v.truncate(len * kv_dim);
        }
        self.len = self.len.min(len);
    }
}

/// The dropout of layer `l`'s adapter on projection `p` for a row drawn with `seed`
/// (None when `p_drop` is 0); the CPU reference and the GPU engine draw the same masks.
pub fn lora_dropout(seed: u64, l: usize, p: Proj, p_drop: f32) -> Option<Dropout> {
    Dropout::new(
        seed,
        (l * Proj::ALL.len() + p.index()) as u64,
        p_drop as f64,
    )
}

/// What one block's backward pass reads, saved by the training forward.
#[derive(Clone, Debug, Default)]
pub struct LayerActs<T> {
    pub x: Vec<T>,
    pub n1: Vec<T>,
    pub rstd1: Vec<T>,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub probs: Vec<T>,
    pub attn: Vec<T>,
    pub h: Vec<T>,
    pub n2: Vec<T>,
    pub rstd2: Vec<T>,
    pub gate: Vec<T>,
    pub up: Vec<T>,
    pub act: Vec<T>,
    /// LoRA u = drop(x)·Aᵀ and the dropout mask, per projection.
    pub lora_u: [Vec<T>; 7],
    pub lora_mask: [Option<Vec<T>>; 7],
}

/// Everything the backward pass needs from one training forward.
#[derive(Clone, Debug)]
pub struct Activations<T> {
    pub tokens: Vec<u32>,
    pub span: Span,
    /// Saved activations of the blocks in `span.layers`, in order.
    pub layers: Vec<LayerActs<T>>,
    /// Output of the last block run; the exit adapter's u (empty without an exit); its
    /// output z (= y without an exit), the final norm's output and rstd.
    pub y: Vec<T>,
    pub exit_u: Vec<T>,
    pub z: Vec<T>,
    pub yn: Vec<T>,
    pub rstd_out: Vec<T>,
    /// The positions whose logits were made (those with a target), and those logits.
    pub rows: Vec<usize>,
    pub logits: Vec<T>,
}

/// Gradients: LoRA always (when adapters exist); base weights when asked for.
#[derive(Clone, Debug)]
pub struct Grads<T> {
    pub lora: Option<Lora<T>>,
    pub base: Option<Weights<T>>,
}

/// The model: frozen base weights plus optional LoRA adapters.
#[derive(Clone, Debug)]
pub struct Transformer<T> {
    pub w: Weights<T>,
    pub lora: Option<Lora<T>>,
}

impl<T: Real> Transformer<T> {
    pub fn new(w: Weights<T>) -> Self {
        Self { w, lora: None }
    }

    fn shape(&self, t: usize, s: usize) -> AttnShape {
        let c = &self.w.config;
        AttnShape {
            t,
            s,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        }
    }

    /// A projection (base + LoRA) of `x` `[m][in]`; saves LoRA's u into `save` if given.
    fn proj(
        &self,
        l: usize,
        p: Proj,
        x: &[T],
        m: usize,
        mask: Option<&[T]>,
        save: Option<&mut Vec<T>>,
    ) -> Vec<T> {
        let (k, n) = p.shape(&self.w.config);
        let mut y = mx::linear_forward(x, p.weight(&self.w.layers[l]), m, k, n);
        if let Some(lora) = &self.lora {
            if let Some(pair) = &lora.layers[l][p.index()] {
                let u = ops::lora_forward(x, pair, lora.scale(), m, mask, &mut y);
                if let Some(s) = save {
                    *s = u;
                }
            }
        }
        y
    }

    /// One block forward over `m` rows at positions `pos0..`, updating the cache if given,
    /// saving activations if asked. Returns the block's output.
    fn block_forward(
        &self,
        l: usize,
        x: &[T],
        m: usize,
        cache: Option<&mut KvCache<T>>,
        mut save: Option<&mut LayerActs<T>>,
    ) -> Vec<T> {
        let c = &self.w.config;
        let lw = &self.w.layers[l];
        let (d, eps) = (c.hidden, T::from_f64(c.norm_eps as f64));
        let theta = c.rope_theta as f64;
        let pos0 = cache.as_ref().map_or(0, |c| c.len);
        // The masks are read while lora_u is written: taken out of `save` for the block
        // (not copied: they are megabytes per block) and put back at its end.
        let masks = save
            .as_deref_mut()
            .map(|s| std::mem::take(&mut s.lora_mask));
        let mask = |p: Proj| masks.as_ref().and_then(|ms| ms[p.index()].as_deref());
        macro_rules! proj {
            ($p:expr, $x:expr) => {{
                let slot = save.as_deref_mut().map(|s| &mut s.lora_u[$p.index()]);
                self.proj(l, $p, $x, m, mask($p), slot)
            }};
        }

        let (n1, rstd1) = ops::rmsnorm_forward(x, &lw.attn_norm, m, d, eps);
        let mut q = proj!(Proj::Q, &n1);
        let mut k = proj!(Proj::K, &n1);
        let v = proj!(Proj::V, &n1);
        ops::rope_forward(&mut q, m, c.n_heads, c.head_dim, pos0, theta, c.rope_style);
        ops::rope_forward(
            &mut k,
            m,
            c.n_kv_heads,
            c.head_dim,
            pos0,
            theta,
            c.rope_style,
        );
        let (attn, probs) = match cache {
            Some(cache) => {
                cache.k[l].extend_from_slice(&k);
                cache.v[l].extend_from_slice(&v);
                let s = pos0 + m;
                ops::attention_forward(&q, &cache.k[l], &cache.v[l], self.shape(m, s))
            }
            None => ops::attention_forward(&q, &k, &v, self.shape(m, m)),
        };
        let o = proj!(Proj::O, &attn);
        let h: Vec<T> = x.iter().zip(&o).map(|(&a, &b)| a + b).collect();
        let (n2, rstd2) = ops::rmsnorm_forward(&h, &lw.ffn_norm, m, d, eps);
        let gate = proj!(Proj::Gate, &n2);
        let up = proj!(Proj::Up, &n2);
        let act = ops::swiglu_forward(&gate, &up);
        let down = proj!(Proj::Down, &act);
        let y = h.iter().zip(&down).map(|(&a, &b)| a + b).collect();
        if let Some(s) = save {
            if let Some(ms) = masks {
                s.lora_mask = ms;
            }
            s.x = x.to_vec();
            (s.n1, s.rstd1, s.q, s.k, s.v, s.probs, s.attn) = (n1, rstd1, q, k, v, probs, attn);
            (s.h, s.n2, s.rstd2, s.gate, s.up, s.act) = (h, n2, rstd2, gate, up, act);
        }
        y
    }

    /// Hidden states after the final norm, `[tokens][hidden]`. With a cache, `tokens`
    /// continue the cached sequence and the cache grows by their length.
    pub fn forward_hidden(&self, tokens: &[u32], mut cache: Option<&mut KvCache<T>>) -> Vec<T> {
        let c = &self.w.config;
        let m = tokens.len();
        let mut x = mx::embedding_forward(tokens, &self.w.tok_embd, c.hidden);
        for l in 0..c.n_layers {
            x = self.block_forward(l, &x, m, cache.as_deref_mut(), None);
        }
        if let Some(cache) = cache {
            cache.len += m;
        }
        let eps = T::from_f64(c.norm_eps as f64);
        ops::rmsnorm_forward(&x, &self.w.output_norm, m, c.hidden, eps).0
    }

    /// Logits `[rows][vocab]` of normed hidden rows.
    pub fn head(&self, hidden: &[T]) -> Vec<T> {
        let c = &self.w.config;
        mx::linear_forward(
            hidden,
            self.w.head(),
            hidden.len() / c.hidden,
            c.hidden,
            c.vocab,
        )
    }

    /// Logits of every position, `[tokens][vocab]`.
    pub fn logits(&self, tokens: &[u32], cache: Option<&mut KvCache<T>>) -> Vec<T> {
        self.head(&self.forward_hidden(tokens, cache))
    }

    /// Runs blocks `from..to` frozen (no dropout, nothing saved) on hidden rows `x`; with
    /// `from` = 0 and `x` None, starts from the token embeddings.
    pub fn forward_blocks(
        &self,
        tokens: &[u32],
        x: Option<Vec<T>>,
        from: usize,
        to: usize,
    ) -> Vec<T> {
        let c = &self.w.config;
        let m = tokens.len();
        let mut x = x.unwrap_or_else(|| mx::embedding_forward(tokens, &self.w.tok_embd, c.hidden));
        for l in from..to {
            x = self.block_forward(l, &x, m, None, None);
        }
        x
    }

    /// Training forward over every block to the model's head, with logits for every
    /// position. `dropout_seed` draws the LoRA dropout masks (None: no dropout, as in
    /// evaluation and gradient checks).
    pub fn forward_train(&self, tokens: &[u32], dropout_seed: Option<u64>) -> Activations<T> {
        let span = Span {
            layers: 0..self.w.config.n_layers,
            exit: None,
        };
        self.forward_span(tokens, None, &span, None, dropout_seed)
    }

    /// Training forward over `span`: `input` is the hidden state entering
    /// `span.layers.start` (None: computed from the embeddings through the frozen blocks
    /// below), and logits are made only at positions with a target (all without
    /// `targets`). Saves what [`Self::backward`] reads, for the span's blocks only.
    pub fn forward_span(
        &self,
        tokens: &[u32],
        input: Option<Vec<T>>,
        span: &Span,
        targets: Option<&[Option<u32>]>,
        dropout_seed: Option<u64>,
    ) -> Activations<T> {
        let c = &self.w.config;
        let m = tokens.len();
        let mut x = match input {
            Some(x) => x,
            None => self.forward_blocks(tokens, None, 0, span.layers.start),
        };
        let mut layers = Vec::with_capacity(span.layers.len());
        for l in span.layers.clone() {
            let mut acts = LayerActs::default();
            if let (Some(lora), Some(seed)) = (&self.lora, dropout_seed) {
                for p in Proj::ALL {
                    if lora.layers[l][p.index()].is_some() {
                        let k = p.shape(c).0;
                        acts.lora_mask[p.index()] =
                            lora_dropout(seed, l, p, lora.config.dropout).map(|d| d.mask(m * k));
                    }
                }
            }
            x = self.block_forward(l, &x, m, None, Some(&mut acts));
            layers.push(acts);
        }
        let (z, exit_u) = match self.exit(span.exit) {
            Some((pair, scale)) => {
                let mut z = x.clone();
                let u = ops::lora_forward(&x, pair, scale, m, None, &mut z);
                (z, u)
            }
            None => (x.clone(), Vec::new()),
        };
        let eps = T::from_f64(c.norm_eps as f64);
        let (yn, rstd_out) = ops::rmsnorm_forward(&z, &self.w.output_norm, m, c.hidden, eps);
        let rows: Vec<usize> = match targets {
            Some(t) => (0..m).filter(|&i| t[i].is_some()).collect(),
            None => (0..m).collect(),
        };
        let logits = self.head(&gather_rows(&yn, &rows, c.hidden));
        Activations {
            tokens: tokens.to_vec(),
            span: span.clone(),
            layers,
            y: x,
            exit_u,
            z,
            yn,
            rstd_out,
            rows,
            logits,
        }
    }

    /// Exit `k`'s adapter and LoRA scale (None for the model's own head).
    fn exit(&self, k: Option<usize>) -> Option<(&LoraPair<T>, T)> {
        let lora = self.lora.as_ref()?;
        Some((&lora.exits.get(k?)?.pair, lora.scale()))
    }

    /// Logits `[tokens][vocab]` at every exit, in one pass to the deepest: what exit
    /// voting combines. Empty without exits. With a cache, `tokens` follow the cached
    /// positions (as in [`Self::logits`]); blocks past the deepest exit are not run, so
    /// such a cache serves only further `exit_logits` calls.
    pub fn exit_logits(&self, tokens: &[u32], mut cache: Option<&mut KvCache<T>>) -> Vec<Vec<T>> {
        let c = &self.w.config;
        let m = tokens.len();
        let Some(lora) = &self.lora else {
            return Vec::new();
        };
        let eps = T::from_f64(c.norm_eps as f64);
        let mut x = mx::embedding_forward(tokens, &self.w.tok_embd, c.hidden);
        let mut done = 0;
        let mut out = Vec::with_capacity(lora.exits.len());
        for e in &lora.exits {
            for l in done..e.after {
                x = self.block_forward(l, &x, m, cache.as_deref_mut(), None);
            }
            done = e.after;
            let mut z = x.clone();
            ops::lora_forward(&x, &e.pair, lora.scale(), m, None, &mut z);
            let yn = ops::rmsnorm_forward(&z, &self.w.output_norm, m, c.hidden, eps).0;
            out.push(self.head(&yn));
        }
        if let Some(cache) = cache {
            cache.len += m;
        }
        out
    }

    /// Mean cross-entropy of `targets` (None = not counted) under the saved logits.
    pub fn loss(&self, acts: &Activations<T>, targets: &[Option<u32>]) -> T {
        let t: Vec<Option<u32>> = acts.rows.iter().map(|&i| targets[i]).collect();
        ops::cross_entropy_forward(&acts.logits, &t, self.w.config.vocab).0
    }

    /// Backward pass of the mean cross-entropy over the span of `acts`: LoRA gradients
    /// (the span's blocks and its exit), and base-weight gradients when `base_grads`
    /// (used by the gradient checks over the whole model; tuning keeps the base frozen).
    pub fn backward(
        &self,
        acts: &Activations<T>,
        targets: &[Option<u32>],
        base_grads: bool,
    ) -> Grads<T> {
        let c = &self.w.config;
        let (m, d) = (acts.tokens.len(), c.hidden);
        let mut gb = base_grads.then(|| self.w.map(|v| vec![T::zero(); v.len()]));
        let mut gl = self.lora.as_ref().map(Lora::zeros_like);

        // Head (on the rows with logits) and final norm.
        let t: Vec<Option<u32>> = acts.rows.iter().map(|&i| targets[i]).collect();
        let dlogits = ops::cross_entropy_backward(&acts.logits, &t, c.vocab, T::one());
        let mut dyn_rows = vec![T::zero(); acts.rows.len() * d];
        let head_grad = gb.as_mut().map(|g| match &mut g.output {
            Some(o) => o.grad_mut(),
            None => g.tok_embd.grad_mut(),
        });
        mx::linear_backward(
            &dlogits,
            &gather_rows(&acts.yn, &acts.rows, d),
            self.w.head(),
            (acts.rows.len(), d, c.vocab),
            &mut dyn_rows,
            head_grad,
        );
        let mut dyn_ = vec![T::zero(); m * d];
        for (j, &i) in acts.rows.iter().enumerate() {
            dyn_[i * d..(i + 1) * d].copy_from_slice(&dyn_rows[j * d..(j + 1) * d]);
        }
        let mut dz = vec![T::zero(); m * d];
        ops::rmsnorm_backward(
            &dyn_,
            &acts.z,
            &self.w.output_norm,
            &acts.rstd_out,
            m,
            d,
            &mut dz,
            gb.as_mut().map(|g| g.output_norm.as_mut_slice()),
        );
        let mut dx = dz.clone();
        if let (Some((pair, scale)), Some(k), Some(gl)) =
            (self.exit(acts.span.exit), acts.span.exit, gl.as_mut())
        {
            let dpair = &mut gl.exits[k].pair;
            ops::lora_backward(
                &dz,
                &acts.y,
                &acts.exit_u,
                pair,
                scale,
                m,
                None,
                &mut dx,
                dpair,
            );
        }

        for (i, l) in acts.span.layers.clone().enumerate().rev() {
            dx = self.block_backward(l, &acts.layers[i], dx, m, gb.as_mut(), gl.as_mut());
        }
        if let Some(g) = gb.as_mut() {
            if acts.span.layers.start == 0 {
                ops::embedding_backward(&dx, &acts.tokens, d, g.tok_embd.grad_mut());
            }
        }
        Grads { lora: gl, base: gb }
    }

    /// Backward of a projection: dx += dy·Wᵀ-side terms, plus LoRA and base-weight grads.
    #[allow(clippy::too_many_arguments)]
    fn proj_backward(
        &self,
        l: usize,
        p: Proj,
        dy: &[T],
        x: &[T],
        a: &LayerActs<T>,
        m: usize,
        dx: &mut [T],
        gb: Option<&mut Weights<T>>,
        gl: Option<&mut Lora<T>>,
    ) {
        let (k, n) = p.shape(&self.w.config);
        let dw = gb.map(|g| p.weight_mut(&mut g.layers[l]).grad_mut());
        mx::linear_backward(dy, x, p.weight(&self.w.layers[l]), (m, k, n), dx, dw);
        if let (Some(lora), Some(gl)) = (&self.lora, gl) {
            if let (Some(pair), Some(dpair)) =
                (&lora.layers[l][p.index()], &mut gl.layers[l][p.index()])
            {
                let mask = a.lora_mask[p.index()].as_deref();
                ops::lora_backward(
                    dy,
                    x,
                    &a.lora_u[p.index()],
                    pair,
                    lora.scale(),
                    m,
                    mask,
                    dx,
                    dpair,
                );
            }
        }
    }

    /// One block backward: reads like [`Self::block_forward`] from the bottom up.
    fn block_backward(
        &self,
        l: usize,
        a: &LayerActs<T>,
        dy: Vec<T>,
        m: usize,
        mut gb: Option<&mut Weights<T>>,
        mut gl: Option<&mut Lora<T>>,
    ) -> Vec<T> {
        let c = &self.w.config;
        let lw = &self.w.layers[l];
        let d = c.hidden;
        let theta = c.rope_theta as f64;
        // y = h + down(act): the residual passes dy to h unchanged.
        let mut dh = dy.clone();
        let mut dact = vec![T::zero(); m * c.ffn];
        self.proj_backward(
            l,
            Proj::Down,
            &dy,
            &a.act,
            a,
            m,
            &mut dact,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        let (dgate, dup) = ops::swiglu_backward(&dact, &a.gate, &a.up);
        let mut dn2 = vec![T::zero(); m * d];
        self.proj_backward(
            l,
            Proj::Gate,
            &dgate,
            &a.n2,
            a,
            m,
            &mut dn2,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        self.proj_backward(
            l,
            Proj::Up,
            &dup,
            &a.n2,
            a,
            m,
            &mut dn2,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        let dffn_norm = gb
            .as_deref_mut()
            .map(|g| g.layers[l].ffn_norm.as_mut_slice());
        ops::rmsnorm_backward(&dn2, &a.h, &lw.ffn_norm, &a.rstd2, m, d, &mut dh, dffn_norm);

        // h = x + o(attn): the residual passes dh to x unchanged.
        let mut dx = dh.clone();
        let mut dattn = vec![T::zero(); m * c.q_dim()];
        self.proj_backward(
            l,
            Proj::O,
            &dh,
            &a.attn,
            a,
            m,
            &mut dattn,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        let (mut dq, mut dk, dv) =
            ops::attention_backward(&dattn, &a.q, &a.k, &a.v, &a.probs, self.shape(m, m));
        ops::rope_backward(&mut dq, m, c.n_heads, c.head_dim, 0, theta, c.rope_style);
        ops::rope_backward(&mut dk, m, c.n_kv_heads, c.head_dim, 0, theta, c.rope_style);
        let mut dn1 = vec![T::zero(); m * d];
        self.proj_backward(
            l,
            Proj::Q,
            &dq,
            &a.n1,
            a,
            m,
            &mut dn1,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        self.proj_backward(
            l,
            Proj::K,
            &dk,
            &a.n1,
            a,
            m,
            &mut dn1,
            gb.as_deref_mut(),
            gl.as_deref_mut(),
        );
        self.proj_backward(
            l,
            Proj::V,
            &dv,
            &a.n1,
            a,
            m,
            &mut dn1,
            gb.as_deref_mut(),
            gl,
        );
        let dattn_norm = gb.map(|g| g.layers[l].attn_norm.as_mut_slice());
        ops::rmsnorm_backward(
            &dn1,
            &a.x,
            &lw.attn_norm,
            &a.rstd1,
            m,
            d,
            &mut dx,
            dattn_norm,
        );
        dx
    }
}

/// Rows `rows` of a `[*][d]` matrix, in order.
fn gather_rows<T: Copy>(x: &[T], rows: &[usize], d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        out.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    out
}
