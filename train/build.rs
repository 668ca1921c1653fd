//! Compiles `native/torch_shim.cpp` (the libtorch calls tch does not bind: channels-last, autocast dtype) and
//! `native/c10d_shim.cpp` (libtorch's distributed engine, c10d: store, Gloo process group, collectives, Reducer)
//! against the libtorch headers torch-sys builds with (`DEP_TCH_LIBTORCH_LIB` from torch-sys, else `$LIBTORCH`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=native/torch_shim.cpp");
    println!("cargo:rerun-if-changed=native/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let root = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => PathBuf::from(lib).parent().expect("libtorch's lib dir has a parent").to_path_buf(),
        Err(_) => PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH is set (the Makefile sets it)")),
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("native/torch_shim.cpp")
        .file("native/c10d_shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .compile("kiln_torch_shim");
}
