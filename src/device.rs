//! Where a run or a model runs: the one device rule of the CLI (`--device`), the page and
//! the npm API (`device` in the tuning options and the evaluation model's options).
//!
//! `auto` takes the GPU engine on a hardware adapter and the CPU engine on a software
//! adapter (lavapipe, SwiftShader: a GPU emulated on the CPU, far slower than the CPU
//! engine, measured 200–400× in docs/results.md) or when there is none; `gpu` and `cpu`
//! override it. The front-ends find the adapter their own way (blocking natively, awaited
//! in the browser) and hand what they found to [`choose`], which also says why in plain
//! words.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The device a user asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum Device {
    /// The GPU on a hardware adapter, else the CPU engine.
    #[default]
    Auto,
    /// The GPU engine on whatever adapter there is (an error when there is none).
    Gpu,
    /// The CPU engine.
    Cpu,
}

impl FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(crate::Error::Invalid(format!(
                "device '{other}': choose 'auto', 'gpu' or 'cpu'"
            ))),
        }
    }
}

/// What the front-end found when it looked for a GPU adapter.
#[derive(Clone, Debug)]
pub enum Adapter<'a> {
    /// It did not look (the user chose the CPU).
    NotAsked,
    /// There is none; the message says why.
    Missing(&'a str),
    /// An adapter named `name`; `software` when it emulates a GPU on the CPU.
    Found { name: &'a str, software: bool },
}

/// The rule's answer: the engine that runs, and why, in plain words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// "gpu" or "cpu".
    pub device: &'static str,
    pub reason: String,
}

impl Choice {
    pub fn is_gpu(&self) -> bool {
        self.device == "gpu"
    }
}

/// The device rule: what runs for `asked` given the `adapter` found. Asking for the GPU
/// where there is no adapter is the only error.
pub fn choose(asked: Device, adapter: &Adapter) -> crate::Result<Choice> {
    let cpu = |reason: String| Choice {
        device: "cpu",
        reason,
    };
    let gpu = |reason: String| Choice {
        device: "gpu",
        reason,
    };
    Ok(match (asked, adapter) {
        (Device::Cpu, _) | (_, Adapter::NotAsked) => cpu("the CPU engine, as chosen".into()),
        (Device::Gpu, Adapter::Missing(why)) => {
            return Err(crate::Error::Gpu(format!(
                "the GPU was chosen, but there is no GPU adapter ({why}); choose 'auto' or \
                 'cpu' to run on the CPU engine"
            )))
        }
        (Device::Auto, Adapter::Missing(why)) => cpu(format!(
            "the CPU engine, because there is no GPU adapter ({why})"
        )),
        (Device::Gpu, Adapter::Found { name, software }) => gpu(if *software {
            format!("the GPU engine on {name}, as chosen (a software adapter: the CPU engine is much faster here)")
        } else {
            format!("the GPU engine on {name}, as chosen")
        }),
        (
            Device::Auto,
            Adapter::Found {
                name,
                software: false,
            },
        ) => gpu(format!("the GPU engine on {name}, a hardware GPU")),
        (
            Device::Auto,
            Adapter::Found {
                name,
                software: true,
            },
        ) => cpu(format!(
            "the CPU engine, because {name} is a software adapter (a GPU emulated on the \
             CPU, far slower than the CPU engine); choose 'gpu' to use it anyway"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_hardware_gpus_only() {
        let hw = Adapter::Found {
            name: "RTX",
            software: false,
        };
        let sw = Adapter::Found {
            name: "SwiftShader",
            software: true,
        };
        let none = Adapter::Missing("no WebGPU");
        let pick = |d, a: &Adapter| choose(d, a).unwrap().device;
        assert_eq!(pick(Device::Auto, &hw), "gpu");
        assert_eq!(pick(Device::Auto, &sw), "cpu");
        assert_eq!(pick(Device::Auto, &none), "cpu");
        assert_eq!(pick(Device::Gpu, &sw), "gpu");
        assert_eq!(pick(Device::Cpu, &hw), "cpu");
        assert!(choose(Device::Gpu, &none).is_err());
        let why = choose(Device::Auto, &sw).unwrap().reason;
        assert!(
            why.contains("SwiftShader") && why.contains("software"),
            "{why}"
        );
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert!("tpu".parse::<Device>().is_err());
    }
}
