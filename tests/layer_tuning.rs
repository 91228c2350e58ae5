//! Adaptive layer tuning on a 4-block tiny model: a window's gradients are full backprop's
//! restricted to the window, the exit adapter's gradient matches finite differences, the
//! cached prefix gives the loss of recomputing it (and is dropped when the blocks below
//! change), a scheduled run records its phases and resumes exactly, and the depth power
//! scales each window's learning rate.

mod common;
use common::EXITS;
use edge_llm::model::tiny::{generate, TinySpec};
use edge_llm::model::{ModelFile, Weights};
use edge_llm::reference::optim::AdamW;
use edge_llm::reference::{Lora, LoraConfig, Span, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::train::{
    prepare, Backend, CpuBackend, DataConfig, LayerSchedule, Row, StepReport, TrainConfig,
    TrainState, Trainer, WindowOrder,
};
use pollster::block_on;

fn tiny4() -> (Tokenizer, Weights<f32>) {
    let spec = TinySpec {
        n_layers: 4,
        ..Default::default()
    };
    let mf = ModelFile::from_bytes(generate(&spec).unwrap()).unwrap();
    (
        Tokenizer::from_gguf(&mf.gguf).unwrap(),
        mf.weights().unwrap(),
    )
}

/// Adapters with random non-zero B everywhere (fresh ones have B = 0, which would hide
/// mistakes in the paths through B).
fn model_with_exits(w: &Weights<f32>) -> Transformer<f32> {
    let mut lora =
        Lora::new(&w.config, LoraConfig::default(), 3).with_exits(&EXITS, w.config.hidden, 4);
    let mut s = 0x9e37_79b9u32;
    for t in lora.tensors_mut() {
        for x in t.iter_mut() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let r = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            if *x == 0.0 {
                *x = 0.2 * r;
            }
        }
    }
    Transformer {
        w: w.clone(),
        lora: Some(lora),
    }
}

fn row() -> (Vec<u32>, Vec<Option<u32>>) {
    let tokens: Vec<u32> = (0..13).map(|i| 3 + (i * 37 % 200) as u32).collect();
    let targets = (0..13)
        .map(|i| (i % 3 != 0).then(|| 3 + ((i + 1) * 37 % 200) as u32))
        .collect();
    (tokens, targets)
}

#[test]
fn window_gradients_equal_full_backprop_restricted_to_the_window() {
    let (_, w) = tiny4();
    let model = model_with_exits(&w);
    let (tokens, targets) = row();
    for (window, exit) in [(2..4, Some(1)), (1..2, Some(0)), (3..4, None)] {
        let full = Span {
            layers: 0..window.end,
            exit,
        };
        let win = Span {
            layers: window.clone(),
            exit,
        };
        // No dropout: the frozen blocks below a window run without it (as at inference),
        // which full-depth training would not.
        let a_full = model.forward_span(&tokens, None, &full, Some(&targets), None);
        let a_win = model.forward_span(&tokens, None, &win, Some(&targets), None);
        assert_eq!(
            model.loss(&a_full, &targets).to_bits(),
            model.loss(&a_win, &targets).to_bits()
        );
        let g_full = model.backward(&a_full, &targets, false).lora.unwrap();
        let g_win = model.backward(&a_win, &targets, false).lora.unwrap();
        let owners = g_win.owners();
        let (mut full_t, mut win_t) = (g_full.clone(), g_win.clone());
        let mut checked = 0;
        for ((f, g), o) in full_t
            .tensors_mut()
            .into_iter()
            .zip(win_t.tensors_mut())
            .zip(owners)
        {
            let in_window = match o {
                edge_llm::reference::Owner::Layer(l) => window.contains(&l),
                edge_llm::reference::Owner::Exit(k) => exit == Some(k),
            };
            if in_window {
                assert_eq!(f, g, "{o:?} in window {window:?}");
                assert!(g.iter().any(|&x| x != 0.0), "{o:?} has no gradient");
                checked += 1;
            } else {
                assert!(
                    g.iter().all(|&x| x == 0.0),
                    "{o:?} outside {window:?} moved"
                );
            }
        }
        assert!(checked >= 2, "{window:?}");
    }
}

#[test]
fn exit_adapter_gradient_matches_finite_differences() {
    let (_, w) = tiny4();
    let w64 = w.map(|v| v.iter().map(|&x| x as f64).collect());
    let m32 = model_with_exits(&w);
    let mut lora64 =
        Lora::new(&w64.config, LoraConfig::default(), 3).with_exits(&EXITS, w64.config.hidden, 4);
    let mut src = m32.lora.clone().unwrap();
    for (d, s) in lora64.tensors_mut().into_iter().zip(src.tensors_mut()) {
        for (a, &b) in d.iter_mut().zip(s.iter()) {
            *a = b as f64;
        }
    }
    let mut model = Transformer {
        w: w64,
        lora: Some(lora64),
    };
    let (tokens, targets) = row();
    let span = Span {
        layers: 2..4,
        exit: Some(0),
    };
    // Exit 0 sits after block 2, so the window 2..4 does not reach it: use 0..2.
    let span = Span {
        layers: 0..2,
        ..span
    };
    let acts = model.forward_span(&tokens, None, &span, Some(&targets), None);
    let g = model.backward(&acts, &targets, false).lora.unwrap();
    let h = 1e-6;
    for (which, idx) in [(0usize, 5usize), (0, 100), (1, 7), (1, 300)] {
        let analytic = if which == 0 {
            g.exits[0].pair.a[idx]
        } else {
            g.exits[0].pair.b[idx]
        };
        let mut loss_at = |delta: f64| {
            let e = &mut model.lora.as_mut().unwrap().exits[0].pair;
            let p = if which == 0 {
                &mut e.a[idx]
            } else {
                &mut e.b[idx]
            };
            *p += delta;
            let a = model.forward_span(&tokens, None, &span, Some(&targets), None);
            let l = model.loss(&a, &targets);
            let e = &mut model.lora.as_mut().unwrap().exits[0].pair;
            let p = if which == 0 {
                &mut e.a[idx]
            } else {
                &mut e.b[idx]
            };
            *p -= delta;
            l
        };
        let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
        assert!(
            (analytic - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
            "exit tensor {which} [{idx}]: {analytic} vs {numeric}"
        );
    }
}

fn as_row((tokens, targets): (Vec<u32>, Vec<Option<u32>>)) -> Row {
    Row { tokens, targets }
}

#[test]
fn cached_prefix_gives_the_loss_of_recomputing_it() {
    let (_, w) = tiny4();
    let mut be = CpuBackend::with_exits(w.clone(), LoraConfig::default(), &EXITS, 1);
    let r = as_row(row());
    let deep = Span {
        layers: 2..4,
        exit: Some(1),
    };
    let shallow = Span {
        layers: 0..2,
        exit: Some(0),
    };
    let fresh = |be: &CpuBackend| {
        let a = be
            .model
            .forward_span(&r.tokens, None, &deep, Some(&r.targets), None);
        be.model.loss(&a, &r.targets) as f64 * r.n_targets() as f64
    };
    be.set_span(Some(&deep)).unwrap();
    let first = block_on(be.eval(&[&r])).unwrap();
    let second = block_on(be.eval(&[&r])).unwrap();
    assert_eq!((be.cache.misses, be.cache.hits), (1, 1));
    assert_eq!(first.sum.to_bits(), second.sum.to_bits());
    assert_eq!(second.sum.to_bits(), fresh(&be).to_bits());

    // Training the window itself leaves the prefix valid.
    let opt = AdamW {
        lr: 1e-2,
        ..AdamW::default()
    };
    block_on(be.accumulate(&[&r], 0.1, 11)).unwrap();
    block_on(be.apply(&opt, 1, None)).unwrap();
    let after = block_on(be.eval(&[&r])).unwrap();
    assert_eq!((be.cache.misses, be.cache.hits), (1, 3));
    assert_eq!(after.sum.to_bits(), fresh(&be).to_bits());

    // Training a block below it invalidates the prefix: recomputed, not served stale.
    be.set_span(Some(&shallow)).unwrap();
    block_on(be.accumulate(&[&r], 0.1, 12)).unwrap();
    block_on(be.apply(&opt, 2, None)).unwrap();
    be.set_span(Some(&deep)).unwrap();
    let misses = be.cache.misses;
    let moved = block_on(be.eval(&[&r])).unwrap();
    assert_eq!(be.cache.misses, misses + 1);
    assert_eq!(moved.sum.to_bits(), fresh(&be).to_bits());
    assert_ne!(moved.sum.to_bits(), after.sum.to_bits());

    // A window that does not end at its exit is refused.
    let bad = Span {
        layers: 1..3,
        exit: Some(1),
    };
    assert!(be.set_span(Some(&bad)).is_err());
}

/// A short repeated text in 24-token rows: what the scheduled runs train on.
fn cat_data(tok: &Tokenizer) -> edge_llm::train::Prepared {
    let text = edge_llm::data::Dataset::Text("the cat sat on the mat. ".repeat(20));
    let cfg = DataConfig {
        seq_len: 24,
        ..Default::default()
    };
    prepare(&text, tok, &cfg).unwrap()
}

fn schedule_config(order: WindowOrder) -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        micro_batch: 1,
        accum_steps: 2,
        max_steps: Some(12),
        eval_every: 4,
        seed: 9,
        layers: Some(LayerSchedule::from_exits(&EXITS, order)),
        ..TrainConfig::default()
    }
}

#[test]
fn scheduled_runs_record_phases_and_resume_exactly() {
    let (tok, w) = tiny4();
    let data = cat_data(&tok);
    let backend = |seed| CpuBackend::with_exits(w.clone(), LoraConfig::default(), &EXITS, seed);

    let mut reference = Trainer::new(
        backend(1),
        schedule_config(WindowOrder::Reference),
        data.clone(),
    )
    .unwrap();
    let mut rep: Vec<StepReport> = Vec::new();
    block_on(reference.run(100, &mut |r| rep.push(r.clone()))).unwrap();
    let windows: Vec<usize> = rep.iter().map(|r| r.window.unwrap()).collect();
    assert_eq!(windows, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
    let phases = reference.phases();
    assert_eq!(phases.len(), 2);
    assert_eq!(
        (phases[1].window, phases[1].start, phases[1].losses.len()),
        (1, 6, 6)
    );
    // Each window's loss fell while it trained.
    for p in phases {
        assert!(p.losses.last() < p.losses.first(), "{p:?}");
    }

    // Adaptive: sweep (3 steps per phase), then chosen phases; a resumed run repeats it.
    let cfg = schedule_config(WindowOrder::Adaptive);
    let mut full = Trainer::new(backend(1), cfg.clone(), data.clone()).unwrap();
    let mut want = Vec::new();
    block_on(full.run(100, &mut |r| want.push(r.clone()))).unwrap();
    let mut first = Trainer::new(backend(1), cfg.clone(), data.clone()).unwrap();
    let mut got = Vec::new();
    block_on(first.run(8, &mut |r| got.push(r.clone()))).unwrap();
    let bytes = block_on(first.checkpoint()).unwrap().to_bytes().unwrap();
    let state = TrainState::from_bytes(&bytes).unwrap();
    // Phases no run could have written are refused when the checkpoint is read (a start
    // near u64::MAX overflowed the schedule's step arithmetic; found reading the code
    // behind the checkpoint fuzz target): past the step reached, out of order, on a
    // window the schedule lacks.
    let edited = |f: &dyn Fn(&mut TrainState)| {
        let mut s = state.clone();
        f(&mut s);
        TrainState::from_bytes(&s.to_bytes().unwrap())
            .err()
            .map(|e| e.to_string())
    };
    let past = edited(&|s| s.phases.last_mut().unwrap().start = u64::MAX - 1).unwrap();
    assert!(past.contains("layer phases"), "{past}");
    let back = edited(&|s| s.phases.reverse()).unwrap();
    assert!(back.contains("layer phases"), "{back}");
    let window = edited(&|s| s.phases[0].window = 99).unwrap();
    assert!(window.contains("window 99 does not exist"), "{window}");
    let mut second = Trainer::new(backend(77), cfg.clone(), data.clone()).unwrap();
    block_on(second.resume(&state)).unwrap();
    block_on(second.run(100, &mut |r| got.push(r.clone()))).unwrap();
    let key = |r: &[StepReport]| -> Vec<(u64, Option<usize>, Option<u64>)> {
        r.iter()
            .map(|r| (r.loss.to_bits(), r.window, r.val_loss.map(f64::to_bits)))
            .collect()
    };
    assert_eq!(key(&got), key(&want));
    assert_eq!(
        &want.iter().map(|r| r.window.unwrap()).collect::<Vec<_>>()[..6],
        [0, 0, 0, 1, 1, 1]
    );
    assert_eq!(second.phases(), full.phases());
    // Every adaptive phase starts with the whole model's probe loss; each phase after the
    // sweep went to the window whose latest phase lowered it most per step (ties: deeper).
    let ph = full.phases();
    assert_eq!(ph.len(), 4);
    assert!(
        ph.iter()
            .all(|p| p.probe.len() == 1 && p.probe[0].is_finite()),
        "{ph:?}"
    );
    for j in 2..ph.len() {
        let mut best = (usize::MAX, f64::NEG_INFINITY);
        for w in 0..EXITS.len() {
            let i = (0..j).rev().find(|&i| ph[i].window == w).unwrap();
            let gain = (ph[i].probe[0] - ph[i + 1].probe[0]) / ph[i].losses.len() as f64;
            if gain >= best.1 {
                best = (w, gain);
            }
        }
        assert_eq!(ph[j].window, best.0, "phase {j}: {ph:?}");
    }

    // Another schedule cannot resume this checkpoint.
    let mut other =
        Trainer::new(backend(1), schedule_config(WindowOrder::Reference), data).unwrap();
    assert!(block_on(other.resume(&state)).is_err());
}

#[test]
fn depth_power_scales_each_windows_learning_rate() {
    let (tok, w) = tiny4();
    let data = cat_data(&tok);
    let run = |power: f64| {
        let mut cfg = schedule_config(WindowOrder::Reference);
        cfg.warmup_fraction = 0.0;
        if let Some(ls) = cfg.layers.as_mut() {
            ls.depth_lr_power = power;
        }
        let be = CpuBackend::with_exits(w.clone(), LoraConfig::default(), &EXITS, 1);
        let mut t = Trainer::new(be, cfg, data.clone()).unwrap();
        let mut rep: Vec<StepReport> = Vec::new();
        block_on(t.run(100, &mut |r| rep.push(r.clone()))).unwrap();
        let lora = t.backend.lora().unwrap().clone();
        (rep, lora)
    };
    let (flat, flat_lora) = run(0.0);
    let (deep, deep_lora) = run(2.0);
    // Window 0 ends at block 2 of 4: (2/4)² = 0.25 of the run's LR; window 1 the full LR.
    for (f, d) in flat.iter().zip(&deep) {
        let want = if d.window == Some(0) { 0.25 } else { 1.0 };
        assert!((d.lr - want * f.lr).abs() < 1e-15, "{f:?} {d:?}");
    }
    // The shallow window's blocks moved less from their zero-initialised B.
    let b_norm = |l: &Lora<f32>, layer: usize| -> f64 {
        l.layers[layer]
            .iter()
            .flatten()
            .flat_map(|p| p.b.iter())
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    assert!(b_norm(&deep_lora, 0) < 0.5 * b_norm(&flat_lora, 0));
    assert!(b_norm(&deep_lora, 0) > 0.0);
}
