//! Moving tensor data between the host and a device, counted.
//!
//! On a GPU every read of tensor data by the host waits for the queued work to finish (a
//! device synchronisation), and so does an upload from pageable memory. This module is the
//! only place in `nn`, `detect` and `train` that does either (a source test enforces it), so
//! every host round-trip has a name (its call site) and is counted:
//!
//! * [`read`] copies a tensor to a `Vec` (one synchronisation on a GPU);
//! * [`read_for_host_kernel`] is the same for a host kernel (Rust NMS, the direct RoIAlign),
//!   which reads by design and runs where reads are free (the CPU, see
//!   [`crate::settings::Kernels`]); it is counted apart (`kernel_reads`), so that a step's
//!   `reads` are the ones that would synchronise a GPU whatever the kernels;
//! * [`upload`] makes a device tensor from host data: on CUDA through pinned memory with a
//!   non-blocking copy, so it does not wait for the device.
//!
//! Counts are kept per thread ([`counts`], [`sites`]: what a test or a benchmark repetition
//! did on its own thread) and for the whole process ([`process_counts`]). They count calls on
//! every device, the CPU included: code that reads the host on the CPU would synchronise on a
//! GPU, which is what the tests hold down.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::kind::Element;
use tch::{Device, TchError, Tensor};

/// Host transfers: calls and bytes, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Reads of tensor data by the host (host kernels' excepted).
    pub reads: u64,
    /// Bytes those reads copied to the host.
    pub read_bytes: u64,
    /// Reads by host kernels.
    pub kernel_reads: u64,
    /// Tensors made from host data.
    pub uploads: u64,
    /// Bytes those uploads copied from the host.
    pub upload_bytes: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            reads: self.reads - o.reads,
            read_bytes: self.read_bytes - o.read_bytes,
            kernel_reads: self.kernel_reads - o.kernel_reads,
            uploads: self.uploads - o.uploads,
            upload_bytes: self.upload_bytes - o.upload_bytes,
        }
    }
}

thread_local! {
    static LOCAL: RefCell<(Counts, BTreeMap<&'static str, Counts>)> = RefCell::new(Default::default());
}
static READS: AtomicU64 = AtomicU64::new(0);
static KERNEL_READS: AtomicU64 = AtomicU64::new(0);
static READ_BYTES: AtomicU64 = AtomicU64::new(0);
static UPLOADS: AtomicU64 = AtomicU64::new(0);
static UPLOAD_BYTES: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Read,
    KernelRead,
    Upload,
}

fn record(site: &'static str, kind: Kind, bytes: u64) {
    let add = |c: &mut Counts| {
        if kind == Kind::KernelRead {
            c.kernel_reads += 1;
        } else if kind == Kind::Read {
            c.reads += 1;
            c.read_bytes += bytes;
        } else {
            c.uploads += 1;
            c.upload_bytes += bytes;
        }
    };
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        add(&mut l.0);
        add(l.1.entry(site).or_default());
    });
    match kind {
        Kind::Read => {
            READS.fetch_add(1, Ordering::Relaxed);
            READ_BYTES.fetch_add(bytes, Ordering::Relaxed);
        }
        Kind::KernelRead => {
            KERNEL_READS.fetch_add(1, Ordering::Relaxed);
        }
        Kind::Upload => {
            UPLOADS.fetch_add(1, Ordering::Relaxed);
            UPLOAD_BYTES.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// This thread's transfers so far.
pub fn counts() -> Counts {
    LOCAL.with(|l| l.borrow().0)
}

/// This thread's transfers so far by call site.
pub fn sites() -> BTreeMap<&'static str, Counts> {
    LOCAL.with(|l| l.borrow().1.clone())
}

/// The transfers of every thread of the process so far.
pub fn process_counts() -> Counts {
    Counts {
        reads: READS.load(Ordering::Relaxed),
        read_bytes: READ_BYTES.load(Ordering::Relaxed),
        kernel_reads: KERNEL_READS.load(Ordering::Relaxed),
        uploads: UPLOADS.load(Ordering::Relaxed),
        upload_bytes: UPLOAD_BYTES.load(Ordering::Relaxed),
    }
}

/// The transfers `f` makes on this thread, with its result.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    let before = counts();
    let r = f();
    (r, counts() - before)
}

/// The elements of `t` (any shape, flattened in row-major order) as `T`, converted on the
/// tensor's device first when its kind differs. One host read.
///
/// # Errors
/// A libtorch error from the copy (e.g. a failed CUDA operation surfacing here).
pub fn read<T: Element>(t: &Tensor, site: &'static str) -> Result<Vec<T>, TchError> {
    copy_out(t, site, Kind::Read)
}

/// [`read`] for a host kernel (counted as `kernel_reads`).
///
/// # Errors
/// As [`read`].
pub fn read_for_host_kernel<T: Element>(t: &Tensor, site: &'static str) -> Result<Vec<T>, TchError> {
    copy_out(t, site, Kind::KernelRead)
}

/// Runs host kernel `f` on the elements of `t` (flattened, row-major) as a slice: without a copy
/// when `t` is a contiguous CPU tensor of kind `T` (a view of its memory for the duration of
/// `f`), else on a copy ([`read_for_host_kernel`]). Counted as a host kernel's read.
///
/// # Errors
/// As [`read`].
#[allow(unsafe_code)]
pub fn with_slice_for_host_kernel<T: Element, R>(
    t: &Tensor,
    site: &'static str,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R, TchError> {
    if t.device() == Device::Cpu && t.kind() == T::KIND && t.is_contiguous() {
        let n = t.numel();
        record(site, Kind::KernelRead, (n * std::mem::size_of::<T>()) as u64);
        if n == 0 {
            return Ok(f(&[]));
        }
        // SAFETY: a contiguous CPU tensor of `n` elements of kind `T` starts at `data_ptr`; `t`
        // (borrowed for the whole call) keeps its storage alive, and `f` only reads it.
        let slice = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, n) };
        return Ok(f(slice));
    }
    let v = read_for_host_kernel::<T>(t, site)?;
    Ok(f(&v))
}

fn copy_out<T: Element>(t: &Tensor, site: &'static str, kind: Kind) -> Result<Vec<T>, TchError> {
    let t = if t.kind() == T::KIND { t.shallow_clone() } else { t.f_to_kind(T::KIND)? };
    let host = t.f_to_device(Device::Cpu)?.f_contiguous()?.f_reshape([-1])?;
    let n = host.numel();
    let mut v = vec![T::ZERO; n];
    host.f_copy_data(&mut v, n)?;
    record(site, kind, (v.len() * std::mem::size_of::<T>()) as u64);
    Ok(v)
}

/// The single value of a one-element tensor as `f64`. One host read.
///
/// # Errors
/// As [`read`]; [`TchError::Shape`] when `t` does not hold exactly one element.
pub fn scalar(t: &Tensor, site: &'static str) -> Result<f64, TchError> {
    let v = read::<f64>(t, site)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(TchError::Shape(format!("{site}: expected one element, the tensor holds {}", v.len()))),
    }
}

/// A tensor of `shape` on `device` holding `data` (row-major). On CUDA the data goes through
/// pinned memory with a non-blocking copy, which does not wait for the device's queued work.
///
/// # Panics
/// When `shape` does not hold `data.len()` elements.
pub fn upload<T: Element>(data: &[T], shape: &[i64], device: Device, site: &'static str) -> Tensor {
    record(site, Kind::Upload, std::mem::size_of_val(data) as u64);
    let t = Tensor::from_slice(data).reshape(shape);
    match device {
        Device::Cpu => t,
        d => t.pin_memory(d).to_device_(d, T::KIND, true, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_transfer_by_site() {
        let before = counts();
        let t = upload(&[1f32, 2.0, 3.0, 4.0], &[2, 2], Device::Cpu, "test.up");
        assert_eq!(t.size(), vec![2, 2]);
        let v: Vec<f64> = read(&t.transpose(0, 1), "test.read").unwrap();
        assert_eq!(v, vec![1.0, 3.0, 2.0, 4.0]);
        assert_eq!(scalar(&t.sum(tch::Kind::Float), "test.read").unwrap(), 10.0);
        assert!(scalar(&t, "test.read").is_err());
        let d = counts() - before;
        assert_eq!(d, Counts { reads: 3, read_bytes: 32 + 8 + 32, kernel_reads: 0, uploads: 1, upload_bytes: 16 });
        let _: Vec<u8> = read_for_host_kernel(&t.gt(2.0), "test.kernel").unwrap();
        assert_eq!((counts() - before).kernel_reads, 1);
        assert_eq!((counts() - before).reads, 3);
        // A contiguous CPU tensor is read in place; another layout through a copy; same values.
        let direct = with_slice_for_host_kernel(&t, "test.kernel", |s: &[f32]| s.to_vec()).unwrap();
        let copied = with_slice_for_host_kernel(&t.transpose(0, 1), "test.kernel", |s: &[f32]| s.to_vec()).unwrap();
        assert_eq!((direct, copied), (vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 3.0, 2.0, 4.0]));
        assert_eq!((counts() - before).kernel_reads, 3);
        assert_eq!(sites()["test.read"].reads, 3);
        let ((), m) = measure(|| {
            let _ = upload(&[1i64], &[1], Device::Cpu, "test.up");
        });
        assert_eq!(m, Counts { uploads: 1, upload_bytes: 8, ..Counts::default() });
        assert!(process_counts().reads >= 3);
    }
}
