//! Kineto traces from Rust (libtorch's profiler, as `torch.profiler.profile` runs it): a
//! Chrome trace JSON of a region (open in `chrome://tracing` or Perfetto) and how many times
//! each operator ran in it, on the CPU and (with CUPTI) on CUDA.
//!
//! The operator counts are what the tests use to keep the step free of hidden host
//! round-trips (operators that synchronise a GPU: `aten::nonzero`, `aten::_local_scalar_dense`,
//! …) and of per-image loops (the operator count of a step must not grow with the batch).
//! One profiler runs at a time in a process; it records the operators of the thread that
//! started it.

use crate::DeviceError;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

#[allow(unsafe_code)]
unsafe extern "C" {
    fn detnas_profiler_start(cuda: c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn detnas_profiler_stop(path: *const c_char, ops: *mut *mut c_char, err: *mut c_char, errlen: usize) -> c_int;
    fn detnas_free(p: *mut c_char);
}

/// Calls a shim function with an error buffer.
#[allow(unsafe_code)]
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), DeviceError> {
    let mut err = vec![0u8; 1024];
    if f(err.as_mut_ptr().cast(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates the message within the buffer.
    let msg = unsafe { CStr::from_ptr(err.as_ptr().cast()) };
    Err(DeviceError::Torch(msg.to_string_lossy().into_owned()))
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Operators that make a CUDA device synchronise with the host (or imply a host read).
pub const SYNCING_OPS: [&str; 9] = [
    "aten::nonzero",
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
    "aten::equal",
    "aten::is_nonzero",
    "aten::nonzero_static",
];

/// How many times each operator ran in a profiled region: every call (`.0`, nested calls
/// included), and the calls the profiled code made itself, not inside another operator
/// (`top`; autograd's backward functions count as such calls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpCounts(pub BTreeMap<String, u64>, pub BTreeMap<String, u64>);

impl OpCounts {
    /// Calls made by the profiled code itself (not inside another operator), all names.
    pub fn top_total(&self) -> u64 {
        self.1.values().sum()
    }

    /// The calls made by the profiled code itself, by name.
    pub fn top(&self) -> &BTreeMap<String, u64> {
        &self.1
    }

    /// Calls of `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Calls of every `aten::` operator (nested calls included).
    pub fn aten_total(&self) -> u64 {
        self.0.iter().filter(|(k, _)| k.starts_with("aten::")).map(|(_, v)| v).sum()
    }

    /// The operators of [`SYNCING_OPS`] that ran, with their counts.
    pub fn syncing(&self) -> Vec<(String, u64)> {
        SYNCING_OPS.iter().filter_map(|&n| self.0.get(n).map(|&c| (n.to_string(), c))).collect()
    }
}

/// A running profiler; [`Profiler::stop`] ends it.
#[derive(Debug)]
pub struct Profiler {
    _one: MutexGuard<'static, ()>,
    stopped: bool,
}

impl Profiler {
    /// Starts profiling the calling thread's operators (and, with `cuda`, the CUDA kernels,
    /// copies and runtime calls). Waits while another profiler of the process runs.
    ///
    /// # Errors
    /// [`DeviceError::Torch`] when libtorch cannot start Kineto.
    #[allow(unsafe_code)]
    pub fn start(cuda: bool) -> Result<Profiler, DeviceError> {
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: a plain C function with a valid error buffer.
        call(|e, n| unsafe { detnas_profiler_start(c_int::from(cuda), e, n) })?;
        Ok(Profiler { _one: one, stopped: false })
    }

    /// Stops profiling; writes the Chrome trace to `trace` when given and returns the
    /// operator counts.
    ///
    /// # Errors
    /// [`DeviceError::Torch`] when libtorch fails to collect or write the trace.
    #[allow(unsafe_code)]
    pub fn stop(mut self, trace: Option<&Path>) -> Result<OpCounts, DeviceError> {
        self.stopped = true;
        let path = trace
            .map(|p| CString::new(p.to_string_lossy().as_bytes()))
            .transpose()
            .map_err(|e| DeviceError::Torch(format!("trace path: {e}")))?;
        let mut ops: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid (possibly null) path, an out-pointer and an error buffer.
        call(|e, n| unsafe {
            detnas_profiler_stop(path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()), &mut ops, e, n)
        })?;
        let (mut counts, mut top) = (BTreeMap::new(), BTreeMap::new());
        if !ops.is_null() {
            // SAFETY: the shim returns a NUL-terminated malloc'd string, freed right after.
            let text = unsafe { CStr::from_ptr(ops) }.to_string_lossy().into_owned();
            // SAFETY: allocated by the shim with malloc.
            unsafe { detnas_free(ops) };
            for line in text.lines() {
                let mut f = line.splitn(2, '\t');
                let (Some(which), Some(rest)) = (f.next(), f.next()) else { continue };
                if let Some((name, n)) = rest.rsplit_once('\t') {
                    let map = if which == "T" { &mut top } else { &mut counts };
                    map.insert(name.to_string(), n.parse().unwrap_or(0));
                }
            }
        }
        Ok(OpCounts(counts, top))
    }
}

impl Drop for Profiler {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if !self.stopped {
            let mut ops: *mut c_char = std::ptr::null_mut();
            // SAFETY: as in `stop`; the result is discarded.
            let _ = call(|e, n| unsafe { detnas_profiler_stop(std::ptr::null(), &mut ops, e, n) });
            if !ops.is_null() {
                // SAFETY: allocated by the shim with malloc.
                unsafe { detnas_free(ops) };
            }
        }
    }
}

/// Profiles `f` on the calling thread; returns its result and the operator counts.
///
/// # Errors
/// As [`Profiler::start`] and [`Profiler::stop`].
pub fn ops_of<R>(cuda: bool, trace: Option<&Path>, f: impl FnOnce() -> R) -> Result<(R, OpCounts), DeviceError> {
    let p = Profiler::start(cuda)?;
    let r = f();
    Ok((r, p.stop(trace)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn counts_operators_and_writes_a_chrome_trace() {
        let dir = std::env::temp_dir().join(format!("detnas-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("trace.json");
        let x = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let (_, ops) = ops_of(false, Some(&trace), || {
            let y = (&x + 1.0).matmul(&x);
            let _ = y.gt(1.0).nonzero();
            y.sum(Kind::Float)
        })
        .unwrap();
        assert_eq!(ops.count("aten::matmul"), 1, "{ops:?}");
        assert_eq!(ops.count("aten::nonzero"), 1);
        assert_eq!(ops.syncing(), vec![("aten::nonzero".to_string(), 1)]);
        assert!(ops.aten_total() >= 4);
        // `matmul` calls `mm` inside: only the former is the code's own call.
        assert_eq!(ops.top().get("aten::matmul"), Some(&1));
        assert_eq!(ops.top().get("aten::mm"), None, "{:?}", ops.top());
        assert!(ops.count("aten::mm") >= 1);
        let text = std::fs::read_to_string(&trace).unwrap();
        assert!(text.contains("traceEvents") && text.contains("aten::matmul"), "{}", &text[..text.len().min(300)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
