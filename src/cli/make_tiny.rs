//! `edge-llm make-tiny`: the seeded tiny test model.

use crate::model::tiny;
use crate::{Error, Result};
use std::path::PathBuf;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
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
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        out,
        seed,
        layers,
        hidden,
        heads,
        kv_heads,
        ffn,
    } = a;
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
    Ok(())
}
