//! The whole LLaMA-family transformer on the CPU: forward (with an optional KV cache for
//! generation), and a training forward that saves what the explicit backward pass reads.
//!
//! Block: h = x + Wo·attn(rope(Wq·n1), rope(Wk·n1), Wv·n1), n1 = rmsnorm(x)
//!        y = h + Wdown·(silu(Wgate·n2) ⊙ Wup·n2),           n2 = rmsnorm(h)
//! Head:  logits = rmsnorm(y_last)·Eᵀ (tied) — every projection may carry a LoRA adapter.

use super::ops::{self, AttnShape, Dropout, LoraPair};
use super::Real;
use crate::model::{LayerWeights, Weights};
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
    pub fn weight<T>(self, l: &LayerWeights<T>) -> &[T] {
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

    fn weight_mut<T>(self, l: &mut LayerWeights<T>) -> &mut Vec<T> {
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

/// LoRA adapters for every layer: `layers[l][proj.index()]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora<T> {
    pub config: LoraConfig,
    pub layers: Vec<[Option<LoraPair<T>>; 7]>,
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
        Self { config, layers }
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
        }
    }

    pub fn scale(&self) -> T {
        T::from_f64(self.config.alpha as f64 / self.config.rank as f64)
    }

    /// Every trainable tensor, in a fixed order (layer, projection, A then B).
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<T>> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            for p in l.iter_mut().flatten() {
                v.push(&mut p.a);
                v.push(&mut p.b);
            }
        }
        v
    }

    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.a.len() + p.b.len())
            .sum()
    }
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
    pub layers: Vec<LayerActs<T>>,
    /// Input of the final norm, its output and rstd.
    pub y: Vec<T>,
    pub yn: Vec<T>,
    pub rstd_out: Vec<T>,
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
        let mut y = ops::linear_forward(x, p.weight(&self.w.layers[l]), m, k, n);
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
        let masks = save.as_ref().map(|s| s.lora_mask.clone());
        let mask = |p: Proj| masks.as_ref().and_then(|ms| ms[p.index()].clone());
        macro_rules! proj {
            ($p:expr, $x:expr) => {{
                let mk = mask($p);
                let slot = save.as_deref_mut().map(|s| &mut s.lora_u[$p.index()]);
                self.proj(l, $p, $x, m, mk.as_deref(), slot)
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
        let mut x = ops::embedding_forward(tokens, &self.w.tok_embd, c.hidden);
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
        ops::linear_forward(
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

    /// Training forward: saves the activations. `dropout_seed` draws the LoRA dropout masks
    /// (None: no dropout, as in evaluation and gradient checks).
    pub fn forward_train(&self, tokens: &[u32], dropout_seed: Option<u64>) -> Activations<T> {
        let c = &self.w.config;
        let m = tokens.len();
        let mut x = ops::embedding_forward(tokens, &self.w.tok_embd, c.hidden);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
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
        let eps = T::from_f64(c.norm_eps as f64);
        let (yn, rstd_out) = ops::rmsnorm_forward(&x, &self.w.output_norm, m, c.hidden, eps);
        let logits = self.head(&yn);
        Activations {
            tokens: tokens.to_vec(),
            layers,
            y: x,
            yn,
            rstd_out,
            logits,
        }
    }

    /// Mean cross-entropy of `targets` (None = not counted) under the saved logits.
    pub fn loss(&self, acts: &Activations<T>, targets: &[Option<u32>]) -> T {
        ops::cross_entropy_forward(&acts.logits, targets, self.w.config.vocab).0
    }

    /// Backward pass of the mean cross-entropy: LoRA gradients, and base-weight gradients
    /// when `base_grads` (used by the gradient checks; tuning keeps the base frozen).
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

        // Head and final norm.
        let dlogits = ops::cross_entropy_backward(&acts.logits, targets, c.vocab, T::one());
        let mut dyn_ = vec![T::zero(); m * d];
        let head_grad = gb.as_mut().map(|g| match &mut g.output {
            Some(o) => o.as_mut_slice(),
            None => g.tok_embd.as_mut_slice(),
        });
        ops::linear_backward(
            &dlogits,
            &acts.yn,
            self.w.head(),
            (m, d, c.vocab),
            &mut dyn_,
            head_grad,
        );
        let mut dx = vec![T::zero(); m * d];
        ops::rmsnorm_backward(
            &dyn_,
            &acts.y,
            &self.w.output_norm,
            &acts.rstd_out,
            m,
            d,
            &mut dx,
            gb.as_mut().map(|g| g.output_norm.as_mut_slice()),
        );

        for l in (0..c.n_layers).rev() {
            dx = self.block_backward(l, &acts.layers[l], dx, m, gb.as_mut(), gl.as_mut());
        }
        if let Some(g) = gb.as_mut() {
            ops::embedding_backward(&dx, &acts.tokens, d, &mut g.tok_embd);
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
        let dw = gb.map(|g| p.weight_mut(&mut g.layers[l]).as_mut_slice());
        ops::linear_backward(dy, x, p.weight(&self.w.layers[l]), (m, k, n), dx, dw);
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
