//! Lets the `kiln` binary find libtorch without LD_LIBRARY_PATH (an rpath to $LIBTORCH/lib), keeps libtorch_cuda
//! linked in CUDA builds (the linker's --as-needed would drop it, since nothing calls it directly, and CUDA would
//! silently be unavailable), and records the libtorch version and where `scripts/deps.sh` put ONNX Runtime.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=KILN_DEPS");
    let libtorch = std::env::var("LIBTORCH").unwrap_or_default();
    let mut version = String::new();
    if !libtorch.is_empty() {
        let root = PathBuf::from(&libtorch);
        version = std::fs::read_to_string(root.join("build-version")).unwrap_or_default().trim().to_string();
        let lib = root.join("lib");
        println!("cargo:rerun-if-changed={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rustc-env=KILN_LIBTORCH_DIR={libtorch}");
    println!("cargo:rustc-env=KILN_LIBTORCH_VERSION={version}");
    let deps = std::env::var("KILN_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".deps"));
    println!("cargo:rustc-env=KILN_DEFAULT_DEPS={}", deps.display());
}
