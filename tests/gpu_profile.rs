//! LUC profiling's model passes on the GPU against the CPU reference: the statistics
//! kernels (shaders/stats.wgsl) against their twins, the profiling trainer's Hessians and
//! Fisher diagonal against `collect_hessians` and `fisher_diagonal` on the tiny model, a
//! whole profile measured on each device giving the same policies, and the profiling
//! trainer's memory plan (planned == allocated; the real model's statistics within the
//! WebGPU binding limit).
//!
//! Needs a Vulkan adapter (lavapipe is enough); EDGE_LLM_ALLOW_NO_GPU=1 skips.
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{context, max_abs, max_abs_diff, rows_with_targets_at, tiny_file, TEXT};
use edge_llm::compress::calibration::{calibration_rows, collect_hessians, fisher_diagonal};
use edge_llm::compress::pipeline::{self, make_policy, CompressOptions};
use edge_llm::compress::profile::ProfileOptions;
use edge_llm::data::Dataset;
use edge_llm::engine::{Category, GpuTrainer, StatsPass};
use edge_llm::kernels::ops::checks::{values, MATMUL_TOL};
use edge_llm::kernels::ops::stats;
use edge_llm::model::ModelFile;
use edge_llm::reference::stats::{fisher_acc, gram_acc, BlockFisher, LayerHessians};
use edge_llm::reference::Transformer;
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::{compare, Tol};
use edge_llm::train::Row;
use pollster::block_on;

/// The statistics kernels sum t ≤ a few hundred f32 products of values in [-1, 1) in tiles,
/// the twins in f64: the gemm rule ([`MATMUL_TOL`]) bounds that. Fisher squares the sum g:
/// the error 2|g|·δg stays within it relative to g².
const STATS_TOL: Tol = MATMUL_TOL;
/// The GPU forward (packed kernels, f32 sums in tiles) and the CPU reference (f32, another
/// order) feed XᵀX sums (f32 on the GPU, f64 on the CPU) over every calibration token:
/// max |gpu − cpu| ≤ rel · max |cpu|. Seen on the tiny model: 1.5e-7; a wrong
/// row, a missed block or a doubled pass gives errors of order 1.
const HESSIAN_TOL: Tol<f64> = Tol::relative(1e-5);
/// The same rule for the Fisher diagonal: gradients through two blocks' backward and the
/// head, squared (the training tests allow 1e-3 for gradients of many accumulated rows).
/// Seen: 1.2e-6.
const FISHER_TOL: Tol = Tol::relative(1e-4);
/// A profile's errors are sums of F·ΔW² and tr(ΔW·H·ΔWᵀ) over weights, from statistics
/// within the rules above; Wanda's masks are chosen from H's diagonal, where a near tie
/// could fall the other way and move a level's error by one weight's share. Per level:
/// |gpu − cpu| ≤ rel · max(|gpu|, |cpu|). Seen: 1e-7 (no tie fell).
const PROFILE_TOL: Tol<f64> = Tol::relative(1e-3);

/// Calibration rows of the tiny model: `n` rows of `seq_len` tokens of TEXT, each ended by ". ".
fn calib(file: &ModelFile, n: usize, seq_len: usize) -> Vec<Row> {
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let ds = Dataset::parse("calib.txt", &format!("{TEXT}. ").repeat(6)).unwrap();
    calibration_rows(&ds, &tok, n, seq_len).unwrap()
}

#[test]
fn stats_kernels_match_their_cpu_twins() {
    let Some(ctx) = context(None) else { return };
    // Smaller than a tile, not dividing it (64) or the t step (16), and the real model's
    // widest input (1536).
    for (i, &(t, k)) in [(1, 1), (7, 65), (130, 200), (17, 1536)].iter().enumerate() {
        let x = values(t * k, 10 + i as u32);
        let h0 = values(k * k, 20 + i as u32);
        let got = block_on(stats::gram_acc(&ctx, &h0, &x, t, k)).unwrap();
        let mut want = h0.clone();
        gram_acc(&mut want, &x, t, k);
        let what = format!("gram_acc t={t} k={k}");
        if let Err(e) = compare(&what, &got, &want, STATS_TOL) {
            panic!("{e}");
        }
    }
    for (i, &(t, n, k)) in [(1, 1, 1), (5, 63, 130), (130, 67, 200), (20, 576, 1536)]
        .iter()
        .enumerate()
    {
        let (dy, x) = (values(t * n, 30 + i as u32), values(t * k, 40 + i as u32));
        let f0: Vec<f32> = values(n * k, 50 + i as u32)
            .iter()
            .map(|v| v.abs())
            .collect();
        let s = 0.25;
        let got = block_on(stats::fisher_acc(&ctx, &f0, &dy, &x, t, n, k, s)).unwrap();
        let mut want = f0.clone();
        fisher_acc(&mut want, &dy, &x, t, n, k, s);
        let what = format!("fisher_acc t={t} n={n} k={k}");
        if let Err(e) = compare(&what, &got, &want, STATS_TOL) {
            panic!("{e}");
        }
    }
}

/// max |a − b| and max |b| over two equally shaped sets of matrices.
fn worst<'a>(pairs: impl Iterator<Item = (&'a [f64], &'a [f64])>) -> (f64, f64) {
    let (mut d, mut m) = (0.0f64, 0.0f64);
    for (a, b) in pairs {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            d = d.max((x - y).abs());
            m = m.max(y.abs());
        }
    }
    (d, m)
}

fn hessian_matrices(h: &[LayerHessians]) -> Vec<Vec<f64>> {
    h.iter()
        .flat_map(|l| [&l.n1, &l.attn, &l.n2, &l.act].map(|h| h.matrix()))
        .collect()
}

#[test]
fn gpu_hessians_equal_collect_hessians() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let model = Transformer::new(file.weights().unwrap());
    // Rows of different lengths, the last without targets (Hessians read every token).
    let mut rows = calib(&file, 3, 40);
    rows.extend(rows_with_targets_at(&[(23, 5, &[])]));
    let want = collect_hessians(&model, &rows, &mut |_, _| {}).unwrap();
    let pass = StatsPass::Hessians;
    let mut tr = GpuTrainer::for_statistics(&ctx, &file, pass, &pass.options(40)).unwrap();
    let mut seen = Vec::new();
    let got = block_on(tr.collect_hessians(&rows, &mut |d, t| seen.push((d, t)))).unwrap();
    assert_eq!(seen, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in [
            (&g.n1, &w.n1),
            (&g.attn, &w.attn),
            (&g.n2, &w.n2),
            (&g.act, &w.act),
        ] {
            assert_eq!((a.k, a.rows()), (b.k, b.rows()));
        }
    }
    let (g, w) = (hessian_matrices(&got), hessian_matrices(&want));
    let (d, max) = worst(g.iter().zip(&w).map(|(a, b)| (&a[..], &b[..])));
    println!("Hessians: max |gpu − cpu| {d:e} over max |cpu| {max:e}");
    assert!(max > 0.0);
    assert!(HESSIAN_TOL.allows(d, max), "max |ΔH| {d:e} over {max:e}");
    // A second collection starts from zero.
    let again = block_on(tr.collect_hessians(&rows[..1], &mut |_, _| {})).unwrap();
    let once = collect_hessians(&model, &rows[..1], &mut |_, _| {}).unwrap();
    let (g, w) = (hessian_matrices(&again), hessian_matrices(&once));
    let (d, max) = worst(g.iter().zip(&w).map(|(a, b)| (&a[..], &b[..])));
    assert!(
        HESSIAN_TOL.allows(d, max),
        "second pass: max |ΔH| {d:e} over {max:e}"
    );
}

fn flat(f: &[BlockFisher]) -> Vec<f32> {
    f.iter().flatten().flatten().copied().collect()
}

#[test]
fn gpu_fisher_equals_fisher_diagonal() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let model = Transformer::new(file.weights().unwrap());
    // Calibration rows, a row with two targets, and one without: skipped by both.
    let mut rows = calib(&file, 3, 40);
    rows.extend(rows_with_targets_at(&[(30, 7, &[4, 29]), (19, 2, &[])]));
    let want = fisher_diagonal(&model, &rows, &mut |_, _| {}).unwrap();
    let pass = StatsPass::Fisher;
    let mut tr = GpuTrainer::for_statistics(&ctx, &file, pass, &pass.options(40)).unwrap();
    let mut seen = 0;
    let got = block_on(tr.fisher_diagonal(&rows, &mut |d, t| {
        assert_eq!(t, rows.len());
        seen = d;
    }))
    .unwrap();
    assert_eq!(seen, rows.len());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let shapes = |b: &BlockFisher| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(shapes(g), shapes(w));
    }
    let (g, w) = (flat(&got), flat(&want));
    let (max, d) = (max_abs(&w), max_abs_diff(&g, &w));
    println!("Fisher: max |gpu − cpu| {d:e} over max |cpu| {max:e}");
    assert!(max > 0.0);
    assert!(FISHER_TOL.allows(d, max), "max |ΔF| {d:e} over {max:e}");

    // No row with a target: the same error on both devices.
    let blank = rows_with_targets_at(&[(12, 1, &[]), (9, 3, &[])]);
    let cpu = fisher_diagonal(&model, &blank, &mut |_, _| {}).unwrap_err();
    let gpu = block_on(tr.fisher_diagonal(&blank, &mut |_, _| {})).unwrap_err();
    assert_eq!(gpu.to_string(), cpu.to_string());
    assert!(gpu.to_string().contains("no calibration row has a target"));
    // A trainer built for one pass refuses the other.
    let e = block_on(tr.collect_hessians(&rows, &mut |_, _| {})).unwrap_err();
    assert!(e.to_string().contains("for_statistics"), "{e}");
}

/// A profile measured with the calibration passes on the GPU and one on the CPU: the same
/// key (the device is not part of it), every level's errors within PROFILE_TOL, and the
/// same LUC policies at two budgets.
#[test]
fn a_gpu_profile_gives_the_cpu_profiles_policies() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let rows = calib(&file, 4, 48);
    let o = CompressOptions {
        calib_rows: 4,
        seq_len: 48,
        ..CompressOptions::default()
    };
    let opts: ProfileOptions = o.profile_options();
    let mut stages = Vec::new();
    let gpu = block_on(pipeline::measure_file_profile(
        &file,
        &rows,
        &opts,
        Some(&ctx),
        &mut |s, d, t| stages.push((s.to_owned(), d, t)),
    ))
    .unwrap();
    let cpu = block_on(pipeline::measure_file_profile(
        &file,
        &rows,
        &opts,
        None,
        &mut |_, _, _| {},
    ))
    .unwrap();
    // Per-row progress on the GPU, under the page's stage names.
    for stage in ["calibrate", "fisher"] {
        let rows_done: Vec<usize> = (stages.iter())
            .filter(|s| s.0 == stage)
            .map(|s| s.1)
            .collect();
        assert_eq!(rows_done, [1, 2, 3, 4], "{stage}");
    }
    assert!(stages.iter().any(|s| s.0 == "profile"));
    assert_eq!(gpu.key, cpu.key);
    let worst_rel = std::cell::Cell::new(0.0f64);
    let close = |what: &str, a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let bound = PROFILE_TOL.bound(x.abs().max(y.abs()));
            worst_rel.set(
                worst_rel
                    .get()
                    .max((x - y).abs() / x.abs().max(y.abs()).max(1e-300)),
            );
            assert!((x - y).abs() <= bound, "{what}[{i}]: gpu {x} cpu {y}");
        }
    };
    for (l, (g, c)) in gpu.layers.iter().zip(&cpu.layers).enumerate() {
        close(&format!("layer {l} prune_mse"), &g.prune_mse, &c.prune_mse);
        close(&format!("layer {l} quant_mse"), &g.quant_mse, &c.quant_mse);
        close(
            &format!("layer {l} prune_fisher"),
            &g.prune_fisher,
            &c.prune_fisher,
        );
        close(
            &format!("layer {l} quant_fisher"),
            &g.quant_fisher,
            &c.quant_fisher,
        );
        for (j, (a, b)) in g.joint_fisher.iter().zip(&c.joint_fisher).enumerate() {
            close(&format!("layer {l} joint_fisher[{j}]"), a, b);
        }
    }
    println!("profile: worst relative difference {:e}", worst_rel.get());
    for (sparsity, bits) in [(0.3, 4.0), (0.5, 3.0)] {
        let o = CompressOptions {
            sparsity,
            bits,
            ..o.clone()
        };
        let (pg, _) = make_policy(&file.config, &o, None, Some(&gpu)).unwrap();
        let (pc, _) = make_policy(&file.config, &o, None, Some(&cpu)).unwrap();
        assert_eq!(pg, pc, "sparsity {sparsity}, {bits} bits");
    }
}

/// Planned == allocated for both passes, the statistics are in the plan, one buffer each
/// (per block: 4 Hessians or 7 Fisher diagonals), and the real model's plans fit the
/// WebGPU baseline's binding limit (printed with --nocapture).
#[test]
fn profiling_trainers_allocate_what_they_plan() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let n = file.config.n_layers;
    for (pass, per_block) in [(StatsPass::Hessians, 4), (StatsPass::Fisher, 7)] {
        let opts = pass.options(40);
        let plan = GpuTrainer::plan_statistics(&file, pass, &opts, &ctx.limits).unwrap();
        let tr = GpuTrainer::for_statistics(&ctx, &file, pass, &opts).unwrap();
        assert_eq!(tr.memory_plan(), &plan);
        assert_eq!(tr.allocated_bytes(), plan.total(), "{pass:?}");
        let stats: Vec<_> = (plan.entries.iter())
            .filter(|e| e.category == Category::Statistics)
            .collect();
        assert_eq!(stats.len(), n * per_block, "{pass:?}");
        let training = GpuTrainer::plan(&file, &Default::default(), &opts, &ctx.limits).unwrap();
        assert!(training
            .entries
            .iter()
            .all(|e| e.category != Category::Statistics));
    }
    let Some(path) = common::model_path() else {
        return;
    };
    let real = ModelFile::open(&path).unwrap();
    let limits = wgpu::Limits::default();
    for pass in [StatsPass::Hessians, StatsPass::Fisher] {
        let plan = GpuTrainer::plan_statistics(&real, pass, &pass.options(128), &limits).unwrap();
        plan.check(&limits).unwrap();
        let stats: u64 = (plan.entries.iter())
            .filter(|e| e.category == Category::Statistics)
            .map(|e| e.bytes)
            .sum();
        let largest = (plan.entries.iter())
            .filter(|e| e.category == Category::Statistics)
            .map(|e| e.bytes)
            .max()
            .unwrap();
        assert!(largest <= 1536 * 1536 * 4, "{largest}");
        println!(
            "real model, {pass:?} pass at 128 tokens: {:.1} MiB planned ({:.1} MiB statistics, \
             largest buffer {:.1} MiB)",
            plan.total() as f64 / 1048576.0,
            stats as f64 / 1048576.0,
            largest as f64 / 1048576.0
        );
    }
}
