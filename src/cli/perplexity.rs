//! `edge-llm perplexity`: perplexity over the first tokens of a text file.

use super::progress_bar;
use super::shared::{read_text, with_lm, LmArgs};
use crate::eval;
use crate::Result;
use serde_json::json;
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    lm: LmArgs,
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        lm,
        text,
        max_tokens,
        json,
    } = a;
    let body = read_text(&text)?;
    let (file, tok, m) = lm.load()?;
    let mut ids = tok.encode(&body)?;
    ids.truncate(max_tokens);
    let pb = progress_bar(ids.len() as u64, "perplexity");
    let r = with_lm(lm.device, &file, &m, |lm| {
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
