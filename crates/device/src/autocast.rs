//! Mixed precision: bfloat16 autocast of a region (`runtime.precision = "bf16"`), as
//! `torch.autocast(device_type, dtype=torch.bfloat16)`: inside it, matrix multiplications and
//! convolutions run in bf16 while reductions, losses and normalisations keep fp32 (ATen's
//! autocast op lists). bf16 has fp32's exponent range, so training needs no loss scaling.
//! Callers cast what must stay exact (head outputs before losses, box decoding, NMS) to fp32.

use crate::profile::call;
use crate::{DeviceError, Precision};
use std::ffi::{c_char, c_int};
use tch::Device;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn detnas_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn detnas_autocast_exit(
        device_type: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// An active autocast region on this thread; restores the previous state when dropped.
#[must_use = "autocast ends when the guard is dropped"]
#[derive(Debug)]
pub struct Autocast {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

/// Enters bf16 autocast for `device` when `precision` asks for it (`None` for fp32).
///
/// # Errors
/// [`DeviceError::Torch`] when libtorch refuses.
#[allow(unsafe_code)]
pub fn enter(device: Device, precision: Precision) -> Result<Option<Autocast>, DeviceError> {
    if precision == Precision::Fp32 {
        return Ok(None);
    }
    let device_type = c_int::from(device != Device::Cpu);
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: plain C function with valid out-pointers and an error buffer.
    call(|e, n| unsafe { detnas_autocast_enter(device_type, 0, &mut prev_enabled, &mut prev_dtype, e, n) })?;
    Ok(Some(Autocast { device_type, prev_enabled, prev_dtype }))
}

impl Drop for Autocast {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: restores the state saved by `enter` on this thread.
        let _ =
            call(|e, n| unsafe { detnas_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype, e, n) });
    }
}

/// Runs `f` under this thread's precision setting on `device`.
///
/// # Errors
/// As [`enter`].
pub fn run<R>(device: Device, f: impl FnOnce() -> R) -> Result<R, DeviceError> {
    let _guard = enter(device, crate::settings::precision())?;
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn bf16_region_casts_matmul_and_restores() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        let inside = {
            let _g = enter(Device::Cpu, Precision::Bf16).unwrap();
            a.matmul(&a).kind()
        };
        assert_eq!(inside, Kind::BFloat16);
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        assert!(enter(Device::Cpu, Precision::Fp32).unwrap().is_none());
    }
}
