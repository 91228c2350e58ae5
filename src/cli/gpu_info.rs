//! `edge-llm gpu-info`: the GPU adapter and its limits.

use crate::{Error, Result};

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args { json } = a;
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
    Ok(())
}
