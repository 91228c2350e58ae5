//! Transformer op kernels, forward and backward: one Rust file per kernel family, mirrored
//! by one WGSL file under `shaders/`, each with a CPU twin of the same name in
//! [`crate::reference::ops`] or [`crate::reference::optim`].
//!
//! Every wrapper offers an `encode_*` function that records dispatches into a caller's
//! encoder on already-uploaded buffers (what the engine and benchmarks use), and an async
//! convenience that uploads, runs and reads back (what the tests use). Gradients are
//! reductions written as gathers: no kernel here needs atomics.

pub mod adamw;
pub mod attention;
pub mod checks;
pub mod cross_entropy;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod stats;
pub mod swiglu;

use super::context::GpuContext;
use super::program::KernelSpec;
use crate::{Error, Result};

/// Invocations per workgroup of the 1-D kernels (elementwise and per-row reductions).
pub(crate) const WG: u32 = 256;

/// A storage buffer holding `data` (checked against the binding limit).
pub(crate) fn upload(ctx: &GpuContext, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
    ctx.storage(label, bytemuck::cast_slice(data))
}

/// A storage buffer holding u32/i32 words.
pub(crate) fn upload_words<T: bytemuck::Pod>(
    ctx: &GpuContext,
    label: &str,
    data: &[T],
) -> Result<wgpu::Buffer> {
    ctx.storage(label, bytemuck::cast_slice(data))
}

/// A zeroed storage buffer of `len` f32 values.
pub(crate) fn zeros(ctx: &GpuContext, label: &str, len: usize) -> Result<wgpu::Buffer> {
    ctx.storage_zeroed(label, bytes_of_f32(label, len)?)
}

/// The byte size of `len` f32 values, refusing overflow.
pub(crate) fn bytes_of_f32(what: &str, len: usize) -> Result<u64> {
    len.checked_mul(4)
        .map(|b| b as u64)
        .ok_or_else(|| Error::Invalid(format!("{what}: {len} values overflow")))
}

/// A count that the shaders index with u32.
pub(crate) fn to_u32(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Invalid(format!("{what}: {n} does not fit in u32")))
}

/// Workgroups of `per` invocations covering `n` items.
pub(crate) fn groups(what: &str, n: usize, per: u32) -> Result<u32> {
    to_u32(what, n.div_ceil(per as usize))
}

/// Builds (or fetches) `spec`, binds `buffers` in order and records `groups` workgroups.
pub(crate) fn launch(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    spec: &KernelSpec<'_>,
    buffers: &[&wgpu::Buffer],
    groups: u32,
) -> Result<()> {
    let kernel = ctx.build(spec);
    let bind_group = ctx.bind(&kernel, buffers);
    ctx.dispatch(encoder, &kernel, &bind_group, groups)
}

/// Reads the first `len` f32 values of `buf` (buffers are padded to at least 4 bytes).
pub(crate) async fn read(ctx: &GpuContext, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let bytes = ctx.read_buffer(buf).await?;
    let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    v.truncate(len);
    Ok(v)
}

/// Refuses a slice whose length is not the shape's.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Invalid(format!(
            "{what}: {got} values, expected {want}"
        )));
    }
    Ok(())
}
