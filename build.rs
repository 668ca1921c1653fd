//! Lets the `kiln` binary find libtorch without LD_LIBRARY_PATH (an rpath to $LIBTORCH/lib), keeps libtorch_cuda
//! linked in CUDA builds (the linker's --as-needed would drop it, since nothing calls it directly, and CUDA would
//! silently be unavailable), and records where `scripts/deps.sh` put ONNX Runtime.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=KILN_DEPS");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    let deps = std::env::var("KILN_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".deps"));
    println!("cargo:rustc-env=KILN_DEFAULT_DEPS={}", deps.display());
}
