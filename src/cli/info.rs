//! `edge-llm info`: a model's configuration, tensors and tokenizer.

use super::shared::print_json;
use crate::model::ModelFile;
use crate::tokenizer::Tokenizer;
use crate::Result;
use serde_json::json;
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args { model, json } = a;
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
    print_json(&v, json)
}
