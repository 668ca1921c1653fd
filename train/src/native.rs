//! Safe wrappers over `native/torch_shim.cpp`: the libtorch calls tch 0.24 does not bind (channels-last memory
//! format, autocast with a chosen dtype, bf16 support, clearing a gradient, the default generators' state). A tch `Tensor` handle is an
//! `at::Tensor*` on the C++ side; the shim catches every C++ exception and keeps its message for
//! [`shim_error`].

use std::ffi::{c_int, c_void, CStr};

use tch::Tensor;

use crate::{Error, Result};

/// The dtype autocast computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmpDtype {
    Bf16,
    Fp16,
}

mod ffi {
    use std::ffi::{c_int, c_void};
    extern "C" {
        pub fn kiln_shim_last_error() -> *const std::ffi::c_char;
        pub fn kiln_shim_to_channels_last_(tensor: *mut c_void) -> c_int;
        pub fn kiln_shim_channels_last(tensor: *mut c_void) -> *mut c_void;
        pub fn kiln_shim_is_channels_last(tensor: *mut c_void) -> c_int;
        pub fn kiln_shim_autocast_enter(
            cuda: c_int,
            bf16: c_int,
            prev_enabled: *mut c_int,
            prev_bf16: *mut c_int,
        ) -> c_int;
        pub fn kiln_shim_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_bf16: c_int) -> c_int;
        pub fn kiln_shim_cuda_bf16_supported() -> c_int;
        pub fn kiln_shim_clear_grad(tensor: *mut c_void);
        pub fn kiln_shim_rng_state(cuda: c_int) -> *mut c_void;
        pub fn kiln_shim_set_rng_state(cuda: c_int, state: *mut c_void) -> c_int;
    }
}

/// Held while a run seeds libtorch's process-wide generator and initialises its model, and by tests that need
/// the generator to themselves.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn shim_error(what: &str) -> Error {
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let message = unsafe { CStr::from_ptr(ffi::kiln_shim_last_error()) }.to_string_lossy().into_owned();
    Error::InvalidSetting { key: what.into(), reason: message }
}

/// Whether the CUDA GPU computes bf16 natively.
pub fn cuda_bf16_supported() -> bool {
    // SAFETY: no arguments; the shim catches every exception.
    tch::Cuda::is_available() && unsafe { ffi::kiln_shim_cuda_bf16_supported() } == 1
}

/// Drops `tensor`'s gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward writes a fresh one
/// instead of zero-filling and then accumulating into the old one.
pub fn clear_grad(tensor: &Tensor) {
    // SAFETY: a live tch handle is an `at::Tensor*`; the shim only resets its grad.
    unsafe { ffi::kiln_shim_clear_grad(tensor.as_ptr() as *mut c_void) }
}

/// Runs `f` with autocast to `dtype` on CUDA (`cuda`) or the CPU; `None` runs it as it is.
pub fn autocast<T>(dtype: Option<AmpDtype>, cuda: bool, f: impl FnOnce() -> T) -> T {
    let Some(dtype) = dtype else { return f() };
    let (mut prev_enabled, mut prev_bf16) = (0, 0);
    let bf16 = c_int::from(dtype == AmpDtype::Bf16);
    // SAFETY: plain ints; the shim catches every exception. Entering cannot fail on a working libtorch; if it
    // does, `f` runs without autocast (a slower but correct fp32 pass).
    let entered =
        unsafe { ffi::kiln_shim_autocast_enter(c_int::from(cuda), bf16, &mut prev_enabled, &mut prev_bf16) } == 0;
    let result = f();
    if entered {
        // SAFETY: as above.
        unsafe { ffi::kiln_shim_autocast_exit(c_int::from(cuda), prev_enabled, prev_bf16) };
    }
    result
}

/// Re-lays `tensor` out channels-last in place (4-D tensors only; others are left alone).
pub fn to_channels_last_in_place(tensor: &Tensor) -> Result<()> {
    // SAFETY: a live tch handle is an `at::Tensor*`; the shim only calls its methods.
    let status = unsafe { ffi::kiln_shim_to_channels_last_(tensor.as_ptr() as *mut c_void) };
    if status == 0 {
        Ok(())
    } else {
        Err(shim_error("channels_last"))
    }
}

/// A channels-last copy of a 4-D tensor.
pub fn channels_last(tensor: &Tensor) -> Result<Tensor> {
    // SAFETY: as above; a non-null result is a new `at::Tensor*` that the returned Tensor owns.
    let ptr = unsafe { ffi::kiln_shim_channels_last(tensor.as_ptr() as *mut c_void) };
    if ptr.is_null() {
        return Err(shim_error("channels_last"));
    }
    Ok(unsafe { Tensor::from_ptr(ptr as *mut _) })
}

/// Whether `tensor` is laid out channels-last.
pub fn is_channels_last(tensor: &Tensor) -> bool {
    // SAFETY: as above.
    unsafe { ffi::kiln_shim_is_channels_last(tensor.as_ptr() as *mut c_void) == 1 }
}

/// Which default random generator: the CPU's, or that of a CUDA device.
fn generator_index(device: tch::Device) -> c_int {
    match device {
        tch::Device::Cuda(index) => index as c_int,
        _ => -1,
    }
}

/// The state of `device`'s default random generator (`torch.get_rng_state()`, or `torch.cuda.get_rng_state(i)`
/// for a CUDA device): a CPU uint8 tensor that [`set_rng_state`] restores.
pub fn rng_state(device: tch::Device) -> Result<Tensor> {
    // SAFETY: a plain int; a non-null result is a new `at::Tensor*` that the returned Tensor owns.
    let ptr = unsafe { ffi::kiln_shim_rng_state(generator_index(device)) };
    if ptr.is_null() {
        return Err(shim_error("rng_state"));
    }
    Ok(unsafe { Tensor::from_ptr(ptr as *mut _) })
}

/// Restores a state taken by [`rng_state`] into `device`'s default generator.
pub fn set_rng_state(device: tch::Device, state: &Tensor) -> Result<()> {
    // SAFETY: a live tch handle is an `at::Tensor*`; the shim copies its contents into the generator.
    let status = unsafe { ffi::kiln_shim_set_rng_state(generator_index(device), state.as_ptr() as *mut c_void) };
    if status == 0 {
        Ok(())
    } else {
        Err(shim_error("rng_state"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_generator_state_repeats_the_same_draws() {
        let _generator = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let state = rng_state(tch::Device::Cpu).unwrap();
        assert_eq!(state.kind(), tch::Kind::Uint8);
        let first = Tensor::rand([16], (tch::Kind::Float, tch::Device::Cpu));
        set_rng_state(tch::Device::Cpu, &state).unwrap();
        let again = Tensor::rand([16], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(Vec::<f32>::try_from(&first).unwrap(), Vec::<f32>::try_from(&again).unwrap());
        let bad = Tensor::zeros([3], (tch::Kind::Uint8, tch::Device::Cpu));
        assert!(set_rng_state(tch::Device::Cpu, &bad).is_err(), "a state of the wrong size is refused");
    }
}
