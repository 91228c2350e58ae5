//! The GPU context: one adapter, one device and queue, the limits they were created with,
//! and a cache of compute pipelines keyed by kernel name.
//!
//! The same code runs natively (wgpu on Vulkan; lavapipe on a machine without a GPU) and
//! in the browser (wgpu on WebGPU). Devices are created with `wgpu::Limits::default()`
//! unless told otherwise: that is the WebGPU baseline, so native tests enforce the limits
//! a browser grants.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde_json::json;

use crate::{Error, Result};

/// A compiled compute kernel: its pipeline and the layout of its bind group 0.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// The limits of the device (what was requested), enforced by validation.
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The best limits the adapter could have granted (for reports and memory plans).
    pub adapter_limits: wgpu::Limits,
    /// The optional features the adapter offers (the device enables only those asked for
    /// through `new_with_features`; the kernels require none).
    pub adapter_features: wgpu::Features,
    kernels: Mutex<HashMap<String, Kernel>>,
    /// The first error the device reported outside an error scope (out of memory,
    /// validation) or its loss, as the plain message readbacks return from then on.
    failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish_non_exhaustive()
    }
}

/// What to say when no adapter comes, and what to do. Natively with wgpu's reason (which
/// drivers it tried); in a browser that reason lists the backends the wasm build leaves out,
/// which is noise.
fn no_adapter(e: impl std::fmt::Display) -> String {
    if cfg!(target_arch = "wasm32") {
        "no WebGPU adapter found: this browser offers no WebGPU here; use a current Chrome or \
         Edge (113+), Safari 26 or Firefox 141+ on Windows, with hardware acceleration on (on \
         Linux, start Chrome with --enable-unsafe-webgpu)"
            .to_string()
    } else {
        format!(
            "no Vulkan adapter found ({e}): install mesa-vulkan-drivers (lavapipe, a CPU \
             driver) or a GPU driver with Vulkan"
        )
    }
}

impl GpuContext {
    /// Requests a high-performance adapter and a device with `limits`
    /// (default: `wgpu::Limits::default()`, the WebGPU baseline) and no optional features.
    pub async fn new(limits: Option<wgpu::Limits>) -> Result<GpuContext> {
        Self::new_with_features(limits, wgpu::Features::empty()).await
    }

    /// [`GpuContext::new`], also enabling those of `optional` features the adapter offers
    /// (e.g. timestamp queries for benchmarks); kernels never require any.
    pub async fn new_with_features(
        limits: Option<wgpu::Limits>,
        optional: wgpu::Features,
    ) -> Result<GpuContext> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(no_adapter(e)))?;
        let info = adapter.get_info();
        let adapter_limits = adapter.limits();
        let adapter_features = adapter.features();
        let required_limits = limits.unwrap_or_default();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("edge-llm"),
                required_features: optional & adapter_features,
                required_limits,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::Gpu(format!(
                    "adapter '{}' ({}) refused the device request: {e}",
                    info.name, info.backend
                ))
            })?;
        // wgpu's default for an error outside a scope is a panic (in the browser the
        // module traps): keep the first one instead, and return it as an error from the
        // next readback, so a caller stops cleanly and keeps what it has saved.
        let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let keep = |slot: &Arc<Mutex<Option<String>>>, msg: String| {
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(msg);
            }
        };
        let on_error = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            keep(&on_error, error_message(&e));
        }));
        // A loss explains the validation errors that using the lost device raised first.
        let on_lost = failure.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *on_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(lost_message(reason, &msg));
        });
        Ok(GpuContext {
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            info,
            adapter_limits,
            adapter_features,
            kernels: Mutex::new(HashMap::new()),
            failure,
        })
    }

    /// The device's first error outside an error scope, or its loss, if any: once set,
    /// nothing more can be trusted from this device.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A software adapter (lavapipe, SwiftShader: the "GPU" is the CPU). Kernels pick their
    /// CPU-friendly variants on one, and `auto` device choices take the CPU reference
    /// instead, which is faster there (native: optimised f32 GEMM; in a browser a profiling
    /// row of SmolLM2-135M took about 6 s in wasm against about 115 s on SwiftShader).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Err with [`Self::failure`]'s message once the device failed.
    pub fn check(&self) -> Result<()> {
        match self.failure() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// [`GpuContext::new`], blocking the thread (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(limits: Option<wgpu::Limits>) -> Result<GpuContext> {
        pollster::block_on(Self::new(limits))
    }

    /// The adapter and the limits that matter to the kernels, as JSON (for the page and
    /// the CLI).
    pub fn describe(&self) -> serde_json::Value {
        let names = |f: wgpu::Features| -> Vec<String> {
            f.iter()
                .map(|one| match one.as_str() {
                    Some(s) => s.to_string(),
                    None => format!("{one:?}"),
                })
                .collect()
        };
        let limits = |l: &wgpu::Limits| {
            json!({
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            })
        };
        json!({
            "adapter": self.info.name,
            "backend": self.info.backend.to_str(),
            "device_type": format!("{:?}", self.info.device_type),
            "driver": self.info.driver,
            "driver_info": self.info.driver_info,
            "max_storage_buffer_binding_size": self.limits.max_storage_buffer_binding_size,
            "max_buffer_size": self.limits.max_buffer_size,
            "max_compute_workgroups_per_dimension": self.limits.max_compute_workgroups_per_dimension,
            "features": names(self.features),
            "adapter_features": names(self.adapter_features),
            "device_limits": limits(&self.limits),
            "adapter_limits": limits(&self.adapter_limits),
        })
    }

    /// The kernel cached under `name`, built by `build` the first time it is asked for.
    /// Creating a pipeline compiles a shader: do it once per context, not per dispatch.
    pub fn kernel(&self, name: &str, build: impl FnOnce(&wgpu::Device) -> Kernel) -> Kernel {
        let mut cache = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(name.to_owned())
            .or_insert_with(|| build(&self.device))
            .clone()
    }

    /// Refuses a storage binding the device cannot hold, naming it, instead of letting
    /// wgpu fail validation (which panics natively).
    pub fn check_storage_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(Error::Gpu(format!(
                "{what} needs a {bytes}-byte storage buffer, over this device's limit of {max} bytes \
                 (max_storage_buffer_binding_size)"
            )));
        }
        Ok(())
    }

    /// Copies `src` (a buffer with COPY_SRC) to the CPU: copy into a staging buffer, map
    /// it and wait. Natively `poll` blocks until the map is done; in the browser `poll`
    /// does nothing and the await yields to the event loop until WebGPU maps the buffer.
    pub async fn read_buffer(&self, src: &wgpu::Buffer) -> Result<Vec<u8>> {
        let size = src.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);

        self.map_read(&staging, size).await
    }

    /// Maps the first `bytes` of a MAP_READ buffer, copies them out and unmaps it.
    /// Natively `poll` blocks until the map is done; in the browser `poll` does nothing
    /// and the await yields to the event loop until WebGPU maps the buffer.
    /// A device that failed (see [`Self::failure`]) gives its error instead.
    pub async fn map_read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check()?;
        let (done, wait) = oneshot();
        buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| done.send(r));
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check()?;
        polled.map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        let mapped = wait.await;
        self.check()?;
        mapped.map_err(|e| Error::Gpu(format!("mapping a buffer for readback: {e}")))?;
        let out = buf
            .get_mapped_range(0..bytes)
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?
            .to_vec();
        buf.unmap();
        Ok(out)
    }
}

fn error_message(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => format!(
            "the GPU ran out of memory ({e}): lower the memory budget, the sequence length or \
             the LoRA rank, or close other programs and tabs that use the GPU"
        ),
        wgpu::Error::Validation { description, .. } => format!(
            "the GPU refused a command (validation error, a bug in edge-llm: please report \
             it): {description}"
        ),
        other => format!("the GPU reported an internal error: {other}"),
    }
}

fn lost_message(reason: wgpu::DeviceLostReason, msg: &str) -> String {
    let why = match reason {
        wgpu::DeviceLostReason::Destroyed => "it was destroyed".to_string(),
        _ if msg.is_empty() => "the browser or the driver reset it".to_string(),
        _ => format!("the browser or the driver reset it: {msg}"),
    };
    format!(
        "the GPU device was lost ({why}); nothing more can run on it: start again (in the \
         page, reload it; a run resumes from its last checkpoint)"
    )
}

/// A one-value channel whose receiver is a future: how a wgpu callback (map_async) hands
/// its result to async code on both platforms without an executor-specific dependency.
fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Sender<T> {
    fn send(self, value: T) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
