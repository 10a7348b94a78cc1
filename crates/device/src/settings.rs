//! Process-wide compute settings, each with a per-thread override (tests run both variants
//! side by side in one process):
//!
//! * [`MemoryFormat`] — `runtime.memory_format`: the networks' activation layout. `auto` is
//!   channels-last on the CPU (oneDNN's NHWC kernels, measured faster there) and NCHW on CUDA
//!   (PyTorch sends every channels-last depthwise convolution to cuDNN, which builds a new
//!   execution plan on the first use of each shape; NCHW fp32 depthwise convolutions use
//!   ATen's own kernel, as the PyTorch reference does);
//! * [`Precision`] — `runtime.precision`: fp32, or bf16 autocast for the networks' forwards
//!   (losses, box decoding and NMS stay fp32);
//! * [`Kernels`] — host-side CPU kernels (Rust greedy NMS, the direct RoIAlign kernel) where
//!   they are faster on the CPU, or device-side tensor ops only (no host round-trip in the
//!   step; what runs on CUDA). `DETNAS_KERNELS=device` runs the device path on the CPU, which
//!   the tests use to check it there.
//!
//! The process-wide values are set once at start-up by the binary (from the configuration,
//! `DETNAS_MEMORY_FORMAT` / `DETNAS_PRECISION` / `DETNAS_KERNELS`, or a command-line flag).

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use tch::Device;

/// The activation layout setting (`runtime.memory_format`). Default `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Channels-last on the CPU, NCHW on CUDA.
    #[default]
    Auto,
    /// Contiguous `[N, C, H, W]` everywhere.
    Nchw,
    /// `[N, C, H, W]` sizes with `[N, H, W, C]` memory order everywhere.
    ChannelsLast,
}

/// A concrete activation layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Contiguous `[N, C, H, W]`.
    Nchw,
    /// `[N, C, H, W]` sizes with `[N, H, W, C]` memory order.
    ChannelsLast,
}

impl MemoryFormat {
    /// The layout on `device`.
    pub fn resolve(self, device: Device) -> Layout {
        match self {
            MemoryFormat::Nchw => Layout::Nchw,
            MemoryFormat::ChannelsLast => Layout::ChannelsLast,
            MemoryFormat::Auto => match device {
                Device::Cpu => Layout::ChannelsLast,
                _ => Layout::Nchw,
            },
        }
    }

    /// Parses `auto`, `nchw` or `channels-last`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<MemoryFormat, String> {
        match s {
            "auto" => Ok(MemoryFormat::Auto),
            "nchw" => Ok(MemoryFormat::Nchw),
            "channels-last" | "nhwc" => Ok(MemoryFormat::ChannelsLast),
            o => Err(format!("memory format '{o}' is not one of auto, nchw, channels-last")),
        }
    }
}

/// The compute precision setting (`runtime.precision`). Default `fp32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Every computation in float32.
    #[default]
    Fp32,
    /// bfloat16 autocast of the networks' forwards (no loss scaling needed: bf16 has fp32's
    /// exponent range).
    Bf16,
}

impl Precision {
    /// Parses `fp32` or `bf16`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            o => Err(format!("precision '{o}' is not one of fp32, bf16")),
        }
    }
}

/// Which implementation of the data-dependent detection steps (NMS of proposals, RoIAlign
/// without gradients) runs. Default `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// Host kernels on the CPU, device kernels elsewhere.
    #[default]
    Auto,
    /// Rust kernels on host memory (fast on the CPU; on a GPU they would copy).
    Host,
    /// Tensor ops on the tensors' device, without host round-trips.
    Device,
}

impl Kernels {
    /// Whether host kernels run for tensors on `device`.
    pub fn host_on(self, device: Device) -> bool {
        match self {
            Kernels::Host => true,
            Kernels::Device => false,
            Kernels::Auto => device == Device::Cpu,
        }
    }

    /// Parses `auto`, `host` or `device`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<Kernels, String> {
        match s {
            "auto" => Ok(Kernels::Auto),
            "host" => Ok(Kernels::Host),
            "device" => Ok(Kernels::Device),
            o => Err(format!("kernels '{o}' is not one of auto, host, device")),
        }
    }
}

/// A process-wide setting stored as a `u8`, with a per-thread override.
macro_rules! setting {
    ($ty:ty, $global:ident, $local:ident, [$($v:path),+], $get:ident, $set:ident, $with:ident) => {
        static $global: AtomicU8 = AtomicU8::new(0);
        thread_local! {
            static $local: Cell<Option<$ty>> = const { Cell::new(None) };
        }

        /// The value for this thread: its override, else the process's.
        pub fn $get() -> $ty {
            if let Some(v) = $local.with(Cell::get) {
                return v;
            }
            let all = [$($v),+];
            all[($global.load(Ordering::Relaxed) as usize).min(all.len() - 1)]
        }

        /// Sets the process-wide value.
        pub fn $set(v: $ty) {
            let all = [$($v),+];
            let i = all.iter().position(|x| *x == v).unwrap_or(0);
            $global.store(i as u8, Ordering::Relaxed);
        }

        /// Runs `f` with `v` as this thread's value.
        pub fn $with<R>(v: $ty, f: impl FnOnce() -> R) -> R {
            struct Restore(Option<$ty>);
            impl Drop for Restore {
                fn drop(&mut self) {
                    $local.with(|c| c.set(self.0));
                }
            }
            let _restore = Restore($local.with(|c| c.replace(Some(v))));
            f()
        }
    };
}

setting!(
    MemoryFormat,
    MEMORY_FORMAT,
    LOCAL_MEMORY_FORMAT,
    [MemoryFormat::Auto, MemoryFormat::Nchw, MemoryFormat::ChannelsLast],
    memory_format,
    set_memory_format,
    with_memory_format
);
setting!(
    Precision,
    PRECISION,
    LOCAL_PRECISION,
    [Precision::Fp32, Precision::Bf16],
    precision,
    set_precision,
    with_precision
);
setting!(
    Kernels,
    KERNELS,
    LOCAL_KERNELS,
    [Kernels::Auto, Kernels::Host, Kernels::Device],
    kernels,
    set_kernels,
    with_kernels
);

/// The activation layout for tensors on `device` under this thread's setting.
pub fn layout(device: Device) -> Layout {
    memory_format().resolve(device)
}

/// Whether host kernels run for tensors on `device` under this thread's setting.
pub fn host_kernels(device: Device) -> bool {
    kernels().host_on(device)
}

/// The environment's values ([`apply_environment`]): what a configuration's default leaves.
static ENV_MEMORY_FORMAT: std::sync::Mutex<MemoryFormat> = std::sync::Mutex::new(MemoryFormat::Auto);
static ENV_PRECISION: std::sync::Mutex<Precision> = std::sync::Mutex::new(Precision::Fp32);

/// Applies `DETNAS_MEMORY_FORMAT`, `DETNAS_PRECISION` and `DETNAS_KERNELS` when set; they
/// become the process's values where a configuration keeps its default.
///
/// # Errors
/// A message naming the variable and the accepted values.
pub fn apply_environment() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(v) = var("DETNAS_MEMORY_FORMAT") {
        let f = MemoryFormat::parse(&v).map_err(|e| format!("DETNAS_MEMORY_FORMAT: {e}"))?;
        *ENV_MEMORY_FORMAT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = f;
        set_memory_format(f);
    }
    if let Some(v) = var("DETNAS_PRECISION") {
        let p = Precision::parse(&v).map_err(|e| format!("DETNAS_PRECISION: {e}"))?;
        *ENV_PRECISION.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = p;
        set_precision(p);
    }
    if let Some(v) = var("DETNAS_KERNELS") {
        set_kernels(Kernels::parse(&v).map_err(|e| format!("DETNAS_KERNELS: {e}"))?);
    }
    Ok(())
}

/// Makes a stage's configured values the process's: `memory_format` unless `auto`, and
/// `precision` unless `fp32` (for those, the environment's value, else the default).
pub fn configure(memory_format: MemoryFormat, precision: Precision) {
    set_memory_format(match memory_format {
        MemoryFormat::Auto => *ENV_MEMORY_FORMAT.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        f => f,
    });
    set_precision(match precision {
        Precision::Fp32 => *ENV_PRECISION.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        p => p,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resolves_by_device_and_threads_override() {
        assert_eq!(MemoryFormat::Auto.resolve(Device::Cpu), Layout::ChannelsLast);
        assert_eq!(MemoryFormat::Auto.resolve(Device::Cuda(0)), Layout::Nchw);
        assert_eq!(MemoryFormat::Nchw.resolve(Device::Cpu), Layout::Nchw);
        assert!(Kernels::Auto.host_on(Device::Cpu) && !Kernels::Auto.host_on(Device::Cuda(1)));
        let inner = with_memory_format(MemoryFormat::Nchw, || {
            let other = std::thread::spawn(|| layout(Device::Cpu)).join().unwrap();
            (layout(Device::Cpu), other)
        });
        assert_eq!(inner, (Layout::Nchw, Layout::ChannelsLast));
        assert_eq!(layout(Device::Cpu), Layout::ChannelsLast);
        assert!(with_kernels(Kernels::Device, || !host_kernels(Device::Cpu)));
        assert_eq!(MemoryFormat::parse("channels-last"), Ok(MemoryFormat::ChannelsLast));
        assert!(MemoryFormat::parse("nhcw").unwrap_err().contains("auto, nchw, channels-last"));
        assert_eq!(Precision::parse("bf16"), Ok(Precision::Bf16));
    }
}
