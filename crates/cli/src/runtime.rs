//! `--device` and `--threads`, taken by every verb that computes.

use anyhow::anyhow;
use clap::Args;
use tch::Device;

#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when one is usable, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op threads of libtorch's CPU kernels (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl RuntimeArgs {
    /// Applies the thread count and resolves the device.
    pub fn init(&self) -> Result<Device, crate::Failure> {
        if let Some(t) = self.threads {
            if t < 1 {
                return Err(crate::usage(anyhow!("--threads must be at least 1, got {t}")));
            }
            tch::set_num_threads(t);
        }
        parse_device(&self.device).map_err(crate::usage)
    }
}

/// Resolves a device name, checking that a requested GPU exists.
pub fn parse_device(text: &str) -> anyhow::Result<Device> {
    let gpus = || if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match text {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if gpus() == 0 {
                return Err(anyhow!("--device cuda: libtorch sees no usable GPU (use --device cpu or auto)"));
            }
            Ok(Device::Cuda(0))
        }
        other => {
            let Some(n) = other.strip_prefix("cuda:") else {
                return Err(anyhow!("--device '{other}': expected cpu, cuda, cuda:N or auto"));
            };
            let n: usize = n.parse().map_err(|_| anyhow!("--device '{other}': '{n}' is not a GPU index"))?;
            let count = gpus();
            if n >= count {
                return Err(anyhow!("--device {other}: libtorch sees {count} GPU(s)"));
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// A short description of the device for reports.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
