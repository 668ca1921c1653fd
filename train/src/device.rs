//! Choosing the libtorch device from `auto`, `cpu`, `cuda` or `cuda:N`, with a clear error when CUDA is missing.

use tch::{Cuda, Device};

use crate::{Error, Result};

/// Parses a device name and checks that it can be used. `auto` is the first CUDA device when there is one.
pub fn select_device(spec: &str) -> Result<Device> {
    let err = |reason: String| Error::Device { requested: spec.to_string(), reason };
    let spec_lc = spec.trim().to_ascii_lowercase();
    let index = match spec_lc.as_str() {
        "auto" => return Ok(if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => index,
            _ => return Err(err("expected auto, cpu, cuda or cuda:N".into())),
        },
    };
    if !Cuda::is_available() {
        return Err(err(format!(
            "CUDA is not available: {}",
            if cuda_linked() {
                "libtorch has CUDA support but found no usable GPU or driver"
            } else {
                "this kiln was built against the CPU libtorch (rebuild after `make deps CUDA=1`)"
            }
        )));
    }
    let count = Cuda::device_count() as usize;
    if index >= count {
        return Err(err(format!("there are {count} CUDA device(s), numbered from 0")));
    }
    Ok(Device::Cuda(index))
}

/// Whether libtorch's CUDA library is loaded into this process.
pub fn cuda_linked() -> bool {
    std::fs::read_to_string("/proc/self/maps").map(|maps| maps.contains("libtorch_cuda")).unwrap_or(false)
}

/// A short name of a device for logs and metadata (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown_ones() {
        assert_eq!(select_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(select_device("CPU").unwrap(), Device::Cpu);
        let err = select_device("tpu").unwrap_err().to_string();
        assert!(err.contains("'tpu'") && err.contains("cuda:N"), "{err}");
        if !Cuda::is_available() {
            assert_eq!(select_device("auto").unwrap(), Device::Cpu);
            let err = select_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("CUDA is not available"), "{err}");
        }
    }
}
