//! Peak memory of `Model::open`: resident memory before opening a model, the high-water mark after, and their
//! difference (what loading costs at its peak), per backend.
//!
//! `cargo run --release -p kiln-infer --example open_memory -- MODEL.onnx [ort-cpu|tract]` (Linux: reads
//! /proc/self/status).

use kiln_infer::{Backend, Model};

extern "C" {
    /// glibc: gives free heap memory back to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// `VmRSS` or `VmHWM` of this process in MiB.
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in /proc/self/status"));
    let kib: f64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB");
    kib / 1024.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: open_memory MODEL.onnx [ort-cpu|tract]");
    let backend: Backend = args.next().as_deref().unwrap_or("ort-cpu").parse().expect("a backend string");
    let size = std::fs::metadata(&path).expect("the model file").len() as f64 / (1024.0 * 1024.0);
    // ONNX Runtime's library is loaded before the baseline, so that only the model's cost is measured.
    kiln_infer::runtime::environment(None).expect("ONNX Runtime");
    let before = status_mib("VmRSS:");
    let model = Model::builder().backend(backend.clone()).threads(1).open(&path).expect("the model opens");
    let peak = status_mib("VmHWM:");
    // Memory freed while loading stays in the allocator's arenas until trimmed: what the model holds is the
    // resident memory after a trim.
    // SAFETY: glibc's malloc_trim only returns free memory to the system.
    unsafe { malloc_trim(0) };
    let after = status_mib("VmRSS:");
    println!(
        "{path} ({size:.0} MiB) on {backend}: resident {before:.0} MiB before, peak {peak:.0} MiB while opening \
         (+{:.0}), {after:.0} MiB held once open (+{:.0})",
        peak - before,
        after - before
    );
    drop(model);
}
