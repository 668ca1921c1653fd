//! The gradient all-reduce of data-parallel training: c10d's `Reducer`, the one torch's DistributedDataParallel
//! runs on. It buckets the trainable parameters as DDP does (1 MiB first, then `bucket_cap_mb`, in reverse order,
//! as gradients become ready during backward), all-reduces each bucket as soon as its gradients are in, overlapping
//! communication with the rest of backward, and leaves every parameter's `.grad` averaged over the ranks when
//! backward returns.

use std::ffi::c_void;

use tch::Tensor;

use super::group::{c10d_error, check, ffi, handles, ProcessGroup};
use crate::Result;

/// DDP's default bucket size.
pub const DEFAULT_BUCKET_CAP_MB: f64 = 25.0;

/// Averages the gradients of a fixed list of parameters over the group at every backward.
/// The C++ reducer holds its own reference to the group, so it outlives a dropped [`ProcessGroup`] safely.
pub struct GradientReducer {
    handle: *mut c_void,
    find_unused: bool,
}

// SAFETY: the reducer is driven from one thread at a time (the training loop); c10d runs its hooks on autograd's
// threads itself.
unsafe impl Send for GradientReducer {}

impl GradientReducer {
    /// A reducer over `params` (the trainable parameters, in the model's order, the same on every rank).
    /// `find_unused` searches each forward's outputs for parameters that took no part (a frozen or conditional
    /// branch); without it such a parameter stalls the next step, as in DDP.
    pub fn new(group: &ProcessGroup, params: &[&Tensor], bucket_cap_mb: f64, find_unused: bool) -> Result<Self> {
        let mut ptrs = handles(params);
        let cap = (bucket_cap_mb * 1024.0 * 1024.0) as i64;
        // SAFETY: a live group; `ptrs` holds live handles, which the reducer copies (sharing their storage).
        let handle = unsafe {
            ffi::kiln_c10d_reducer_new(group.handle(), ptrs.as_mut_ptr(), ptrs.len(), cap, i32::from(find_unused))
        };
        if handle.is_null() {
            return Err(c10d_error("building the gradient reducer"));
        }
        Ok(Self { handle, find_unused })
    }

    /// Call after the forward pass and before `backward()`: arms the reducer for this step. `outputs` are the
    /// forward's outputs (searched only when the reducer finds unused parameters).
    pub fn prepare_for_backward(&self, outputs: &[&Tensor]) -> Result<()> {
        let mut ptrs = if self.find_unused { handles(outputs) } else { Vec::new() };
        // SAFETY: a live reducer; `ptrs` holds live handles.
        let status = unsafe { ffi::kiln_c10d_reducer_prepare(self.handle, ptrs.as_mut_ptr(), ptrs.len()) };
        check(status, "preparing the gradient all-reduce")
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        // SAFETY: made by kiln_c10d_reducer_new, freed once.
        unsafe { ffi::kiln_c10d_reducer_free(self.handle) }
    }
}
