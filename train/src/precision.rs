//! GPU compute settings: mixed precision (`amp: auto | bf16 | fp16 | false`), the channels-last memory format,
//! and cuDNN autotuning. On the CPU none of them applies, so CPU training computes exactly as before.
//!
//! bf16 autocast keeps fp32 master weights and needs no loss scaling; fp16 keeps the dynamic loss scaler
//! ([`crate::optim::GradScaler`]). `auto` is bf16 on GPUs that compute it natively (compute capability 8.0 and
//! newer, as `torch.cuda.is_bf16_supported()`), else fp16. tch 0.24 binds neither the autocast dtype nor memory
//! formats, so both go through `native/torch_shim.cpp`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

pub use crate::native::{
    autocast, channels_last, cuda_bf16_supported, is_channels_last, to_channels_last_in_place, AmpDtype,
};
use crate::{Error, Result};

/// The `amp` setting. `true` reads as `auto` (configs written before bf16 existed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AmpMode {
    #[default]
    Auto,
    Bf16,
    Fp16,
    Off,
}

impl AmpMode {
    pub fn name(self) -> &'static str {
        match self {
            AmpMode::Auto => "auto",
            AmpMode::Bf16 => "bf16",
            AmpMode::Fp16 => "fp16",
            AmpMode::Off => "false",
        }
    }
}

impl FromStr for AmpMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "true" => Ok(AmpMode::Auto),
            "bf16" | "bfloat16" => Ok(AmpMode::Bf16),
            "fp16" | "float16" | "half" => Ok(AmpMode::Fp16),
            "false" | "off" | "none" | "fp32" => Ok(AmpMode::Off),
            other => Err(format!("'{other}' is not auto, bf16, fp16 or false")),
        }
    }
}

impl Serialize for AmpMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            AmpMode::Off => s.serialize_bool(false),
            other => s.serialize_str(other.name()),
        }
    }
}

impl<'de> Deserialize<'de> for AmpMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(AmpMode::Auto),
            serde_json::Value::Bool(false) => Ok(AmpMode::Off),
            serde_json::Value::String(s) => s.parse().map_err(|e| serde::de::Error::custom(format!("amp: {e}"))),
            other => Err(serde::de::Error::custom(format!("amp: {other} is not auto, bf16, fp16 or false"))),
        }
    }
}

/// What a run computes with on its device, resolved from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    pub device: Device,
    /// `None`: fp32 throughout (always on the CPU).
    pub amp: Option<AmpDtype>,
    /// Parameters and batches in channels-last layout (CUDA only).
    pub channels_last: bool,
}

impl Precision {
    /// fp32 on the CPU whatever `amp` says; on CUDA the requested dtype (`auto`: bf16 where native, else fp16).
    pub fn resolve(amp: AmpMode, channels_last: bool, device: Device) -> Result<Self> {
        if !device.is_cuda() {
            return Ok(Self { device, amp: None, channels_last: false });
        }
        let amp = match amp {
            AmpMode::Off => None,
            AmpMode::Fp16 => Some(AmpDtype::Fp16),
            AmpMode::Bf16 if !cuda_bf16_supported() => {
                return Err(Error::InvalidSetting {
                    key: "amp".into(),
                    reason: "bf16 needs a GPU of compute capability 8.0 or newer; use amp: fp16".into(),
                })
            }
            AmpMode::Bf16 => Some(AmpDtype::Bf16),
            AmpMode::Auto => Some(if cuda_bf16_supported() { AmpDtype::Bf16 } else { AmpDtype::Fp16 }),
        };
        Ok(Self { device, amp, channels_last })
    }

    /// fp16 needs the loss scaler; bf16 and fp32 do not.
    pub fn needs_loss_scaling(&self) -> bool {
        self.amp == Some(AmpDtype::Fp16)
    }

    /// A short description for logs (`fp32`, `bf16 autocast, channels-last`).
    pub fn describe(&self) -> String {
        let amp = match self.amp {
            None => "fp32",
            Some(AmpDtype::Bf16) => "bf16 autocast",
            Some(AmpDtype::Fp16) => "fp16 autocast + loss scaling",
        };
        if self.channels_last {
            format!("{amp}, channels-last")
        } else {
            amp.to_string()
        }
    }

    /// Runs `f` under autocast when mixed precision is on.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        autocast(self.amp, self.device.is_cuda(), f)
    }

    /// Converts the 4-D variables (convolution weights) to channels-last in place, when that is on.
    pub fn prepare_params(&self, vs: &tch::nn::VarStore) -> Result<()> {
        if self.channels_last {
            for p in vs.variables().values() {
                to_channels_last_in_place(p)?;
            }
        }
        Ok(())
    }

    /// The batch as the model should see it (channels-last when that is on).
    pub fn prepare_batch(&self, images: &Tensor) -> Result<Tensor> {
        if self.channels_last {
            channels_last(images)
        } else {
            Ok(images.shallow_clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Kind};

    #[test]
    fn amp_reads_old_booleans_and_new_names() {
        let parse = |yaml: &str| serde_yaml::from_str::<AmpMode>(yaml);
        assert_eq!(parse("true").unwrap(), AmpMode::Auto);
        assert_eq!(parse("false").unwrap(), AmpMode::Off);
        assert_eq!(parse("bf16").unwrap(), AmpMode::Bf16);
        assert_eq!(parse("fp16").unwrap(), AmpMode::Fp16);
        assert!(parse("fp8").unwrap_err().to_string().contains("fp8"));
        assert_eq!(serde_yaml::to_string(&AmpMode::Off).unwrap().trim(), "false");
        assert_eq!(serde_yaml::to_string(&AmpMode::Bf16).unwrap().trim(), "bf16");
    }

    #[test]
    fn the_cpu_computes_in_fp32_whatever_is_asked() {
        for amp in [AmpMode::Auto, AmpMode::Bf16, AmpMode::Fp16, AmpMode::Off] {
            let p = Precision::resolve(amp, true, Device::Cpu).unwrap();
            assert_eq!((p.amp, p.channels_last), (None, false), "{amp:?}");
            let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
            assert!(!is_channels_last(&p.prepare_batch(&x).unwrap()));
        }
    }

    #[test]
    fn channels_last_in_place_keeps_values_and_every_handle() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root() / "c", 3, 8, 3, Default::default());
        let x = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
        let before = x.apply(&conv);
        let handle = conv.ws.shallow_clone();
        let values = conv.ws.detach().copy();
        to_channels_last_in_place(&conv.ws).unwrap();
        assert!(is_channels_last(&handle), "a handle taken before sees the new layout");
        assert!(handle.equal(&values), "values unchanged");
        let after = channels_last(&x).unwrap().apply(&conv);
        assert!(is_channels_last(&channels_last(&x).unwrap()));
        assert!(after.allclose(&before, 1e-5, 1e-5, false));
        let bias = conv.bs.as_ref().unwrap();
        to_channels_last_in_place(bias).unwrap(); // 1-D: left alone
        assert_eq!(bias.size(), vec![8]);
    }

    #[test]
    fn autocast_computes_in_the_chosen_dtype_and_restores_the_state() {
        // On the CPU device type, so that the shim's dtype switch is checked without a GPU.
        let a = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let inside = autocast(Some(AmpDtype::Bf16), false, || a.matmul(&a));
        assert_eq!(inside.kind(), Kind::BFloat16);
        let nested = autocast(Some(AmpDtype::Bf16), false, || autocast(None, false, || a.matmul(&a)));
        assert_eq!(nested.kind(), Kind::BFloat16, "None inside keeps the outer region");
        assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast is off again after the region");
        let fp16 = autocast(Some(AmpDtype::Fp16), false, || a.matmul(&a));
        assert_eq!(fp16.kind(), Kind::Half);
        assert_eq!(autocast(Some(AmpDtype::Bf16), false, || a.matmul(&a)).kind(), Kind::BFloat16);
    }
}
