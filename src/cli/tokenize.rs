//! `edge-llm tokenize`: the token ids of a text.

use super::shared::read_text;
use crate::model::ModelFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde_json::json;
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
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
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        model,
        text,
        file,
        max_tokens,
        json,
    } = a;
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
    Ok(())
}
