//! What computing on a device needs besides tch, below every crate that builds networks:
//!
//! * [`host`] — the one place in `nn`, `detect` and `train` that reads tensor data to the host
//!   or uploads host data (counted per call site, so tests can hold the training step and
//!   inference to a fixed number of host round-trips: each is a device synchronisation on a
//!   GPU);
//! * [`settings`] — the process's memory layout (`runtime.memory_format`), precision
//!   (`runtime.precision`) and kernel choice (host-side CPU kernels or device-side tensor ops);
//! * [`phase`] — per-phase wall times synchronised at phase boundaries
//!   (`DETNAS_PHASE_TIMING=1`);
//! * [`profile`] — Kineto traces (Chrome trace JSON) and per-operator counts of a region, on the
//!   CPU and on CUDA, through a small C++ shim ([`autocast`] uses the same shim).
//!
//! Depends on tch only.

pub mod autocast;
pub mod host;
pub mod phase;
pub mod profile;
pub mod settings;

pub use settings::{Kernels, Layout, MemoryFormat, Precision};

#[cfg(test)]
mod tests {
    #[test]
    fn grad_mode_is_read() {
        assert!(super::grad_enabled());
        assert!(!tch::no_grad(super::grad_enabled));
    }
}

/// A failure inside libtorch reached through the shim.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// libtorch's message.
    #[error("libtorch: {0}")]
    Torch(String),
}

#[allow(unsafe_code)]
unsafe extern "C" {
    fn detnas_grad_enabled() -> std::ffi::c_int;
    fn detnas_show_config() -> *mut std::ffi::c_char;
    fn detnas_free(p: *mut std::ffi::c_char);
}

/// libtorch's build configuration text (`torch.__config__.show()`).
#[allow(unsafe_code)]
pub fn torch_config() -> String {
    // SAFETY: the shim returns a malloc'ed NUL-terminated copy (or null), freed here once.
    unsafe {
        let p = detnas_show_config();
        if p.is_null() {
            return String::new();
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        detnas_free(p);
        s
    }
}

/// The machine and libtorch build this process computes on
/// ([`detnas_runtime::Machine`]), read once.
pub fn machine() -> detnas_runtime::Machine {
    static MACHINE: std::sync::OnceLock<detnas_runtime::Machine> = std::sync::OnceLock::new();
    MACHINE.get_or_init(|| detnas_runtime::Machine::of_host().with_torch_config(&torch_config())).clone()
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`).
#[allow(unsafe_code)]
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag of libtorch.
    unsafe { detnas_grad_enabled() != 0 }
}

/// Waits until `device` has finished its queued work (a no-op on the CPU, which runs
/// synchronously).
pub fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
