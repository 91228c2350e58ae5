//! Exit voting (EDGE-LLM.md §3): the rules on hand-made distributions where they disagree,
//! exit scoring and cached exit logits on the tiny model, the exits file beside the PEFT
//! pair, and `eval-mc`/`generate --vote` through the binary.

mod common;
use common::{assert_vote_report, run, EXITS};

use edge_llm::adapter::{
    export_exits, import_exits, import_peft, load_dir, save_dir, CONFIG_FILE, EXITS_FILE,
    WEIGHTS_FILE,
};
use edge_llm::data::McQuestion;
use edge_llm::eval::{
    self, eval_mc_vote, generate_voted, score_choices, voted_distribution, CpuLm, Lm, Readout,
    Sampling,
};
use edge_llm::model::tiny::{generate, TinySpec};
use edge_llm::model::{LlamaConfig, ModelFile};
use edge_llm::reference::{Lora, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use edge_llm::vote::{combine, fitted_leave_one_out, pick, pick_log, resolve, Vote};
use pollster::block_on;
use std::path::{Path, PathBuf};

/// Two f32 computations of the same summed log-likelihood (different association).
const SCORE_TOL: Tol<f64> = Tol::absolute(1e-4);
/// Cached vs uncached logits: |x−y| ≤ max(rel·(|x|+|y|), abs).
const CACHED_LOGIT_TOL: Tol = Tol::new(1e-4, 1e-4);
/// A rule's distribution against one written by hand: f32 rounding of a few divisions.
const PROB_TOL: Tol = Tol::absolute(1e-6);

// ---- The rules ----

/// Four exits, four candidates, and each rule picks a different one:
/// max → 1 (0.95 at exit 2), mean → 2 (steady 0.35–0.40), majority → 0 (exits 0 and 1),
/// last → 3.
fn disagreeing() -> Vec<Vec<f64>> {
    vec![
        vec![0.45, 0.05, 0.35, 0.15],
        vec![0.45, 0.05, 0.35, 0.15],
        vec![0.00, 0.95, 0.05, 0.00],
        vec![0.05, 0.00, 0.40, 0.55],
    ]
}

#[test]
fn rules_disagree_on_candidates() {
    let p = disagreeing();
    let log_p: Vec<Vec<f64>> = p
        .iter()
        .map(|r| r.iter().map(|x| x.ln()).collect())
        .collect();
    for (rule, want) in [
        (Vote::Max, 1),
        (Vote::Mean, 2),
        (Vote::Majority, 0),
        (Vote::Last, 3),
    ] {
        assert_eq!(pick(rule, &p).unwrap(), want, "{rule}");
        assert_eq!(pick_log(rule, &log_p).unwrap(), want, "{rule} (log)");
    }
}

#[test]
fn majority_ties_go_to_the_more_confident() {
    // Two votes each for 0 and 1; candidate 1's best probability (0.7) is higher.
    let p = vec![
        vec![0.6, 0.3, 0.1],
        vec![0.6, 0.3, 0.1],
        vec![0.2, 0.7, 0.1],
        vec![0.4, 0.5, 0.1],
    ];
    assert_eq!(pick(Vote::Majority, &p).unwrap(), 1);
    // Mirrored: now candidate 0 holds the highest probability.
    let p = vec![
        vec![0.8, 0.1, 0.1],
        vec![0.5, 0.4, 0.1],
        vec![0.2, 0.7, 0.1],
        vec![0.3, 0.6, 0.1],
    ];
    assert_eq!(pick(Vote::Majority, &p).unwrap(), 0);
}

#[test]
fn log_space_rules_do_not_underflow() {
    // exp() of these is 0 in f64: probability-space rules would see a tie.
    // max: cand 1 (−999.5 > −1000); mean: cand 0 (e^−1000·2 > e^−999.5 + e^−1002).
    let log_p = vec![vec![-1000.0, -1002.0], vec![-1000.0, -999.5]];
    assert_eq!(pick_log(Vote::Max, &log_p).unwrap(), 1);
    assert_eq!(pick_log(Vote::Mean, &log_p).unwrap(), 0);
    assert_eq!(pick_log(Vote::Last, &log_p).unwrap(), 1);
    assert!(pick_log(Vote::Max, &[]).is_err());
    assert!(pick_log(Vote::Max, &[vec![0.0], vec![0.0, 1.0]]).is_err());
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(PROB_TOL.close(*g, *w), "{what}: got {got:?}, want {want:?}");
    }
}

#[test]
fn rules_combine_distributions() {
    let d = vec![
        vec![0.7, 0.1, 0.1, 0.1],
        vec![0.1, 0.6, 0.2, 0.1],
        vec![0.1, 0.5, 0.1, 0.3],
    ];
    // max: [0.7, 0.6, 0.2, 0.3] / 1.8 → argmax 0.
    let max = combine(Vote::Max, &d).unwrap();
    assert_close(&max, &[0.7 / 1.8, 0.6 / 1.8, 0.2 / 1.8, 0.3 / 1.8], "max");
    // mean: [0.3, 0.4, 0.1333, 0.1667] → argmax 1.
    let mean = combine(Vote::Mean, &d).unwrap();
    assert_close(&mean, &[0.3, 0.4, 0.4 / 3.0, 0.5 / 3.0], "mean");
    // majority: exits vote 0, 1, 1 → a point mass on 1.
    assert_close(
        &combine(Vote::Majority, &d).unwrap(),
        &[0.0, 1.0, 0.0, 0.0],
        "majority",
    );
    assert_close(&combine(Vote::Last, &d).unwrap(), &d[2], "last");
    // Through the logits path: greedy temperature is 1, so `last` is the deepest softmax.
    let logits: Vec<Vec<f32>> = d
        .iter()
        .map(|r| r.iter().map(|x| x.ln() + 3.0).collect())
        .collect();
    let rows: Vec<&[f32]> = logits.iter().map(Vec::as_slice).collect();
    assert_close(
        &voted_distribution(&rows, Vote::Max, 0.0).unwrap(),
        &max,
        "max via logits",
    );
    // Temperature sharpens each exit before the vote: 0.5 squares and renormalises.
    let sharp = voted_distribution(&rows, Vote::Last, 0.5).unwrap();
    let s: f32 = d[2].iter().map(|x| x * x).sum();
    let want: Vec<f32> = d[2].iter().map(|x| x * x / s).collect();
    assert_close(&sharp, &want, "last at T 0.5");
}

#[test]
fn names_parse_and_serialize() {
    for r in Vote::ALL {
        assert_eq!(r.name().parse::<Vote>().unwrap(), r);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!("\"{}\"", r.name())
        );
    }
    assert_eq!("MEAN".parse::<Vote>().unwrap(), Vote::Mean);
    assert!("median".parse::<Vote>().is_err());
    assert_eq!(resolve(None, true).unwrap(), Some(Vote::Last));
    assert_eq!(resolve(Some(Vote::Last), true).unwrap(), Some(Vote::Last));
    assert_eq!(resolve(None, false).unwrap(), None);
    let e = resolve(Some(Vote::Mean), false).unwrap_err().to_string();
    assert!(e.contains("early exits"), "{e}");
}

#[test]
fn the_fitted_rule_weighs_exits_by_their_accuracy_on_the_other_questions() {
    // Log-likelihoods [exit][choice] for 3 choices: `sure(c)` puts the mass on choice c.
    let sure =
        |c: usize| -> Vec<f64> { (0..3).map(|i| if i == c { -0.1 } else { -5.0 }).collect() };
    // Exit 0 always wrong (picks answer + 1), exit 1 always right: the fitted rule follows
    // exit 1, whatever the order of the exits.
    let answers = [0usize, 1, 2, 0, 1];
    let good: Vec<Vec<Vec<f64>>> = answers
        .iter()
        .map(|&a| vec![sure((a + 1) % 3), sure(a)])
        .collect();
    assert_eq!(fitted_leave_one_out(&good, &answers).unwrap(), answers);
    let flipped: Vec<Vec<Vec<f64>>> = good
        .iter()
        .map(|q| vec![q[1].clone(), q[0].clone()])
        .collect();
    assert_eq!(fitted_leave_one_out(&flipped, &answers).unwrap(), answers);
    // Leave-one-out: exit 0 is right only on question 0 and exit 1 only on question 1, so
    // on question 0 the weights come from question 1 alone (exit 1 right, exit 0 wrong):
    // exit 1 decides, and is wrong there; a rule fitted on all questions would see both
    // exits equal. The same on question 1, mirrored.
    let answers = [0usize, 1];
    let scores = vec![vec![sure(0), sure(2)], vec![sure(2), sure(1)]];
    assert_eq!(fitted_leave_one_out(&scores, &answers).unwrap(), vec![2, 2]);
    // No exit better than chance (1/3) on the other questions: the last exit decides.
    let answers = [0usize, 0, 0];
    let scores: Vec<Vec<Vec<f64>>> = (0..3).map(|_| vec![sure(1), sure(2)]).collect();
    assert_eq!(
        fitted_leave_one_out(&scores, &answers).unwrap(),
        vec![2, 2, 2]
    );
    // Mismatched inputs are errors, not panics.
    assert!(fitted_leave_one_out(&scores, &[0]).is_err());
    assert!(fitted_leave_one_out(&[vec![sure(0)], vec![]], &[0, 0]).is_err());
}

// ---- The tiny model with exits ----

fn tiny_bytes() -> Vec<u8> {
    generate(&TinySpec {
        n_layers: 4,
        ..Default::default()
    })
    .unwrap()
}

fn random_lora(cfg: &LlamaConfig, seed: u64) -> Lora<f32> {
    common::random_lora(cfg, &EXITS, seed)
}

fn tiny_model(seed: u64) -> (ModelFile, Tokenizer, Transformer<f32>) {
    let file = ModelFile::from_bytes(tiny_bytes()).unwrap();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let mut m = Transformer::new(file.weights().unwrap());
    m.lora = Some(random_lora(&file.config, seed));
    (file, tok, m)
}

/// The first six of the shared questions (what these tests were written against).
fn questions() -> Vec<McQuestion> {
    common::mc_questions()[..6].to_vec()
}

#[test]
fn deepest_exit_with_zero_b_is_the_plain_model() {
    let (_, tok, mut m) = tiny_model(3);
    m.lora.as_mut().unwrap().exits[1].pair.b.fill(0.0);
    let mut differs = 0.0f64;
    for q in questions() {
        let plain = block_on(score_choices(&mut CpuLm::new(&m), &tok, &q, Readout::Head))
            .unwrap()
            .remove(0);
        let exits = block_on(score_choices(&mut CpuLm::new(&m), &tok, &q, Readout::Exits)).unwrap();
        assert_eq!(exits.len(), 2);
        for (a, b) in exits[1].iter().zip(&plain) {
            assert!(SCORE_TOL.close(*a, *b), "{:?} vs {plain:?}", exits[1]);
        }
        for (a, b) in exits[0].iter().zip(&plain) {
            differs = differs.max((a - b).abs());
        }
    }
    // The shallow exit is another prediction, not a copy of the deepest.
    assert!(
        differs > 1e-2,
        "exit after 2 matches the full model: {differs}"
    );

    // With its B nonzero, the deepest exit's adapter changes the scores.
    let (_, tok, m) = tiny_model(3);
    let q = &questions()[1];
    let plain = block_on(score_choices(&mut CpuLm::new(&m), &tok, q, Readout::Head))
        .unwrap()
        .remove(0);
    let exits = block_on(score_choices(&mut CpuLm::new(&m), &tok, q, Readout::Exits)).unwrap();
    let d = exits[1]
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d > 1e-3, "a nonzero exit adapter left the scores unchanged");
}

#[test]
fn cached_exit_logits_equal_uncached() {
    let (_, tok, m) = tiny_model(5);
    let tokens = tok
        .encode("the quick brown fox jumps over the dog")
        .unwrap();
    assert!(tokens.len() > 10);
    let full = m.exit_logits(&tokens, None);
    assert_eq!(full.len(), EXITS.len());
    let mut lm = CpuLm::new(&m);
    assert_eq!(lm.exits(), EXITS);
    let check = |lm: &mut CpuLm<&Transformer<f32>>, from: usize, parts: &[usize]| {
        lm.truncate(from);
        let mut got = vec![Vec::new(); EXITS.len()];
        let mut at = from;
        for &n in parts {
            for (g, e) in got
                .iter_mut()
                .zip(block_on(lm.append(&tokens[at..at + n], Readout::Exits)).unwrap())
            {
                g.extend(e);
            }
            at += n;
        }
        assert_eq!(at, tokens.len());
        let v = m.w.config.vocab;
        for (k, (g, f)) in got.iter().zip(&full).enumerate() {
            let f = &f[from * v..];
            assert_eq!(g.len(), f.len());
            let bad = g
                .iter()
                .zip(f)
                .filter(|&(&x, &y)| !CACHED_LOGIT_TOL.close(x, y))
                .count();
            assert_eq!(bad, 0, "exit {k} from {from} in parts {parts:?}");
        }
    };
    let n = tokens.len();
    check(&mut lm, 0, &[5, 1, n - 6]);
    // Truncating the cache and appending again gives the same logits.
    check(&mut lm, 5, &[n - 5]);
    check(&mut lm, 3, &vec![1; n - 3]);
    // Without exits there is nothing to vote.
    let mut plain = m.clone();
    plain.lora.as_mut().unwrap().exits.clear();
    assert!(plain.exit_logits(&tokens, None).is_empty());
    assert!(block_on(CpuLm::new(&plain).append(&tokens, Readout::Exits)).is_err());
}

#[test]
fn eval_reports_every_exit_and_rule() {
    let (_, tok, m) = tiny_model(7);
    let qs = questions();
    let mut calls = 0;
    let r = block_on(eval_mc_vote(
        &mut CpuLm::new(&m),
        &tok,
        &qs,
        Vote::Mean,
        &mut |done, total, _| {
            calls += 1;
            assert_eq!((done, total), (calls, qs.len()));
        },
    ))
    .unwrap();
    assert_eq!(
        (r.n, r.rule, r.scores.len()),
        (qs.len(), Vote::Mean, qs.len())
    );
    let afters: Vec<usize> = r.exits.iter().map(|e| e.after).collect();
    assert_eq!(afters, EXITS);
    let rules: Vec<Vote> = r.votes.iter().map(|v| v.rule).collect();
    assert_eq!(rules, Vote::ALL);
    // Each exit's count is its own argmax over its scores; each rule's, the rule's pick.
    for (k, e) in r.exits.iter().enumerate() {
        let c = qs
            .iter()
            .zip(&r.scores)
            .filter(|(q, s)| {
                let row = &s[k];
                let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                best == q.answer
            })
            .count();
        assert_eq!(e.correct, c, "exit after {}", e.after);
        assert_eq!(e.accuracy, c as f64 / qs.len() as f64);
    }
    for v in &r.votes {
        let c = qs
            .iter()
            .zip(&r.scores)
            .filter(|(q, s)| pick_log(v.rule, s).unwrap() == q.answer)
            .count();
        assert_eq!(v.correct, c, "{}", v.rule);
    }
    let mean = &r.votes[1];
    assert_eq!((r.correct, r.accuracy), (mean.correct, mean.accuracy));
    // Last equals the deepest exit alone.
    assert_eq!(r.votes[3].correct, r.exits[1].correct);
    assert!(block_on(eval_mc_vote(
        &mut CpuLm::new(&m),
        &tok,
        &[],
        Vote::Max,
        &mut |_, _, _| {}
    ))
    .is_err());
}

#[test]
fn voted_generation() {
    let (_, tok, mut m) = tiny_model(9);
    let prompt = tok.encode("the cat").unwrap();
    let greedy = Sampling::default();
    // Last with the deepest exit's B = 0 (after the last block) is the plain model.
    m.lora.as_mut().unwrap().exits[1].pair.b.fill(0.0);
    let plain = block_on(eval::generate(
        &mut CpuLm::new(&m),
        &prompt,
        12,
        &greedy,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    let mut lm = CpuLm::new(&m);
    let last = block_on(generate_voted(
        &mut lm,
        &prompt,
        12,
        &greedy,
        Vote::Last,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(last, plain);
    // Max under sampling: deterministic by seed, streamed as returned.
    let s = Sampling {
        temperature: 0.8,
        top_p: 0.9,
        seed: 4,
    };
    let mut streamed = Vec::new();
    let a = block_on(generate_voted(
        &mut lm,
        &prompt,
        12,
        &s,
        Vote::Max,
        &[],
        &mut |t| streamed.push(t),
    ))
    .unwrap();
    let b = block_on(generate_voted(
        &mut lm,
        &prompt,
        12,
        &s,
        Vote::Max,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!((a.len(), &a), (12, &b));
    assert_eq!(streamed, a);
    // Majority is a point mass: sampling gives the greedy tokens.
    let maj_g = block_on(generate_voted(
        &mut lm,
        &prompt,
        8,
        &greedy,
        Vote::Majority,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    let maj_s = block_on(generate_voted(
        &mut lm,
        &prompt,
        8,
        &s,
        Vote::Majority,
        &[],
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(maj_g, maj_s);
    // A stop token ends generation before it is emitted.
    let stop = [last[2]];
    let cut = block_on(generate_voted(
        &mut lm,
        &prompt,
        12,
        &greedy,
        Vote::Last,
        &stop,
        &mut |_| {},
    ))
    .unwrap();
    let first_stop = last.iter().position(|t| *t == last[2]).unwrap();
    assert_eq!(cut, last[..first_stop]);
}

// ---- The exits file ----

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-llm-vote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn exits_round_trip_beside_peft() {
    let (file, _, m) = tiny_model(11);
    let cfg = &file.config;
    let lora = m.lora.clone().unwrap();
    let dir = scratch("roundtrip");
    save_dir(&dir, &lora, cfg, "tiny").unwrap();
    assert!(dir.join(EXITS_FILE).exists());
    assert_eq!(load_dir(&dir, cfg).unwrap(), lora);
    // The PEFT pair alone is exactly the adapter without exits.
    let peft = import_peft(
        &std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
        &std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap(),
        cfg,
    )
    .unwrap();
    let mut no_exits = lora.clone();
    no_exits.exits.clear();
    assert_eq!(peft, no_exits);
    // Saving an adapter without exits removes a stale exits file.
    save_dir(&dir, &no_exits, cfg, "tiny").unwrap();
    assert!(!dir.join(EXITS_FILE).exists());
    assert_eq!(load_dir(&dir, cfg).unwrap(), no_exits);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn exits_bytes(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                s.clone(),
                vec![0u8; 4 * s.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, d)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn hostile_exits_are_refused() {
    let (file, _, m) = tiny_model(13);
    let cfg = &file.config;
    let (r, d) = (4, cfg.hidden);
    let good = exits_bytes(&[
        ("exit.2.lora_A.weight", vec![r, d]),
        ("exit.2.lora_B.weight", vec![d, r]),
    ]);
    let ok = import_exits(&good, r, cfg).unwrap();
    assert_eq!((ok.len(), ok[0].after, ok[0].pair.rank), (1, 2, r));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            exits_bytes(&[
                ("exit.5.lora_A.weight", vec![r, d]),
                ("exit.5.lora_B.weight", vec![d, r]),
            ]),
            "after block 5",
        ),
        (
            exits_bytes(&[
                ("exit.0.lora_A.weight", vec![r, d]),
                ("exit.0.lora_B.weight", vec![d, r]),
            ]),
            "after block 0",
        ),
        (
            exits_bytes(&[("exit.2.lora_A.weight", vec![r, d])]),
            "missing tensor exit.2.lora_B.weight",
        ),
        (
            exits_bytes(&[
                ("exit.2.lora_A.weight", vec![r + 1, d]),
                ("exit.2.lora_B.weight", vec![d, r + 1]),
            ]),
            "has shape [5, 64], expected [4, 64]",
        ),
        (
            exits_bytes(&[
                ("exit.2.lora_A.weight", vec![r, d]),
                ("exit.2.lora_B.weight", vec![d, r]),
                ("lm_head.weight", vec![d, r]),
            ]),
            "unexpected tensor lm_head.weight",
        ),
        (
            exits_bytes(&[
                ("exit.02.lora_A.weight", vec![r, d]),
                ("exit.02.lora_B.weight", vec![d, r]),
            ]),
            "unexpected tensor exit.02",
        ),
        (exits_bytes(&[]), "no exits"),
        (b"not safetensors".to_vec(), "early exits"),
    ];
    for (bytes, want) in cases {
        let e = import_exits(&bytes, r, cfg).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains(EXITS_FILE),
            "{e} (want {want})"
        );
    }
    // Export refuses exits out of order or out of range.
    let mut lora = m.lora.clone().unwrap();
    lora.exits.reverse();
    let e = export_exits(&lora, cfg).unwrap_err().to_string();
    assert!(e.contains("strictly ascending"), "{e}");
    let mut lora = m.lora.clone().unwrap();
    lora.exits[1].after = 5;
    assert!(export_exits(&lora, cfg).is_err());
    // A bad exits file fails load_dir with the reason, not silently.
    let dir = scratch("hostile");
    save_dir(&dir, m.lora.as_ref().unwrap(), cfg, "tiny").unwrap();
    std::fs::write(
        dir.join(EXITS_FILE),
        exits_bytes(&[("exit.2.lora_A.weight", vec![r, d])]),
    )
    .unwrap();
    let e = load_dir(&dir, cfg).unwrap_err().to_string();
    assert!(e.contains("missing tensor"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- Through the binary ----

fn write_questions(path: &Path) {
    let lines: Vec<String> = questions()
        .iter()
        .map(|q| {
            serde_json::json!({"question": q.question, "choices": q.choices, "answer": q.answer})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn cli_eval_mc_and_generate_vote() {
    let dir = scratch("cli");
    let model = dir.join("tiny.gguf");
    let (code, _, out) = run(&[
        "make-tiny",
        "--out",
        model.to_str().unwrap(),
        "--layers",
        "4",
    ]);
    assert_eq!(code, 0, "{out}");
    let file = ModelFile::open(&model).unwrap();
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let mut m = Transformer::new(file.weights().unwrap());
    m.lora = Some(random_lora(&file.config, 17));
    let adapter = dir.join("adapter");
    save_dir(&adapter, m.lora.as_ref().unwrap(), &file.config, "tiny").unwrap();
    let data = dir.join("mc.jsonl");
    write_questions(&data);
    let qs = questions();
    let (model_s, adapter_s, data_s) = (
        model.to_str().unwrap(),
        adapter.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    let base = [
        "eval-mc", "--model", model_s, "--data", data_s, "--device", "cpu",
    ];

    let want = block_on(eval_mc_vote(
        &mut CpuLm::new(&m),
        &tok,
        &qs,
        Vote::Max,
        &mut |_, _, _| {},
    ))
    .unwrap();
    for (rule, extra) in [(Vote::Last, None), (Vote::Majority, Some("majority"))] {
        let mut args = base.to_vec();
        args.extend(["--adapter", adapter_s, "--json"]);
        if let Some(r) = extra {
            args.extend(["--vote", r]);
        }
        let (code, obj, out) = run(&args);
        assert_eq!(code, 0, "{out}");
        let obj = obj.unwrap();
        assert_eq!(obj["vote"], rule.name(), "{obj}");
        assert_eq!(obj["n"], qs.len());
        assert_vote_report(&obj, &want);
        assert_eq!(want.votes.len(), 4);
        let chosen = want.votes.iter().find(|v| v.rule == rule).unwrap();
        assert_eq!(obj["correct"].as_u64().unwrap(), chosen.correct as u64);
        assert_eq!(obj["accuracy"].as_f64().unwrap(), chosen.accuracy);
    }
    // The text report lists every exit and rule.
    let mut args = base.to_vec();
    args.extend(["--adapter", adapter_s]);
    let (code, _, out) = run(&args);
    assert_eq!(code, 0, "{out}");
    for s in [
        "exit after block 2",
        "exit after block 4",
        "vote majority",
        "vote fitted",
        "by vote last",
    ] {
        assert!(out.contains(s), "{s} not in {out}");
    }
    // --vote without exits is a clear error; a bad rule is a usage error (the GPU's
    // voting is in tests/gpu_vote.rs).
    let mut args = base.to_vec();
    args.extend(["--vote", "max"]);
    let (code, _, out) = run(&args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needs an adapter with early exits"), "{out}");
    let mut args = base.to_vec();
    args.extend(["--adapter", adapter_s, "--vote", "median"]);
    assert_eq!(run(&args).0, 2);

    // generate --vote: the same tokens as the library's voted generation.
    let prompt = "the cat";
    let ids = tok.encode(prompt).unwrap();
    let stop = tok.stop_tokens();
    for (rule, flag) in [(Vote::Last, None), (Vote::Max, Some("max"))] {
        let want = block_on(generate_voted(
            &mut CpuLm::new(&m),
            &ids,
            10,
            &Sampling::default(),
            rule,
            &stop,
            &mut |_| {},
        ))
        .unwrap();
        let mut args = vec![
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
            "cpu",
            "--json",
        ];
        if let Some(f) = flag {
            args.extend(["--vote", f]);
        }
        let (code, obj, out) = run(&args);
        assert_eq!(code, 0, "{out}");
        let obj = obj.unwrap();
        assert_eq!(obj["text"], tok.decode(&want).unwrap(), "{rule}");
        assert_eq!(obj["tokens"].as_u64().unwrap(), want.len() as u64);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
