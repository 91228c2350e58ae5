//! `edge-llm bench kernels`: the matmul kernels on the default model's shapes.

use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
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
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        seq,
        shapes,
        target_s,
        json,
    } = a;
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
            "{:<28} {:>4} {:>5} {:>6} {:>10} {:>8} {:>6} {:>8} {:>6} {:>9}  timer",
            "kernel", "m", "k", "n", "ms", "GFLOP/s", "%FMA", "GB/s", "%BW", "vs dense"
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
                "{:<28} {:>4} {:>5} {:>6} {:>10.3} {:>8.2} {:>6.1} {:>8.2} {:>6.1} {:>8.2}x  {}",
                name,
                r.m,
                r.k,
                r.n,
                r.ms,
                r.gflops,
                r.pct_peak_flops,
                r.gbps,
                r.pct_peak_bandwidth,
                r.vs_dense,
                r.timer
            );
        }
    }))?;
    eprintln!("{} measurements", rows.len());
    Ok(())
}
