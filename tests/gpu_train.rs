//! LoRA training on the GPU (lavapipe here) against the CPU reference on the tiny model:
//! the losses and LoRA gradients of one accumulation (with dropout, in both weight formats,
//! with and without layer recompute), rows with a few targets (the first and last positions
//! among them) or none, which is all the head sees, a head in several chunks stored as Q8_0,
//! Q4_0, Q4_1 or f32, whole training runs, the same run under a small binding limit that splits the
//! head, exact resume, and the memory plan and budget.

mod common;
use common::{
    assert_same_losses, context, losses, max_abs, max_abs_diff, model_path, rows_with_targets_at,
    text_data, tiny_file, train_lora_config, training_rows, GRAD_TOL, LOSS_TOL, RUN_TOL,
};
use edge_llm::engine::{fit_budget, GpuTrainer, TrainOptions, WeightFormat, DEFAULT_VOCAB_CHUNK};
use edge_llm::gguf::GgmlType;
use edge_llm::kernels::context::GpuContext;
use edge_llm::model::ModelFile;
use edge_llm::reference::{Lora, LoraConfig, Proj, Span, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use edge_llm::train::{derive_seed, Backend, CpuBackend, Row, TrainConfig, Trainer};
use pollster::block_on;

/// The same GPU run with its head split in chunks by a small binding limit: only the
/// head's chunk merges (log-sum-exp, d_hidden) sum in another order.
const SPLIT_RUN_TOL: Tol<f64> = Tol::relative(1e-5);
/// The binding limit that splits the tiny head (272 × 64, 68 KiB in f32) into three chunks.
const SMALL_BINDING: u64 = 32 << 10;

fn small_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: SMALL_BINDING,
        ..Default::default()
    }
}

/// PEFT-initialised adapters with B filled too, so every gradient is non-zero.
fn random_lora(file: &ModelFile, seed: u64) -> Lora<f32> {
    let mut lora = Lora::new(&file.config, train_lora_config(), seed);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for l in &mut lora.layers {
        for p in l.iter_mut().flatten() {
            for b in &mut p.b {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
            }
        }
    }
    lora
}

/// Rows where only a few positions have a target (the first and the last of a row among
/// them), one of the full planned length, and one with none: the head runs on the gathered
/// rows only, and a gradient scattered to the wrong position changes every LoRA gradient.
fn few_target_rows() -> Vec<Row> {
    rows_with_targets_at(&[
        (24, 5, &[0, 9, 23]),
        (32, 1, &[]),
        (17, 9, &[16]),
        (32, 7, &[0, 1, 31]),
    ])
}

fn opts(format: WeightFormat, recompute: bool) -> TrainOptions {
    TrainOptions {
        format,
        seq_len: 32,
        recompute,
        ..Default::default()
    }
}

fn flat(l: &Lora<f32>) -> Vec<f32> {
    let mut l = l.clone();
    l.tensors_mut()
        .into_iter()
        .flat_map(|t| t.clone())
        .collect()
}

#[test]
fn one_accumulation_matches_the_cpu_reference() {
    let Some(ctx) = context(None) else {
        return;
    };
    let cases = [
        (WeightFormat::F32, false),
        (WeightFormat::Packed, false),
        (WeightFormat::Packed, true),
    ];
    let file = tiny_file();
    assert_one_accumulation(
        &ctx,
        "tiny",
        &file,
        &training_rows(),
        &cases,
        DEFAULT_VOCAB_CHUNK,
    );
}

/// A few targets per row, in a head of one chunk and of three (100 + 100 + 72 rows).
#[test]
fn rows_with_few_targets_match_the_cpu_reference() {
    let Some(ctx) = context(None) else {
        return;
    };
    let cases = [(WeightFormat::Packed, false), (WeightFormat::F32, true)];
    let (file, rows) = (tiny_file(), few_target_rows());
    assert_one_accumulation(
        &ctx,
        "few targets",
        &file,
        &rows,
        &cases,
        DEFAULT_VOCAB_CHUNK,
    );
    assert_one_accumulation(&ctx, "few targets", &file, &rows, &cases, 100);
}

/// A row without a target is skipped as the CPU backend skips it: no loss, no count, no
/// gradient, in training and in evaluation, alone or beside rows with targets.
#[test]
fn a_row_without_targets_counts_nothing_as_on_the_cpu() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file();
    let lora = random_lora(&file, 3);
    let rows = few_target_rows();
    let none = &rows[1];
    assert_eq!(none.n_targets(), 0);
    let mut gpu = GpuTrainer::new(&ctx, &file, &lora, &opts(WeightFormat::Packed, false)).unwrap();
    let mut cpu = CpuBackend::new(file.weights().unwrap(), train_lora_config(), 0);
    cpu.model.lora = Some(lora.clone());
    for b in [
        block_on(gpu.accumulate(&[none], 0.5, 1)).unwrap(),
        block_on(gpu.eval(&[none])).unwrap(),
        block_on(cpu.accumulate(&[none], 0.5, 1)).unwrap(),
        block_on(cpu.eval(&[none])).unwrap(),
    ] {
        assert_eq!((b.sum, b.count), (0.0, 0));
    }
    let grads = flat(&block_on(gpu.gradients()).unwrap());
    assert!(
        grads.iter().all(|&g| g == 0.0),
        "a row without targets made a gradient"
    );

    let refs: Vec<&Row> = rows.iter().collect();
    let with: Vec<&Row> = rows.iter().filter(|r| r.n_targets() > 0).collect();
    let (all, some) = (
        block_on(gpu.eval(&refs)).unwrap(),
        block_on(gpu.eval(&with)).unwrap(),
    );
    let want = block_on(cpu.eval(&refs)).unwrap();
    assert_eq!(all.count, 7);
    assert_eq!(
        (all.count, all.sum.to_bits()),
        (some.count, some.sum.to_bits())
    );
    assert_eq!(all.count, want.count);
    assert!(
        LOSS_TOL.close_to(all.sum, want.sum),
        "eval loss {} vs {}",
        all.sum,
        want.sum
    );
}

/// One accumulation over `rows` on `file` in each (format, recompute) case with logits
/// (and head) chunks of `vocab_chunk` rows: the loss and every LoRA gradient against the
/// CPU reference, and allocated bytes == the plan.
fn assert_one_accumulation(
    ctx: &GpuContext,
    name: &str,
    file: &ModelFile,
    rows: &[Row],
    cases: &[(WeightFormat, bool)],
    vocab_chunk: usize,
) {
    let lora = random_lora(file, 3);
    let refs: Vec<&Row> = rows.iter().collect();
    let (scale, seed) = (0.25, 77);

    // The CPU: Σ_rows grad_scale · ∇(Σ loss), dropout seeds derived as the backends do.
    let model = Transformer {
        w: file.weights().unwrap(),
        lora: Some(lora.clone()),
    };
    let mut want = lora.zeros_like();
    let mut want_loss = 0.0f64;
    for (r, row) in rows.iter().enumerate() {
        let acts = model.forward_train(&row.tokens, Some(derive_seed(seed, &[r as u64])));
        let n = row.n_targets();
        want_loss += model.loss(&acts, &row.targets) as f64 * n as f64;
        let mut g = model.backward(&acts, &row.targets, false).lora.unwrap();
        for (a, b) in want.tensors_mut().into_iter().zip(g.tensors_mut()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += (scale * n as f64) as f32 * y;
            }
        }
    }
    let want = flat(&want);
    let max = max_abs(&want);
    assert!(max > 1e-3, "the reference gradients are all ~0 ({max})");

    for &(format, recompute) in cases {
        let what = format!("{name} {format:?} recompute={recompute} chunk {vocab_chunk}");
        let o = TrainOptions {
            vocab_chunk,
            ..opts(format, recompute)
        };
        let mut gpu = GpuTrainer::new(ctx, file, &lora, &o).unwrap();
        let (chunks, chunk) = gpu.head_split();
        let vocab = file.config.vocab;
        assert_eq!(chunk, vocab_chunk.min(vocab), "{what}");
        assert_eq!(chunks, vocab.div_ceil(chunk), "{what}");
        let loss = block_on(gpu.accumulate(&refs, scale, seed)).unwrap();
        let targets: usize = rows.iter().map(Row::n_targets).sum();
        assert_eq!(loss.count, targets, "{what}");
        let rel = (loss.sum - want_loss).abs() / want_loss;
        assert!(
            LOSS_TOL.close_to(loss.sum, want_loss),
            "{what}: loss {} vs {want_loss}",
            loss.sum
        );
        let got = flat(&block_on(gpu.gradients()).unwrap());
        let d = max_abs_diff(&got, &want);
        eprintln!("{what}: loss rel diff {rel:e}, max |Δgrad| {d:e} of max |grad| {max:e}");
        assert!(
            GRAD_TOL.allows(d, max),
            "{what}: max |gpu − cpu| gradient {d:e} over max |grad| {max:e}"
        );
        assert_eq!(
            gpu.allocated_bytes(),
            gpu.memory_plan().total(),
            "{what}: allocated bytes differ from the plan"
        );
    }
}

/// The LM head in three chunks (272 rows: 100 + 100 + 72) as a file may store it: Q8_0
/// and Q4_x read packed in place, f32 dense, and Q4_1 under the F32 option (dense chunks):
/// the CPU reference's loss and gradients on the same blocks, allocated bytes == the plan,
/// and the plan naming each chunk in the file's format at its packed size.
#[test]
fn a_head_in_chunks_matches_the_cpu_reference_in_every_format() {
    let Some(ctx) = context(None) else {
        return;
    };
    let tiny = tiny_file();
    let (vocab, d) = (tiny.config.vocab, tiny.config.hidden);
    let f32_bytes = (vocab * d * 4) as u64;
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q4_0,
        GgmlType::F32,
    ] {
        let file = common::with_head_type(&tiny, ty);
        let name = format!("{} head", ty.name());
        let cases: &[(WeightFormat, bool)] = if ty == GgmlType::Q4_1 {
            &[
                (WeightFormat::Packed, false),
                (WeightFormat::Packed, true),
                (WeightFormat::F32, false),
            ]
        } else {
            &[(WeightFormat::Packed, false)]
        };
        assert_one_accumulation(&ctx, &name, &file, &training_rows(), cases, 100);

        let o = TrainOptions {
            vocab_chunk: 100,
            ..opts(WeightFormat::Packed, false)
        };
        let plan = GpuTrainer::plan(&file, &train_lora_config(), &o, &ctx.limits).unwrap();
        let head: Vec<_> = plan
            .entries
            .iter()
            .filter(|e| e.name.starts_with("token_embd.weight"))
            .collect();
        let tag = if ty == GgmlType::F32 {
            "f32"
        } else {
            ty.name()
        };
        for i in 0..3 {
            let chunk = format!("token_embd.weight {tag} chunk {i}");
            assert!(head.iter().any(|e| e.name == chunk), "{name}: {head:#?}");
        }
        assert!(
            !head.iter().any(|e| e.name.contains("chunk 3")),
            "{head:#?}"
        );
        let bytes: u64 = head.iter().map(|e| e.bytes).sum();
        eprintln!("{name}: {bytes} head bytes planned, {f32_bytes} in f32");
        let ok = match ty {
            GgmlType::F32 => bytes >= f32_bytes,
            GgmlType::Q8_0 => 3 * bytes < f32_bytes,
            _ => 5 * bytes < f32_bytes,
        };
        assert!(ok, "{name}: {bytes} head bytes vs {f32_bytes} in f32");
    }
}

/// The tiny model in every compressed format (tests/common).
fn mixed_sparse_file() -> ModelFile {
    common::mixed_sparse_file(&tiny_file())
}

/// Sparse projections are read packed by the trainer (forward through the sparse kernels,
/// input gradients through their transposed copies): the CPU's loss and gradients on the
/// file's weights, and fewer planned bytes than the f32 upload even with the copies.
#[test]
fn sparse_file_gradients_match_the_cpu_reference() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = mixed_sparse_file();
    let cases = [
        (WeightFormat::Packed, false),
        (WeightFormat::Packed, true),
        (WeightFormat::F32, false),
    ];
    let chunk = DEFAULT_VOCAB_CHUNK;
    assert_one_accumulation(&ctx, "sparse file", &file, &training_rows(), &cases, chunk);

    let lc = train_lora_config();
    let limits = wgpu::Limits::default();
    let plan = |f| GpuTrainer::plan(&file, &lc, &opts(f, false), &limits).unwrap();
    let (packed, dense) = (plan(WeightFormat::Packed), plan(WeightFormat::F32));
    let proj = |p: &edge_llm::engine::MemoryPlan| -> u64 {
        p.entries
            .iter()
            .filter(|e| e.name.starts_with("blk.") && !e.name.contains("_norm"))
            .map(|e| e.bytes)
            .sum()
    };
    let copies: u64 = packed
        .entries
        .iter()
        .filter(|e| e.name.contains(" transposed "))
        .map(|e| e.bytes)
        .sum();
    let (p, d) = (proj(&packed), proj(&dense));
    eprintln!(
        "sparse file trainer plan: projections {p} bytes packed ({copies} of them transposed \
         copies) vs {d} f32 ({:.2}×)",
        d as f64 / p as f64
    );
    assert!(copies > 0, "no transposed copy planned");
    assert!(2 * p < d, "projections: {p} packed vs {d} f32 bytes");

    // A window over the top block: its weights with their copies, the frozen block below
    // (resident, forward only) without.
    let top = Span {
        layers: 1..2,
        exit: None,
    };
    let o = opts(WeightFormat::Packed, false);
    let w = GpuTrainer::plan_windows(&file, &lc, &o, &limits, &[top]).unwrap();
    let has = |prefix: &str, tag: &str| {
        w.entries
            .iter()
            .any(|e| e.name.starts_with(prefix) && e.name.contains(tag))
    };
    assert!(has("blk.1.", " transposed ") && has("blk.0.", ""), "{w:#?}");
    assert!(
        !has("blk.0.", " transposed "),
        "the frozen block holds a transposed copy"
    );
    assert!(
        w.total() < packed.total(),
        "{} vs {}",
        w.total(),
        packed.total()
    );
}

fn train_config() -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        max_steps: Some(6),
        micro_batch: 2,
        accum_steps: 2,
        eval_every: 3,
        ..Default::default()
    }
}

#[test]
fn training_matches_the_cpu_and_a_split_head_gives_the_same_losses() {
    let (Some(ctx), Some(small)) = (context(None), context(Some(small_limits()))) else {
        return;
    };
    let file = tiny_file();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let data = text_data(&tok);
    let config = train_config();
    let lora = Lora::new(&file.config, train_lora_config(), config.seed);

    let mut cpu_backend =
        CpuBackend::new(file.weights().unwrap(), train_lora_config(), config.seed);
    cpu_backend.model.lora = Some(lora.clone());
    let mut cpu = Trainer::new(cpu_backend, config.clone(), data.clone()).unwrap();
    let want = losses(&mut cpu, 6);

    let o = opts(WeightFormat::Packed, false);
    let mut gpu = Trainer::new(
        GpuTrainer::new(&ctx, &file, &lora, &o).unwrap(),
        config.clone(),
        data.clone(),
    )
    .unwrap();
    let got = losses(&mut gpu, 6);
    assert_same_losses("GPU vs CPU", &got, &want, RUN_TOL);
    assert!(
        got.last().unwrap().loss < got[0].loss,
        "training lowered nothing"
    );

    let split = GpuTrainer::new(&small, &file, &lora, &o).unwrap();
    let (chunks, chunk) = split.head_split();
    assert!(
        chunks >= 3 && chunk < file.config.vocab,
        "{chunks} chunks of {chunk}"
    );
    let big = gpu.backend.head_split();
    assert_eq!(
        big.0, 1,
        "the default limit holds the tiny head in one chunk"
    );
    let mut small_run = Trainer::new(split, config, data).unwrap();
    let got_small = losses(&mut small_run, 6);
    assert_same_losses(
        "32 KiB binding limit vs default",
        &got_small,
        &got,
        SPLIT_RUN_TOL,
    );
    let peak = small_run.backend.gpu_bytes();
    assert!(peak <= small_run.backend.memory_plan().total());
    for e in &small_run.backend.memory_plan().entries {
        assert!(
            !e.storage || e.bytes <= SMALL_BINDING,
            "{} ({} bytes) over the binding limit",
            e.name,
            e.bytes
        );
    }
}

#[test]
fn resume_on_the_gpu_equals_an_uninterrupted_run() {
    let Some(ctx) = context(None) else {
        return;
    };
    let file = tiny_file();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let data = text_data(&tok);
    let config = train_config();
    let lora = Lora::new(&file.config, train_lora_config(), config.seed);
    let o = opts(WeightFormat::Packed, true);
    let new = || GpuTrainer::new(&ctx, &file, &lora, &o).unwrap();

    let mut whole = Trainer::new(new(), config.clone(), data.clone()).unwrap();
    let want = losses(&mut whole, 6);

    let mut first = Trainer::new(new(), config.clone(), data.clone()).unwrap();
    let mut got = losses(&mut first, 3);
    let state = block_on(first.checkpoint()).unwrap();
    drop(first);
    let mut second = Trainer::new(new(), config, data).unwrap();
    block_on(second.resume(&state)).unwrap();
    got.extend(losses(&mut second, 3));
    let a: Vec<u64> = got.iter().map(|r| r.loss.to_bits()).collect();
    let b: Vec<u64> = want.iter().map(|r| r.loss.to_bits()).collect();
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run");
    let wa = flat(&block_on(second.backend.adapters()).unwrap());
    let wb = flat(&block_on(whole.backend.adapters()).unwrap());
    assert_eq!(wa, wb, "resumed adapters differ");
}

#[test]
fn the_budget_picks_recompute_or_refuses_before_allocating() {
    let file = tiny_file();
    let lc = train_lora_config();
    let limits = wgpu::Limits::default();
    let full = TrainOptions {
        format: WeightFormat::F32,
        seq_len: 64,
        ..Default::default()
    };
    let p_full = GpuTrainer::plan(&file, &lc, &full, &limits).unwrap();
    let recompute = TrainOptions {
        recompute: true,
        ..full.clone()
    };
    let p_re = GpuTrainer::plan(&file, &lc, &recompute, &limits).unwrap();
    assert!(p_re.total() < p_full.total());

    // No budget, or a generous one: the options as asked.
    let fit = fit_budget(&file, &lc, &full, &limits, Some(p_full.total())).unwrap();
    assert_eq!(fit.options, full);
    assert!(fit.changes.is_empty());
    // Just under: recompute turns on and the plan fits.
    let fit = fit_budget(&file, &lc, &full, &limits, Some(p_full.total() - 1)).unwrap();
    assert!(fit.options.recompute, "{:?}", fit.changes);
    assert!(fit.plan.total() < p_full.total());
    // Smaller than every 64-token plan but enough for 32-token rows: the rows are chunked
    // and accumulation doubles, so a step sees as many tokens.
    let smallest = |t: usize| {
        let o = TrainOptions {
            seq_len: t,
            recompute: true,
            format: WeightFormat::Packed,
            vocab_chunk: 256,
            ..full.clone()
        };
        GpuTrainer::plan(&file, &lc, &o, &limits).unwrap().total()
    };
    let budget = smallest(40);
    assert!(budget < smallest(64));
    let fit = fit_budget(&file, &lc, &full, &limits, Some(budget)).unwrap();
    assert_eq!(fit.options.seq_len, 40, "{:?}", fit.changes);
    assert_eq!(fit.accum_factor, 2);
    assert!(fit.plan.total() <= budget);
    assert!(fit.changes.last().unwrap().contains("rows of 40 tokens"));
    // Far too small: refused with the size needed and a sequence length that fits.
    let err = fit_budget(&file, &lc, &full, &limits, Some(300_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory budget of 300000 bytes"), "{err}");
    assert!(err.contains("would fit"), "{err}");
    let err = fit_budget(&file, &lc, &full, &limits, Some(1000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("even --seq-len 1 needs"), "{err}");
}

/// The LoRA of the real-model checks: rank 8 on every projection, dropout on.
fn real_lora() -> LoraConfig {
    LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: Proj::ALL.to_vec(),
    }
}

/// The real SmolLM2-135M: one 16-token row's loss and every LoRA gradient (all seven
/// projections of all 30 layers, dropout on) agree with the CPU reference.
#[test]
fn real_model_gradients_match_the_cpu() {
    let Some(path) = model_path() else { return };
    let Some(ctx) = context(None) else { return };
    let file = ModelFile::open(path).unwrap();
    let lc = real_lora();
    let mut lora = Lora::new(&file.config, lc.clone(), 1);
    let mut state = 7u64;
    for l in &mut lora.layers {
        for p in l.iter_mut().flatten() {
            for b in &mut p.b {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
            }
        }
    }
    let row = Row {
        tokens: (0..16u32).map(|i| (i * 2713 + 101) % 49152).collect(),
        targets: (0..16u32)
            .map(|i| (i >= 4).then_some((i * 577 + 3) % 49152))
            .collect(),
    };
    let seed = 5;
    let model = Transformer {
        w: file.weights().unwrap(),
        lora: Some(lora.clone()),
    };
    let acts = model.forward_train(&row.tokens, Some(derive_seed(seed, &[0])));
    let n = row.n_targets();
    let want_loss = model.loss(&acts, &row.targets) as f64 * n as f64;
    let mut g = model.backward(&acts, &row.targets, false).lora.unwrap();
    for t in g.tensors_mut() {
        for x in t.iter_mut() {
            *x *= n as f32;
        }
    }
    let want = flat(&g);
    drop((model, acts));

    let o = TrainOptions {
        seq_len: 16,
        recompute: true,
        ..Default::default()
    };
    let mut gpu = GpuTrainer::new(&ctx, &file, &lora, &o).unwrap();
    let loss = block_on(gpu.accumulate(&[&row], 1.0, seed)).unwrap();
    let got = flat(&block_on(gpu.gradients()).unwrap());
    let rel = (loss.sum - want_loss).abs() / want_loss;
    let max = max_abs(&want);
    let d = max_abs_diff(&got, &want);
    eprintln!(
        "real model: loss {} vs {want_loss} (rel {rel:e}); max |Δgrad| {d:e} of max |grad| {max:e} \
         over {} values; GPU memory {:.1} MiB",
        loss.sum,
        want.len(),
        gpu.allocated_bytes() as f64 / 1048576.0
    );
    assert!(
        LOSS_TOL.close_to(loss.sum, want_loss),
        "loss {} vs {want_loss}",
        loss.sum
    );
    assert!(GRAD_TOL.allows(d, max), "max |Δgrad| {d:e} over {max:e}");
}

/// Rough timing (not a check): one accumulation on the real model of a 236-token row with
/// 34 targets (an ARC-Easy row has 33 on average) against the same row with a target at
/// every position, whose head runs on all of them. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_real_model_row_few_vs_all_targets() {
    use std::time::Instant;
    let Some(path) = model_path() else { return };
    let Some(ctx) = context(None) else { return };
    let file = ModelFile::open(path).unwrap();
    let lc = real_lora();
    let lora = Lora::new(&file.config, lc, 1);
    let t = 236u32;
    let row = |every: u32| Row {
        tokens: (0..t).map(|i| (i * 2713 + 101) % 49152).collect(),
        targets: (0..t)
            .map(|i| i.is_multiple_of(every).then_some((i * 577 + 3) % 49152))
            .collect(),
    };
    let mut gpu = GpuTrainer::new(&ctx, &file, &lora, &TrainOptions::default()).unwrap();
    for every in [7, 1, 7, 1] {
        let r = row(every);
        let t0 = Instant::now();
        let loss = block_on(gpu.accumulate(&[&r], 1.0, 0)).unwrap();
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "{} targets of {t}: {s:.2} s ({:.1} tokens/s), loss {:.4}",
            loss.count,
            t as f64 / s,
            loss.mean()
        );
    }
}
