//! `edge-llm perplexity`: perplexity over the first tokens of a text file.

use super::shared::{load, read_text, with_lm};
use super::{progress_bar, Device};
use crate::eval;
use crate::Result;
use serde_json::json;
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
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
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        model,
        adapter,
        device,
        text,
        max_tokens,
        json,
    } = a;
    let body = read_text(&text)?;
    let (file, tok, m) = load(&model, adapter.as_deref())?;
    let mut ids = tok.encode(&body)?;
    ids.truncate(max_tokens);
    let pb = progress_bar(ids.len() as u64, "perplexity");
    let r = with_lm(device, &file, &m, |lm| {
        pollster::block_on(eval::perplexity(lm, &ids, 64, &mut |done, _| {
            pb.set_position(done as u64)
        }))
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
    Ok(())
}
