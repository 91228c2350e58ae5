//! Exit voting on the GPU model (src/engine/gpu_model.rs) against the CPU reference: every
//! exit's logits (f32, packed and a compressed file; whole, chunked and through the KV
//! cache), the plain head after an exit pass, `set_lora`, the exact memory plan, voted
//! accuracy and voted generation through the shared `eval` functions (blocking and async),
//! and `edge-llm eval-mc`/`generate --vote --device gpu`.
//!
//! Needs a Vulkan adapter (lavapipe is enough). Without one the tests fail, unless
//! EDGE_LLM_ALLOW_NO_GPU=1 (then they note and pass).
#![cfg(not(target_arch = "wasm32"))]

mod common;
use common::{
    assert_logits_close, assert_vote_report, context, mc_questions as questions, random_lora, run,
    tiny_file_with_layers, tokens,
};

use edge_llm::adapter::save_dir;
use edge_llm::engine::{GpuModel, GpuModelOptions, WeightFormat};
use edge_llm::eval::{self, CpuLm, Lm, Readout, Sampling};
use edge_llm::model::ModelFile;
use edge_llm::reference::{Lora, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use edge_llm::vote::Vote;
use pollster::block_on;
use std::path::PathBuf;
use std::time::Instant;

/// Summed log-likelihoods of a few tokens: a few logit tolerances each.
const SCORE_TOL: Tol<f64> = Tol::absolute(1e-2);
/// Blocks of the tiny model.
const LAYERS: usize = 4;

fn tiny_file() -> ModelFile {
    tiny_file_with_layers(LAYERS)
}

fn opts(format: WeightFormat, max_t: usize) -> GpuModelOptions {
    GpuModelOptions {
        format,
        max_len: Some(64),
        max_t,
        path: None,
    }
}

fn adapted(file: &ModelFile, lora: &Lora<f32>) -> Transformer<f32> {
    let mut m = Transformer::new(file.weights().unwrap());
    m.lora = Some(lora.clone());
    m
}

/// Every exit's logits of `toks` appended in `parts` (token counts) through the cache.
fn gpu_exits(gpu: &mut GpuModel, toks: &[u32], parts: &[usize]) -> Vec<Vec<f32>> {
    gpu.truncate(0);
    let mut out = vec![Vec::new(); gpu.exits().len()];
    let mut at = 0;
    for &n in parts {
        let got = pollster::block_on(gpu.append_exits_async(&toks[at..at + n])).unwrap();
        for (o, g) in out.iter_mut().zip(got) {
            o.extend(g);
        }
        at += n;
    }
    assert_eq!(at, toks.len());
    out
}

#[test]
fn exit_logits_match_the_cpu() {
    let Some(ctx) = context(None) else { return };
    let plain = tiny_file();
    let sparse = common::mixed_sparse_file(&plain);
    let toks = tokens(13);
    let n = toks.len();
    let mut checked = 0;
    // Exits short of the last block (blocks 4.. not run) and at it.
    for (f, exits) in [(&plain, [1, 3]), (&plain, [2, 4]), (&sparse, [1, 3])] {
        let lora = random_lora(&f.config, &exits, 5);
        let cpu = adapted(f, &lora);
        let want = cpu.exit_logits(&toks, None);
        assert_eq!(want.len(), exits.len());
        // The exit adapters matter: with B = 0 each exit's logits move.
        let mut zero_b = lora.clone();
        zero_b.exits.iter_mut().for_each(|e| e.pair.b.fill(0.0));
        for (k, (a, b)) in want
            .iter()
            .zip(adapted(f, &zero_b).exit_logits(&toks, None))
            .enumerate()
        {
            let moved = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                moved > 1e-2,
                "exit {k}'s adapter barely moves its logits ({moved})"
            );
        }
        for format in [WeightFormat::F32, WeightFormat::Packed] {
            // max_t 16: exit chunks of 8 rows; max_t 3: of 1 row (3 / 2 exits).
            for (max_t, parts) in [(16, vec![n]), (16, vec![4, 7, 1, 1]), (3, vec![5, 8])] {
                let mut gpu = GpuModel::new(&ctx, f, &opts(format, max_t), Some(&lora)).unwrap();
                assert_eq!(gpu.exits(), exits.to_vec());
                let got = gpu_exits(&mut gpu, &toks, &parts);
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!(
                        "exit {k} after {}, {} layers, {format:?}, max_t {max_t}, parts {parts:?}",
                        exits[k], f.config.n_layers
                    );
                    assert_logits_close(&what, g, w);
                }
                assert_eq!(gpu.memory_plan().total(), gpu.allocated_bytes());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

/// An exit pass short of the last block leaves the deeper blocks' cache unfilled: a plain
/// append is refused until truncated back, then matches the CPU. With an exit at the last
/// block every block is filled and the plain head continues from it.
#[test]
fn plain_head_after_an_exit_pass() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let toks = tokens(9);
    let vocab = file.config.vocab;
    for (exits, continues) in [([1, 3], false), ([2, 4], true)] {
        let lora = random_lora(&file.config, &exits, 9);
        let want = block_on(CpuLm::new(&adapted(&file, &lora)).append(&toks, Readout::Head))
            .unwrap()
            .remove(0);
        let mut gpu =
            GpuModel::new(&ctx, &file, &opts(WeightFormat::Packed, 16), Some(&lora)).unwrap();
        pollster::block_on(gpu.append_exits_async(&toks[..5])).unwrap();
        let next = pollster::block_on(gpu.append_async(&toks[5..]));
        if continues {
            assert_logits_close(
                "plain head after exits to the last block",
                &next.unwrap(),
                &want[5 * vocab..],
            );
        } else {
            let e = next.unwrap_err().to_string();
            assert!(e.contains("truncate to 0"), "{e}");
            gpu.truncate(0);
            let got = pollster::block_on(gpu.append_async(&toks)).unwrap();
            assert_logits_close("plain head after truncating", &got, &want);
        }
    }
}

#[test]
fn set_lora_updates_the_exits() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let toks = tokens(7);
    let lora = random_lora(&file.config, &[1, 3], 3);
    let mut gpu = GpuModel::new(&ctx, &file, &opts(WeightFormat::F32, 16), Some(&lora)).unwrap();
    let other = random_lora(&file.config, &[1, 3], 4);
    gpu.set_lora(&other).unwrap();
    let want = adapted(&file, &other).exit_logits(&toks, None);
    for (k, (g, w)) in gpu_exits(&mut gpu, &toks, &[7])
        .iter()
        .zip(&want)
        .enumerate()
    {
        assert_logits_close(&format!("exit {k} after set_lora"), g, w);
    }
    let moved = random_lora(&file.config, &[2, 3], 4);
    let e = gpu.set_lora(&moved).unwrap_err().to_string();
    assert!(e.contains("exits after blocks [2, 3]"), "{e}");
}

#[test]
fn memory_plan_with_exits_is_exact() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    for exits in [&[1usize, 3][..], &[1, 2, 3, 4]] {
        let lora = random_lora(&file.config, exits, 1);
        for format in [WeightFormat::F32, WeightFormat::Packed] {
            // max_t 2 with 4 exits: one row per chunk, four rows of readback.
            for max_t in [16, 2] {
                let o = opts(format, max_t);
                let plan = GpuModel::plan(&file, &o, Some(&lora)).unwrap();
                let gpu = GpuModel::new(&ctx, &file, &o, Some(&lora)).unwrap();
                assert_eq!(plan.total(), gpu.allocated_bytes(), "{format:?}\n{plan}");
                let names: Vec<&str> = plan.entries.iter().map(|e| e.name.as_str()).collect();
                assert!(names.contains(&"exit output"), "{names:?}");
                let last = format!("exit {} adapter B", exits.len() - 1);
                assert!(names.contains(&last.as_str()), "{names:?}");
                let readback = plan.entries.iter().find(|e| e.name == "logits readback");
                let rows = max_t.max(exits.len());
                assert_eq!(
                    readback.map(|e| e.bytes),
                    Some((rows * file.config.vocab * 4) as u64)
                );
            }
        }
        // Without exits nothing is added.
        let mut no_exits = lora.clone();
        no_exits.exits.clear();
        let o = opts(WeightFormat::Packed, 16);
        let with = GpuModel::plan(&file, &o, Some(&lora)).unwrap().total();
        let without = GpuModel::plan(&file, &o, Some(&no_exits)).unwrap().total();
        let d = file.config.hidden as u64;
        let extra = exits.len() as u64 * 2 * 4 * d * 4 + 16 * d * 4;
        assert_eq!(with - without, extra);
    }
}

/// Voted accuracy and voted generation: the same scoring and voting code on both devices
/// gives the same counts and choices, through the blocking wrappers and the async
/// functions the page awaits.
#[test]
fn voting_on_the_gpu_matches_the_cpu() {
    let Some(ctx) = context(None) else { return };
    let file = tiny_file();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let qs = questions();
    let prompt = tok.encode("the cat sat").unwrap();
    for exits in [[1, 3], [2, 4]] {
        let lora = random_lora(&file.config, &exits, 11);
        let m = adapted(&file, &lora);
        let t0 = Instant::now();
        let want = block_on(eval::eval_mc_vote(
            &mut CpuLm::new(&m),
            &tok,
            &qs,
            Vote::Max,
            &mut |_, _, _| {},
        ))
        .unwrap();
        let cpu_s = t0.elapsed().as_secs_f64();
        for format in [WeightFormat::F32, WeightFormat::Packed] {
            let mut gpu = GpuModel::new(&ctx, &file, &opts(format, 16), Some(&lora)).unwrap();
            let t0 = Instant::now();
            let got = block_on(eval::eval_mc_vote(
                &mut gpu,
                &tok,
                &qs,
                Vote::Max,
                &mut |_, _, _| {},
            ))
            .unwrap();
            eprintln!(
                "exits {exits:?} {format:?}: {} questions, CPU {cpu_s:.2} s, GPU {:.2} s",
                qs.len(),
                t0.elapsed().as_secs_f64()
            );
            let what = format!("exits {exits:?}, {format:?}");
            let per_exit = |r: &eval::McVoteResult| -> Vec<(usize, usize)> {
                r.exits.iter().map(|e| (e.after, e.correct)).collect()
            };
            let per_rule = |r: &eval::McVoteResult| -> Vec<(Vote, usize)> {
                r.votes.iter().map(|v| (v.rule, v.correct)).collect()
            };
            assert_eq!(per_exit(&got), per_exit(&want), "{what}");
            assert_eq!(per_rule(&got), per_rule(&want), "{what}");
            assert_eq!(got.predictions, want.predictions, "{what}");
            assert_eq!(
                (got.correct, got.n, got.rule),
                (want.correct, want.n, want.rule)
            );
            for (gq, wq) in got
                .scores
                .iter()
                .flatten()
                .zip(want.scores.iter().flatten())
            {
                for (g, w) in gq.iter().zip(wq) {
                    assert!(SCORE_TOL.close_to(*g, *w), "{what}: score {g} vs {w}");
                }
            }
            // The async body the page awaits: the same result.
            let again = pollster::block_on(eval::eval_mc_vote(
                &mut gpu,
                &tok,
                &qs,
                Vote::Majority,
                &mut |_, _, _| {},
            ))
            .unwrap();
            assert_eq!(per_rule(&again), per_rule(&want), "{what} (async)");
            // Greedy voted generation: the same tokens, each rule.
            for rule in [Vote::Max, Vote::Mean, Vote::Last] {
                let s = Sampling::default();
                let w = block_on(eval::generate_voted(
                    &mut CpuLm::new(&m),
                    &prompt,
                    10,
                    &s,
                    rule,
                    &[],
                    &mut |_| {},
                ))
                .unwrap();
                let g = pollster::block_on(eval::generate_voted(
                    &mut gpu,
                    &prompt,
                    10,
                    &s,
                    rule,
                    &[],
                    &mut |_| {},
                ))
                .unwrap();
                assert_eq!(g, w, "{what}, generation by {rule}");
            }
        }
    }
    // A GPU model without exits has nothing to vote over.
    let mut plain = GpuModel::new(&ctx, &file, &opts(WeightFormat::F32, 16), None).unwrap();
    let e = block_on(eval::eval_mc_vote(
        &mut plain,
        &tok,
        &qs,
        Vote::Max,
        &mut |_, _, _| {},
    ))
    .unwrap_err();
    assert!(e.to_string().contains("early exits"), "{e}");
    assert!(Lm::exits(&plain).is_empty());
}

/// `eval-mc --vote` and `generate --vote` with `--device gpu`: the CPU library's counts
/// and tokens.
#[test]
fn cli_votes_on_the_gpu() {
    if context(None).is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpu_vote_cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = tiny_file();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, &file.bytes).unwrap();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let lora = random_lora(&file.config, &[1, 3], 17);
    let m = adapted(&file, &lora);
    let adapter = dir.join("adapter");
    save_dir(&adapter, &lora, &file.config, "tiny").unwrap();
    let data = dir.join("mc.jsonl");
    let lines: Vec<String> = questions()
        .iter()
        .map(|q| {
            serde_json::json!({"question": q.question, "choices": q.choices, "answer": q.answer})
                .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let (model_s, adapter_s, data_s) = (
        model.to_str().unwrap(),
        adapter.to_str().unwrap(),
        data.to_str().unwrap(),
    );

    let qs = questions();
    let want = block_on(eval::eval_mc_vote(
        &mut CpuLm::new(&m),
        &tok,
        &qs,
        Vote::Mean,
        &mut |_, _, _| {},
    ))
    .unwrap();
    let (code, obj, out) = run(&[
        "eval-mc",
        "--model",
        model_s,
        "--adapter",
        adapter_s,
        "--data",
        data_s,
        "--vote",
        "mean",
        "--device",
        "gpu",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("device: GPU"), "{out}");
    let obj = obj.unwrap();
    assert_eq!(obj["vote"], "mean");
    assert_vote_report(&obj, &want);
    let preds: Vec<u64> = obj["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let want_preds: Vec<u64> = want.predictions.iter().map(|&p| p as u64).collect();
    assert_eq!(preds, want_preds);

    let prompt = "the cat";
    let ids = tok.encode(prompt).unwrap();
    let stop = tok.stop_tokens();
    let want = block_on(eval::generate_voted(
        &mut CpuLm::new(&m),
        &ids,
        10,
        &Sampling::default(),
        edge_llm::vote::DEFAULT,
        &stop,
        &mut |_| {},
    ))
    .unwrap();
    let (code, obj, out) = run(&[
        "generate",
        "--model",
        model_s,
        "--adapter",
        adapter_s,
        "--prompt",
        prompt,
        "--max-tokens",
        "10",
        "--device",
        "gpu",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("exit voting: last"), "{out}");
    assert_eq!(obj.unwrap()["text"], tok.decode(&want).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
