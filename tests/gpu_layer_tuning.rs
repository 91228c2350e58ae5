//! Adaptive layer tuning on the GPU (lavapipe here) against the CPU backend on a 4-block
//! tiny model with exits after blocks 2 and 4: per span (a window ending at an exit, one
//! ending at the model's head, full depth) the loss, the LoRA and exit gradients, the
//! AdamW step of only the span's tensors with per-tensor step counts, tensors outside the
//! window untouched, checkpoints moving between the backends, allocated bytes equal to the
//! plan, rows with a few targets (first and last positions among them) or none, a scheduled
//! run's losses, a compressed (sparse) file and a packed head in chunks.

mod common;
use common::{
    assert_same_losses, context, losses, max_abs, max_abs_diff, rows_with_targets_at, text_data,
    tiny_file_with_layers, train_lora_config, training_rows, EXITS, GRAD_TOL, LOSS_TOL, RUN_TOL,
};
use edge_llm::engine::{GpuTrainer, MemoryPlan, TrainOptions, WeightFormat};
use edge_llm::kernels::context::GpuContext;
use edge_llm::model::ModelFile;
use edge_llm::reference::optim::AdamW;
use edge_llm::reference::{Lora, LoraConfig, Owner, Span, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::train::cpu::initial_adapters;
use edge_llm::train::{
    derive_seed, mode_layers, Backend, CpuBackend, LayerSchedule, Mode, ModeArgs, Row, TrainConfig,
    Trainer, WindowOrder,
};
use pollster::block_on;

/// Adapters and exits with every zero (B) filled with small random values, so every path
/// carries a gradient.
fn random_lora(file: &ModelFile, seed: u64) -> Lora<f32> {
    let mut lora = initial_adapters(&file.config, train_lora_config(), &EXITS, seed);
    let mut s = (seed as u32) ^ 0x9e37_79b9;
    for t in lora.tensors_mut() {
        for x in t.iter_mut().filter(|x| **x == 0.0) {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *x = 0.2 * ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5);
        }
    }
    lora
}

/// A few targets per row (the first and the last position among them) and a row with
/// none: the head, at an exit or the model's own, sees only the gathered rows.
fn few_target_rows() -> Vec<Row> {
    rows_with_targets_at(&[(32, 7, &[0, 1, 31]), (20, 1, &[]), (17, 9, &[0, 16])])
}

fn opts(format: WeightFormat, recompute: bool) -> TrainOptions {
    TrainOptions {
        format,
        seq_len: 32,
        recompute,
        ..Default::default()
    }
}

/// Edge mode's windows over the exits: blocks 0..2 to exit 0, 2..4 to exit 1.
fn edge_windows() -> Vec<Span> {
    LayerSchedule::from_exits(&EXITS, WindowOrder::Reference).windows
}

/// Every span the tests train: a window ending at exit 0 (block 0 frozen below), one
/// ending at the model's head (blocks 0..3 frozen), and the full depth (to exit 1).
fn spans() -> Vec<(&'static str, Option<Span>)> {
    vec![
        (
            "window 1..2 → exit 0",
            Some(Span {
                layers: 1..2,
                exit: Some(0),
            }),
        ),
        (
            "window 3..4 → head",
            Some(Span {
                layers: 3..4,
                exit: None,
            }),
        ),
        ("full depth → exit 1", None),
    ]
}

fn planned_spans() -> Vec<Span> {
    let full = Span {
        layers: 0..4,
        exit: Some(1),
    };
    spans()
        .into_iter()
        .map(|(_, s)| s.unwrap_or_else(|| full.clone()))
        .collect()
}

fn flat(mut l: Lora<f32>) -> Vec<Vec<f32>> {
    l.tensors_mut().into_iter().map(|t| t.clone()).collect()
}

/// The CPU reference's Σ_rows grad_scale·∇(Σ loss) over `span` with the adapters `lora`,
/// dropout seeds derived as the backends derive them.
fn reference_grads(
    file: &ModelFile,
    lora: &Lora<f32>,
    (span, rows): (&Span, &[Row]),
    scale: f64,
    seed: u64,
) -> Vec<Vec<f32>> {
    let model = Transformer {
        w: file.weights().unwrap(),
        lora: Some(lora.clone()),
    };
    let mut want = lora.zeros_like();
    for (r, row) in rows.iter().enumerate() {
        let s = derive_seed(seed, &[r as u64]);
        let acts = model.forward_span(&row.tokens, None, span, Some(&row.targets), Some(s));
        let n = row.n_targets() as f64;
        let mut g = model.backward(&acts, &row.targets, false).lora.unwrap();
        for (a, b) in want.tensors_mut().into_iter().zip(g.tensors_mut()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += (scale * n) as f32 * y;
            }
        }
    }
    flat(want)
}

fn assert_allocation_is_the_plan(what: &str, gpu: &GpuTrainer<'_>, plan: &MemoryPlan) {
    assert_eq!(gpu.allocated_bytes(), gpu.memory_plan().total(), "{what}");
    assert_eq!(gpu.memory_plan(), plan, "{what}: not the public plan");
}

/// One accumulation and one AdamW step per span, in turn on the same pair of backends (so
/// step counts diverge per tensor), on `file`, over `training_rows()`.
fn assert_spans_match_the_cpu(ctx: &GpuContext, name: &str, file: &ModelFile, o: &TrainOptions) {
    assert_spans_match_the_cpu_on(ctx, name, file, o, &training_rows());
}

/// [`assert_spans_match_the_cpu`] over `rows`.
fn assert_spans_match_the_cpu_on(
    ctx: &GpuContext,
    name: &str,
    file: &ModelFile,
    o: &TrainOptions,
    rows: &[Row],
) {
    let lora = random_lora(file, 3);
    let mut cpu = CpuBackend::with_exits(file.weights().unwrap(), train_lora_config(), &EXITS, 0);
    cpu.model.lora = Some(lora.clone());
    let planned = planned_spans();
    let mut gpu = GpuTrainer::with_windows(ctx, file, &lora, o, &planned).unwrap();
    let plan =
        GpuTrainer::plan_windows(file, &train_lora_config(), o, &ctx.limits, &planned).unwrap();
    assert_allocation_is_the_plan(name, &gpu, &plan);
    let refs: Vec<&Row> = rows.iter().collect();
    let owners = lora.owners();
    let full = Span {
        layers: 0..4,
        exit: Some(1),
    };
    for (t, (what, span)) in spans().into_iter().enumerate() {
        let what = format!("{name} {:?} recompute={}: {what}", o.format, o.recompute);
        let (scale, seed) = (0.25, 77 + t as u64);
        cpu.set_span(span.as_ref()).unwrap();
        gpu.set_span(span.as_ref()).unwrap();
        let before = flat(block_on(gpu.adapters()).unwrap());
        let cpu_before = flat(block_on(cpu.adapters()).unwrap());

        let want_loss = block_on(cpu.accumulate(&refs, scale, seed)).unwrap();
        let got_loss = block_on(gpu.accumulate(&refs, scale, seed)).unwrap();
        assert_eq!(got_loss.count, want_loss.count, "{what}");
        let rel = (got_loss.sum - want_loss.sum).abs() / want_loss.sum;
        assert!(
            LOSS_TOL.close_to(got_loss.sum, want_loss.sum),
            "{what}: loss {} vs {}",
            got_loss.sum,
            want_loss.sum
        );

        // Gradients against the reference on the GPU's own adapters (the two backends'
        // parameters drift apart by rounding after the first step).
        let s = span.clone().unwrap_or_else(|| full.clone());
        let own = block_on(gpu.adapters()).unwrap();
        let want = reference_grads(file, &own, (&s, rows), scale, seed);
        let got = flat(block_on(gpu.gradients()).unwrap());
        let max = max_abs(&want.concat());
        assert!(
            max > 1e-3,
            "{what}: the reference gradients are all ~0 ({max})"
        );
        let d = max_abs_diff(&got.concat(), &want.concat());
        eprintln!("{what}: loss rel diff {rel:e}, max |Δgrad| {d:e} of max |grad| {max:e}");
        assert!(
            GRAD_TOL.allows(d, max),
            "{what}: max |Δgrad| {d:e} vs {max:e}"
        );

        // AdamW with eps = max |grad|, so an update is a smooth function of the gradient
        // (with a tiny eps, Adam's first step is lr·sign(g), which rounding can flip where
        // g ≈ 0): |Δupdate| ≤ lr·|Δg|/eps.
        let opt = AdamW {
            lr: 1e-2,
            eps: max as f64,
            ..Default::default()
        };
        let step = t as u64 + 1;
        block_on(cpu.apply(&opt, step, Some(1e3))).unwrap();
        block_on(gpu.apply(&opt, step, Some(1e3))).unwrap();
        let after = flat(block_on(gpu.adapters()).unwrap());
        let cpu_after = flat(block_on(cpu.adapters()).unwrap());
        let tol = 4.0 * opt.lr as f32 * GRAD_TOL.rel;
        for (i, o) in owners.iter().enumerate() {
            let active = match (&span, *o) {
                (None, _) => true,
                (Some(s), Owner::Layer(l)) => s.layers.contains(&l),
                (Some(s), Owner::Exit(k)) => s.exit == Some(k),
            };
            if active {
                assert_ne!(after[i], before[i], "{what}: {o:?} did not step");
            } else {
                assert_eq!(
                    after[i], before[i],
                    "{what}: {o:?} outside the window moved"
                );
            }
            let du = after[i]
                .iter()
                .zip(&before[i])
                .zip(cpu_after[i].iter().zip(&cpu_before[i]))
                .map(|((a, b), (c, d))| ((a - b) - (c - d)).abs())
                .fold(0.0f32, f32::max);
            assert!(
                du <= tol,
                "{what}: {o:?} update differs by {du:e} (tolerance {tol:e})"
            );
        }
        let (gs, cs) = (block_on(gpu.save()).unwrap(), block_on(cpu.save()).unwrap());
        assert_eq!(gs.steps, cs.steps, "{what}: per-tensor step counts");
        assert_eq!(gs.exits, cs.exits, "{what}");
    }
    assert_allocation_is_the_plan(name, &gpu, &plan);
    // The prefix cache served the same rows as the CPU's: misses at the first window,
    // hits extended from depth 1 at the second (block 0 never changed); rows without a
    // target are never run.
    let counts = |c: &edge_llm::train::cpu::PrefixCache| (c.misses, c.hits);
    assert_eq!(counts(&gpu.cache), counts(&cpu.cache), "{name}");
    let run = rows.iter().filter(|r| r.n_targets() > 0).count() as u64;
    assert_eq!(counts(&gpu.cache), (run, run), "{name}");

    // A checkpoint moves both ways: the GPU's state evaluates the same on the CPU, and
    // the CPU's loads back into the GPU with its step counts.
    let state = block_on(gpu.save()).unwrap();
    let mut other = CpuBackend::with_exits(file.weights().unwrap(), train_lora_config(), &EXITS, 9);
    block_on(other.load(&state)).unwrap();
    let a = block_on(other.eval(&refs)).unwrap();
    let b = block_on(gpu.eval(&refs)).unwrap();
    assert!(LOSS_TOL.close_to(b.sum, a.sum), "{a:?} vs {b:?}");
    let cs = block_on(cpu.save()).unwrap();
    block_on(gpu.load(&cs)).unwrap();
    let back = block_on(gpu.save()).unwrap();
    assert_eq!(back.steps, cs.steps);
    assert_eq!(back.tensors, cs.tensors);
}

#[test]
fn window_steps_match_the_cpu_backend() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file_with_layers(4);
    assert_spans_match_the_cpu(&ctx, "tiny4", &file, &opts(WeightFormat::Packed, false));
    assert_spans_match_the_cpu(&ctx, "tiny4", &file, &opts(WeightFormat::F32, true));
}

/// Rows with a few targets or none, through a window to an exit, one to the model's head
/// and the full depth, with and without recompute and a head in chunks of 100 rows.
#[test]
fn window_steps_on_rows_with_few_targets_match_the_cpu_backend() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file_with_layers(4);
    let rows = few_target_rows();
    let packed = opts(WeightFormat::Packed, false);
    assert_spans_match_the_cpu_on(&ctx, "few targets", &file, &packed, &rows);
    let chunked = TrainOptions {
        vocab_chunk: 100,
        ..opts(WeightFormat::F32, true)
    };
    assert_spans_match_the_cpu_on(&ctx, "few targets, chunks", &file, &chunked, &rows);
}

/// Windows with the LM head stored as Q4_1 and held packed in three chunks (272 rows in
/// chunks of 100): exits and the model's head read it the same way.
#[test]
fn window_steps_with_a_packed_head_in_chunks_match_the_cpu_backend() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = common::with_head_type(&tiny_file_with_layers(4), edge_llm::gguf::GgmlType::Q4_1);
    let o = TrainOptions {
        vocab_chunk: 100,
        ..opts(WeightFormat::Packed, false)
    };
    assert_spans_match_the_cpu(&ctx, "tiny4 Q4_1 head", &file, &o);
}

/// The tiny 4-block model in every compressed format (tests/common).
fn sparse_file() -> ModelFile {
    common::mixed_sparse_file(&tiny_file_with_layers(4))
}

/// Sparse weights: the frozen blocks below a window run through the sparse kernels
/// without their transposed copies, which only the trained blocks get.
#[test]
fn sparse_file_windows_match_the_cpu_backend() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = sparse_file();
    let o = opts(WeightFormat::Packed, false);
    assert_spans_match_the_cpu(&ctx, "sparse tiny4", &file, &o);

    let lc = train_lora_config();
    let top = [Span {
        layers: 3..4,
        exit: Some(1),
    }];
    let plan = GpuTrainer::plan_windows(&file, &lc, &o, &ctx.limits, &top).unwrap();
    let copies = |l: usize| {
        plan.entries
            .iter()
            .any(|e| e.name.starts_with(&format!("blk.{l}.")) && e.name.contains(" transposed "))
    };
    assert!(copies(3) && !copies(0) && !copies(2), "{plan:#?}");
}

#[test]
fn allocated_bytes_are_the_windows_plan_and_unplanned_windows_are_refused() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file_with_layers(4);
    let lc = train_lora_config();
    let lora = random_lora(&file, 5);
    let windows = edge_windows();
    for (format, recompute) in [(WeightFormat::Packed, false), (WeightFormat::F32, true)] {
        let o = opts(format, recompute);
        let gpu = GpuTrainer::with_windows(&ctx, &file, &lora, &o, &windows).unwrap();
        let plan = GpuTrainer::plan_windows(&file, &lc, &o, &ctx.limits, &windows).unwrap();
        assert_allocation_is_the_plan(&format!("{format:?} {recompute}"), &gpu, &plan);
        // Two blocks' activations instead of four: less than full-depth training.
        let full = GpuTrainer::plan(&file, &lc, &o, &ctx.limits).unwrap();
        let acts = |p: &MemoryPlan| p.by_category()[2].1;
        if !recompute {
            assert!(
                acts(&plan) < acts(&full),
                "{} vs {}",
                acts(&plan),
                acts(&full)
            );
        }
    }

    // Planned for the top window only: blocks 0..2 have no gradient side, so the bottom
    // window and the full depth are refused, and so is a window not ending at its exit.
    let top = [windows[1].clone()];
    let mut gpu =
        GpuTrainer::with_windows(&ctx, &file, &lora, &opts(WeightFormat::Packed, false), &top)
            .unwrap();
    gpu.set_span(Some(&top[0])).unwrap();
    let err = gpu.set_span(Some(&windows[0])).unwrap_err().to_string();
    assert!(err.contains("was not planned"), "{err}");
    let bad = Span {
        layers: 2..3,
        exit: Some(1),
    };
    let err = gpu.set_span(Some(&bad)).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    // Without a window it evaluates the whole model (every block resident, none saved)
    // but cannot train it.
    gpu.set_span(None).unwrap();
    let rows = training_rows();
    assert!(block_on(gpu.eval(&[&rows[0]])).unwrap().count > 0);
    let err = block_on(gpu.accumulate(&[&rows[0]], 1.0, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("was not planned"), "{err}");
}

/// Edge mode's schedule through the `Trainer`: the same windows, losses and validation
/// losses on the GPU as on the CPU, and the final whole-model validation too.
#[test]
fn a_scheduled_run_gives_the_cpu_losses() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file_with_layers(4);
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let data = text_data(&tok);
    let config = TrainConfig {
        lr: 3e-3,
        max_steps: Some(6),
        micro_batch: 2,
        accum_steps: 1,
        eval_every: 2,
        layers: Some(LayerSchedule::from_exits(&EXITS, WindowOrder::Reference)),
        ..Default::default()
    };
    let cpu_backend = CpuBackend::with_exits(
        file.weights().unwrap(),
        train_lora_config(),
        &EXITS,
        config.seed,
    );
    let mut cpu = Trainer::new(cpu_backend, config.clone(), data.clone()).unwrap();
    let want = losses(&mut cpu, 6);

    let lora = initial_adapters(&file.config, train_lora_config(), &EXITS, config.seed);
    let o = opts(WeightFormat::Packed, false);
    let windows = edge_windows();
    let gpu_backend = GpuTrainer::with_windows(&ctx, &file, &lora, &o, &windows).unwrap();
    let mut gpu = Trainer::new(gpu_backend, config, data).unwrap();
    let got = losses(&mut gpu, 6);
    assert_eq!(got.len(), want.len());
    assert_same_losses("scheduled run", &got, &want, RUN_TOL);
    let mut windows_seen = Vec::new();
    for (x, y) in got.iter().zip(&want) {
        assert_eq!(x.window, y.window, "step {}", x.step);
        windows_seen.push(x.window);
    }
    assert!(windows_seen.contains(&Some(0)) && windows_seen.contains(&Some(1)));
    gpu.leave_window().unwrap();
    cpu.leave_window().unwrap();
    let (a, b) = (
        block_on(gpu.validation_loss()).unwrap().unwrap(),
        block_on(cpu.validation_loss()).unwrap().unwrap(),
    );
    assert!(RUN_TOL.close_to(a, b), "final validation {a} vs {b}");
}

/// A repeated row in a window is served from the prefix cache with the very loss of
/// recomputing it; a step of a window below makes the entry stale (a miss again).
#[test]
fn the_prefix_cache_serves_repeated_rows_until_blocks_below_change() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file_with_layers(4);
    let lora = random_lora(&file, 7);
    let windows = edge_windows();
    let o = opts(WeightFormat::Packed, false);
    let mut gpu = GpuTrainer::with_windows(&ctx, &file, &lora, &o, &windows).unwrap();
    let rows = training_rows();
    let refs: Vec<&Row> = rows.iter().collect();
    gpu.set_span(Some(&windows[1])).unwrap();
    let first = block_on(gpu.eval(&refs)).unwrap();
    let again = block_on(gpu.eval(&refs)).unwrap();
    assert_eq!((gpu.cache.misses, gpu.cache.hits), (2, 2));
    assert_eq!(first.sum.to_bits(), again.sum.to_bits());
    assert!(gpu.cache.bytes > 0);

    // Without room nothing is kept: every row recomputed, the same loss.
    let mut cold = GpuTrainer::with_windows(&ctx, &file, &lora, &o, &windows).unwrap();
    cold.cache.max_bytes = 0;
    cold.set_span(Some(&windows[1])).unwrap();
    for _ in 0..2 {
        assert_eq!(
            block_on(cold.eval(&refs)).unwrap().sum.to_bits(),
            first.sum.to_bits()
        );
    }
    assert_eq!(
        (cold.cache.misses, cold.cache.hits, cold.cache.bytes),
        (4, 0, 0)
    );

    // A step of the window's own blocks keeps the entries; one of the blocks below
    // makes them stale.
    let opt = AdamW::default();
    block_on(gpu.accumulate(&refs, 0.5, 1)).unwrap();
    block_on(gpu.apply(&opt, 1, None)).unwrap();
    block_on(gpu.eval(&refs)).unwrap();
    assert_eq!((gpu.cache.misses, gpu.cache.hits), (2, 6));
    gpu.set_span(Some(&windows[0])).unwrap();
    block_on(gpu.accumulate(&refs, 0.5, 2)).unwrap();
    block_on(gpu.apply(&opt, 2, None)).unwrap();
    gpu.set_span(Some(&windows[1])).unwrap();
    block_on(gpu.eval(&refs)).unwrap();
    assert_eq!((gpu.cache.misses, gpu.cache.hits), (4, 6));
}

/// Bytes of the plan's entries whose names pass `keep`.
fn bytes_of(plan: &MemoryPlan, keep: impl Fn(&str) -> bool) -> u64 {
    (plan.entries.iter())
        .filter(|e| keep(&e.name))
        .map(|e| e.bytes)
        .sum()
}

/// The frozen blocks outside the loaded window run from one stream slot, rewritten block
/// after block with a block of other formats (the mixed file rotates 2:4, unstructured
/// and quantized through the projections, and 8/4 bits through the blocks, so each of
/// the slot's buffers holds data of another size and layout each time): with no prefix
/// cache every row of the top window streams blocks 0 and 1 in turn, and evaluating the
/// whole model streams the two blocks the window slots do not hold. Losses and gradients
/// stay the CPU's; a stale or short upload would change them.
#[test]
fn frozen_blocks_of_every_format_stream_through_one_slot_and_match_the_cpu() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = sparse_file();
    let lora = random_lora(&file, 11);
    let windows = edge_windows();
    let o = opts(WeightFormat::Packed, false);
    let mut gpu = GpuTrainer::with_windows(&ctx, &file, &lora, &o, &windows).unwrap();
    gpu.cache.max_bytes = 0;
    let plan = gpu.memory_plan().clone();
    assert!(
        bytes_of(&plan, |n| n.starts_with("stream slot ")) > 0,
        "{plan:#?}"
    );
    assert_eq!(bytes_of(&plan, |n| n.starts_with("blk.")), 0, "{plan:#?}");
    let mut cpu = CpuBackend::with_exits(file.weights().unwrap(), train_lora_config(), &EXITS, 0);
    cpu.model.lora = Some(lora.clone());
    let rows = training_rows();
    let refs: Vec<&Row> = rows.iter().collect();
    let opt = AdamW {
        lr: 1e-3,
        ..Default::default()
    };
    let close = |what: &str, a: f64, b: f64| {
        let rel = (a - b).abs() / b.abs();
        assert!(LOSS_TOL.close_to(a, b), "{what}: {a} vs {b} ({rel:e})");
    };
    let order = [&windows[1], &windows[0], &windows[1]];
    for (step, &w) in order.iter().enumerate() {
        let what = format!("step {step}, window {:?}", w.layers);
        let (scale, seed) = (0.5, 40 + step as u64);
        gpu.set_span(Some(w)).unwrap();
        cpu.set_span(Some(w)).unwrap();
        let got = block_on(gpu.accumulate(&refs, scale, seed)).unwrap();
        let want = block_on(cpu.accumulate(&refs, scale, seed)).unwrap();
        close(&what, got.sum, want.sum);
        let own = block_on(gpu.adapters()).unwrap();
        let want = reference_grads(&file, &own, (w, &rows), scale, seed);
        let grads = flat(block_on(gpu.gradients()).unwrap());
        let max = max_abs(&want.concat());
        let d = max_abs_diff(&grads.concat(), &want.concat());
        eprintln!("{what}: max |Δgrad| {d:e} of max |grad| {max:e}");
        assert!(
            max > 1e-3 && GRAD_TOL.allows(d, max),
            "{what}: {d:e} vs {max:e}"
        );
        block_on(gpu.apply(&opt, step as u64 + 1, None)).unwrap();
        block_on(cpu.apply(&opt, step as u64 + 1, None)).unwrap();
        // The whole model: the window's blocks from their slots, the others streamed.
        gpu.set_span(None).unwrap();
        cpu.set_span(None).unwrap();
        let got = block_on(gpu.eval(&refs)).unwrap();
        let want = block_on(cpu.eval(&refs)).unwrap();
        close(&format!("{what}: whole model"), got.sum, want.sum);
    }
    assert_eq!(gpu.cache.hits, 0);
    assert_allocation_is_the_plan("streamed", &gpu, &plan);
}

/// A window's plan holds the blocks below it in one stream slot, as large as the larger
/// of them buffer by buffer, instead of holding each: its weights are the full-depth
/// plan's less the streamed blocks' bytes plus the slot's. The window's blocks keep
/// their names and transposed copies; the slot has none.
#[test]
fn a_windowed_plan_holds_one_stream_slot_instead_of_the_blocks_below() {
    let file = sparse_file();
    let (lc, o, limits) = (
        train_lora_config(),
        opts(WeightFormat::Packed, false),
        wgpu::Limits::default(),
    );
    let full = GpuTrainer::plan(&file, &lc, &o, &limits).unwrap();
    let top = [edge_windows()[1].clone()];
    assert_eq!(top[0].layers, 2..4);
    let plan = GpuTrainer::plan_windows(&file, &lc, &o, &limits, &top).unwrap();
    let block = |l: usize, copies: bool| {
        bytes_of(&full, |n| {
            n.starts_with(&format!("blk.{l}.")) && (copies || !n.contains(" transposed "))
        })
    };
    let slot = bytes_of(&plan, |n| n.starts_with("stream slot "));
    let weights = |p: &MemoryPlan| p.by_category()[0].1;
    eprintln!(
        "stream slot {slot} bytes for blocks of {} and {} bytes; weights {} → {}",
        block(0, false),
        block(1, false),
        weights(&full),
        weights(&plan)
    );
    assert_eq!(
        weights(&full) - weights(&plan),
        block(0, true) + block(1, true) - slot
    );
    assert!(slot >= block(0, false).max(block(1, false)));
    assert!(slot < block(0, false) + block(1, false));
    let has = |f: &dyn Fn(&str) -> bool| plan.entries.iter().any(|e| f(&e.name));
    assert!(has(
        &|n| n.starts_with("blk.2.") && n.contains(" transposed ")
    ));
    assert!(has(
        &|n| n.starts_with("blk.3.") && n.contains(" transposed ")
    ));
    assert!(!has(&|n| n.starts_with("blk.0.") || n.starts_with("blk.1.")));
    assert!(!has(
        &|n| n.starts_with("stream slot ") && n.contains("transposed")
    ));
}

/// The default model in f32 with its last 6 blocks tuned (`bench tune`'s partial mode):
/// the 24 frozen blocks stream through one slot exactly one block large.
#[test]
fn partial_mode_on_the_real_model_streams_the_frozen_blocks_through_one_block() {
    let Some(path) = common::model_path() else {
        return;
    };
    let file = ModelFile::open(&path).unwrap();
    let n = file.config.n_layers;
    let lc = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    let o = TrainOptions {
        format: WeightFormat::F32,
        seq_len: 256,
        ..Default::default()
    };
    let limits = wgpu::Limits::default();
    let args = ModeArgs {
        mode: Mode::Partial,
        ..Default::default()
    };
    let windows = mode_layers(n, &args).unwrap().layers.unwrap().windows;
    let k = windows[0].layers.len();
    let full = GpuTrainer::plan(&file, &lc, &o, &limits).unwrap();
    let plan = GpuTrainer::plan_windows(&file, &lc, &o, &limits, &windows).unwrap();
    let block = bytes_of(&full, |e| e.starts_with("blk.0."));
    let slot = bytes_of(&plan, |e| e.starts_with("stream slot "));
    let weights = |p: &MemoryPlan| p.by_category()[0].1;
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "partial f32: plan {} B ({:.1} MiB), every frozen block resident {} B ({:.1} MiB); \
         full depth {:.1} MiB",
        plan.total(),
        mib(plan.total()),
        plan.total() + (n - k - 1) as u64 * block,
        mib(plan.total() + (n - k - 1) as u64 * block),
        mib(full.total())
    );
    assert_eq!(slot, block);
    assert_eq!(weights(&full) - weights(&plan), (n - k - 1) as u64 * block);
}
