//! A c10d process group and its store, reached through the C++ shim (`cxx/c10d_shim.cpp`).

use crate::DistError;
use crate::launch::Launch;
use std::ffi::{CString, c_char, c_void};
use std::ptr::NonNull;
use std::time::Duration;
use tch::{Device, Tensor};

#[allow(unsafe_code)]
unsafe extern "C" {
    fn detnas_c10d_init(
        host: *const c_char,
        port: u16,
        is_server: i32,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        prefix: *const c_char,
        group_name: *const c_char,
        nccl_library: *const c_char,
        out: *mut *mut c_void,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_free(ctx: *mut c_void, graceful: i32);
    fn detnas_c10d_allreduce_sum(
        ctx: *mut c_void,
        ts: *const *mut c_void,
        n: usize,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_broadcast(
        ctx: *mut c_void,
        ts: *const *mut c_void,
        n: usize,
        root: i32,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_barrier(ctx: *mut c_void, err: *mut c_char, errlen: usize) -> i32;
    fn detnas_c10d_all_gather(
        ctx: *mut c_void,
        t: *mut c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_store_set(
        ctx: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_store_get(
        ctx: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_store_check(
        ctx: *mut c_void,
        keys: *const *const c_char,
        n: usize,
        present: *mut i32,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_store_add(
        ctx: *mut c_void,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_store_delete(ctx: *mut c_void, key: *const c_char, err: *mut c_char, errlen: usize) -> i32;
    fn detnas_c10d_queue_push(
        ctx: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_queue_pop(
        ctx: *mut c_void,
        key: *const c_char,
        block: i32,
        value: *mut *mut u8,
        len: *mut usize,
        found: *mut i32,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn detnas_c10d_free_buffer(p: *mut u8);
    fn detnas_c10d_set_grad(var: *mut c_void, grad: *mut c_void, err: *mut c_char, errlen: usize) -> i32;
}

/// Sets the gradient of `var` to `grad` (same shape and kind).
///
/// # Errors
/// [`DistError::Collective`] when libtorch refuses it.
#[allow(unsafe_code)]
pub fn set_grad(var: &Tensor, grad: &Tensor) -> Result<(), DistError> {
    // SAFETY: both are live tch tensors for the call.
    call("set grad", |err, len| unsafe {
        detnas_c10d_set_grad(var.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void, err, len)
    })
}

const ERR_LEN: usize = 2048;

/// Runs a shim call with an error buffer; a non-zero return becomes [`DistError::Collective`].
#[allow(unsafe_code)]
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), DistError> {
    let mut buf = vec![0u8; ERR_LEN];
    let rc = f(buf.as_mut_ptr().cast(), ERR_LEN);
    if rc == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let msg = String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or("").to_string();
    Err(DistError::Collective(format!("{what}: {msg}")))
}

fn cstring(s: &str) -> Result<CString, DistError> {
    CString::new(s).map_err(|_| DistError::Launch(format!("'{s}' contains a NUL byte")))
}

/// A process group of the whole job: Gloo for CPU tensors, NCCL for CUDA tensors (when built
/// with it), and the job's key-value store. Collectives block until every rank has joined
/// them or the timeout has passed (then they fail, never hang).
pub struct ProcessGroup {
    ctx: NonNull<c_void>,
    launch: Launch,
    device: Device,
    timeout: Duration,
    /// Nanoseconds spent waiting in collectives (see [`ProcessGroup::collective_seconds`]).
    busy_ns: std::sync::atomic::AtomicU64,
    /// Set when a collective failed: the group is then dropped without a graceful shutdown.
    failed: std::sync::atomic::AtomicBool,
}

// SAFETY: c10d process groups and stores are thread-safe (torch.distributed calls them from
// any thread); the context is only freed in Drop.
#[allow(unsafe_code)]
unsafe impl Send for ProcessGroup {}
#[allow(unsafe_code)]
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {}, {:?})", self.launch.rank, self.launch.world, self.device)
    }
}

impl ProcessGroup {
    /// Joins the job described by `launch` on `device` (the CPU, or this rank's GPU): connects
    /// to (or serves) the store, then builds the group. `timeout` bounds every wait.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached within the timeout or a
    /// backend cannot be built; [`DistError::Launch`] for a CUDA device without the NCCL shim.
    #[allow(unsafe_code)]
    pub fn init(launch: &Launch, device: Device, timeout: Duration) -> Result<ProcessGroup, DistError> {
        let nccl = match device {
            Device::Cuda(_) => Some(crate::nccl_library()?),
            _ => None,
        };
        let host = cstring(&launch.master_addr)?;
        let prefix = cstring(&launch.store_prefix)?;
        let name = cstring("detnas")?;
        let nccl = nccl.map(|p| cstring(&p.to_string_lossy())).transpose()?;
        let mut ctx: *mut c_void = std::ptr::null_mut();
        call("joining the process group", |err, len| {
            // SAFETY: every pointer is valid for the call; `ctx` receives a new context.
            unsafe {
                detnas_c10d_init(
                    host.as_ptr(),
                    launch.master_port,
                    i32::from(launch.hosts_store),
                    launch.rank as i32,
                    launch.world as i32,
                    timeout.as_millis() as i64,
                    prefix.as_ptr(),
                    name.as_ptr(),
                    nccl.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()),
                    &mut ctx,
                    err,
                    len,
                )
            }
        })
        .map_err(|e| {
            DistError::Collective(format!(
                "rank {} of {} at {}:{}: {e}",
                launch.rank, launch.world, launch.master_addr, launch.master_port
            ))
        })?;
        let ctx = NonNull::new(ctx).ok_or_else(|| DistError::Collective("the shim returned no group".into()))?;
        Ok(ProcessGroup {
            ctx,
            launch: launch.clone(),
            device,
            timeout,
            busy_ns: Default::default(),
            failed: Default::default(),
        })
    }

    /// This process's place in the job.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// Global rank.
    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.launch.world
    }

    /// The device this rank computes on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The timeout of every wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Seconds this process has spent inside all-reduce, broadcast, barrier and all-gather
    /// calls since the group was built (the transfer and the wait for slower ranks; the
    /// backward of a differentiable all-gather runs inside autograd and is not counted).
    pub fn collective_seconds(&self) -> f64 {
        self.busy_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = std::time::Instant::now();
        let r = f();
        self.busy_ns.fetch_add(t.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// The error of an operation `what` that failed with `message` outside the group's own
    /// calls (e.g. a collective inside autograd's backward pass), in the group's words (naming
    /// the rank); marks the group failed.
    pub fn failure(&self, what: &str, message: &str) -> DistError {
        (self.fail(what))(DistError::Collective(message.to_string()))
    }

    fn fail(&self, what: &str) -> impl Fn(DistError) -> DistError + '_ {
        let what = what.to_string();
        move |e| {
            self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            let msg = match &e {
                DistError::Collective(m) => m.strip_prefix(&format!("{what}: ")).unwrap_or(m).to_string(),
                DistError::Launch(m) => m.clone(),
            };
            DistError::Collective(format!(
                "rank {} of {}: {what} failed: {msg} (when a rank stops, by a crash, a kill or running out of \
                 memory, the others fail like this: see every rank's log)",
                self.rank(),
                self.world()
            ))
        }
    }

    /// Sums each tensor in place over the ranks. Every rank passes tensors of the same shapes
    /// in the same order.
    ///
    /// # Errors
    /// [`DistError::Collective`] when a rank fails or the timeout passes.
    #[allow(unsafe_code)]
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        let ptrs: Vec<*mut c_void> = tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: the pointers are live tch tensors (`torch::Tensor*`) for the whole call.
        self.timed(|| {
            call("all-reduce", |err, len| unsafe {
                detnas_c10d_allreduce_sum(self.ctx.as_ptr(), ptrs.as_ptr(), ptrs.len(), err, len)
            })
        })
        .map_err(self.fail("all-reduce"))
    }

    /// Overwrites each tensor with rank `root`'s.
    ///
    /// # Errors
    /// [`DistError::Collective`] when a rank fails or the timeout passes.
    #[allow(unsafe_code)]
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), DistError> {
        let ptrs: Vec<*mut c_void> = tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: as in all_reduce_sum.
        self.timed(|| {
            call("broadcast", |err, len| unsafe {
                detnas_c10d_broadcast(self.ctx.as_ptr(), ptrs.as_ptr(), ptrs.len(), root as i32, err, len)
            })
        })
        .map_err(self.fail("broadcast"))
    }

    /// Waits for every rank.
    ///
    /// # Errors
    /// [`DistError::Collective`] when a rank fails or the timeout passes.
    #[allow(unsafe_code)]
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the context is live.
        self.timed(|| call("barrier", |err, len| unsafe { detnas_c10d_barrier(self.ctx.as_ptr(), err, len) }))
            .map_err(self.fail("barrier"))
    }

    /// The ranks' `t` stacked along dim 0 in rank order (`[world·n, …]` for `t` of `[n, …]`),
    /// differentiable: the gradient reaching each rank's slice flows back to that rank's `t`
    /// summed over the ranks (torch.distributed's functional autograd all-gather).
    ///
    /// # Errors
    /// [`DistError::Collective`] when a rank fails or the timeout passes.
    #[allow(unsafe_code)]
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: `t` is a live tensor; on success `out` is a new `torch::Tensor*` that tch
        // owns from here on.
        self.timed(|| {
            call("all-gather", |err, len| unsafe {
                detnas_c10d_all_gather(self.ctx.as_ptr(), t.as_ptr() as *mut c_void, &mut out, err, len)
            })
        })
        .map_err(self.fail("all-gather"))?;
        // SAFETY: `out` was allocated by the shim as a `torch::Tensor`, which is tch's C_tensor.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// Sets `key` in the job's store.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached.
    #[allow(unsafe_code)]
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let k = cstring(key)?;
        // SAFETY: valid pointers for the call.
        call("store set", |err, len| unsafe {
            detnas_c10d_store_set(self.ctx.as_ptr(), k.as_ptr(), value.as_ptr(), value.len(), err, len)
        })
    }

    /// Gets `key`, waiting for it up to the timeout.
    ///
    /// # Errors
    /// [`DistError::Collective`] when it is not set within the timeout.
    #[allow(unsafe_code)]
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>, DistError> {
        let k = cstring(key)?;
        let (mut p, mut n): (*mut u8, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: valid pointers; the buffer is copied and freed below.
        call(&format!("store get '{key}'"), |err, len| unsafe {
            detnas_c10d_store_get(self.ctx.as_ptr(), k.as_ptr(), &mut p, &mut n, err, len)
        })?;
        // SAFETY: the shim allocated `n` bytes at `p`.
        let v = unsafe { std::slice::from_raw_parts(p, n).to_vec() };
        // SAFETY: `p` came from the shim's malloc.
        unsafe { detnas_c10d_free_buffer(p) };
        Ok(v)
    }

    /// Whether every key of `keys` is set (no waiting).
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached.
    #[allow(unsafe_code)]
    pub fn store_check(&self, keys: &[&str]) -> Result<bool, DistError> {
        let ks: Vec<CString> = keys.iter().map(|k| cstring(k)).collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = ks.iter().map(|k| k.as_ptr()).collect();
        let mut present = 0i32;
        // SAFETY: valid pointers for the call.
        call("store check", |err, len| unsafe {
            detnas_c10d_store_check(self.ctx.as_ptr(), ptrs.as_ptr(), ptrs.len(), &mut present, err, len)
        })?;
        Ok(present != 0)
    }

    /// Adds `delta` to the integer at `key` (0 when unset); returns the new value.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached.
    #[allow(unsafe_code)]
    pub fn store_add(&self, key: &str, delta: i64) -> Result<i64, DistError> {
        let k = cstring(key)?;
        let mut v = 0i64;
        // SAFETY: valid pointers for the call.
        call("store add", |err, len| unsafe {
            detnas_c10d_store_add(self.ctx.as_ptr(), k.as_ptr(), delta, &mut v, err, len)
        })?;
        Ok(v)
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached.
    #[allow(unsafe_code)]
    pub fn store_delete(&self, key: &str) -> Result<(), DistError> {
        let k = cstring(key)?;
        // SAFETY: valid pointers for the call.
        call("store delete", |err, len| unsafe { detnas_c10d_store_delete(self.ctx.as_ptr(), k.as_ptr(), err, len) })
    }

    /// Appends `value` to queue `key`.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached.
    #[allow(unsafe_code)]
    pub fn queue_push(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let k = cstring(key)?;
        // SAFETY: valid pointers for the call.
        call("queue push", |err, len| unsafe {
            detnas_c10d_queue_push(self.ctx.as_ptr(), k.as_ptr(), value.as_ptr(), value.len(), err, len)
        })
    }

    /// Pops the oldest value of queue `key`, waiting up to the timeout when `block`; `None`
    /// when not blocking and the queue is empty.
    ///
    /// # Errors
    /// [`DistError::Collective`] when the store cannot be reached, or nothing arrives within
    /// the timeout while blocking.
    #[allow(unsafe_code)]
    pub fn queue_pop(&self, key: &str, block: bool) -> Result<Option<Vec<u8>>, DistError> {
        let k = cstring(key)?;
        let (mut p, mut n, mut found): (*mut u8, usize, i32) = (std::ptr::null_mut(), 0, 0);
        // SAFETY: valid pointers; a returned buffer is copied and freed below.
        call("queue pop", |err, len| unsafe {
            detnas_c10d_queue_pop(self.ctx.as_ptr(), k.as_ptr(), i32::from(block), &mut p, &mut n, &mut found, err, len)
        })?;
        if found == 0 {
            return Ok(None);
        }
        // SAFETY: the shim allocated `n` bytes at `p`.
        let v = unsafe { std::slice::from_raw_parts(p, n).to_vec() };
        // SAFETY: `p` came from the shim's malloc.
        unsafe { detnas_c10d_free_buffer(p) };
        Ok(Some(v))
    }
}

impl Drop for ProcessGroup {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let graceful = !self.failed.load(std::sync::atomic::Ordering::Relaxed) && !std::thread::panicking();
        // SAFETY: the context was created by detnas_c10d_init and is freed once.
        unsafe { detnas_c10d_free(self.ctx.as_ptr(), i32::from(graceful)) };
    }
}
