//! `edge-llm gpu-info`: the GPU adapter and its limits.

use super::shared::print_json;
use crate::Result;

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
    print_json(&v, json)
}
