//! `--device` and `--threads`, taken by every verb that computes.

use anyhow::anyhow;
use clap::Args;
use std::path::PathBuf;
use tch::Device;

#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when one is usable, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op threads of libtorch's CPU kernels (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Activation layout: auto (channels-last on the CPU, NCHW on CUDA), nchw, channels-last
    /// (default: DETNAS_MEMORY_FORMAT, else auto).
    #[arg(long, value_parser = detnas_device::MemoryFormat::parse)]
    pub memory_format: Option<detnas_device::MemoryFormat>,
    /// fp32, or bf16 autocast of the networks' forwards (default: DETNAS_PRECISION, else fp32).
    #[arg(long, value_parser = detnas_device::Precision::parse)]
    pub precision: Option<detnas_device::Precision>,
}

impl RuntimeArgs {
    /// Applies the thread count, layout and precision, and resolves the device.
    pub fn init(&self) -> Result<Device, crate::Failure> {
        if let Some(t) = self.threads {
            if t < 1 {
                return Err(crate::usage(anyhow!("--threads must be at least 1, got {t}")));
            }
            tch::set_num_threads(t);
        }
        if let Some(f) = self.memory_format {
            detnas_device::settings::set_memory_format(f);
        }
        if let Some(p) = self.precision {
            detnas_device::settings::set_precision(p);
        }
        parse_device(&self.device).map_err(crate::usage)
    }
}

/// Why CUDA can read as unavailable although a GPU is present: the engine does not link
/// `libtorch_cuda.so`; the `detnas` launcher preloads it on machines with an NVIDIA GPU.
const CUDA_HINT: &str = "; CUDA is loaded by the `detnas` launcher when it finds an NVIDIA GPU \
     (DETNAS_CUDA=1 forces it); running detnas-engine directly needs LD_PRELOAD=<torch lib>/libtorch_cuda.so";

/// Resolves a device name, checking that a requested GPU exists.
pub fn parse_device(text: &str) -> anyhow::Result<Device> {
    let gpus = || if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match text {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if gpus() == 0 {
                return Err(anyhow!(
                    "--device cuda: libtorch sees no usable GPU (use --device cpu or auto){}",
                    CUDA_HINT
                ));
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
                return Err(anyhow!(
                    "--device {other}: libtorch sees {count} GPU(s){}",
                    if count == 0 { CUDA_HINT } else { "" }
                ));
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

/// Options shared by the training verbs (`pretrain`, `finetune`); `out` is the verb's own.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Resume from this checkpoint (a step-N folder) instead of the run folder's latest.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Continue although the configuration or data differ from the checkpoint's (logged).
    #[arg(long)]
    pub allow_mismatch: bool,
}

impl TrainArgs {
    /// `--set` overrides with `--device` and `--threads` folded in.
    pub fn all_overrides(&self) -> Vec<String> {
        self.job.all_overrides("runtime.")
    }

    /// Applies the configured thread count and resolves the configured device.
    pub fn init(runtime: &detnas_train::config::RuntimeConfig) -> Result<Device, crate::Failure> {
        if let Some(t) = runtime.threads {
            if t < 1 {
                return Err(crate::usage(anyhow!("runtime.threads must be at least 1")));
            }
            tch::set_num_threads(t);
        }
        parse_device(&runtime.device).map_err(crate::usage)
    }

    /// The run options of a training verb: these flags, signal handling, and the job `dist`
    /// this process joined (if any).
    pub fn run_options(
        &self,
        dist: Option<std::sync::Arc<detnas_dist::ProcessGroup>>,
    ) -> Result<detnas_train::RunOptions, crate::Failure> {
        Ok(detnas_train::RunOptions {
            resume_from: self.resume_from.clone(),
            allow_mismatch: self.allow_mismatch,
            progress: !self.job.no_progress,
            cancel: crate::cancel_on_signals()?,
            dist,
        })
    }
}

/// `--set`, `--device`, `--threads` and `--no-progress` of the verbs that run a configured
/// job (`search`, `run`).
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// Override a configuration key (repeatable): `--set schedule.lr=0.01` for pretrain and
    /// finetune, `--set strategy.generations=5` for search. For `run` and `demo`, pipeline keys
    /// (`--set retrain.mode=scratch`); a stage's keys through its list, which the value
    /// replaces: `--set 'search.set=["strategy.generations=5"]'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Device (overrides the config): cpu, cuda, cuda:N, auto.
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch threads (overrides the config).
    #[arg(long)]
    pub threads: Option<i32>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

impl JobArgs {
    /// `--set` overrides with `--device` / `--threads` folded in as `{section}device` /
    /// `{section}threads` (`section` is `"runtime."` or `""`).
    pub fn all_overrides(&self, section: &str) -> Vec<String> {
        let mut o = self.overrides.clone();
        if let Some(d) = &self.device {
            o.push(format!("{section}device=\"{d}\""));
        }
        if let Some(t) = self.threads {
            o.push(format!("{section}threads={t}"));
        }
        o
    }
}
