//! Where an artifact comes from: the code version recorded in every checkpoint, ledger and
//! report.

use std::sync::OnceLock;

static REVISION: OnceLock<&'static str> = OnceLock::new();

/// Sets the revision [`code_version`] reports, once, from the binary (whose build script sees
/// every source change and marks a modified tree `-dirty`); later calls are ignored.
pub fn set_revision(revision: &'static str) {
    let _ = REVISION.set(revision);
}

/// `detnas <version> (<git revision>)`: the revision given to [`set_revision`] (the
/// `detnas-engine` binary sets it), else "unknown revision".
pub fn code_version() -> String {
    let revision = REVISION.get().copied().unwrap_or("unknown revision");
    format!("detnas {} ({revision})", env!("CARGO_PKG_VERSION"))
}

/// Where a result was computed: the machine and the libtorch build. Filled by
/// `detnas_device::machine` (which asks libtorch); recorded in every summary and stage
/// record and shown by the report, since libtorch's kernels, chosen by instruction set, round
/// differently from one CPU to another.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores this process may use.
    pub cores: usize,
    /// The instruction set of the CPU kernels libtorch chose (`AVX512`, `AVX2`, `DEFAULT`).
    pub cpu_capability: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub os: String,
    /// libtorch's version.
    pub libtorch: String,
    /// The CUDA version libtorch was built with, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
    /// The cuDNN version libtorch was built with, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cudnn: Option<String>,
    /// Each NVIDIA GPU's model (`/proc/driver/nvidia/gpus/*/information`); empty without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// The NVIDIA driver's version, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl Machine {
    /// What the operating system says (CPU, cores, kernel, GPUs, driver); libtorch's fields
    /// are left empty.
    pub fn of_host() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mut gpus: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        read(&e.path().join("information").to_string_lossy())
                            .lines()
                            .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        gpus.sort();
        let driver = read("/proc/driver/nvidia/version")
            .split_whitespace()
            .skip_while(|w| *w != "Module")
            .nth(1)
            .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .map(str::to_string);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            os: read("/proc/sys/kernel/osrelease").trim().to_string(),
            gpus,
            driver,
            ..Machine::default()
        }
    }

    /// Fills the libtorch fields from libtorch's build configuration text
    /// (`torch.__config__.show()`: `CPU capability usage: …`, `TORCH_VERSION=…`,
    /// `CUDA_VERSION=…`, `CUDNN_VERSION=…`).
    pub fn with_torch_config(mut self, config: &str) -> Machine {
        let setting = |key: &str| {
            config
                .split([',', '\n'])
                .find_map(|p| p.trim().strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        self.cpu_capability = config
            .lines()
            .find_map(|l| l.split_once("CPU capability usage:").map(|(_, v)| v.trim().to_string()))
            .unwrap_or_default();
        self.libtorch = setting("TORCH_VERSION").unwrap_or_default();
        self.cuda = setting("CUDA_VERSION");
        self.cudnn = setting("CUDNN_VERSION");
        self
    }

    /// One line for reports: `AMD EPYC … (2 cores, AVX512), Linux 6.1, libtorch 2.11.0 (CUDA
    /// 13.0, cuDNN 9.19.0)`, with the GPUs and driver when there are any.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({} cores, CPU kernels {}), Linux {}, libtorch {}",
            self.cpu,
            self.cores,
            if self.cpu_capability.is_empty() { "unknown" } else { &self.cpu_capability },
            self.os,
            if self.libtorch.is_empty() { "unknown" } else { &self.libtorch }
        );
        if let Some(c) = &self.cuda {
            s.push_str(&format!(" built with CUDA {c}"));
            if let Some(d) = &self.cudnn {
                s.push_str(&format!(", cuDNN {d}"));
            }
        }
        if !self.gpus.is_empty() {
            s.push_str(&format!("; GPUs: {}", self.gpus.join(", ")));
            if let Some(d) = &self.driver {
                s.push_str(&format!(" (driver {d})"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_config_text_fills_the_build_fields() {
        let text = "PyTorch built with:\n  - GCC 13.3\n  - CPU capability usage: AVX512\n  - Build settings: BLAS_INFO=mkl, CUDA_VERSION=13.0, CUDNN_VERSION=9.19.0, TORCH_VERSION=2.11.0, USE_CUDA=ON, \n";
        let m = Machine { cpu: "Some CPU".into(), cores: 2, os: "6.1".into(), ..Machine::default() }
            .with_torch_config(text);
        assert_eq!((m.cpu_capability.as_str(), m.libtorch.as_str()), ("AVX512", "2.11.0"));
        assert_eq!((m.cuda.as_deref(), m.cudnn.as_deref()), (Some("13.0"), Some("9.19.0")));
        assert_eq!(
            m.describe(),
            "Some CPU (2 cores, CPU kernels AVX512), Linux 6.1, libtorch 2.11.0 built with CUDA 13.0, cuDNN 9.19.0"
        );
        let cpu_only = Machine::default()
            .with_torch_config("  - CPU capability usage: AVX2\n  - Build settings: TORCH_VERSION=2.11.0, \n");
        assert_eq!((cpu_only.cuda, cpu_only.cpu_capability.as_str()), (None, "AVX2"));
    }

    #[test]
    fn the_host_is_described() {
        let m = Machine::of_host();
        assert!(m.cores >= 1);
        if std::path::Path::new("/proc/cpuinfo").exists() {
            assert!(!m.cpu.is_empty() && m.cpu != "unknown", "{m:?}");
        }
    }
}
