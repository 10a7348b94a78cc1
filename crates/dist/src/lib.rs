//! Multi-process runs on PyTorch's c10d (the runtime under torch.distributed and DDP), which
//! ships in the same torch wheel as libtorch: the TCP store, the Gloo backend for CPU tensors
//! and the NCCL backend for CUDA tensors, reached through a small C++ shim compiled by this
//! crate's build script. No transport of its own.
//!
//! * [`launch`] — who this process is, from torchrun's, Slurm's or Open MPI's environment;
//! * [`ProcessGroup`] — the group of the whole job: all-reduce, broadcast, barrier, a
//!   differentiable all-gather (for synchronized BatchNorm) and the job's key-value store
//!   (with queues, for handing out search candidates);
//! * [`GradReducer`] — gradients summed over the ranks in flat buckets.
//!
//! Depends on tch only (and links libtorch_cpu's c10d; the NCCL part is a library of its own,
//! loaded only when a rank computes on a GPU, so CPU processes never load libtorch_cuda).

pub mod group;
pub mod launch;

pub use group::{ProcessGroup, set_grad};
pub use launch::{Launch, Launcher};

use std::path::PathBuf;
use tch::{Kind, Tensor};

/// A failure to join or run a multi-process job.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's environment is incomplete or inconsistent (exit code 2).
    #[error("distributed launch: {0}")]
    Launch(String),
    /// A collective, the store or a backend failed: a rank died, the network broke or the
    /// timeout passed (exit code 1).
    #[error("distributed: {0}")]
    Collective(String),
}

impl DistError {
    /// 2 for a launch problem, 1 for a failure while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            DistError::Launch(_) => 2,
            DistError::Collective(_) => 1,
        }
    }
}

/// The NCCL shim (`libdetnas_c10d_nccl.so`): beside the running executable, else where the
/// build script wrote it.
///
/// # Errors
/// [`DistError::Launch`] when it was not built (no CUDA headers at build time) or is missing.
pub fn nccl_library() -> Result<PathBuf, DistError> {
    const NAME: &str = "libdetnas_c10d_nccl.so";
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(NAME)));
    let built = option_env!("DETNAS_NCCL_SHIM").map(PathBuf::from);
    beside.into_iter().chain(built).find(|p| p.is_file()).ok_or_else(|| {
        DistError::Launch(format!(
            "{NAME} was not found beside the executable: this build has no NCCL support (build it where the CUDA \
             headers are installed: scripts/env.sh installs them)"
        ))
    })
}

/// The CUDA caching allocator's peak, read through the CUDA-side shim
/// (`libdetnas_c10d_nccl.so`, which links libtorch_cuda).
pub mod cuda_memory {
    use std::ffi::{CString, c_int};
    use std::sync::OnceLock;

    struct Fns {
        max_allocated: unsafe extern "C" fn(c_int) -> i64,
        reset_peak: unsafe extern "C" fn(c_int) -> c_int,
        sync_start: unsafe extern "C" fn() -> c_int,
        sync_count: unsafe extern "C" fn() -> i64,
        sync_stop: unsafe extern "C" fn() -> c_int,
    }

    /// The shim's functions; `None` without the shim or where it cannot be loaded (no CUDA).
    #[allow(unsafe_code)]
    fn fns() -> Option<&'static Fns> {
        static FNS: OnceLock<Option<Fns>> = OnceLock::new();
        FNS.get_or_init(|| {
            let path = CString::new(super::nccl_library().ok()?.to_string_lossy().as_bytes()).ok()?;
            // SAFETY: dlopen/dlsym with valid C strings; the handle is never closed, so the
            // function pointers stay valid for the process's life.
            unsafe {
                let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if h.is_null() {
                    return None;
                }
                let m = libc::dlsym(h, c"detnas_cuda_max_allocated".as_ptr());
                let r = libc::dlsym(h, c"detnas_cuda_reset_peak".as_ptr());
                let s0 = libc::dlsym(h, c"detnas_cuda_sync_count_start".as_ptr());
                let s1 = libc::dlsym(h, c"detnas_cuda_sync_count".as_ptr());
                let s2 = libc::dlsym(h, c"detnas_cuda_sync_count_stop".as_ptr());
                if [m, r, s0, s1, s2].iter().any(|p| p.is_null()) {
                    return None;
                }
                type Void = *mut libc::c_void;
                Some(Fns {
                    max_allocated: std::mem::transmute::<Void, unsafe extern "C" fn(c_int) -> i64>(m),
                    reset_peak: std::mem::transmute::<Void, unsafe extern "C" fn(c_int) -> c_int>(r),
                    sync_start: std::mem::transmute::<Void, unsafe extern "C" fn() -> c_int>(s0),
                    sync_count: std::mem::transmute::<Void, unsafe extern "C" fn() -> i64>(s1),
                    sync_stop: std::mem::transmute::<Void, unsafe extern "C" fn() -> c_int>(s2),
                })
            }
        })
        .as_ref()
    }

    /// Peak bytes the CUDA caching allocator has handed out on GPU `device` since the last
    /// [`reset_peak`] (`torch.cuda.max_memory_allocated`), MiB; `None` without CUDA.
    #[allow(unsafe_code)]
    pub fn peak_mib(device: usize) -> Option<f64> {
        let f = fns()?;
        // SAFETY: a plain C function of the shim.
        let b = unsafe { (f.max_allocated)(device as c_int) };
        (b >= 0).then(|| b as f64 / (1024.0 * 1024.0))
    }

    /// [`peak_mib`] of `device` when it is a GPU.
    pub fn peak_of(device: tch::Device) -> Option<f64> {
        match device {
            tch::Device::Cuda(i) => peak_mib(i),
            _ => None,
        }
    }

    /// [`reset_peak`] of `device` when it is a GPU.
    pub fn reset_of(device: tch::Device) {
        if let tch::Device::Cuda(i) = device {
            reset_peak(i);
        }
    }

    /// Starts counting the process's CUDA host synchronisations (c10's sync-debug mode in
    /// "warn", with a counting warning handler); `false` without CUDA.
    #[allow(unsafe_code)]
    pub fn start_sync_count() -> bool {
        // SAFETY: a plain C function of the shim.
        fns().is_some_and(|f| unsafe { (f.sync_start)() } == 0)
    }

    /// The synchronisations counted since [`start_sync_count`]; `None` without CUDA.
    #[allow(unsafe_code)]
    pub fn sync_count() -> Option<i64> {
        // SAFETY: a plain C function of the shim.
        fns().map(|f| unsafe { (f.sync_count)() })
    }

    /// Stops counting.
    #[allow(unsafe_code)]
    pub fn stop_sync_count() {
        if let Some(f) = fns() {
            // SAFETY: a plain C function of the shim.
            let _ = unsafe { (f.sync_stop)() };
        }
    }

    /// Resets that peak; `false` without CUDA.
    #[allow(unsafe_code)]
    pub fn reset_peak(device: usize) -> bool {
        // SAFETY: a plain C function of the shim.
        fns().is_some_and(|f| unsafe { (f.reset_peak)(device as c_int) } == 0)
    }
}

/// Sums the gradients of a set of variables over the ranks, in flat buckets of at most
/// `bucket_bytes` (one collective per bucket instead of one per tensor, as DDP does).
/// A variable takes part when some rank has a gradient for it (a rank without one adds
/// zeros and receives the sum); a variable no rank has a gradient for keeps none, as in a
/// single process.
#[derive(Debug)]
pub struct GradReducer {
    bucket_bytes: usize,
}

impl GradReducer {
    /// Buckets of at most `bucket_bytes` (DDP's default is 25 MiB).
    pub fn new(bucket_bytes: usize) -> GradReducer {
        GradReducer { bucket_bytes: bucket_bytes.max(1) }
    }

    /// Replaces each variable's gradient by its sum over the ranks. Every rank passes the same
    /// variables in the same order (the sampled path's, which every rank shares).
    ///
    /// # Errors
    /// [`DistError::Collective`] when a rank fails or the timeout passes.
    pub fn all_reduce_sum(&self, pg: &ProcessGroup, vars: &[&Tensor]) -> Result<(), DistError> {
        let defined: Vec<f32> = vars.iter().map(|v| if v.grad().defined() { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_slice(&defined).to_device(pg.device());
        pg.all_reduce_sum(&[&mask])?;
        let mask = Vec::<f32>::try_from(mask.to_device(tch::Device::Cpu))
            .map_err(|e| DistError::Collective(format!("gradient mask: {e}")))?;
        let vars: Vec<&Tensor> = vars.iter().zip(&mask).filter(|(_, m)| **m > 0.0).map(|(v, _)| *v).collect();
        let mut start = 0;
        while start < vars.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < vars.len() && (end == start || bytes + 4 * vars[end].numel() <= self.bucket_bytes) {
                bytes += 4 * vars[end].numel();
                end += 1;
            }
            reduce_bucket(pg, &vars[start..end])?;
            start = end;
        }
        Ok(())
    }
}

fn reduce_bucket(pg: &ProcessGroup, vars: &[&Tensor]) -> Result<(), DistError> {
    tch::no_grad(|| {
        let flat: Vec<Tensor> = vars
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    g.to_kind(Kind::Float).reshape([-1])
                } else {
                    v.zeros_like().to_kind(Kind::Float).reshape([-1])
                }
            })
            .collect();
        let bucket = Tensor::cat(&flat, 0);
        pg.all_reduce_sum(&[&bucket])?;
        let mut offset = 0;
        for v in vars {
            let n = v.numel() as i64;
            let summed = bucket.narrow(0, offset, n).view_as(v).to_kind(v.kind());
            let mut g = v.grad();
            if g.defined() {
                g.copy_(&summed);
            } else {
                // A variable this rank did not use: it gets the others' gradient.
                group::set_grad(v, &summed.copy())?;
            }
            offset += n;
        }
        Ok(())
    })
}
