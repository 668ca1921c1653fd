//! A process group on libtorch's c10d: a TCPStore (hosted by rank 0 unless torchrun's agent hosts it) and Gloo's
//! collectives on CPU tensors. Every call waits for its result; a rank that died or a peer that never comes makes it
//! fail after the group's timeout with c10d's message, never hang.

use std::ffi::{c_int, c_void, CStr, CString};
use std::time::Duration;

use tch::Tensor;

use super::launch::DistEnv;
use crate::{Error, Result};

pub(super) mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn kiln_c10d_last_error() -> *const c_char;
        pub fn kiln_c10d_group_new(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            host_store: c_int,
            prefix: *const c_char,
            timeout_ms: i64,
        ) -> *mut c_void;
        pub fn kiln_c10d_group_free(group: *mut c_void);
        pub fn kiln_c10d_all_reduce(group: *mut c_void, tensor: *mut c_void, op: c_int) -> c_int;
        pub fn kiln_c10d_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int) -> c_int;
        pub fn kiln_c10d_all_gather(
            group: *mut c_void,
            input: *mut c_void,
            outputs: *mut *mut c_void,
            world: c_int,
        ) -> c_int;
        pub fn kiln_c10d_barrier(group: *mut c_void) -> c_int;
        pub fn kiln_c10d_sync_params(group: *mut c_void, params: *mut *mut c_void, count: usize, bytes: i64) -> c_int;
        pub fn kiln_c10d_reducer_new(
            group: *mut c_void,
            params: *mut *mut c_void,
            count: usize,
            bucket_bytes_cap: i64,
            find_unused: c_int,
        ) -> *mut c_void;
        pub fn kiln_c10d_reducer_free(reducer: *mut c_void);
        pub fn kiln_c10d_reducer_prepare(reducer: *mut c_void, outputs: *mut *mut c_void, count: usize) -> c_int;
        pub fn kiln_c10d_store_set(group: *mut c_void, key: *const c_char, value: *const u8, len: usize) -> c_int;
        pub fn kiln_c10d_store_has(group: *mut c_void, key: *const c_char) -> c_int;
        pub fn kiln_c10d_store_get(group: *mut c_void, key: *const c_char, out: *mut u8, capacity: usize) -> i64;
    }
}

/// The error of the shim's last failed call on this thread, for `call`.
pub(super) fn c10d_error(call: &str) -> Error {
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let reason = unsafe { CStr::from_ptr(ffi::kiln_c10d_last_error()) }.to_string_lossy().into_owned();
    Error::Distributed { call: call.into(), reason }
}

pub(super) fn check(status: c_int, call: &str) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(c10d_error(call))
    }
}

/// tch handles as the shim takes them.
pub(super) fn handles(tensors: &[&Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

fn store_key(key: &str) -> Result<CString> {
    CString::new(key)
        .map_err(|_| Error::InvalidSetting { key: "store key".into(), reason: "contains a NUL byte".into() })
}

/// How [`ProcessGroup::all_reduce`] combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// This process's membership of the job's group.
pub struct ProcessGroup {
    handle: *mut c_void,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d's ProcessGroup is thread-safe (DDP calls it from autograd threads); kiln calls it from one thread
// at a time.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the job `env` describes, waiting up to `timeout` for every rank (and, on a rank that does not host it,
    /// for the store at `MASTER_ADDR:MASTER_PORT`, which a failure names).
    pub fn join(env: &DistEnv, timeout: Duration) -> Result<Self> {
        let text = |what: &str, value: &str| {
            CString::new(value)
                .map_err(|_| Error::InvalidSetting { key: what.into(), reason: "contains a NUL byte".into() })
        };
        let host = text("MASTER_ADDR", &env.master_addr)?;
        let prefix = text("store prefix", &env.store_prefix())?;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // SAFETY: the strings outlive the call; the shim copies them.
        let handle = unsafe {
            ffi::kiln_c10d_group_new(
                host.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                c_int::from(env.hosts_store()),
                prefix.as_ptr(),
                timeout_ms,
            )
        };
        if handle.is_null() {
            let Error::Distributed { reason, .. } = c10d_error("join") else { unreachable!() };
            return Err(Error::Distributed {
                call: format!(
                    "joining {}:{} as rank {} of {}",
                    env.master_addr, env.master_port, env.rank, env.world_size
                ),
                reason,
            });
        }
        Ok(Self { handle, rank: env.rank, world_size: env.world_size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Combines `tensor` (CPU, contiguous) over the ranks, in place.
    pub fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: a live group and tensor handle.
        check(unsafe { ffi::kiln_c10d_all_reduce(self.handle, tensor.as_ptr() as *mut c_void, op) }, "all-reduce")
    }

    /// Gives every rank `root`'s values of `tensor`, in place.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        // SAFETY: a live group and tensor handle.
        let status = unsafe { ffi::kiln_c10d_broadcast(self.handle, tensor.as_ptr() as *mut c_void, root as c_int) };
        check(status, "broadcast")
    }

    /// Every rank's `tensor` (the same shape on all), by rank.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| tensor.empty_like()).collect();
        let mut ptrs = handles(&outputs.iter().collect::<Vec<_>>());
        // SAFETY: a live group; `ptrs` holds world_size live handles.
        let status = unsafe {
            ffi::kiln_c10d_all_gather(
                self.handle,
                tensor.as_ptr() as *mut c_void,
                ptrs.as_mut_ptr(),
                self.world_size as c_int,
            )
        };
        check(status, "all-gather")?;
        Ok(outputs)
    }

    /// Waits until every rank reaches it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        check(unsafe { ffi::kiln_c10d_barrier(self.handle) }, "barrier")
    }

    /// Checks that every rank's `params` match rank 0's in count, shapes and dtypes, then gives every rank rank 0's
    /// values (as DDP does when it wraps a model), in 250 MiB broadcasts.
    pub fn sync_params(&self, params: &[&Tensor]) -> Result<()> {
        let mut ptrs = handles(params);
        // SAFETY: a live group; `ptrs` holds live handles.
        let status = unsafe { ffi::kiln_c10d_sync_params(self.handle, ptrs.as_mut_ptr(), ptrs.len(), 250 << 20) };
        check(status, "checking and broadcasting the parameters")
    }

    /// Sets `key` in the job's store, outside the restart's prefix (a value every restart of the job sees).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        let c_key = store_key(key)?;
        // SAFETY: a live group; the key and value outlive the call, which copies them.
        let status = unsafe { ffi::kiln_c10d_store_set(self.handle, c_key.as_ptr(), value.as_ptr(), value.len()) };
        check(status, &format!("setting '{key}' in the store"))
    }

    /// Whether `key` is set in the job's store.
    pub fn store_has(&self, key: &str) -> Result<bool> {
        let c_key = store_key(key)?;
        // SAFETY: a live group; the key outlives the call.
        match unsafe { ffi::kiln_c10d_store_has(self.handle, c_key.as_ptr()) } {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(c10d_error(&format!("looking for '{key}' in the store"))),
        }
    }

    /// The value of `key` in the job's store, waiting for another rank to set it (up to the group's timeout).
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        let c_key = store_key(key)?;
        let mut out = vec![0u8; 4096];
        loop {
            // SAFETY: a live group; `out` has `out.len()` writable bytes.
            let len = unsafe { ffi::kiln_c10d_store_get(self.handle, c_key.as_ptr(), out.as_mut_ptr(), out.len()) };
            let len = usize::try_from(len).map_err(|_| c10d_error(&format!("waiting for '{key}' in the store")))?;
            if len <= out.len() {
                out.truncate(len);
                return Ok(out);
            }
            out.resize(len, 0);
        }
    }

    pub(super) fn handle(&self) -> *mut c_void {
        self.handle
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: made by kiln_c10d_group_new, freed once.
        unsafe { ffi::kiln_c10d_group_free(self.handle) }
    }
}
