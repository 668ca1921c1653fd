//! Grad-CAM (Selvaraju et al., 2017) for `kiln predict --gradcam DIR`: the last stage's feature maps `A_k`
//! (stride 32), weighted by the spatial mean of the class score's gradient with respect to each, summed and
//! rectified, `relu(Σ_k mean(∂y_c/∂A_k) · A_k)`, then scaled to [0, 1] and laid over the image region the model saw
//! (the whole image when it is stretched, the centre crop with `eval_crop_pct`). One PNG per image,
//! `<DIR>/<stem>_gradcam.png`, for the predicted class or a named one.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use kiln_infer::preprocess::{center_crop_region, resize_region, ChannelOrder, Crop, Preprocess, Resize};

use super::task::Classification;
use super::transform::Transform;
use crate::engine::load_run;
use crate::fsutil::write_atomic;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};
use kiln_infer::preprocess::decode_rgb;

/// Options of [`gradcam`].
#[derive(Clone, Debug, Default)]
pub struct GradCamOptions {
    pub which: Which,
    /// Explain this class (by name) instead of each image's predicted one.
    pub class: Option<String>,
    pub device: Option<String>,
}

/// One image's explanation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradCam {
    pub image: PathBuf,
    /// The class explained, its index and its probability.
    pub class: String,
    pub index: usize,
    pub probability: f64,
    /// The map `[height][width]` at the last stage's resolution, scaled to [0, 1].
    pub map: Vec<Vec<f32>>,
    /// Where the map peaks, in the image's pixel coordinates (x, y).
    pub peak: (f64, f64),
    /// The overlay written.
    pub overlay: PathBuf,
}

/// Explains each image with the run's checkpoint and writes the overlays into `out_dir` (created if missing).
pub fn gradcam(run: &RunDir, images: &[PathBuf], out_dir: &Path, options: &GradCamOptions) -> Result<Vec<GradCam>> {
    let loaded = load_run::<Classification>(run, options.which, options.device.as_deref(), "Grad-CAM", |_| {})?;
    let (config, model, device) = (&loaded.config, &loaded.model, loaded.device);
    let class_names = &loaded.ckpt.state.class_names;
    let target = match &options.class {
        Some(name) => Some(class_names.iter().position(|c| c == name).ok_or_else(|| Error::InvalidSetting {
            key: "gradcam-class".into(),
            reason: format!("{name} is not one of the run's classes: {}", class_names.join(", ")),
        })?),
        None => None,
    };
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io { path: out_dir.to_path_buf(), source })?;
    let resize = Transform::eval(config.eval_crop_pct).eval_resize().expect("an evaluation transform");
    let size = config.img_size;
    let preprocess = Preprocess {
        size: [size, size],
        resize,
        mean: config.normalize.mean,
        std: config.normalize.std,
        channels: ChannelOrder::Rgb,
    };
    let mut results = Vec::with_capacity(images.len());
    for path in images {
        let image = decode_rgb(path).map_err(|reason| Error::Image { path: path.clone(), reason })?;
        let mut input = vec![0f32; preprocess.tensor_len()];
        preprocess.apply(&image, &mut input);
        let xs = Tensor::from_slice(&input).view([1, 3, size as i64, size as i64]).to_device(device);
        let features = model.backbone.forward_t(&xs, false);
        let logits = model.head.forward_t(&features, false).to_kind(Kind::Float);
        let probs = logits.softmax(-1, Kind::Float);
        let index = target.unwrap_or_else(|| logits.argmax(-1, false).int64_value(&[0]) as usize);
        let score = logits.get(0).get(index as i64);
        let grads = Tensor::run_backward(&[score], &[&features], false, false);
        let weights = grads[0].mean_dim([2i64, 3].as_slice(), true, Kind::Float);
        let cam = (weights * &features).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).relu().get(0);
        let max = cam.max().double_value(&[]);
        let cam = if max > 0.0 { cam / max } else { cam };
        let map: Vec<Vec<f32>> = Vec::try_from(cam.to_device(Device::Cpu).detach())?;
        let region = match resize {
            Resize::CenterCrop { crop_pct } => center_crop_region(image.width(), image.height(), size, size, crop_pct),
            _ => Crop::full(&image),
        };
        let peak = peak_in_image(&map, region);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let overlay_path = out_dir.join(format!("{stem}_gradcam.png"));
        let overlay = overlay(&image, &map, region);
        let mut png = Vec::new();
        overlay
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::Image { path: overlay_path.clone(), reason: e.to_string() })?;
        write_atomic(&overlay_path, &png)?;
        results.push(GradCam {
            image: path.clone(),
            class: class_names[index].clone(),
            index,
            probability: probs.double_value(&[0, index as i64]),
            map,
            peak,
            overlay: overlay_path,
        });
    }
    Ok(results)
}

/// The centre of the map's highest cell, in image coordinates of `region`.
fn peak_in_image(map: &[Vec<f32>], region: Crop) -> (f64, f64) {
    let (h, w) = (map.len(), map.first().map_or(0, Vec::len));
    let mut best = (0, 0, f32::NEG_INFINITY);
    for (y, row) in map.iter().enumerate() {
        for (x, v) in row.iter().enumerate() {
            if *v > best.2 {
                best = (x, y, *v);
            }
        }
    }
    (
        region.left + (best.0 as f64 + 0.5) / w.max(1) as f64 * region.width,
        region.top + (best.1 as f64 + 0.5) / h.max(1) as f64 * region.height,
    )
}

/// A blue → red colour ramp for a value in [0, 1].
fn ramp(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * v - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * v - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * v - 1.0).abs()).clamp(0.0, 1.0);
    [r * 255.0, g * 255.0, b * 255.0]
}

/// The image with the map (bilinearly enlarged over `region`) blended in; outside the region the image is dimmed.
fn overlay(image: &RgbImage, map: &[Vec<f32>], region: Crop) -> RgbImage {
    let (h, w) = (map.len(), map.first().map_or(0, Vec::len));
    // The map as an 8-bit grey image, enlarged with the same resizer preprocessing uses.
    let grey = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = (map[y as usize][x as usize] * 255.0).round() as u8;
        image::Rgb([v, v, v])
    });
    let (rw, rh) = (region.width.round().max(1.0) as u32, region.height.round().max(1.0) as u32);
    let enlarged = resize_region(&grey, Crop::full(&grey), rw, rh);
    let mut out = image.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (rx, ry) = (x as f64 - region.left, y as f64 - region.top);
        if rx < 0.0 || ry < 0.0 || rx >= rw as f64 || ry >= rh as f64 {
            p.0 = p.0.map(|c| c / 3);
            continue;
        }
        let v = enlarged[(ry as usize * rw as usize + rx as usize) * 3] as f32 / 255.0;
        let c = ramp(v);
        p.0 = std::array::from_fn(|i| (0.55 * p.0[i] as f32 + 0.45 * c[i]).round() as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_maps_back_through_the_region() {
        let map = vec![vec![0.0, 0.2], vec![0.1, 1.0]];
        let full = Crop { left: 0.0, top: 0.0, width: 100.0, height: 60.0 };
        assert_eq!(peak_in_image(&map, full), (75.0, 45.0));
        let crop = Crop { left: 20.0, top: 0.0, width: 60.0, height: 60.0 };
        assert_eq!(peak_in_image(&map, crop), (65.0, 45.0));
        assert_eq!(ramp(0.0)[0], 0.0);
        assert_eq!(ramp(1.0)[2], 0.0);
    }
}
