//! What several commands share: the device choice, byte counts, loading a model with its
//! adapter, and running evaluation on the chosen backend.

use crate::eval::{self, CpuLm};
use crate::model::ModelFile;
use crate::reference::Transformer;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub(crate) use crate::device::Device;
use crate::device::{choose, Adapter};

/// A byte count: digits with an optional K, M or G suffix (KiB, MiB, GiB).
pub(crate) fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("'{s}': use a number of bytes or K, M, G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count (e.g. 600M)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// The GPU to run on for `device`, or None for the CPU engine, by the one device rule
/// (`crate::device`), saying which and why on stderr.
pub(crate) fn pick_gpu(device: Device) -> Result<Option<crate::kernels::GpuContext>> {
    let found = match device {
        Device::Cpu => None,
        _ => Some(crate::kernels::GpuContext::new_blocking(None)),
    };
    let (choice, ctx) = match found {
        None => (choose(device, &Adapter::NotAsked)?, None),
        Some(Err(e)) => (choose(device, &Adapter::Missing(&e.to_string()))?, None),
        Some(Ok(ctx)) => {
            let name = format!("{} ({})", ctx.info.name, ctx.info.backend);
            let adapter = Adapter::Found {
                name: &name,
                software: ctx.is_software(),
            };
            (choose(device, &adapter)?, Some(ctx))
        }
    };
    eprintln!(
        "device: {} ({})",
        choice.device.to_uppercase(),
        choice.reason
    );
    Ok(ctx.filter(|_| choice.is_gpu()))
}

/// The model a command evaluates: its file, an adapter, and the device it runs on.
#[derive(clap::Args, Debug)]
pub(crate) struct LmArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory in PEFT format (from `tune --out`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// auto: a hardware GPU if there is one, else the CPU reference (faster than a
    /// software Vulkan/WebGPU); gpu: wgpu on whatever adapter exists; cpu: reference.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
}

impl LmArgs {
    /// The model with its adapter, and its tokenizer.
    pub(crate) fn load(&self) -> Result<(ModelFile, Tokenizer, Transformer<f32>)> {
        load(&self.model, self.adapter.as_deref())
    }
}

/// Runs `f` on the chosen backend, both behind [`eval::Lm`].
pub(crate) fn with_lm<R>(
    device: Device,
    file: &ModelFile,
    model: &Transformer<f32>,
    f: impl FnOnce(&mut dyn eval::Lm) -> Result<R>,
) -> Result<R> {
    use crate::engine::{GpuModel, GpuModelOptions};
    match pick_gpu(device)? {
        Some(ctx) => {
            let mut gm =
                GpuModel::new(&ctx, file, &GpuModelOptions::default(), model.lora.as_ref())?;
            f(&mut gm)
        }
        None => f(&mut CpuLm::new(model)),
    }
}

pub(crate) fn load(
    path: &Path,
    adapter: Option<&Path>,
) -> Result<(ModelFile, Tokenizer, Transformer<f32>)> {
    let file = ModelFile::open(path)?;
    let tok = Tokenizer::from_gguf(&file.gguf)?;
    let mut model = Transformer::new(file.weights_as(crate::model::Storage::File)?);
    if let Some(dir) = adapter {
        model.lora = Some(crate::adapter::load_dir(dir, &file.config)?);
    }
    Ok((file, tok, model))
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Err(Error::Data(format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// Prints `v` on one line (`--json`) or indented for reading.
pub(crate) fn print_json(v: &serde_json::Value, compact: bool) -> Result<()> {
    if compact {
        println!("{v}");
    } else {
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::Io(e.to_string()))?;
        println!("{text}");
    }
    Ok(())
}
