//! `--raw-*`: the preprocessing and class names of an ONNX model without kiln metadata (a classifier exported by
//! torch.onnx from timm or torchvision), for `kiln infer` and `kiln bench`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use kiln_infer::preprocess::{ChannelOrder, Preprocess, Resize, DEFAULT_CROP_PCT};
use kiln_infer::Model;

/// The flags, as the error for a model without metadata names them.
pub const RAW_FLAGS: &str = "--raw-size N|HxW [--raw-resize stretch|letterbox|center-crop[:CROP_PCT]] \
                             [--raw-mean R,G,B] [--raw-std R,G,B] [--raw-channels rgb|bgr] [--raw-classes FILE]";

/// ImageNet's mean and standard deviation (timm's and torchvision's defaults).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Args, Debug, Clone)]
pub struct RawArgs {
    /// A model without kiln metadata (or to override it): its input size, N or HxW. Turns on raw mode.
    #[arg(long, value_name = "N|HxW")]
    pub raw_size: Option<String>,
    /// Raw mode: stretch, letterbox or center-crop[:CROP_PCT] (timm's eval resize; CROP_PCT 0.875 by default).
    #[arg(long, value_name = "MODE", requires = "raw_size", default_value = "stretch")]
    pub raw_resize: String,
    /// Raw mode: per-channel mean of 0..1 pixel values (default ImageNet's 0.485,0.456,0.406).
    #[arg(long, value_name = "R,G,B", requires = "raw_size")]
    pub raw_mean: Option<String>,
    /// Raw mode: per-channel standard deviation (default ImageNet's 0.229,0.224,0.225).
    #[arg(long, value_name = "R,G,B", requires = "raw_size")]
    pub raw_std: Option<String>,
    /// Raw mode: the channel order the model takes, rgb or bgr (mean and std are then in that order too).
    #[arg(long, value_name = "ORDER", requires = "raw_size", default_value = "rgb")]
    pub raw_channels: String,
    /// Class names, one per line, in the order of the model's outputs (default: the class index).
    #[arg(long, value_name = "FILE")]
    pub raw_classes: Option<PathBuf>,
}

impl Default for RawArgs {
    fn default() -> Self {
        Self {
            raw_size: None,
            raw_resize: "stretch".into(),
            raw_mean: None,
            raw_std: None,
            raw_channels: "rgb".into(),
            raw_classes: None,
        }
    }
}

fn triple(flag: &str, text: &str) -> anyhow::Result<[f32; 3]> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{flag} {text}: expected three numbers, R,G,B"))?;
    match values[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => bail!("{flag} {text}: expected three numbers, R,G,B, got {}", values.len()),
    }
}

fn size(text: &str) -> anyhow::Result<[u32; 2]> {
    let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0);
    let dims = match text.split_once(['x', 'X']) {
        Some((h, w)) => parse(h).zip(parse(w)).map(|(h, w)| [h, w]),
        None => parse(text).map(|n| [n, n]),
    };
    dims.with_context(|| format!("--raw-size {text}: expected N or HxW, positive whole numbers"))
}

fn resize(text: &str) -> anyhow::Result<Resize> {
    let lower = text.trim().to_ascii_lowercase();
    Ok(match lower.split_once(':') {
        None if lower == "stretch" => Resize::Stretch,
        None if lower == "letterbox" => Resize::Letterbox,
        None if lower == "center-crop" => Resize::CenterCrop { crop_pct: DEFAULT_CROP_PCT },
        Some(("center-crop", pct)) => {
            let crop_pct: f32 = pct.parse().ok().filter(|p| *p > 0.0 && *p <= 1.0).with_context(|| {
                format!("--raw-resize {text}: the crop fraction must be a number in (0, 1], e.g. center-crop:0.875")
            })?;
            Resize::CenterCrop { crop_pct }
        }
        _ => bail!("--raw-resize {text}: expected stretch, letterbox or center-crop[:CROP_PCT]"),
    })
}

impl RawArgs {
    /// The preprocessing the flags give, or `None` without `--raw-size`.
    pub fn preprocess(&self) -> anyhow::Result<Option<Preprocess>> {
        let Some(size_text) = &self.raw_size else { return Ok(None) };
        let channels = match self.raw_channels.to_ascii_lowercase().as_str() {
            "rgb" => ChannelOrder::Rgb,
            "bgr" => ChannelOrder::Bgr,
            other => bail!("--raw-channels {other}: expected rgb or bgr"),
        };
        let mean = self.raw_mean.as_deref().map(|t| triple("--raw-mean", t)).transpose()?.unwrap_or(IMAGENET_MEAN);
        let std = self.raw_std.as_deref().map(|t| triple("--raw-std", t)).transpose()?.unwrap_or(IMAGENET_STD);
        if std.iter().any(|s| *s <= 0.0) {
            bail!("--raw-std: every value must be positive");
        }
        Ok(Some(Preprocess { size: size(size_text)?, resize: resize(&self.raw_resize)?, mean, std, channels }))
    }

    /// The class names of `model`: from `--raw-classes`, else its metadata's, else the class indices.
    pub fn class_names(&self, model: &Model, path: &Path) -> anyhow::Result<Vec<String>> {
        let classes = model.outputs().first().and_then(|o| o.shape.last().copied().flatten());
        if let Some(file) = &self.raw_classes {
            let text = std::fs::read_to_string(file).with_context(|| format!("--raw-classes {}", file.display()))?;
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if let Some(n) = classes.filter(|&n| n != names.len()) {
                bail!(
                    "--raw-classes {}: {} names, but {} has {n} outputs",
                    file.display(),
                    names.len(),
                    path.display()
                );
            }
            return Ok(names);
        }
        if let Some(meta) = model.metadata() {
            return Ok(meta.class_names.clone());
        }
        let n = classes.with_context(|| {
            format!("{}: its output has no fixed number of classes; name them with --raw-classes FILE", path.display())
        })?;
        Ok((0..n).map(|i| i.to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_preprocessing_and_bad_values_name_the_flag() {
        let args = RawArgs {
            raw_size: Some("224".into()),
            raw_resize: "center-crop:0.95".into(),
            raw_mean: Some("0.5, 0.5,0.5".into()),
            raw_channels: "BGR".into(),
            ..Default::default()
        };
        let p = args.preprocess().unwrap().unwrap();
        assert_eq!(p.size, [224, 224]);
        assert_eq!(p.resize, Resize::CenterCrop { crop_pct: 0.95 });
        assert_eq!((p.mean, p.std, p.channels), ([0.5; 3], IMAGENET_STD, ChannelOrder::Bgr));
        assert_eq!(size("32x100").unwrap(), [32, 100]);
        assert_eq!(resize("center-crop").unwrap(), Resize::CenterCrop { crop_pct: DEFAULT_CROP_PCT });
        assert!(RawArgs::default().preprocess().unwrap().is_none(), "no --raw-size: not raw mode");
        for (args, flag) in [
            (RawArgs { raw_size: Some("0".into()), ..Default::default() }, "--raw-size"),
            (RawArgs { raw_size: Some("224".into()), raw_resize: "crop".into(), ..Default::default() }, "--raw-resize"),
            (
                RawArgs { raw_size: Some("224".into()), raw_resize: "center-crop:1.5".into(), ..Default::default() },
                "(0, 1]",
            ),
            (
                RawArgs { raw_size: Some("224".into()), raw_mean: Some("1,2".into()), ..Default::default() },
                "--raw-mean",
            ),
            (
                RawArgs { raw_size: Some("224".into()), raw_std: Some("1,0,1".into()), ..Default::default() },
                "--raw-std",
            ),
            (RawArgs { raw_size: Some("224".into()), raw_channels: "rgba".into(), ..Default::default() }, "rgb or bgr"),
        ] {
            let err = args.preprocess().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
