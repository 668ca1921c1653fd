//! The process's heap policy for training: freed tensor memory is kept for the next step instead of being given
//! back to the kernel.
//!
//! libtorch allocates every activation and gradient of a step with `posix_memalign` and frees it at the end.
//! With glibc's defaults, blocks over the (dynamic, at most 32 MiB) mmap threshold are mmapped and unmapped each
//! time and the heap top is trimmed, so every step faults its working set back in page by page and the kernel
//! zeroes it: measured on convnext_atto at 224 px, batch 32 (2 cores), 1.67 M page faults in 8 steps and 30.4
//! images/s, against 0.45 M faults (mostly the first step's growth) and 47.2 images/s with the policy below.
//! Memory then stays at the peak of a step, as with PyTorch's caching allocators.

/// Stops glibc from mmapping large blocks and from trimming the heap below 1 GiB of free top, once per process.
/// Does nothing where the user set any `MALLOC_*_` variable (their policy wins) or off glibc.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_")) {
            return;
        }
        apply();
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        // No mmapped blocks: large blocks come from the heap and are reused by the next step.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Keep up to 1 GiB of free memory at the heap's top, and grow it 64 MiB at a time.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}
