//! The GPU model (src/engine) against the CPU reference: logits in both weight formats,
//! prefill + decode through the KV cache, LoRA, greedy generation, truncation, the memory
//! plan, the binding-limit refusal, and (opt-in) the real model.
//!
//! Needs a Vulkan adapter (lavapipe is enough). Without one the tests fail, unless
//! EDGE_LLM_ALLOW_NO_GPU=1 (then they note and pass).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{assert_logits_close, context, max_abs_diff, model_path, range, tiny_file, tokens};
use std::time::Instant;

use edge_llm::engine::{GpuModel, GpuModelOptions, WeightFormat};
use edge_llm::eval::{self, CpuLm, Lm, Readout, Sampling};
use edge_llm::kernels::qmatmul::Path;
use edge_llm::model::ModelFile;
use edge_llm::reference::{Lora, LoraConfig, Proj, Transformer};
use pollster::block_on;

/// The head's logits of `toks` appended to `lm`'s context, waited for.
fn head(lm: &mut dyn Lm, toks: &[u32]) -> Vec<f32> {
    block_on(lm.append(toks, Readout::Head)).unwrap().remove(0)
}

/// Max |a − b| and the range of `b` (the reference).
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    (max_abs_diff(a, b), range(b))
}

fn opts(format: WeightFormat) -> GpuModelOptions {
    GpuModelOptions {
        format,
        max_len: Some(64),
        max_t: 16,
        path: None,
    }
}

fn cpu_logits(model: &Transformer<f32>, toks: &[u32]) -> Vec<f32> {
    head(&mut CpuLm::new(model), toks)
}

#[test]
fn logits_match_the_cpu_in_both_formats() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let cpu = Transformer::new(file.weights().unwrap());
    let toks = tokens(10);
    let want = cpu_logits(&cpu, &toks);
    // Both kernel shapes: the adapter's default and the 16×16 tiles.
    for path in [None, Some(Path::Tiled)] {
        for format in [WeightFormat::F32, WeightFormat::Packed] {
            let o = GpuModelOptions {
                path,
                ..opts(format)
            };
            let mut gpu = GpuModel::new(&ctx, &file, &o, None).unwrap();
            let got = head(&mut gpu, &toks);
            assert_logits_close(&format!("{format:?} {path:?}"), &got, &want);
            let (d, range) = diff(&got, &want);
            eprintln!("{format:?} {path:?}: max diff {d:e} (logit range {range})");
        }
    }
}

#[test]
fn prefill_then_decode_equals_one_forward() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let cpu = Transformer::new(file.weights().unwrap());
    let toks = tokens(10);
    let want = cpu_logits(&cpu, &toks);
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::Packed), None).unwrap();
    let whole = head(&mut gpu, &toks);
    gpu.truncate(0);
    let mut parts = head(&mut gpu, &toks[..7]);
    for &t in &toks[7..] {
        parts.extend(head(&mut gpu, &[t]));
    }
    assert_eq!(gpu.len(), 10);
    assert_logits_close("7 + 1 + 1 + 1 vs 10 (GPU)", &parts, &whole);
    assert_logits_close("7 + 1 + 1 + 1 vs CPU", &parts, &want);
    // Chunks smaller than the append: max_t = 3 runs 10 tokens as 3 + 3 + 3 + 1.
    let small = GpuModelOptions {
        max_t: 3,
        ..opts(WeightFormat::Packed)
    };
    let mut chunked = GpuModel::new(&ctx, &file, &small, None).unwrap();
    assert_logits_close("chunks of 3 vs CPU", &head(&mut chunked, &toks), &want);
}

#[test]
fn lora_matches_the_cpu() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let c = file.config.clone();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let mut lora = Lora::<f32>::new(&c, cfg, 7);
    // B starts at zero (PEFT); make it nonzero so the adapter changes the logits.
    for (i, b) in lora
        .layers
        .iter_mut()
        .flatten()
        .flatten()
        .flat_map(|p| p.b.iter_mut())
        .enumerate()
    {
        *b = ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.2;
    }
    let base = Transformer::new(file.weights().unwrap());
    let mut adapted = base.clone();
    adapted.lora = Some(lora.clone());
    let toks = tokens(9);
    let want = cpu_logits(&adapted, &toks);
    let (moved, _) = diff(&cpu_logits(&base, &toks), &want);
    assert!(
        moved > 1e-2,
        "the adapter barely changes the logits ({moved})"
    );
    for format in [WeightFormat::F32, WeightFormat::Packed] {
        let mut gpu = GpuModel::new(&ctx, &file, &opts(format), Some(&lora)).unwrap();
        let mut got = head(&mut gpu, &toks[..5]);
        got.extend(head(&mut gpu, &toks[5..]));
        assert_logits_close(&format!("LoRA {format:?}"), &got, &want);
    }
    // set_lora with zero B gives back the base model.
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::F32), Some(&lora)).unwrap();
    for p in lora.layers.iter_mut().flatten().flatten() {
        p.b.iter_mut().for_each(|b| *b = 0.0);
    }
    gpu.set_lora(&lora).unwrap();
    assert_logits_close(
        "LoRA with B = 0",
        &head(&mut gpu, &toks),
        &cpu_logits(&base, &toks),
    );
}

#[test]
fn greedy_generation_matches_the_cpu() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let cpu = Transformer::new(file.weights().unwrap());
    let prompt = tokens(5);
    let s = Sampling::default();
    let want = block_on(eval::generate(
        &mut CpuLm::new(&cpu),
        &prompt,
        12,
        &s,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::F32), None).unwrap();
    let got = block_on(eval::generate(&mut gpu, &prompt, 12, &s, &[], &mut |_| {})).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.len(), 12);
}

#[test]
fn truncate_and_reappend_gives_the_same_logits() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let toks = tokens(8);
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::Packed), None).unwrap();
    let first = head(&mut gpu, &toks);
    let vocab = gpu.vocab();
    // Overwrite positions 4.. with other tokens, then go back and replay the originals.
    gpu.truncate(4);
    head(&mut gpu, &tokens(20)[12..18]);
    gpu.truncate(4);
    assert_eq!(gpu.len(), 4);
    let again = head(&mut gpu, &toks[4..]);
    assert_logits_close("after truncate", &again, &first[4 * vocab..]);
    // Perplexity runs through the trait unchanged and agrees with the CPU.
    let cpu = Transformer::new(file.weights().unwrap());
    let long = tokens(30);
    let pc = block_on(eval::perplexity(
        &mut CpuLm::new(&cpu),
        &long,
        7,
        &mut |_, _| {},
    ))
    .unwrap();
    let pg = block_on(eval::perplexity(&mut gpu, &long, 7, &mut |_, _| {})).unwrap();
    assert!(
        (pc.mean_nll - pg.mean_nll).abs() < 1e-4 * pc.mean_nll.abs().max(1.0),
        "perplexity: cpu {pc:?} gpu {pg:?}"
    );
}

#[test]
fn memory_plan_covers_what_is_allocated() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let lora = Lora::<f32>::new(&file.config, LoraConfig::default(), 1);
    for format in [WeightFormat::F32, WeightFormat::Packed] {
        for l in [None, Some(&lora)] {
            let o = opts(format);
            let plan = GpuModel::plan(&file, &o, l).unwrap();
            let gpu = GpuModel::new(&ctx, &file, &o, l).unwrap();
            assert!(
                plan.total() >= gpu.allocated_bytes(),
                "{format:?}: plan {} < allocated {}",
                plan.total(),
                gpu.allocated_bytes()
            );
            // Every buffer is planned by the same sizes: the plan is exact.
            assert_eq!(plan.total(), gpu.allocated_bytes(), "{format:?}\n{plan}");
        }
    }
    // Packed weights are smaller than f32 ones.
    let w = |f| {
        GpuModel::plan(&file, &opts(f), None).unwrap().by_category()[0].1 // weights
    };
    assert!(w(WeightFormat::Packed) * 3 < w(WeightFormat::F32));
}

#[test]
fn refuses_a_tensor_over_the_binding_limit_by_name() {
    // The tiny token embedding is 272 × 64 f32 = 69,632 bytes; every other buffer is smaller
    // than 48 KiB.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 48 << 10,
        ..Default::default()
    };
    let Some(ctx) = context(Some(limits)) else {
        return;
    };
    let file = tiny_file();
    let err = match GpuModel::new(&ctx, &file, &opts(WeightFormat::F32), None) {
        Ok(_) => panic!("a 68 KiB embedding was bound under a 48 KiB limit"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("token_embd.weight"), "{err}");
    // Packed, the embedding (8-bit) fits.
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::Packed), None).unwrap();
    assert_eq!(head(&mut gpu, &tokens(3)).len(), 3 * file.config.vocab);
}

#[test]
fn real_model_prefill_matches_the_cpu() {
    let Some(path) = model_path() else { return };
    let Some(ctx) = context(None) else { return };
    let file = ModelFile::open(path).unwrap();
    let toks: Vec<u32> = (0..16u32).map(|i| (i * 2713 + 101) % 49152).collect();
    let o = GpuModelOptions {
        format: WeightFormat::Packed,
        max_len: Some(64),
        max_t: 16,
        path: None,
    };
    let t0 = Instant::now();
    let mut gpu = GpuModel::new(&ctx, &file, &o, None).unwrap();
    let upload = t0.elapsed();
    // The first run compiles the pipelines (GEMV and tiled variants).
    let t0 = Instant::now();
    head(&mut gpu, &toks);
    let first = t0.elapsed();
    gpu.truncate(0);
    let t0 = Instant::now();
    let got = head(&mut gpu, &toks);
    let prefill = t0.elapsed();
    let t0 = Instant::now();
    for &t in &toks[..4] {
        head(&mut gpu, &[t]);
    }
    let decode = t0.elapsed() / 4;
    let cpu = Transformer::new(file.weights().unwrap());
    let t0 = Instant::now();
    let want = cpu_logits(&cpu, &toks);
    let cpu_time = t0.elapsed();
    let (d, range) = diff(&got, &want);
    eprintln!(
        "real model, 16 tokens, packed: max |gpu − cpu| = {d:e}, logit range {range}, \
         relative {:e}; upload {upload:?}, first prefill (compiling) {first:?}, GPU prefill {prefill:?}, decode {decode:?}/token, \
         CPU forward {cpu_time:?}; plan:\n{}",
        d / range,
        gpu.memory_plan()
    );
    assert_logits_close("real model", &got, &want);
}

/// Decode speed of the two weight formats on the real model (prints; asserts only that
/// both produce logits). `cargo test --release --test gpu_model -- --ignored --nocapture`.
#[test]
#[ignore]
fn real_model_decode_timing() {
    let Some(path) = model_path() else { return };
    let Some(ctx) = context(None) else { return };
    let file = ModelFile::open(path).unwrap();
    let toks: Vec<u32> = (0..16u32).map(|i| (i * 2713 + 101) % 49152).collect();
    for format in [WeightFormat::F32, WeightFormat::Packed] {
        let o = GpuModelOptions {
            format,
            max_len: Some(64),
            max_t: 16,
            path: None,
        };
        let mut gpu = GpuModel::new(&ctx, &file, &o, None).unwrap();
        head(&mut gpu, &toks);
        gpu.truncate(0);
        let t0 = Instant::now();
        head(&mut gpu, &toks);
        let prefill = t0.elapsed();
        let t0 = Instant::now();
        for &t in &toks[..8] {
            assert_eq!(head(&mut gpu, &[t]).len(), file.config.vocab);
        }
        eprintln!(
            "{format:?}: weights {:.1} MiB, prefill 16 tokens {prefill:?}, decode {:?}/token",
            gpu.memory_plan().by_category()[0].1 as f64 / 1048576.0,
            t0.elapsed() / 8
        );
    }
}

/// A compressed-model file on the GPU: its quantized projections are read packed by the
/// kernels (and its sparse layer by the sparse kernels), giving the CPU reference's logits
/// on the weights the file holds.
#[test]
fn compressed_file_logits_match_the_cpu() {
    use edge_llm::compress::{file, policy};
    let Some(ctx) = context(None) else { return };
    let orig = tiny_file();
    let n = orig.config.n_layers;
    // Layer 0 at 3 bits dense, layer 1 at 50 % unstructured sparsity with int8 values.
    let mut p =
        policy::Policy::from_layers(&[0.0, 0.5], &[3, 8], policy::Allocation::Manual).unwrap();
    // Without calibration data: magnitude pruning and round-to-nearest.
    p.prune = policy::PruneMethod::Magnitude;
    p.quant = policy::QuantMethod::Rtn;
    let (tensors, _) =
        file::compress_model(&orig.weights().unwrap(), None, &p, &mut |_, _| {}).unwrap();
    let back =
        ModelFile::from_bytes(file::write(&orig.gguf, &orig.bytes, &p, &tensors).unwrap()).unwrap();
    assert_eq!(file::policy_of(&back.gguf, n).unwrap().as_ref(), Some(&p));
    let cpu = Transformer::new(back.weights().unwrap());
    let toks = tokens(12);
    let want = cpu_logits(&cpu, &toks);
    for f in [WeightFormat::Packed, WeightFormat::F32] {
        let mut gpu = GpuModel::new(&ctx, &back, &opts(f), None).unwrap();
        assert_logits_close(
            &format!("compressed file, {f:?}"),
            &head(&mut gpu, &toks),
            &want,
        );
    }
    // Packed, the 3-bit layer takes 3/32 of its f32 bytes plus scales.
    let packed = GpuModel::plan(&back, &opts(WeightFormat::Packed), None).unwrap();
    let dense = GpuModel::plan(&back, &opts(WeightFormat::F32), None).unwrap();
    let q = |plan: &edge_llm::engine::MemoryPlan| -> u64 {
        plan.entries
            .iter()
            .filter(|e| e.name.starts_with("blk.0.attn_q.weight"))
            .map(|e| e.bytes)
            .sum()
    };
    assert!(
        q(&packed) * 4 < q(&dense),
        "{} vs {}",
        q(&packed),
        q(&dense)
    );
}

/// The tiny model in every compressed format (tests/common: one policy has one sparse
/// pattern, so the file is assembled from three compressions; its stored policy is the
/// quantized one's).
fn mixed_sparse_file() -> ModelFile {
    common::mixed_sparse_file(&tiny_file())
}

/// Bytes the plan gives the projections (every buffer of `blk.*` but the norms).
fn projection_bytes(plan: &edge_llm::engine::MemoryPlan) -> u64 {
    plan.entries
        .iter()
        .filter(|e| e.name.starts_with("blk.") && !e.name.contains("_norm"))
        .map(|e| e.bytes)
        .sum()
}

/// Sparse projections of a compressed file are uploaded packed and multiplied by the sparse
/// kernels: the CPU reference's logits on the file's weights (prefill, then one-token
/// decodes), the exact plan, and a fraction of the f32 upload's bytes.
#[test]
fn sparse_file_is_read_packed_and_matches_the_cpu() {
    let Some(ctx) = context(None) else { return };
    let file = mixed_sparse_file();
    let cpu = Transformer::new(file.weights().unwrap());
    let toks = tokens(14);
    let want = cpu_logits(&cpu, &toks);
    let vocab = file.config.vocab;
    for f in [WeightFormat::Packed, WeightFormat::F32] {
        let mut gpu = GpuModel::new(&ctx, &file, &opts(f), None).unwrap();
        let mut got = head(&mut gpu, &toks[..12]);
        for &t in &toks[12..] {
            got.extend(head(&mut gpu, &[t]));
        }
        assert_eq!(got.len(), toks.len() * vocab);
        assert_logits_close(&format!("sparse file, {f:?}"), &got, &want);
        assert_eq!(
            gpu.memory_plan().total(),
            gpu.allocated_bytes(),
            "{f:?}\n{}",
            gpu.memory_plan()
        );
    }
    let packed = GpuModel::plan(&file, &opts(WeightFormat::Packed), None).unwrap();
    let dense = GpuModel::plan(&file, &opts(WeightFormat::F32), None).unwrap();
    // Planned in their own arrays: 5 projections 2:4 (i mod 3 = 0 of 14), 5 unstructured.
    let count = |end: &str| {
        packed
            .entries
            .iter()
            .filter(|e| e.name.ends_with(end))
            .count()
    };
    assert_eq!((count(" idx"), count(" masks")), (5, 5), "{packed:#?}");
    let (p, d) = (projection_bytes(&packed), projection_bytes(&dense));
    let (pw, dw) = (packed.by_category()[0].1, dense.by_category()[0].1);
    eprintln!(
        "sparse file plan: projections {p} bytes packed vs {d} f32 ({:.2}×); all weights {pw} vs {dw}",
        d as f64 / p as f64
    );
    // int8/int4 codes at ≤ 50 % density plus their index arrays: under a third of f32.
    assert!(3 * p < d, "projections: {p} packed vs {d} f32 bytes");
    assert!(pw < dw, "weights: {pw} packed vs {dw} f32 bytes");
}
