//! The adapter's arithmetic ceiling, measured: an FMA-chain kernel whose every instruction
//! is a vec4 multiply-add (shaders/roofline.wgsl). `edge-llm bench kernels` reports each
//! kernel's GFLOP/s as a share of it, beside its GB/s as a share of the copy bandwidth.
//! CPU twin: [`fma_chain_twin`].

use super::context::GpuContext;
use super::program::{Bind, KernelSpec};
use crate::tolerance::Tol;
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/roofline.wgsl");
/// Invocations per workgroup.
pub const WG: u32 = 64;
/// Flops per step of one invocation: 8 vec4 FMAs of 2 flops per lane.
const FLOPS_PER_STEP: u64 = 8 * 4 * 2;
/// GPU against twin: the recurrence contracts, so a fused or unfused multiply-add (WGSL
/// allows either) differs by a few ulps of the sum (≈ 50), far below 1e-4 of it; a wrong
/// step count or start moves it by far more.
pub const FMA_CHAIN_TOL: Tol = Tol::new(1e-4, 1e-4);
/// The shader's contraction factor and offset.
const M: f32 = 1.0 - 1.0 / 1024.0;
const C: f32 = 1.0 / 1024.0;

/// `invocations` invocations of `chain` steps each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FmaChain {
    pub invocations: u32,
    pub chain: u32,
}

impl FmaChain {
    /// Floating-point operations of one dispatch.
    pub fn flops(&self) -> f64 {
        (self.invocations as u64 * self.chain as u64 * FLOPS_PER_STEP) as f64
    }

    /// Records one dispatch writing `out` (`invocations` f32).
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        if out.size() < self.invocations as u64 * 4 || self.chain == 0 {
            return Err(Error::Invalid(format!(
                "fma chain: {self:?} needs {} output bytes, the buffer has {}",
                self.invocations as u64 * 4,
                out.size()
            )));
        }
        let kernel = ctx.build(&KernelSpec {
            name: "roofline",
            source: SOURCE,
            entry: "fma_chain",
            binds: &[Bind::ReadWrite],
            constants: &[("WG", WG as f64), ("CHAIN", self.chain as f64)],
        });
        let bind_group = ctx.bind(&kernel, &[out]);
        ctx.dispatch(encoder, &kernel, &bind_group, self.invocations.div_ceil(WG))
    }

    /// Runs one dispatch and reads back every invocation's sum (tests).
    pub async fn run(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let out = ctx.storage_zeroed("fma chain out", self.invocations as u64 * 4)?;
        let mut enc = ctx.encoder();
        self.encode(ctx, &mut enc, &out)?;
        ctx.queue.submit([enc.finish()]);
        super::ops::read(ctx, &out, self.invocations as usize).await
    }
}

/// What invocation `i` of an `chain`-step [`FmaChain`] writes, computed on the CPU.
pub fn fma_chain_twin(i: u32, chain: u32) -> f32 {
    let s = (i % 1024) as f32 / 1024.0;
    let mut a: Vec<f32> = (0..32).map(|j| s + 0.125 * j as f32).collect();
    for _ in 0..chain {
        for v in &mut a {
            *v = v.mul_add(M, C);
        }
    }
    // The shader's order: pairs of vec4 accumulators, then the four lanes.
    let vec = |k: usize| [a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]];
    let add = |x: [f32; 4], y: [f32; 4]| [x[0] + y[0], x[1] + y[1], x[2] + y[2], x[3] + y[3]];
    let sum = add(
        add(add(vec(0), vec(1)), add(vec(2), vec(3))),
        add(add(vec(4), vec(5)), add(vec(6), vec(7))),
    );
    sum.iter().sum()
}

/// Test body: the GPU's sums against the twin on an awkward count (not a multiple of the
/// workgroup) and two chain lengths.
pub async fn check_fma_chain(ctx: &GpuContext) -> Result<()> {
    for chain in [1u32, 300] {
        let k = FmaChain {
            invocations: 1000,
            chain,
        };
        let want: Vec<f32> = (0..k.invocations)
            .map(|i| fma_chain_twin(i, chain))
            .collect();
        let got = k.run(ctx).await?;
        crate::tolerance::compare(&format!("fma chain {chain}"), &got, &want, FMA_CHAIN_TOL)?;
    }
    Ok(())
}
