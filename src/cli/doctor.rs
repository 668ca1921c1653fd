//! `kiln doctor`: what this kiln runs on.

use std::path::Path;

pub fn run() -> anyhow::Result<()> {
    println!("kiln {}", env!("CARGO_PKG_VERSION"));
    let libtorch_dir = env!("KILN_LIBTORCH_DIR");
    let loaded = std::fs::read_to_string("/proc/self/maps").ok().and_then(|maps| {
        maps.lines()
            .find(|l| l.ends_with("libtorch_cpu.so"))
            .and_then(|l| l.split_whitespace().last().map(str::to_string))
    });
    println!(
        "libtorch {} (built against {}; loaded {})",
        if env!("KILN_LIBTORCH_VERSION").is_empty() { "unknown version" } else { env!("KILN_LIBTORCH_VERSION") },
        if libtorch_dir.is_empty() { "an unknown LIBTORCH" } else { libtorch_dir },
        loaded.as_deref().unwrap_or("?")
    );
    let cuda = tch::Cuda::is_available();
    println!(
        "CUDA: {}",
        if cuda {
            format!("available, {} device(s)", tch::Cuda::device_count())
        } else if kiln_train::device::cuda_linked() {
            "libtorch_cuda is loaded but no usable GPU or driver was found".to_string()
        } else {
            "not available (CPU libtorch; `make deps CUDA=1` and rebuild for CUDA)".to_string()
        }
    );
    println!("cuDNN: {}", if tch::Cuda::cudnn_is_available() { "available" } else { "not available" });
    println!("libtorch threads: {}", tch::get_num_threads());
    let deps = Path::new(env!("KILN_DEFAULT_DEPS"));
    match kiln_infer::runtime::locate(Some(deps)) {
        Ok(path) => match kiln_infer::runtime::load(&path) {
            Ok(rt) => {
                println!("ONNX Runtime {} ({})", rt.version.as_deref().unwrap_or(&rt.build_info), rt.path.display())
            }
            Err(e) => println!("ONNX Runtime: {e}"),
        },
        Err(e) => println!("ONNX Runtime: {e}"),
    }
    Ok(())
}
