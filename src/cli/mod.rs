//! The native CLI: a thin shell over the library. Results go to stdout (one JSON object
//! with `--json`), progress and diagnostics to stderr; any error is one line and exit 1.

use crate::data::Dataset;
use crate::eval::{self, CpuLm, Sampling};
use crate::model::{tiny, ModelFile};
use crate::reference::Transformer;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use clap::{Parser, Subcommand};

mod bench;
mod compress;
mod tune;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "edge-llm",
    version,
    about = "Private on-device LLM fine-tuning (Edge-LLM) — native CLI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's configuration, tensors and tokenizer.
    Info {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text (no BOS added; special tokens in the text are recognised).
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        /// The text; or use --file.
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Only the first N tokens.
        #[arg(long)]
        max_tokens: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Generate text after a prompt (greedy unless --temperature > 0).
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter directory in PEFT format (from `tune --out`).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// auto: a hardware GPU if there is one, else the CPU reference (faster than a
        /// software Vulkan/WebGPU); gpu: wgpu on whatever adapter exists; cpu: reference.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Sample from the early exits' voted distribution (max, mean, majority, last;
        /// default max when the adapter has exits), on the chosen --device.
        #[arg(long)]
        vote: Option<crate::vote::Vote>,
        #[arg(long)]
        json: bool,
    },
    /// Perplexity over the first N tokens of a text file (no BOS; predicts tokens 2..N).
    Perplexity {
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter directory in PEFT format (from `tune --out`).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// auto: a hardware GPU if there is one, else the CPU reference (faster than a
        /// software Vulkan/WebGPU); gpu: wgpu on whatever adapter exists; cpu: reference.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 1024)]
        max_tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Zero-shot multiple-choice accuracy (summed log-likelihood of each choice).
    EvalMc {
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter directory in PEFT format (from `tune --out`).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// auto: a hardware GPU if there is one, else the CPU reference (faster than a
        /// software Vulkan/WebGPU); gpu: wgpu on whatever adapter exists; cpu: reference.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        #[arg(long)]
        data: PathBuf,
        /// Only the first N questions.
        #[arg(long)]
        limit: Option<usize>,
        /// Combine the early exits' answers by this rule (max, mean, majority, last;
        /// default max when the adapter has exits), on the chosen --device. Every exit's
        /// and every rule's accuracy is reported too.
        #[arg(long)]
        vote: Option<crate::vote::Vote>,
        #[arg(long)]
        json: bool,
    },
    /// Tune LoRA adapters on a data file (CPU reference backend; the GPU backend is in
    /// progress). Writes a PEFT adapter and a checkpoint to --out.
    Tune(Box<tune::TuneArgs>),
    /// Print the GPU memory plan of a tuning run (every buffer, by category) without
    /// allocating anything, and whether it fits --memory-budget.
    Plan {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        lora_rank: usize,
        #[arg(long, default_value = "all")]
        lora_targets: String,
        /// Bytes (K, M, G suffixes are KiB, MiB, GiB).
        #[arg(long, value_parser = parse_bytes)]
        memory_budget: Option<u64>,
        /// Plan for this max_storage_buffer_binding_size instead of this machine's adapter
        /// (e.g. 128M, the WebGPU default a browser gives).
        #[arg(long, value_parser = parse_bytes)]
        binding_limit: Option<u64>,
        /// Dense f32 base weights instead of the packed quantized blocks.
        #[arg(long)]
        f32: bool,
        #[arg(long)]
        recompute: bool,
        /// How many of the largest buffers to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show the GPU adapter (WebGPU/Vulkan) and its limits.
    GpuInfo {
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks on the GPU.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// LUC sensitivity profile: per layer, output MSE and loss change when only that layer
    /// is pruned (7 sparsities) or quantized (2/3/4/8 bits); cached, with an SVG plot.
    Profile(compress::ProfileArgs),
    /// Compress a model (pruning + quantization by a uniform, LUC or given policy) into a
    /// compressed-model file that the other commands load in place of the GGUF.
    Compress(compress::CompressCmd),
    /// Write the seeded tiny test model (same GGUF layout as the default model).
    MakeTiny {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 2)]
        layers: usize,
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 128)]
        ffn: usize,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Matmul kernels (dense f32, q8/q4/q3/q2, GGUF blocks, 2:4 and 50 % sparse) on the
    /// default model's shapes, with each kernel's speed relative to dense f32.
    Kernels {
        /// Rows of x to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 256])]
        seq: Vec<usize>,
        /// Shapes as IN×OUT (or INxOUT), comma-separated; default: the model's five.
        #[arg(long, value_delimiter = ',')]
        shapes: Vec<String>,
        /// Target seconds of timed work per kernel and shape.
        #[arg(long, default_value_t = 0.5)]
        target_s: f64,
        #[arg(long)]
        json: bool,
    },
    /// The tuning modes (vanilla, compress-then-tune, partial, edge) back to back on the
    /// same data: step time, tokens/s, GPU memory plan, validation loss, accuracy, and
    /// each mode's ratios to vanilla; writes table.md, losses.svg and results.json.
    Tune(Box<bench::BenchTuneArgs>),
    /// Uniform vs LUC compression at the same mean sparsity and bits: perplexity,
    /// accuracy, GPU bytes and GPU forward time relative to the f32 model.
    Compress(Box<bench::BenchCompressArgs>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Device {
    Auto,
    Gpu,
    Cpu,
}

/// A byte count: digits with an optional K, M or G suffix (KiB, MiB, GiB).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("'{s}': use a number of bytes or K, M, G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count (e.g. 600M)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// The GPU to run on for `device`, or None for the CPU reference (saying which on stderr):
/// auto takes a hardware GPU, not a software adapter, which is slower than the reference.
pub(crate) fn pick_gpu(device: Device) -> Result<Option<crate::kernels::GpuContext>> {
    if device == Device::Cpu {
        eprintln!("device: CPU reference");
        return Ok(None);
    }
    match crate::kernels::GpuContext::new_blocking(None) {
        Ok(ctx) if device == Device::Gpu || !ctx.is_software() => {
            eprintln!("device: GPU {} ({})", ctx.info.name, ctx.info.backend);
            Ok(Some(ctx))
        }
        Ok(ctx) => {
            eprintln!(
                "device: CPU reference ({} is a software adapter; --device gpu uses it anyway)",
                ctx.info.name
            );
            Ok(None)
        }
        Err(e) if device == Device::Gpu => Err(e),
        Err(_) => {
            eprintln!("device: CPU reference (no GPU adapter)");
            Ok(None)
        }
    }
}

/// Runs `f` on the chosen backend, both behind [`eval::CausalLm`].
fn with_lm<R>(
    device: Device,
    file: &ModelFile,
    model: &Transformer<f32>,
    f: impl FnOnce(&mut dyn eval::CausalLm) -> Result<R>,
) -> Result<R> {
    use crate::engine::{GpuModel, GpuModelOptions};
    match pick_gpu(device)? {
        Some(ctx) => {
            let mut gm =
                GpuModel::new(&ctx, file, &GpuModelOptions::default(), model.lora.as_ref())?;
            f(&mut gm)
        }
        None => f(&mut CpuLm::new(model)),
    }
}

/// Runs `f` with every early exit's logits on the chosen backend (picked as [`with_lm`]
/// picks), both behind [`eval::ExitLm`].
fn with_exit_lm<R>(
    device: Device,
    file: &ModelFile,
    model: &Transformer<f32>,
    f: impl FnOnce(&mut dyn eval::ExitLm) -> Result<R>,
) -> Result<R> {
    use crate::engine::{GpuModel, GpuModelOptions};
    match pick_gpu(device)? {
        Some(ctx) => {
            let mut gm =
                GpuModel::new(&ctx, file, &GpuModelOptions::default(), model.lora.as_ref())?;
            f(&mut gm)
        }
        None => f(&mut eval::CpuExitLm::new(model)?),
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn progress_bar(len: u64, what: &str) -> Progress {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    let plain = (!std::io::stderr().is_terminal()).then(|| Plain {
        what: what.to_owned(),
        len,
        pos: Cell::new(0),
        msg: RefCell::new(String::new()),
        start: Instant::now(),
        last: Cell::new(Instant::now()),
    });
    Progress { bar, plain }
}

/// Progress of long work: a bar on a terminal; elsewhere (a pipe, a log file, CI), where
/// the bar is hidden, a plain line at most every [`PLAIN_EVERY_S`] seconds.
pub(crate) struct Progress {
    bar: ProgressBar,
    plain: Option<Plain>,
}

const PLAIN_EVERY_S: f64 = 30.0;

struct Plain {
    what: String,
    len: u64,
    pos: Cell<u64>,
    msg: RefCell<String>,
    start: Instant,
    last: Cell<Instant>,
}

impl Progress {
    pub(crate) fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if let Some(p) = &self.plain {
            p.pos.set(pos);
            if p.last.get().elapsed().as_secs_f64() >= PLAIN_EVERY_S {
                p.last.set(Instant::now());
                let secs = p.start.elapsed().as_secs_f64();
                let eta = if pos > 0 {
                    format!(
                        ", eta {:.0} s",
                        secs * (p.len.saturating_sub(pos)) as f64 / pos as f64
                    )
                } else {
                    String::new()
                };
                let msg = p.msg.borrow();
                eprintln!(
                    "{}: {pos}/{} after {secs:.0} s{eta}{}{}",
                    p.what,
                    p.len,
                    if msg.is_empty() { "" } else { " — " },
                    msg
                );
            }
        }
    }

    pub(crate) fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(p) = &self.plain {
            p.msg.replace(msg.clone());
        }
        self.bar.set_message(msg);
    }

    pub(crate) fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

fn load(path: &Path, adapter: Option<&Path>) -> Result<(ModelFile, Tokenizer, Transformer<f32>)> {
    let file = ModelFile::open(path)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let mut model = Transformer::new(file.weights()?);
    if let Some(dir) = adapter {
        model.lora = Some(crate::adapter::load_dir(dir, &file.config)?);
    }
    Ok((file, tok, model))
}

fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Err(Error::Data(format!("{} is empty", path.display())));
    }
    Ok(text)
}

fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Info { model, json } => {
            let file = ModelFile::open(&model)?;
            let tok = Tokenizer::from_gguf(&file.gguf)?;
            let c = &file.config;
            let mut types = std::collections::BTreeMap::<&str, usize>::new();
            for t in &file.gguf.tensors {
                *types.entry(t.ty.name()).or_default() += 1;
            }
            let v = json!({
                "file": model.display().to_string(),
                "gguf_version": file.gguf.version,
                "bytes": file.bytes.len(),
                "config": c,
                "parameters": c.n_params(),
                "tensors": file.gguf.tensors.len(),
                "tensor_types": types,
                "tokenizer": {"vocab": tok.vocab_size(), "bos": tok.bos, "eos": tok.eos,
                               "add_bos": tok.add_bos, "chatml": tok.chatml},
            });
            if json {
                println!("{v}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| Error::Io(e.to_string()))?
                );
            }
        }
        Cmd::Tokenize {
            model,
            text,
            file,
            max_tokens,
            json,
        } => {
            let text = match (text, file) {
                (Some(t), _) => t,
                (None, Some(f)) => read_text(&f)?,
                (None, None) => return Err(Error::Invalid("give --text or --file".into())),
            };
            let mf = ModelFile::open(&model)?;
            let tok = Tokenizer::from_gguf(&mf.gguf)?;
            let mut ids = tok.encode(&text)?;
            if let Some(n) = max_tokens {
                ids.truncate(n);
            }
            if json {
                println!("{}", json!({ "ids": ids }));
            } else {
                for id in ids {
                    println!("{id}\t{:?}", tok.decode(&[id])?);
                }
            }
        }
        Cmd::Generate {
            model,
            adapter,
            device,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            seed,
            vote,
            json,
        } => {
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 || temperature < 0.0 {
                return Err(Error::Invalid(
                    "need 0 < --top-p <= 1 and --temperature >= 0".into(),
                ));
            }
            let (file, tok, m) = load(&model, adapter.as_deref())?;
            let text = if chat {
                tok.chat_prompt(&prompt)
            } else {
                prompt
            };
            let ids = tok.encode(&text)?;
            let mut stop: Vec<u32> = tok.eos.into_iter().collect();
            stop.extend(
                tok.encode("<|im_end|>")
                    .ok()
                    .filter(|v| v.len() == 1)
                    .unwrap_or_default(),
            );
            let sampling = Sampling {
                temperature,
                top_p,
                seed,
            };
            let t0 = Instant::now();
            let mut shown = String::new();
            let mut so_far = Vec::new();
            let mut stdout = std::io::stdout();
            let has_exits = m.lora.as_ref().is_some_and(|l| !l.exits.is_empty());
            let rule = crate::vote::resolve(vote, has_exits)?;
            let mut on_token = |id| {
                if json {
                    return;
                }
                so_far.push(id);
                if let Ok(s) = tok.decode(&so_far) {
                    // Print only whole characters: a multi-byte char may span tokens.
                    if s.len() > shown.len() && !s.ends_with('\u{FFFD}') {
                        let _ = write!(stdout, "{}", &s[shown.len()..]);
                        let _ = stdout.flush();
                        shown = s;
                    }
                }
            };
            let out = match rule {
                Some(rule) => {
                    eprintln!("exit voting: {rule}");
                    with_exit_lm(device, &file, &m, |lm| {
                        eval::generate_voted(
                            lm,
                            &ids,
                            max_tokens,
                            &sampling,
                            rule,
                            &stop,
                            &mut on_token,
                        )
                    })?
                }
                None => with_lm(device, &file, &m, |lm| {
                    eval::generate(lm, &ids, max_tokens, &sampling, &stop, &mut on_token)
                })?,
            };
            let secs = t0.elapsed().as_secs_f64();
            let text = tok.decode(&out)?;
            if json {
                println!(
                    "{}",
                    json!({"text": text, "tokens": out.len(), "tokens_per_s": out.len() as f64 / secs})
                );
            } else {
                if text.len() > shown.len() {
                    print!("{}", &text[shown.len()..]);
                }
                println!();
                eprintln!(
                    "[{} tokens, {:.1} tokens/s]",
                    out.len(),
                    out.len() as f64 / secs
                );
            }
        }
        Cmd::Perplexity {
            model,
            adapter,
            device,
            text,
            max_tokens,
            json,
        } => {
            let body = read_text(&text)?;
            let (file, tok, m) = load(&model, adapter.as_deref())?;
            let mut ids = tok.encode(&body)?;
            ids.truncate(max_tokens);
            let pb = progress_bar(ids.len() as u64, "perplexity");
            let r = with_lm(device, &file, &m, |lm| {
                eval::perplexity(lm, &ids, 64, &mut |done, _| pb.set_position(done as u64))
            })?;
            pb.finish_and_clear();
            if json {
                println!(
                    "{}",
                    json!({"perplexity": r.perplexity, "tokens": r.tokens, "mean_nll": r.mean_nll})
                );
            } else {
                println!(
                    "perplexity {:.4} over {} tokens (mean NLL {:.4})",
                    r.perplexity, r.tokens, r.mean_nll
                );
            }
        }
        Cmd::EvalMc {
            model,
            adapter,
            device,
            data,
            limit,
            vote,
            json,
        } => {
            let ds = Dataset::load(&data)?;
            let Dataset::MultipleChoice(mut qs) = ds else {
                return Err(Error::Data(format!(
                    "{} holds {} data; eval-mc needs multiple-choice JSONL ({{\"question\",\"choices\",\"answer\"}})",
                    data.display(),
                    ds.kind()
                )));
            };
            if let Some(n) = limit {
                qs.truncate(n);
            }
            let (file, tok, m) = load(&model, adapter.as_deref())?;
            let has_exits = m.lora.as_ref().is_some_and(|l| !l.exits.is_empty());
            if let Some(rule) = crate::vote::resolve(vote, has_exits)? {
                eprintln!("exit voting: {rule}");
                let pb = progress_bar(qs.len() as u64, "eval-mc");
                let r = with_exit_lm(device, &file, &m, |lm| {
                    eval::eval_mc_vote(lm, &tok, &qs, rule, &mut |done, _, correct| {
                        pb.set_position(done as u64);
                        pb.set_message(format!("eval-mc acc {:.3}", correct as f64 / done as f64));
                    })
                })?;
                pb.finish_and_clear();
                if json {
                    println!(
                        "{}",
                        json!({"accuracy": r.accuracy, "n": r.n, "correct": r.correct,
                               "vote": r.rule, "exits": r.exits, "votes": r.votes,
                               "predictions": r.predictions})
                    );
                } else {
                    for e in &r.exits {
                        println!(
                            "exit after block {:<3} accuracy {:.4} ({}/{})",
                            e.after, e.accuracy, e.correct, r.n
                        );
                    }
                    for v in &r.votes {
                        println!(
                            "vote {:<15} accuracy {:.4} ({}/{})",
                            v.rule, v.accuracy, v.correct, r.n
                        );
                    }
                    println!(
                        "accuracy {:.4} ({}/{}) by vote {}",
                        r.accuracy, r.correct, r.n, r.rule
                    );
                }
                return Ok(0);
            }
            let pb = progress_bar(qs.len() as u64, "eval-mc");
            let r = with_lm(device, &file, &m, |lm| {
                eval::eval_mc(lm, &tok, &qs, &mut |done, _, correct| {
                    pb.set_position(done as u64);
                    pb.set_message(format!("eval-mc acc {:.3}", correct as f64 / done as f64));
                })
            })?;
            pb.finish_and_clear();
            if json {
                println!(
                    "{}",
                    json!({"accuracy": r.accuracy, "n": r.n, "correct": r.correct,
                           "predictions": r.predictions})
                );
            } else {
                println!("accuracy {:.4} ({}/{})", r.accuracy, r.correct, r.n);
            }
        }
        Cmd::GpuInfo { json } => {
            let ctx = crate::kernels::GpuContext::new_blocking(None)?;
            let v = ctx.describe();
            if json {
                println!("{v}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| Error::Io(e.to_string()))?
                );
            }
        }
        Cmd::Bench {
            what:
                BenchCmd::Kernels {
                    seq,
                    shapes,
                    target_s,
                    json,
                },
        } => bench_kernels(seq, shapes, target_s, json)?,
        Cmd::Bench {
            what: BenchCmd::Tune(a),
        } => bench::bench_tune(*a)?,
        Cmd::Bench {
            what: BenchCmd::Compress(a),
        } => bench::bench_compress(*a)?,
        Cmd::Profile(a) => compress::profile_cmd(a)?,
        Cmd::Compress(a) => compress::compress_cmd(a)?,
        Cmd::MakeTiny {
            out,
            seed,
            layers,
            hidden,
            heads,
            kv_heads,
            ffn,
        } => {
            let spec = tiny::TinySpec {
                n_layers: layers,
                hidden,
                n_heads: heads,
                n_kv_heads: kv_heads,
                ffn,
                seed,
            };
            let bytes = tiny::generate(&spec)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
            }
            std::fs::write(&out, &bytes)
                .map_err(|e| Error::Io(format!("cannot write {}: {e}", out.display())))?;
            eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
        }
        Cmd::Tune(a) => return tune::tune(*a),
        Cmd::Plan {
            model,
            seq_len,
            lora_rank,
            lora_targets,
            memory_budget,
            binding_limit,
            f32,
            recompute,
            top,
            json,
        } => {
            let lora = crate::reference::LoraConfig {
                rank: lora_rank,
                targets: tune::parse_targets(&lora_targets)?,
                ..Default::default()
            };
            let opts = crate::engine::TrainOptions {
                format: if f32 {
                    crate::engine::WeightFormat::F32
                } else {
                    crate::engine::WeightFormat::Packed
                },
                seq_len,
                recompute,
                ..Default::default()
            };
            tune::print_plan(
                &model,
                &lora,
                &opts,
                memory_budget,
                binding_limit,
                top,
                json,
            )?;
        }
    }
    Ok(0)
}

fn bench_kernels(seq: Vec<usize>, shapes: Vec<String>, target_s: f64, json: bool) -> Result<()> {
    use crate::kernels::bench::{self, BenchOptions};
    let mut opts = BenchOptions {
        seq,
        target_s,
        ..Default::default()
    };
    if !shapes.is_empty() {
        opts.shapes = shapes
            .iter()
            .map(|s| {
                let (a, b) = s
                    .split_once(['×', 'x'])
                    .ok_or_else(|| Error::Invalid(format!("shape '{s}' is not IN×OUT")))?;
                let p = |v: &str| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error::Invalid(format!("shape '{s}' is not IN×OUT")))
                };
                Ok((p(a)?, p(b)?))
            })
            .collect::<Result<_>>()?;
    }
    if opts.seq.contains(&0) || opts.shapes.iter().any(|&(k, n)| k == 0 || n == 0) {
        return Err(Error::Invalid("sizes must be positive".into()));
    }
    // Timestamp queries where the adapter has them; the kernels never need them.
    let ctx = pollster::block_on(crate::kernels::GpuContext::new_with_features(
        None,
        wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
    ))?;
    eprintln!(
        "adapter: {} ({}), limits: WebGPU defaults",
        ctx.info.name, ctx.info.backend
    );
    if !json {
        println!(
            "{:<28} {:>4} {:>5} {:>6} {:>10} {:>8} {:>8} {:>9}  timer",
            "kernel", "m", "k", "n", "ms", "GFLOP/s", "GB/s", "vs dense"
        );
    }
    let rows = pollster::block_on(bench::bench_kernels(&ctx, &opts, &mut |r| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            let name = match &r.best_of {
                Some(b) => format!("{} (= {})", r.kernel, b.trim_start_matches("dense_f32_")),
                None => r.kernel.clone(),
            };
            println!(
                "{:<28} {:>4} {:>5} {:>6} {:>10.3} {:>8.2} {:>8.2} {:>8.2}x  {}",
                name, r.m, r.k, r.n, r.ms, r.gflops, r.gbps, r.vs_dense, r.timer
            );
        }
    }))?;
    eprintln!("{} measurements", rows.len());
    Ok(())
}
