//! The one mechanism every kernel wrapper uses: build a cached compute pipeline from a WGSL
//! file (variants are WGSL `override` constants, part of the cache key), make storage
//! buffers that are checked against the binding limit, bind them in order, and dispatch a
//! 1-D count of workgroups folded into a 2-D grid that respects
//! `max_compute_workgroups_per_dimension`.
//!
//! WGSL side of the folding: a kernel declares
//! `@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>`,
//! computes `let g = wid.x + wid.y * nwg.x;` and returns early when `g` is past its
//! own count (the last row of the grid may be partly empty).

use super::context::{GpuContext, Kernel};
use crate::{Error, Result};
use wgpu::util::DeviceExt;

/// How a binding is declared in the shader (`@group(0) @binding(i)`, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`
    Uniform,
}

/// A kernel variant: which file, which entry point, which bindings and constants.
#[derive(Clone, Debug)]
pub struct KernelSpec<'a> {
    /// Cache key prefix, e.g. "qmatmul".
    pub name: &'a str,
    /// The WGSL text, from `include_str!("../../shaders/<file>.wgsl")`.
    pub source: &'a str,
    pub entry: &'a str,
    pub binds: &'a [Bind],
    /// Values of the shader's `override` constants (the variant).
    pub constants: &'a [(&'a str, f64)],
}

/// (x, y) workgroups covering `groups` with x at most `max` per dimension.
pub fn grid(groups: u32, max: u32) -> (u32, u32) {
    if groups == 0 {
        return (0, 0);
    }
    let x = groups.min(max.max(1));
    (x, groups.div_ceil(x))
}

impl GpuContext {
    /// The pipeline of `spec`, compiled once per context and variant.
    pub fn build(&self, spec: &KernelSpec<'_>) -> Kernel {
        let mut key = format!("{}/{}", spec.name, spec.entry);
        for (k, v) in spec.constants {
            key.push_str(&format!("/{k}={v}"));
        }
        self.kernel(&key, |device| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
                .binds
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match b {
                        Bind::Read | Bind::ReadWrite => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: *b == Bind::Read,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        Bind::Uniform => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.name),
                entries: &entries,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.name),
                source: wgpu::ShaderSource::Wgsl(spec.source.into()),
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: spec.constants,
                    ..Default::default()
                },
                cache: None,
            });
            Kernel { pipeline, layout }
        })
    }

    /// A storage buffer holding `bytes` (at least 4 bytes; WebGPU has no empty bindings),
    /// refused with a readable error if it exceeds the device's binding limit.
    pub fn storage(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.check_storage_binding(label, bytes.len() as u64)?;
        let padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().next_multiple_of(4).max(4), 0);
            padded = v;
            &padded[..]
        } else {
            bytes
        };
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// A zero-filled storage buffer of `size` bytes (rounded up to 4), checked like
    /// [`GpuContext::storage`].
    pub fn storage_zeroed(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.check_storage_binding(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding `value` (a `#[repr(C)]` Pod struct padded to 16 bytes).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A bind group of `buffers` bound in order to bindings 0, 1, ….
    pub fn bind(&self, kernel: &Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        })
    }

    /// Records one dispatch of `groups` workgroups (folded into a 2-D grid).
    pub fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        bind_group: &wgpu::BindGroup,
        groups: u32,
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        let (x, y) = grid(groups, max);
        if y > max {
            return Err(Error::Gpu(format!(
                "{groups} workgroups exceed a {max}×{max} grid"
            )));
        }
        if groups == 0 {
            return Ok(());
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }

    /// A fresh command encoder.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `encoder` and reads `buf` back as f32.
    pub async fn finish_read_f32(
        &self,
        encoder: wgpu::CommandEncoder,
        buf: &wgpu::Buffer,
    ) -> Result<Vec<f32>> {
        self.queue.submit([encoder.finish()]);
        let bytes = self.read_buffer(buf).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_folds_within_the_limit() {
        assert_eq!(grid(0, 65535), (0, 0));
        assert_eq!(grid(10, 65535), (10, 1));
        assert_eq!(grid(70000, 65535), (65535, 2));
        assert_eq!(grid(7, 3), (3, 3));
    }
}
