//! The training core on the tiny model: data masks and packing, split and schedule,
//! that training lowers the loss, validation, exact resume, and early stopping.

use edge_llm::data::{Dataset, Instruct, McQuestion};
use edge_llm::model::tiny::{generate, TinySpec};
use edge_llm::model::{ModelFile, Weights};
use edge_llm::reference::optim::AdamW;
use edge_llm::reference::LoraConfig;
use edge_llm::tokenizer::Tokenizer;
use edge_llm::train::examples::{make_examples, pack, split};
use edge_llm::train::{
    prepare, Backend, CpuBackend, DataConfig, DataStats, Decay, LossSum, LrSchedule, ParamState,
    Prepared, Row, StepReport, Stop, TrainConfig, TrainState, Trainer,
};
use pollster::block_on;

fn tiny() -> (Tokenizer, Weights<f32>) {
    let mf = ModelFile::from_bytes(generate(&TinySpec::default()).unwrap()).unwrap();
    (
        Tokenizer::from_gguf(&mf.gguf).unwrap(),
        mf.weights().unwrap(),
    )
}

/// In the tiny vocabulary a byte without a merge is id 3 + byte; EOS is 2.
fn b(c: char) -> u32 {
    3 + c as u32
}

fn no_val(seq_len: usize) -> DataConfig {
    DataConfig {
        seq_len,
        val_fraction: 0.0,
        seed: 0,
    }
}

#[test]
fn instruction_masks_cover_the_response_and_eos() {
    let (tok, _) = tiny();
    assert_eq!(tok.eos, Some(2));
    let ds = Dataset::Instruct(vec![Instruct {
        prompt: "Q:".into(),
        response: "xy".into(),
    }]);
    let p = prepare(&ds, &tok, &no_val(8)).unwrap();
    let want = Row {
        tokens: vec![b('Q'), b(':'), b('x'), b('y')],
        targets: vec![None, Some(b('x')), Some(b('y')), Some(2)],
    };
    assert_eq!(p.train, vec![want]);

    // Two examples share a row; the second one's first token is not predicted from the first.
    let two = Dataset::Instruct(vec![
        Instruct {
            prompt: "a".into(),
            response: "b".into(),
        },
        Instruct {
            prompt: "c".into(),
            response: "d".into(),
        },
    ]);
    let p = prepare(&two, &tok, &no_val(8)).unwrap();
    let want = Row {
        tokens: vec![b('a'), b('b'), 2, b('c'), b('d')],
        targets: vec![Some(b('b')), Some(2), None, Some(b('d')), Some(2)],
    };
    assert_eq!(p.train, vec![want]);
    // With room for one example per row they go to separate rows.
    assert_eq!(prepare(&two, &tok, &no_val(3)).unwrap().train.len(), 2);
}

#[test]
fn multiple_choice_masks_cover_the_right_answer_only() {
    let (tok, _) = tiny();
    let q = McQuestion {
        question: "1+1?".into(),
        choices: vec!["3".into(), "2".into()],
        answer: 1,
        format: Default::default(),
    };
    let ctx = tok.encode(&q.context()).unwrap();
    let mut stats = DataStats::default();
    let ex = make_examples(&Dataset::MultipleChoice(vec![q]), &tok, 64, &mut stats).unwrap();
    assert_eq!(ex.len(), 1);
    let n = ctx.len();
    // " 2" is the space then the digit (digits are split on their own): Ġ = 3 + 32.
    assert_eq!(&ex[0].tokens[n..], &[b(' '), b('2')]);
    assert_eq!(&ex[0].tokens[..n], &ctx[..]);
    let mut want_mask = vec![false; n];
    want_mask.extend([true, true]);
    assert_eq!(ex[0].mask, want_mask);
}

#[test]
fn text_is_chunked_so_every_token_but_the_first_is_a_target_once() {
    let (tok, _) = tiny();
    let ds = Dataset::Text("zbcdefg".into());
    let p = prepare(&ds, &tok, &no_val(3)).unwrap();
    let ids: Vec<u32> = "zbcdefg".chars().map(b).collect();
    assert_eq!(
        p.train,
        vec![
            Row {
                tokens: ids[0..3].to_vec(),
                targets: ids[1..4].iter().map(|&t| Some(t)).collect(),
            },
            Row {
                tokens: ids[3..6].to_vec(),
                targets: ids[4..7].iter().map(|&t| Some(t)).collect(),
            },
        ]
    );
    assert_eq!(p.stats.train_targets, 6);
}

#[test]
fn long_examples_are_truncated_and_reported() {
    let (tok, _) = tiny();
    let ds = Dataset::Instruct(vec![
        Instruct {
            prompt: "zbcdefghij".into(),
            response: "k".into(),
        },
        Instruct {
            prompt: "zb".into(),
            response: "zbcdefgh".into(),
        },
    ]);
    let p = prepare(&ds, &tok, &no_val(4)).unwrap();
    assert_eq!((p.stats.truncated, p.stats.dropped), (2, 1));
    assert_eq!(
        p.train,
        vec![Row {
            tokens: vec![b('z'), b('b'), b('z'), b('b')],
            targets: vec![None, Some(b('z')), Some(b('b')), Some(b('c'))],
        }]
    );
}

fn instruct_set(n: usize) -> Dataset {
    Dataset::Instruct(
        (0..n)
            .map(|i| Instruct {
                prompt: format!("q{i}"),
                response: format!("r{}", i * 7),
            })
            .collect(),
    )
}

#[test]
fn split_and_packing_are_deterministic_for_a_seed() {
    let (tok, _) = tiny();
    let ds = instruct_set(20);
    let cfg = |seed| DataConfig {
        seq_len: 8,
        val_fraction: 0.1,
        seed,
    };
    let a = prepare(&ds, &tok, &cfg(7)).unwrap();
    let again = prepare(&ds, &tok, &cfg(7)).unwrap();
    assert_eq!((&a.train, &a.val), (&again.train, &again.val));
    assert_eq!((a.stats.train_examples, a.stats.val_examples), (18, 2));
    let differs = (0..5).any(|s| prepare(&ds, &tok, &cfg(100 + s)).unwrap().val != a.val);
    assert!(differs, "the split does not depend on the seed");

    // At least one validation example when there are two, none when there is one.
    let mut stats = DataStats::default();
    let ex = make_examples(&instruct_set(2), &tok, 8, &mut stats).unwrap();
    let (t, v) = split(ex.clone(), 0.1, 3);
    assert_eq!((t.len(), v.len()), (1, 1));
    let (t, v) = split(ex[..1].to_vec(), 0.1, 3);
    assert_eq!((t.len(), v.len()), (1, 0));
    assert_eq!(pack(&t, 8).len(), 1);
}

#[test]
fn lr_schedule_at_hand_picked_steps() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    let s = LrSchedule::new(1e-3, 0.1, 100, Decay::Cosine);
    assert_eq!(s.warmup, 10);
    assert_eq!(s.lr(0), 0.0);
    assert!(close(s.lr(5), 5e-4));
    assert!(close(s.lr(10), 1e-3));
    assert!(close(s.lr(55), 5e-4), "{}", s.lr(55)); // halfway through the cosine
    assert!(close(s.lr(100), 0.0));
    let c = LrSchedule::new(4e-4, 0.03, 30, Decay::Constant);
    assert_eq!(c.warmup, 1); // ⌈0.9⌉
    assert_eq!((c.lr(0), c.lr(1), c.lr(29)), (0.0, 4e-4, 4e-4));
}

fn repetitive_text() -> Dataset {
    Dataset::Text("the cat sat on the mat. ".repeat(30))
}

fn cpu_trainer(weights: &Weights<f32>, data: Prepared, config: TrainConfig) -> Trainer<CpuBackend> {
    let backend = CpuBackend::new(weights.clone(), LoraConfig::default(), 1);
    Trainer::new(backend, config, data).unwrap()
}

fn text_config() -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        micro_batch: 2,
        accum_steps: 2,
        max_steps: Some(30),
        eval_every: 10,
        seed: 5,
        ..TrainConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_and_validation_is_measured() {
    let (tok, w) = tiny();
    let data = prepare(
        &repetitive_text(),
        &tok,
        &DataConfig {
            seq_len: 32,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(data.stats.val_rows >= 1);
    let mut tr = cpu_trainer(&w, data, text_config());
    let val0 = block_on(tr.validation_loss()).unwrap().unwrap();
    let mut reports: Vec<StepReport> = Vec::new();
    let sum = block_on(tr.run(100, &mut |r| reports.push(r.clone()))).unwrap();
    assert_eq!((sum.steps, sum.stop), (30, Stop::Finished));
    let losses: Vec<f64> = reports.iter().map(|r| r.loss).collect();
    let first = losses[0];
    let last = losses[25..].iter().sum::<f64>() / 5.0;
    eprintln!("losses {losses:?}");
    assert!(last < 0.6 * first, "loss {first} → {last}");
    let vals: Vec<(u64, f64)> = reports
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step, v)))
        .collect();
    assert_eq!(
        vals.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![10, 20, 30]
    );
    eprintln!("val {val0} then {vals:?}");
    assert!(vals[2].1 < 0.8 * val0, "validation {val0} → {:?}", vals);
    assert!(reports
        .iter()
        .all(|r| r.tokens <= 4 * 32 && r.targets > 0 && r.tokens_per_s > 0.0));
    assert_eq!(reports[0].lr, 0.0); // the first warm-up step
    assert_eq!(reports[1].lr, 1e-2);
    // The reported validation loss is the trainer's measurement at that point.
    assert_eq!(block_on(tr.validation_loss()).unwrap(), Some(vals[2].1));
}

fn bits(r: &[StepReport]) -> Vec<(u64, u64, u64)> {
    r.iter()
        .map(|r| (r.loss.to_bits(), r.lr.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

#[test]
fn resume_repeats_the_uninterrupted_run_bit_for_bit() {
    let (tok, w) = tiny();
    let dcfg = DataConfig {
        seq_len: 24,
        ..Default::default()
    };
    let data = prepare(&repetitive_text(), &tok, &dcfg).unwrap();
    let config = TrainConfig {
        max_steps: Some(12),
        eval_every: 4,
        decay: Decay::Cosine,
        warmup_fraction: 0.2,
        ..text_config()
    };
    // Rows per step (4) do not divide the rows per epoch, so steps straddle epochs.
    assert!(!data.train.len().is_multiple_of(4), "{}", data.train.len());

    let mut full = cpu_trainer(&w, data.clone(), config.clone());
    let mut want = Vec::new();
    block_on(full.run(12, &mut |r| want.push(r.clone()))).unwrap();

    let mut first = cpu_trainer(&w, data.clone(), config.clone());
    let mut got = Vec::new();
    block_on(first.run(7, &mut |r| got.push(r.clone()))).unwrap();
    let bytes = block_on(first.checkpoint()).unwrap().to_bytes().unwrap();
    drop(first);

    // A fresh backend with other adapters: everything must come from the checkpoint.
    let state = TrainState::from_bytes(&bytes).unwrap();
    let backend = CpuBackend::new(w.clone(), LoraConfig::default(), 999);
    let mut second = Trainer::new(backend, config.clone(), data.clone()).unwrap();
    block_on(second.resume(&state)).unwrap();
    let sum = block_on(second.run(100, &mut |r| got.push(r.clone()))).unwrap();
    assert_eq!((sum.steps, sum.stop), (5, Stop::Finished));

    assert_eq!(bits(&got), bits(&want));
    let vb = |r: &[StepReport]| {
        r.iter()
            .map(|r| r.val_loss.map(f64::to_bits))
            .collect::<Vec<_>>()
    };
    assert_eq!(vb(&got), vb(&want));
    assert_eq!(second.backend.lora(), full.backend.lora());
    assert_eq!(second.best_val(), full.best_val());

    // Other data or another seed are refused.
    let mut other = cpu_trainer(
        &w,
        data.clone(),
        TrainConfig {
            seed: 6,
            ..config.clone()
        },
    );
    assert!(block_on(other.resume(&state)).is_err());
    let small = prepare(
        &Dataset::Text("the cat sat on the mat. ".repeat(10)),
        &tok,
        &dcfg,
    )
    .unwrap();
    let mut other = cpu_trainer(&w, small, config);
    assert!(block_on(other.resume(&state)).is_err());
}

/// A backend whose validation loss follows a script; it also checks what the trainer
/// hands it (gradient scale, step numbers, learning rates).
struct Scripted {
    val: Vec<f64>,
    evals: usize,
    scale_sum: f64,
    steps: Vec<(u64, f64)>,
}

impl Backend for Scripted {
    async fn accumulate(
        &mut self,
        rows: &[&Row],
        grad_scale: f64,
        _seed: u64,
    ) -> edge_llm::Result<LossSum> {
        let count: usize = rows.iter().map(|r| r.n_targets()).sum();
        self.scale_sum += grad_scale * count as f64;
        Ok(LossSum {
            sum: count as f64,
            count,
        })
    }
    async fn apply(&mut self, opt: &AdamW, t: u64, _max: Option<f64>) -> edge_llm::Result<f64> {
        assert!(
            (self.scale_sum - 1.0).abs() < 1e-12,
            "a step's gradient weights sum to {}",
            self.scale_sum
        );
        self.scale_sum = 0.0;
        self.steps.push((t, opt.lr));
        Ok(1.0)
    }
    async fn eval(&mut self, rows: &[&Row]) -> edge_llm::Result<LossSum> {
        let count: usize = rows.iter().map(|r| r.n_targets()).sum();
        let v = self.val[self.evals.min(self.val.len() - 1)];
        self.evals += 1;
        Ok(LossSum {
            sum: v * count as f64,
            count,
        })
    }
    async fn save(&mut self) -> edge_llm::Result<ParamState> {
        Ok(ParamState {
            lora: LoraConfig::default(),
            tensors: vec![],
            m: vec![],
            v: vec![],
            exits: Vec::new(),
            steps: Vec::new(),
        })
    }
    async fn load(&mut self, _state: &ParamState) -> edge_llm::Result<()> {
        Ok(())
    }
    async fn adapters(&mut self) -> edge_llm::Result<edge_llm::reference::Lora<f32>> {
        Err(edge_llm::Error::Invalid(
            "a scripted backend has no adapters".into(),
        ))
    }
}

#[test]
fn early_stopping_triggers_after_patience_evaluations_without_improvement() {
    let row = |n: usize| Row {
        tokens: vec![5; n],
        targets: (0..n).map(|i| (i % 2 == 0).then_some(7)).collect(),
    };
    let data = Prepared {
        train: (1..8).map(row).collect(),
        val: vec![row(4)],
        stats: DataStats::default(),
    };
    let backend = Scripted {
        val: vec![3.0, 2.0, 2.5, 2.6, 2.7, 1.0],
        evals: 0,
        scale_sum: 0.0,
        steps: Vec::new(),
    };
    let config = TrainConfig {
        max_steps: Some(100),
        eval_every: 2,
        patience: Some(2),
        micro_batch: 2,
        accum_steps: 2,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(backend, config, data).unwrap();
    let mut vals = Vec::new();
    let sum = block_on(tr.run(1000, &mut |r| vals.push(r.val_loss))).unwrap();
    // Evaluations at steps 2, 4, 6, 8: 3.0, 2.0 (best), 2.5, 2.6 → stop after step 8.
    assert_eq!(
        (sum.steps, sum.stop, sum.best_val),
        (8, Stop::EarlyStopped, Some(2.0))
    );
    assert_eq!(
        vals.iter().flatten().copied().collect::<Vec<_>>(),
        vec![3.0, 2.0, 2.5, 2.6]
    );
    let sched = tr.schedule();
    let steps = &tr.backend.steps;
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(steps.iter().all(|&(t, lr)| lr == sched.lr(t - 1)));
    // A stopped run stays stopped.
    let again = block_on(tr.run(10, &mut |_| {})).unwrap();
    assert_eq!((again.steps, again.stop), (0, Stop::EarlyStopped));
}
