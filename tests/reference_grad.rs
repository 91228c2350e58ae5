//! Gradient checks of the CPU reference: every op's backward against central finite
//! differences in f64, then the whole tiny model (base weights and LoRA) the same way.

use edge_llm::model::{tiny, ModelFile, RopeStyle, Weights};
use edge_llm::reference::ops::{self, AttnShape, LoraPair};
use edge_llm::reference::{Lora, LoraConfig, Proj, Transformer};
use edge_llm::tolerance::Tol;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Finite-difference step (central differences: truncation error O(H²)).
const H: f64 = 1e-5;
/// |analytic − numeric| ≤ max(rel·(|a| + |n|), abs).
const FD_TOL: Tol<f64> = Tol::new(1e-6, 1e-8);

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Checks `analytic` = ∂f/∂x at every index of `x` (or `max_checks` seeded indices).
fn fd_check(name: &str, x: &[f64], analytic: &[f64], max_checks: usize, f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut rng = ChaCha8Rng::seed_from_u64(x.len() as u64);
    let idx: Vec<usize> = if x.len() <= max_checks {
        (0..x.len()).collect()
    } else {
        (0..max_checks)
            .map(|_| rng.random_range(0..x.len()))
            .collect()
    };
    let mut worst = 0.0f64;
    for i in idx {
        let mut xp = x.to_vec();
        xp[i] += H;
        let mut xm = x.to_vec();
        xm[i] -= H;
        let num = (f(&xp) - f(&xm)) / (2.0 * H);
        worst = worst.max((analytic[i] - num).abs());
        assert!(
            FD_TOL.close(analytic[i], num),
            "{name}[{i}]: analytic {} vs numeric {num}",
            analytic[i]
        );
    }
    eprintln!("{name}: ok (max abs diff {worst:.2e})");
}

/// Σ out ⊙ r: a scalar whose gradient with respect to `out` is `r`.
fn dot(out: &[f64], r: &[f64]) -> f64 {
    out.iter().zip(r).map(|(a, b)| a * b).sum()
}

#[test]
fn linear_and_lora() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (m, k, n, r) = (3, 5, 4, 2);
    let (x, w, dy) = (
        rand_vec(&mut rng, m * k),
        rand_vec(&mut rng, n * k),
        rand_vec(&mut rng, m * n),
    );
    let mut dx = vec![0.0; m * k];
    let mut dw = vec![0.0; n * k];
    ops::linear_backward(&dy, &x, &w, (m, k, n), &mut dx, Some(&mut dw));
    fd_check("linear dx", &x, &dx, 100, |x| {
        dot(&ops::linear_forward(x, &w, m, k, n), &dy)
    });
    fd_check("linear dw", &w, &dw, 100, |w| {
        dot(&ops::linear_forward(&x, w, m, k, n), &dy)
    });

    let pair = LoraPair {
        a: rand_vec(&mut rng, r * k),
        b: rand_vec(&mut rng, n * r),
        rank: r,
        k,
        n,
    };
    let scale = 1.7;
    let mask: Vec<f64> = (0..m * k)
        .map(|i| if i % 3 == 0 { 0.0 } else { 1.25 })
        .collect();
    for mk in [None, Some(mask.as_slice())] {
        let f = |x: &[f64], p: &LoraPair<f64>| {
            let mut y = vec![0.0; m * n];
            ops::lora_forward(x, p, scale, m, mk, &mut y);
            dot(&y, &dy)
        };
        let mut y = vec![0.0; m * n];
        let u = ops::lora_forward(&x, &pair, scale, m, mk, &mut y);
        let mut dx = vec![0.0; m * k];
        let mut dp = LoraPair::zeros(r, k, n);
        ops::lora_backward(&dy, &x, &u, &pair, scale, m, mk, &mut dx, &mut dp);
        fd_check("lora dx", &x, &dx, 100, |x| f(x, &pair));
        fd_check("lora da", &pair.a, &dp.a, 100, |a| {
            f(
                &x,
                &LoraPair {
                    a: a.to_vec(),
                    ..pair.clone()
                },
            )
        });
        fd_check("lora db", &pair.b, &dp.b, 100, |b| {
            f(
                &x,
                &LoraPair {
                    b: b.to_vec(),
                    ..pair.clone()
                },
            )
        });
    }
}

#[test]
fn embedding_rmsnorm_swiglu() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (vocab, d) = (7, 6);
    let table = rand_vec(&mut rng, vocab * d);
    let tokens = [3u32, 0, 3, 6];
    let dy = rand_vec(&mut rng, tokens.len() * d);
    let mut dtable = vec![0.0; vocab * d];
    ops::embedding_backward(&dy, &tokens, d, &mut dtable);
    fd_check("embedding", &table, &dtable, 100, |t| {
        dot(&ops::embedding_forward(&tokens, t, d), &dy)
    });

    let m = 3;
    let (x, w) = (rand_vec(&mut rng, m * d), rand_vec(&mut rng, d));
    let eps = 1e-5;
    let dy = rand_vec(&mut rng, m * d);
    let (_, rstd) = ops::rmsnorm_forward(&x, &w, m, d, eps);
    let mut dx = vec![0.0; m * d];
    let mut dw = vec![0.0; d];
    ops::rmsnorm_backward(&dy, &x, &w, &rstd, m, d, &mut dx, Some(&mut dw));
    fd_check("rmsnorm dx", &x, &dx, 100, |x| {
        dot(&ops::rmsnorm_forward(x, &w, m, d, eps).0, &dy)
    });
    fd_check("rmsnorm dw", &w, &dw, 100, |w| {
        dot(&ops::rmsnorm_forward(&x, w, m, d, eps).0, &dy)
    });

    let (g, u) = (rand_vec(&mut rng, 10), rand_vec(&mut rng, 10));
    let dh = rand_vec(&mut rng, 10);
    let (dg, du) = ops::swiglu_backward(&dh, &g, &u);
    fd_check("swiglu dgate", &g, &dg, 100, |g| {
        dot(&ops::swiglu_forward(g, &u), &dh)
    });
    fd_check("swiglu dup", &u, &du, 100, |u| {
        dot(&ops::swiglu_forward(&g, u), &dh)
    });
}

#[test]
fn rope_both_styles() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, heads, hd, pos0, theta) = (3, 2, 8, 5, 10000.0);
    let x = rand_vec(&mut rng, m * heads * hd);
    let dy = rand_vec(&mut rng, x.len());
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        let mut dx = dy.clone();
        ops::rope_backward(&mut dx, m, heads, hd, pos0, theta, style);
        fd_check("rope", &x, &dx, 100, |x| {
            let mut y = x.to_vec();
            ops::rope_forward(&mut y, m, heads, hd, pos0, theta, style);
            dot(&y, &dy)
        });
    }
}

/// The interleaved form on permuted rows equals the half-split form on the original rows:
/// this is why GGUF weights (permuted by llama.cpp's converter) need the interleaved form.
#[test]
fn rope_interleaved_equals_half_split_on_permuted_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (m, hd) = (4, 8);
    let x = rand_vec(&mut rng, m * hd);
    // llama.cpp's permutation inside a head: new[2i] = old[i], new[2i+1] = old[i + hd/2].
    let perm = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        for r in 0..m {
            for i in 0..hd / 2 {
                out[r * hd + 2 * i] = v[r * hd + i];
                out[r * hd + 2 * i + 1] = v[r * hd + i + hd / 2];
            }
        }
        out
    };
    let mut a = x.clone();
    ops::rope_forward(&mut a, m, 1, hd, 2, 10000.0, RopeStyle::HalfSplit);
    let mut b = perm(&x);
    ops::rope_forward(&mut b, m, 1, hd, 2, 10000.0, RopeStyle::Interleaved);
    for (u, v) in perm(&a).iter().zip(&b) {
        assert!((u - v).abs() < 1e-12);
    }
}

#[test]
fn attention_gqa_with_and_without_cache_shape() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (t, s) in [(4, 4), (2, 5), (1, 1)] {
        let sh = AttnShape {
            t,
            s,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 3,
        };
        let q = rand_vec(&mut rng, t * 4 * 3);
        let k = rand_vec(&mut rng, s * 2 * 3);
        let v = rand_vec(&mut rng, s * 2 * 3);
        let dout = rand_vec(&mut rng, t * 4 * 3);
        let (_, probs) = ops::attention_forward(&q, &k, &v, sh);
        let (dq, dk, dv) = ops::attention_backward(&dout, &q, &k, &v, &probs, sh);
        let f =
            |q: &[f64], k: &[f64], v: &[f64]| dot(&ops::attention_forward(q, k, v, sh).0, &dout);
        fd_check("attention dq", &q, &dq, 100, |q| f(q, &k, &v));
        fd_check("attention dk", &k, &dk, 100, |k| f(&q, k, &v));
        fd_check("attention dv", &v, &dv, 100, |v| f(&q, &k, v));
    }
}

#[test]
fn cross_entropy_with_ignored_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let vocab = 5;
    let logits = rand_vec(&mut rng, 3 * vocab);
    let targets = [Some(2), None, Some(4)];
    let d = ops::cross_entropy_backward(&logits, &targets, vocab, 1.0);
    fd_check("cross-entropy", &logits, &d, 100, |l| {
        ops::cross_entropy_forward(l, &targets, vocab).0
    });
    assert!(d[vocab..2 * vocab].iter().all(|&g| g == 0.0));
}

fn tiny_f64() -> Weights<f64> {
    let bytes = tiny::generate(&tiny::TinySpec::default()).expect("tiny model");
    ModelFile::from_bytes(bytes)
        .expect("parse tiny")
        .weights()
        .expect("weights")
        .cast::<f64>()
}

/// A model with LoRA on every projection and B ≠ 0, so every gradient path is non-zero.
fn tiny_with_lora() -> Transformer<f64> {
    let w = tiny_f64();
    let mut lora = Lora::new(
        &w.config,
        LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        7,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for t in lora.tensors_mut() {
        for v in t.iter_mut() {
            *v += rng.random_range(-0.05..0.05);
        }
    }
    Transformer {
        w,
        lora: Some(lora),
    }
}

#[test]
fn whole_model_gradients() {
    let model = tiny_with_lora();
    let tokens = [5u32, 70, 101, 33, 1, 200, 9];
    let targets: Vec<Option<u32>> = vec![
        Some(70),
        None,
        Some(33),
        Some(1),
        Some(200),
        Some(9),
        Some(44),
    ];
    let acts = model.forward_train(&tokens, None);
    let g = model.backward(&acts, &targets, true);
    let loss = |m: &Transformer<f64>| m.loss(&m.forward_train(&tokens, None), &targets);

    let gl = g.lora.as_ref().unwrap();
    for l in 0..model.w.config.n_layers {
        for p in Proj::ALL {
            let (pair, dpair) = (
                model.lora.as_ref().unwrap().layers[l][p.index()]
                    .as_ref()
                    .unwrap(),
                gl.layers[l][p.index()].as_ref().unwrap(),
            );
            let with = |f: &dyn Fn(&mut LoraPair<f64>)| {
                let mut m2 = model.clone();
                f(m2.lora.as_mut().unwrap().layers[l][p.index()]
                    .as_mut()
                    .unwrap());
                loss(&m2)
            };
            fd_check(&format!("L{l} {p:?} lora A"), &pair.a, &dpair.a, 6, |a| {
                with(&|q| q.a = a.to_vec())
            });
            fd_check(&format!("L{l} {p:?} lora B"), &pair.b, &dpair.b, 6, |b| {
                with(&|q| q.b = b.to_vec())
            });
        }
    }
    let gb = g.base.as_ref().unwrap();
    let base =
        |name: &str, get: fn(&Weights<f64>) -> &[f64], set: fn(&mut Weights<f64>) -> &mut [f64]| {
            fd_check(name, get(&model.w), get(gb), 8, |x| {
                let mut m2 = model.clone();
                set(&mut m2.w).copy_from_slice(x);
                loss(&m2)
            });
        };
    base(
        "tok_embd (tied head)",
        |w| w.tok_embd.dense().unwrap(),
        |w| w.tok_embd.grad_mut(),
    );
    base("output_norm", |w| &w.output_norm, |w| &mut w.output_norm);
    base(
        "L0 attn_norm",
        |w| &w.layers[0].attn_norm,
        |w| &mut w.layers[0].attn_norm,
    );
    base(
        "L0 wq",
        |w| w.layers[0].wq.dense().unwrap(),
        |w| w.layers[0].wq.grad_mut(),
    );
    base(
        "L0 wk",
        |w| w.layers[0].wk.dense().unwrap(),
        |w| w.layers[0].wk.grad_mut(),
    );
    base(
        "L1 wv",
        |w| w.layers[1].wv.dense().unwrap(),
        |w| w.layers[1].wv.grad_mut(),
    );
    base(
        "L1 wo",
        |w| w.layers[1].wo.dense().unwrap(),
        |w| w.layers[1].wo.grad_mut(),
    );
    base(
        "L1 ffn_norm",
        |w| &w.layers[1].ffn_norm,
        |w| &mut w.layers[1].ffn_norm,
    );
    base(
        "L0 w_gate",
        |w| w.layers[0].w_gate.dense().unwrap(),
        |w| w.layers[0].w_gate.grad_mut(),
    );
    base(
        "L0 w_up",
        |w| w.layers[0].w_up.dense().unwrap(),
        |w| w.layers[0].w_up.grad_mut(),
    );
    base(
        "L1 w_down",
        |w| w.layers[1].w_down.dense().unwrap(),
        |w| w.layers[1].w_down.grad_mut(),
    );
}

#[test]
fn dropout_masks_are_used_consistently() {
    let mut model = tiny_with_lora();
    model.lora.as_mut().unwrap().config.dropout = 0.3;
    let tokens = [5u32, 70, 101, 33];
    let targets = vec![Some(70), Some(101), Some(33), Some(4)];
    let acts = model.forward_train(&tokens, Some(11));
    let g = model.backward(&acts, &targets, false);
    let pair = model.lora.as_ref().unwrap().layers[0][Proj::Up.index()]
        .as_ref()
        .unwrap();
    let dpair = g.lora.as_ref().unwrap().layers[0][Proj::Up.index()]
        .as_ref()
        .unwrap();
    fd_check("dropout L0 up A", &pair.a, &dpair.a, 6, |a| {
        let mut m2 = model.clone();
        m2.lora.as_mut().unwrap().layers[0][Proj::Up.index()]
            .as_mut()
            .unwrap()
            .a = a.to_vec();
        m2.loss(&m2.forward_train(&tokens, Some(11)), &targets)
    });
}

#[test]
fn kv_cache_matches_full_forward_and_zero_b_is_identity() {
    let w = tiny_f64();
    let c = w.config.clone();
    let base = Transformer::new(w.clone());
    let tokens = [5u32, 70, 101, 33, 1, 200, 9];
    let full = base.logits(&tokens, None);
    let mut cache = edge_llm::reference::KvCache::new(c.n_layers);
    let mut inc = base.logits(&tokens[..3], Some(&mut cache));
    inc.extend(base.logits(&tokens[3..4], Some(&mut cache)));
    inc.extend(base.logits(&tokens[4..], Some(&mut cache)));
    assert_eq!(cache.len, tokens.len());
    for (a, b) in full.iter().zip(&inc) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
    // PEFT initialisation (B = 0) leaves the model unchanged.
    let with = Transformer {
        w,
        lora: Some(Lora::new(&c, LoraConfig::default(), 3)),
    };
    let la = with.logits(&tokens, None);
    assert!(full.iter().zip(&la).all(|(a, b)| a == b));
}
