//! `edge-llm bench compress`: compression judged on data it was not calibrated on.
//!
//! For each calibration set (by default three of different kinds: Shakespeare, the ARC-Easy
//! training questions, BoolQ's passages with their questions), the model is calibrated
//! once (Hessians, Fisher halves, profile), then compressed at each budget (mean sparsity,
//! mean bits) uniformly and by each LUC sparsity rule, from the same calibration. Every
//! compressed model is scored on held-out texts in two splits: the development texts choose
//! the rule (the least mean log perplexity ratio to uniform over calibration sets and
//! texts), the test texts and the zero-shot tasks report it, and no choice reads them.
//! Perplexity is over `--ppl-windows` windows of `--ppl-len` tokens spread through each
//! text (each from an empty context). Zero-shot accuracy runs for the dense model, uniform
//! and the chosen rule (it is slow on a CPU: about half a second a question).
//!
//! Resumable: each compressed model is written under `--out/<calibration>/` and its scores
//! beside it (`.scores.json`, keyed by the evaluation settings; the dense model's in
//! `--out/dense.scores.json`); a second run reuses both.

use super::compress_report::{report, Budget, Entry, Scores, Setup};
use super::{io, questions};
use crate::cli::compress::{SparsityRuleArg, StageBars};
use crate::compress::allocation::{expected_gain, make_policy};
use crate::compress::calibration::calibration_rows;
use crate::compress::pipeline::{
    cached_profile, compress_by, hessians, measure_profile, save_profile, CompressOptions,
};
use crate::compress::policy::Allocation;
use crate::data::{Dataset, McQuestion};
use crate::eval::{self, CpuLm};
use crate::model::{ModelFile, Storage};
use crate::reference::Transformer;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub(crate) struct BenchCompressArgs {
    #[arg(long, default_value = "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Calibration sets as NAME=FILE, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "shakespeare=data/shakespeare/train.txt,arc-easy=data/arc-easy/train-instruct.jsonl,boolq=data/boolq/instruct.jsonl"
    )]
    pub calib: Vec<String>,
    #[arg(long, default_value_t = 16)]
    pub calib_rows: usize,
    #[arg(long, default_value_t = 128)]
    pub calib_seq_len: usize,
    /// Rows whose loss gradients make the profile's Fisher estimate (in two halves).
    #[arg(long, default_value_t = 16)]
    pub fisher_rows: usize,
    /// Budgets as SPARSITY:BITS, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5:4,0.6:4")]
    pub budgets: Vec<String>,
    /// The LUC sparsity rules compared with uniform.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "shrunk,least-error,owl"
    )]
    pub rules: Vec<SparsityRuleArg>,
    /// An extra arm, "general": each calibration set pruned on its own data but allocated
    /// by the profile of the calibration set named here (shrunk rule) — whether a
    /// general-text sensitivity carries to other text better than the set's own.
    #[arg(long)]
    pub general: Option<String>,
    /// Development texts: they choose the rule.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "data/shakespeare/held-out/julius_caesar.txt,data/lambada/dev.txt"
    )]
    pub dev_text: Vec<PathBuf>,
    /// Test texts: reported, never read by a choice.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "data/shakespeare/held-out/macbeth.txt,data/shakespeare/held-out/tempest.txt,data/lambada/test.txt"
    )]
    pub test_text: Vec<PathBuf>,
    /// Windows per text, and tokens per window.
    #[arg(long, default_value_t = 4)]
    pub ppl_windows: usize,
    #[arg(long, default_value_t = 256)]
    pub ppl_len: usize,
    /// Zero-shot multiple-choice tasks (test), the first --questions of each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "data/arc-easy/validation.jsonl,data/sciq/validation.jsonl"
    )]
    pub mc: Vec<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub questions: usize,
    /// Where the calibration passes run (as `compress --device`).
    #[arg(long, value_enum, default_value_t = crate::cli::Device::Auto)]
    pub device: crate::cli::Device,
    #[arg(long, default_value = "runs/profile")]
    pub cache_dir: PathBuf,
    #[arg(long, default_value = "runs/bench-compress")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// The held-out data, tokenized once.
pub(super) struct Evals {
    pub dev: Vec<(String, Vec<u32>)>,
    pub test: Vec<(String, Vec<u32>)>,
    pub mc: Vec<(String, Vec<McQuestion>)>,
    /// What the scores depend on (a changed setting re-scores).
    pub key: String,
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or("?".into(), |s| s.to_string_lossy().into_owned())
}

impl Evals {
    fn load(a: &BenchCompressArgs, tok: &Tokenizer) -> Result<Self> {
        let text = |p: &PathBuf| -> Result<(String, Vec<u32>)> {
            let body = std::fs::read_to_string(p).map_err(|e| io(e, p))?;
            let ids = tok.encode(&body)?;
            if ids.len() < a.ppl_len + 1 {
                return Err(Error::Data(format!(
                    "{}: {} tokens, fewer than one window of {}",
                    p.display(),
                    ids.len(),
                    a.ppl_len
                )));
            }
            let name = match p.parent().map(stem) {
                Some(d) if d == "lambada" => format!("lambada-{}", stem(p)),
                _ => stem(p),
            };
            Ok((name, ids))
        };
        let mc =
            a.mc.iter()
                .map(|p| {
                    Ok((
                        p.parent().map_or(stem(p), stem),
                        questions(p, Some(a.questions), false)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
        let key = format!(
            "{:?}|{:?}|{}x{}|{:?}|{}",
            a.dev_text, a.test_text, a.ppl_windows, a.ppl_len, a.mc, a.questions
        );
        Ok(Evals {
            dev: a.dev_text.iter().map(text).collect::<Result<_>>()?,
            test: a.test_text.iter().map(text).collect::<Result<_>>()?,
            mc,
            key,
        })
    }
}

/// Perplexity over `windows` windows of `len` tokens spread through `ids`.
fn windowed_perplexity(
    lm: &mut CpuLm<&Transformer<f32>>,
    ids: &[u32],
    windows: usize,
    len: usize,
) -> Result<f64> {
    let w = windows.max(1);
    let span = ids.len() - len;
    let mut nll = 0.0;
    for i in 0..w {
        let start = if w == 1 { 0 } else { i * span / (w - 1) };
        let p = pollster::block_on(eval::perplexity(
            lm,
            &ids[start..start + len],
            64,
            &mut |_, _| {},
        ))?;
        nll += p.mean_nll;
    }
    Ok((nll / w as f64).exp())
}

/// The scores of the model at `path`, from `cache` when it holds them for these settings
/// (and the accuracy when `with_mc`), else measured and saved there.
fn scores(
    path: &Path,
    cache: &Path,
    ev: &Evals,
    a: &BenchCompressArgs,
    with_mc: bool,
) -> Result<Scores> {
    let mut s: Scores = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|s: &Scores| s.key == ev.key)
        .unwrap_or_default();
    let need_ppl = s.key != ev.key;
    let need_mc = with_mc && s.accuracy.is_none();
    if !(need_ppl || need_mc) {
        return Ok(s);
    }
    let file = ModelFile::open(path)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let model = Transformer::new(file.weights_as(Storage::File)?);
    let mut lm = CpuLm::new(&model);
    if need_ppl {
        let ppl = |set: &[(String, Vec<u32>)], lm: &mut CpuLm<&Transformer<f32>>| {
            set.iter()
                .map(|(_, ids)| windowed_perplexity(lm, ids, a.ppl_windows, a.ppl_len))
                .collect::<Result<Vec<f64>>>()
        };
        s = Scores {
            key: ev.key.clone(),
            dev: ppl(&ev.dev, &mut lm)?,
            test: ppl(&ev.test, &mut lm)?,
            accuracy: None,
        };
    }
    if need_mc {
        let mut acc = Vec::new();
        for (name, q) in &ev.mc {
            let pb = crate::cli::progress_bar(q.len() as u64, name);
            let r = pollster::block_on(eval::eval_mc(&mut lm, &tok, q, &mut |d, _, _| {
                pb.set_position(d as u64)
            }))?;
            pb.finish_and_clear();
            acc.push(r.accuracy);
        }
        s.accuracy = Some(acc);
    }
    let text = serde_json::to_string(&s).map_err(|e| Error::Io(e.to_string()))?;
    std::fs::write(cache, text).map_err(|e| io(e, cache))?;
    Ok(s)
}

/// One calibration set's passes: its rows, the dense model, the profile and Hessians.
struct Calibrated {
    model: Transformer<f32>,
    profile: crate::compress::profile::Profile,
    hess: Vec<crate::reference::stats::LayerHessians>,
}

fn calibrate(
    file: &ModelFile,
    rows: &[crate::train::Row],
    a: &BenchCompressArgs,
    opts: &crate::compress::profile::ProfileOptions,
    gpu: Option<&crate::kernels::GpuContext>,
) -> Result<Calibrated> {
    let mut model = Transformer::new(file.weights()?);
    let mut bars = StageBars::default();
    let mut progress = |s: &str, d: usize, t: usize| bars.update(s, d, t);
    let (profile, hess) = match cached_profile(&a.cache_dir, file, rows, opts) {
        Some(c) => {
            let h = pollster::block_on(hessians(file, &model, rows, gpu, &mut |d, t| {
                progress("calibrate", d, t)
            }))?;
            (c.profile, h)
        }
        None => {
            let (p, h) = pollster::block_on(measure_profile(
                file,
                &mut model,
                rows,
                opts,
                gpu,
                &mut progress,
            ))?;
            save_profile(&a.cache_dir, &p)?;
            (p, h)
        }
    };
    bars.finish();
    Ok(Calibrated {
        model,
        profile,
        hess,
    })
}

fn parse_budget(s: &str) -> Result<(f64, f64)> {
    let bad = || {
        Error::Invalid(format!(
            "--budgets: '{s}' is not SPARSITY:BITS (e.g. 0.5:4)"
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// One compressed model per calibration set and budget: uniform, a LUC rule on the set's
/// own profile, or the shrunk rule on the `--general` set's profile.
#[derive(Clone, Copy, PartialEq)]
enum Arm {
    Uniform,
    Rule(SparsityRuleArg),
    General,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Uniform => "uniform",
            Arm::General => "general",
            Arm::Rule(SparsityRuleArg::Shrunk) => "shrunk",
            Arm::Rule(SparsityRuleArg::LeastError) => "least-error",
            Arm::Rule(SparsityRuleArg::Owl) => "owl",
            Arm::Rule(SparsityRuleArg::Reference) => "reference",
        }
    }
}

pub(crate) fn bench_compress(a: BenchCompressArgs) -> Result<()> {
    let file = ModelFile::open(&a.model)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let ev = Evals::load(&a, &tok)?;
    let calib: Vec<(String, PathBuf)> = a
        .calib
        .iter()
        .map(|c| match c.split_once('=') {
            Some((n, p)) => Ok((n.trim().to_owned(), PathBuf::from(p.trim()))),
            None => Err(Error::Invalid(format!("--calib: '{c}' is not NAME=FILE"))),
        })
        .collect::<Result<_>>()?;
    let budgets: Vec<(f64, f64)> = a
        .budgets
        .iter()
        .map(|b| parse_budget(b))
        .collect::<Result<_>>()?;
    let gpu = crate::cli::pick_gpu(a.device)?;
    std::fs::create_dir_all(&a.out).map_err(|e| io(e, &a.out))?;
    eprintln!("dense model: scoring");
    let dense = scores(&a.model, &a.out.join("dense.scores.json"), &ev, &a, true)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut gains = Vec::new();
    let mut calib = calib;
    if let Some(g) = &a.general {
        // The general set first, so that its profile serves the others.
        let i = calib.iter().position(|(n, _)| n == g).ok_or_else(|| {
            Error::Invalid(format!("--general {g}: not one of the --calib names"))
        })?;
        let first = calib.remove(i);
        calib.insert(0, first);
    }
    let mut general: Option<crate::compress::profile::Profile> = None;
    for (cname, cpath) in &calib {
        let dir = a.out.join(cname);
        std::fs::create_dir_all(&dir).map_err(|e| io(e, &dir))?;
        let base = CompressOptions {
            calib_rows: a.calib_rows,
            seq_len: a.calib_seq_len,
            fisher_rows: a.fisher_rows,
            ..CompressOptions::default()
        };
        let rows = calibration_rows(&Dataset::load(cpath)?, &tok, a.calib_rows, a.calib_seq_len)?;
        let opts = base.profile_options();
        let arms: Vec<Arm> = std::iter::once(Arm::Uniform)
            .chain(a.rules.iter().map(|&r| Arm::Rule(r)))
            .chain(a.general.iter().map(|_| Arm::General))
            .collect();
        let jobs: Vec<(f64, f64, Arm, PathBuf)> = budgets
            .iter()
            .flat_map(|&(sp, b)| arms.iter().map(move |&r| (sp, b, r)))
            .map(|(sp, b, r)| (sp, b, r, dir.join(format!("{}-s{sp}-b{b}.gguf", r.name()))))
            .collect();
        // Calibrate (once) only where a model is missing or the profile is not cached.
        let cached = cached_profile(&a.cache_dir, &file, &rows, &opts).map(|c| c.profile);
        let cal = if cached.is_none() || jobs.iter().any(|j| !j.3.exists()) {
            eprintln!("{cname}: calibrating on {}", cpath.display());
            Some(calibrate(&file, &rows, &a, &opts, gpu.as_ref())?)
        } else {
            None
        };
        let profile = cal
            .as_ref()
            .map_or_else(|| cached.as_ref(), |c| Some(&c.profile));
        let profile = profile.expect("calibrated when not cached");
        if a.general.as_ref() == Some(cname) {
            general = Some(profile.clone());
        }
        for &(sparsity, bits) in &budgets {
            let g = expected_gain(profile, sparsity, bits)?;
            eprintln!("{cname} at {sparsity}/{bits}: {}", g.summary());
            gains.push((cname.clone(), g));
        }
        for (sparsity, bits, arm, path) in jobs {
            let name = arm.name();
            if !path.exists() {
                let c = cal.as_ref().expect("calibrated when a model is missing");
                let o = CompressOptions {
                    sparsity,
                    bits,
                    allocation: if arm == Arm::Uniform {
                        Allocation::Uniform
                    } else {
                        Allocation::Luc
                    },
                    sparsity_rule: match arm {
                        Arm::Rule(r) => r.rule(),
                        _ => Default::default(),
                    },
                    ..base.clone()
                };
                let by = match arm {
                    Arm::General => general.as_ref().expect("the general set comes first"),
                    _ => &c.profile,
                };
                let (policy, _) = make_policy(&file.config, &o, None, Some(by))?;
                eprintln!("{cname}: compressing {}", path.display());
                let mut bars = StageBars::default();
                let out = compress_by(&file, &c.model, Some(&c.hess), policy, &mut |s, d, t| {
                    bars.update(s, d, t)
                })?;
                bars.finish();
                let tmp = path.with_extension("part");
                std::fs::write(&tmp, &out.bytes).map_err(|e| io(e, &tmp))?;
                std::fs::rename(&tmp, &path).map_err(|e| io(e, &path))?;
            }
            let s = scores(&path, &path.with_extension("scores.json"), &ev, &a, false)?;
            eprintln!(
                "{cname} {name} {sparsity}/{bits}: dev {:?}, test {:?}",
                s.dev, s.test
            );
            let f = ModelFile::open(&path)?;
            let sp = crate::compress::file::policy_of(&f.gguf, f.config.n_layers)?
                .map(|p| p.layers.iter().map(|l| l.sparsity).collect())
                .unwrap_or_default();
            entries.push(Entry {
                calib: cname.clone(),
                budget: Budget { sparsity, bits },
                policy: name.into(),
                path,
                layer_sparsity: sp,
                scores: s,
            });
        }
    }
    // The rule each budget keeps, by the development texts only; then the zero-shot tasks
    // for uniform and that rule.
    let chosen = super::compress_report::choose(&entries, &budgets);
    for e in &mut entries {
        let keep = chosen
            .iter()
            .any(|(b, r)| *b == e.budget && (*r == e.policy || e.policy == "uniform"));
        if keep && !ev.mc.is_empty() {
            eprintln!("{} {} {:?}: zero-shot tasks", e.calib, e.policy, e.budget);
            e.scores = scores(
                &e.path,
                &e.path.with_extension("scores.json"),
                &ev,
                &a,
                true,
            )?;
        }
    }
    let names = |set: &[(String, Vec<u32>)]| set.iter().map(|d| d.0.clone()).collect::<Vec<_>>();
    let header = format!(
        "Calibration sets: {} ({} rows × {} tokens, Fisher on {} rows in two halves). \
         Perplexity: {} windows of {} tokens per text; development texts (choose the rule): \
         {}; test texts: {}. Zero-shot: the first {} questions of {} (uniform, the chosen rule \
         and the dense model only). Each cell: mean ± standard deviation over the calibration \
         sets; \"vs uniform\": the mean (and worst) ratio to uniform's perplexity, paired by \
         calibration set and text.\n\n",
        calib
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        a.calib_rows,
        a.calib_seq_len,
        a.fisher_rows,
        a.ppl_windows,
        a.ppl_len,
        names(&ev.dev).join(", "),
        names(&ev.test).join(", "),
        a.questions,
        ev.mc
            .iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let setup = Setup {
        header,
        test: ev.test.iter().map(|d| d.0.as_str()).collect(),
        mc: ev.mc.iter().map(|d| d.0.as_str()).collect(),
        out: &a.out,
        json: a.json,
    };
    report(&setup, &dense, &entries, &chosen, &gains)
}
