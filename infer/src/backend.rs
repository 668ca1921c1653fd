//! Which runtime executes a model: ONNX Runtime with an execution provider, or tract.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// An ONNX Runtime execution provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ep {
    Cpu,
    Cuda {
        device: i32,
    },
    /// TensorRT builds an engine per input shape at the first run; `cache_dir` keeps engines between processes.
    TensorRt {
        device: i32,
        fp16: bool,
        cache_dir: Option<PathBuf>,
    },
}

impl Ep {
    /// What the provider needs at run time, for error messages.
    pub fn requirements(&self) -> &'static str {
        match self {
            Ep::Cpu => "nothing beyond ONNX Runtime",
            Ep::Cuda { .. } => {
                "a GPU build of ONNX Runtime (libonnxruntime_providers_cuda.so beside libonnxruntime.so, e.g. from the \
                 onnxruntime-gpu wheel; point ORT_DYLIB_PATH at it), CUDA 13 and cuDNN 9 libraries, and an NVIDIA driver"
            }
            Ep::TensorRt { .. } => {
                "a GPU build of ONNX Runtime (libonnxruntime_providers_tensorrt.so and libonnxruntime_providers_cuda.so; \
                 point ORT_DYLIB_PATH at it), TensorRT 10 (libnvinfer.so.10), CUDA 13, cuDNN 9 and an NVIDIA driver"
            }
        }
    }

    /// ONNX Runtime's name for the provider.
    pub fn provider_name(&self) -> &'static str {
        match self {
            Ep::Cpu => "CPUExecutionProvider",
            Ep::Cuda { .. } => "CUDAExecutionProvider",
            Ep::TensorRt { .. } => "TensorrtExecutionProvider",
        }
    }
}

/// The runtime and, for ONNX Runtime, the execution provider. Parses from and prints as the names `kiln bench`
/// takes:
///
/// ```
/// use kiln_infer::{Backend, Ep};
///
/// let backend: Backend = "ort-tensorrt:1-fp16".parse().unwrap();
/// assert_eq!(backend, Backend::Ort(Ep::TensorRt { device: 1, fp16: true, cache_dir: None }));
/// assert_eq!(backend.to_string(), "ort-tensorrt:1-fp16");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Ort(Ep),
    /// tract, pure Rust, CPU.
    Tract,
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Ort(Ep::Cpu)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Ort(Ep::Cpu) => f.write_str("ort-cpu"),
            Backend::Ort(Ep::Cuda { device }) => write!(f, "ort-cuda:{device}"),
            Backend::Ort(Ep::TensorRt { device, fp16, .. }) => {
                write!(f, "ort-tensorrt:{device}{}", if *fp16 { "-fp16" } else { "" })
            }
            Backend::Tract => f.write_str("tract"),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    /// `ort-cpu`, `ort-cuda[:N]`, `ort-tensorrt[:N][-fp16]`, `tract`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let device = |rest: &str| -> Result<i32, String> {
            match rest.strip_prefix(':') {
                None if rest.is_empty() => Ok(0),
                Some(n) => n.parse().map_err(|_| format!("bad device number '{n}'")),
                None => Err(format!("unexpected '{rest}'")),
            }
        };
        if s == "tract" {
            Ok(Backend::Tract)
        } else if s == "ort-cpu" || s == "ort" {
            Ok(Backend::Ort(Ep::Cpu))
        } else if let Some(rest) = s.strip_prefix("ort-cuda") {
            Ok(Backend::Ort(Ep::Cuda { device: device(rest)? }))
        } else if let Some(rest) = s.strip_prefix("ort-tensorrt") {
            let (rest, fp16) = match rest.strip_suffix("-fp16") {
                Some(r) => (r, true),
                None => (rest, false),
            };
            Ok(Backend::Ort(Ep::TensorRt { device: device(rest)?, fp16, cache_dir: None }))
        } else {
            Err(format!("unknown backend '{s}' (ort-cpu, ort-cuda[:N], ort-tensorrt[:N][-fp16], tract)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["ort-cpu", "ort-cuda:1", "ort-tensorrt:0-fp16", "tract"] {
            assert_eq!(name.parse::<Backend>().unwrap().to_string(), name);
        }
        assert_eq!("ort-cuda".parse::<Backend>().unwrap(), Backend::Ort(Ep::Cuda { device: 0 }));
        assert!("onnx".parse::<Backend>().unwrap_err().contains("unknown backend"));
        assert!("ort-cuda:x".parse::<Backend>().is_err());
    }
}
