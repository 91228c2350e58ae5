//! Dense f32 matmul with the weight transposed, y[m×n] = x[m×k]·w[n×k]ᵀ: the baseline that
//! `edge-llm bench kernels` measures the engine's kernels against. The engine itself does
//! not use it: its dense projections run through [`super::qmatmul`] with `BITS = 32`.
//! Shader: shaders/matmul.wgsl. CPU twin: [`crate::reference::ops::matmul_nt`].

use wgpu::util::DeviceExt;

use super::context::{GpuContext, Kernel};
use crate::{Error, Result};

/// The uniform block of shaders/matmul.wgsl (`Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    row0: u32,
    col0: u32,
    _pad: [u32; 3],
}

/// One block of y covered by one dispatch: its origin and its grid of workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub row0: u32,
    pub col0: u32,
    pub groups_x: u32,
    pub groups_y: u32,
}

/// The `matmul_nt` kernel: pipeline (cached in the context) and dispatch planning.
#[derive(Clone, Debug)]
pub struct MatmulNt {
    kernel: Kernel,
}

impl MatmulNt {
    /// The pipeline cache key and the shader's entry point.
    pub const NAME: &'static str = "matmul_nt";
    /// The output tile edge of one workgroup (`TILE` in the shader).
    pub const TILE: u32 = 16;

    pub fn new(ctx: &GpuContext) -> Self {
        let kernel = ctx.kernel(Self::NAME, |device| {
            let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(Self::NAME),
                entries: &[
                    storage(0, true),
                    storage(1, true),
                    storage(2, false),
                    wgpu::BindGroupLayoutEntry {
                        binding: 3,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: true,
                            min_binding_size: wgpu::BufferSize::new(size_of::<Params>() as u64),
                        },
                        count: None,
                    },
                ],
            });
            let module =
                device.create_shader_module(wgpu::include_wgsl!("../../shaders/matmul.wgsl"));
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(Self::NAME),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(Self::NAME),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(Self::NAME),
                compilation_options: Default::default(),
                cache: None,
            });
            Kernel { pipeline, layout }
        });
        Self { kernel }
    }

    /// The dispatches that cover y[m×n], each grid at most `max_groups` workgroups per
    /// dimension (the device's max_compute_workgroups_per_dimension).
    pub fn plan(m: u32, n: u32, max_groups: u32) -> Vec<Block> {
        let tiles_y = m.div_ceil(Self::TILE);
        let tiles_x = n.div_ceil(Self::TILE);
        let max_groups = max_groups.max(1);
        let mut blocks = Vec::new();
        for ty in (0..tiles_y).step_by(max_groups as usize) {
            for tx in (0..tiles_x).step_by(max_groups as usize) {
                blocks.push(Block {
                    row0: ty * Self::TILE,
                    col0: tx * Self::TILE,
                    groups_x: (tiles_x - tx).min(max_groups),
                    groups_y: (tiles_y - ty).min(max_groups),
                });
            }
        }
        blocks
    }

    /// Checks that the shapes fit this device: each of x, w and y must be one storage
    /// binding, and the dimensions must fit the shader's u32 indices.
    pub fn check(ctx: &GpuContext, m: usize, k: usize, n: usize) -> Result<()> {
        let bytes = |rows: usize, cols: usize, what: &str| -> Result<u64> {
            rows.checked_mul(cols)
                .and_then(|e| e.checked_mul(4))
                .map(|b| b as u64)
                .ok_or_else(|| {
                    Error::Invalid(format!("matmul_nt: {what} of {rows}×{cols} overflows"))
                })
        };
        ctx.check_storage_binding(&format!("matmul_nt x ({m}×{k} f32)"), bytes(m, k, "x")?)?;
        ctx.check_storage_binding(&format!("matmul_nt w ({n}×{k} f32)"), bytes(n, k, "w")?)?;
        ctx.check_storage_binding(&format!("matmul_nt y ({m}×{n} f32)"), bytes(m, n, "y")?)?;
        Ok(())
    }

    /// Records y = x·wᵀ into `encoder`. The buffers hold m·k, n·k and m·n f32 values;
    /// call [`MatmulNt::check`] first for a readable error on oversized shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
        k: usize,
        n: usize,
    ) {
        let (m, k, n) = (m as u32, k as u32, n as u32);
        let blocks = Self::plan(m, n, ctx.limits.max_compute_workgroups_per_dimension);
        if blocks.is_empty() {
            return;
        }
        // One Params per block, each at an offset the device accepts for a dynamic uniform.
        let stride = (size_of::<Params>() as u32)
            .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment);
        let mut uniform = vec![0u8; stride as usize * blocks.len()];
        for (i, b) in blocks.iter().enumerate() {
            let p = Params {
                m,
                k,
                n,
                row0: b.row0,
                col0: b.col0,
                _pad: [0; 3],
            };
            let at = i * stride as usize;
            uniform[at..at + size_of::<Params>()].copy_from_slice(bytemuck::bytes_of(&p));
        }
        let params = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("matmul_nt params"),
                contents: &uniform,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(Self::NAME),
            layout: &self.kernel.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: x.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: w.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: y.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: 0,
                        size: wgpu::BufferSize::new(size_of::<Params>() as u64),
                    }),
                },
            ],
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(Self::NAME),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.kernel.pipeline);
        for (i, b) in blocks.iter().enumerate() {
            pass.set_bind_group(0, &bind_group, &[i as u32 * stride]);
            pass.dispatch_workgroups(b.groups_x, b.groups_y, 1);
        }
    }
}

/// y[m×n] = x[m×k]·w[n×k]ᵀ on the GPU: upload, dispatch, read back. For tests and
/// one-off products; a model keeps its weights resident and calls [`MatmulNt::encode`].
pub async fn matmul_nt(
    ctx: &GpuContext,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<f32>> {
    if Some(x.len()) != m.checked_mul(k) || Some(w.len()) != n.checked_mul(k) {
        return Err(Error::Invalid(format!(
            "matmul_nt: x has {} values and w {}, expected {m}×{k} and {n}×{k}",
            x.len(),
            w.len()
        )));
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(vec![0.0; m * n]); // as the CPU twin: an empty sum is 0
    }
    MatmulNt::check(ctx, m, k, n)?;
    let kernel = MatmulNt::new(ctx);

    let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let upload = |label, data: &[f32]| {
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    };
    let xb = upload("matmul_nt x", x);
    let wb = upload("matmul_nt w", w);
    let yb = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("matmul_nt y"),
        size: (m * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("matmul_nt"),
        });
    kernel.encode(ctx, &mut encoder, &xb, &wb, &yb, m, k, n);
    ctx.queue.submit([encoder.finish()]);
    let validation = validation.pop();
    let oom = oom.pop();
    if let Some(e) = validation.await {
        return Err(Error::Gpu(format!("matmul_nt ({m}×{k}·{n}×{k}ᵀ): {e}")));
    }
    if let Some(e) = oom.await {
        return Err(Error::Gpu(format!(
            "matmul_nt ({m}×{k}·{n}×{k}ᵀ): out of GPU memory: {e}"
        )));
    }

    let bytes = ctx.read_buffer(&yb).await?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_tile_once() {
        for (m, n, max) in [
            (1, 1, 65535),
            (33, 17, 65535),
            (70, 33, 2),
            (1, 49152, 1000),
            (100, 100, 1),
        ] {
            let blocks = MatmulNt::plan(m, n, max);
            let (ty, tx) = (m.div_ceil(16), n.div_ceil(16));
            let mut seen = vec![0u32; (ty * tx) as usize];
            for b in &blocks {
                assert!(
                    b.groups_x <= max && b.groups_y <= max,
                    "{b:?} exceeds {max}"
                );
                for gy in 0..b.groups_y {
                    for gx in 0..b.groups_x {
                        let (r, c) = (b.row0 / 16 + gy, b.col0 / 16 + gx);
                        seen[(r * tx + c) as usize] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "m={m} n={n} max={max}: {seen:?}"
            );
        }
    }
}
