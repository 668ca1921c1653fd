//! Faster R-CNN's anchors fitted to a dataset (the Faster R-CNN seed's anchor k-means, `kiln train --anchors
//! auto`): the training boxes' sizes at the letterboxed training scale are clustered with the distance `1 − IoU`
//! (both boxes centred on one point, as anchors and boxes are compared when they are matched), first into one size
//! per pyramid level, then into the aspect ratios every level shares.

use kiln_models::faster_rcnn::AnchorConfig;
use kiln_models::faster_rcnn::SplitMix64;

use super::annotations::DetectionSample;
use super::settings::{DetectHead, DetectSettings};
use super::setup::open_dataset;
use crate::config::{TaskKind, TrainConfig};
use crate::{Error, Result};

/// A box's width and height in pixels.
pub type Size = [f64; 2];

/// IoU of two boxes of these sizes with one centre.
pub fn centred_iou(a: Size, b: Size) -> f64 {
    let inter = a[0].min(b[0]) * a[1].min(b[1]);
    inter / (a[0] * a[1] + b[0] * b[1] - inter)
}

/// Every training box's size in the letterboxed `img_size` input (each image scaled by `img_size / max(w, h)`).
pub fn letterboxed_sizes(samples: &[DetectionSample], img_size: u32) -> Vec<Size> {
    samples
        .iter()
        .flat_map(|s| {
            let scale = img_size as f64 / s.width.max(s.height).max(1) as f64;
            s.boxes.iter().map(move |b| {
                let [x1, y1, x2, y2] = b.bbox;
                [(x2 - x1) as f64 * scale, (y2 - y1) as f64 * scale]
            })
        })
        .filter(|[w, h]| *w > 0.0 && *h > 0.0)
        .collect()
}

/// `k` centroids of `sizes` under `1 − IoU`: k-means++ seeding from `seed`, then assignments to the centroid of
/// highest IoU and medians, until nothing moves (at most 300 rounds). Sorted by area.
pub fn kmeans(sizes: &[Size], k: usize, seed: u64) -> Vec<Size> {
    let k = k.min(sizes.len()).max(1);
    let mut rng = SplitMix64::new(seed);
    let uniform = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut centroids = vec![sizes[(rng.next_u64() % sizes.len() as u64) as usize]];
    while centroids.len() < k {
        let weights: Vec<f64> = sizes
            .iter()
            .map(|&s| centroids.iter().map(|&c| 1.0 - centred_iou(s, c)).fold(f64::MAX, f64::min).powi(2))
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut target = uniform(&mut rng) * total;
        let pick = weights.iter().position(|&w| {
            target -= w;
            target <= 0.0
        });
        centroids.push(sizes[pick.unwrap_or(sizes.len() - 1)]);
    }
    let mut assignment = vec![usize::MAX; sizes.len()];
    for _ in 0..300 {
        let mut moved = false;
        for (i, &s) in sizes.iter().enumerate() {
            let best = (0..centroids.len())
                .max_by(|&a, &b| centred_iou(s, centroids[a]).total_cmp(&centred_iou(s, centroids[b])))
                .expect("a centroid");
            moved |= assignment[i] != best;
            assignment[i] = best;
        }
        for (c, centroid) in centroids.iter_mut().enumerate() {
            let members: Vec<Size> = sizes.iter().zip(&assignment).filter(|(_, &a)| a == c).map(|(s, _)| *s).collect();
            if !members.is_empty() {
                *centroid = [median(members.iter().map(|s| s[0])), median(members.iter().map(|s| s[1]))];
            }
        }
        if !moved {
            break;
        }
    }
    centroids.sort_by(|a, b| (a[0] * a[1]).total_cmp(&(b[0] * b[1])));
    centroids
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The mean over `sizes` of the best IoU any anchor of `anchors` (every size × ratio) reaches.
pub fn mean_best_iou(sizes: &[Size], anchors: &AnchorConfig) -> f64 {
    let shapes: Vec<Size> = anchors
        .sizes
        .iter()
        .flatten()
        .flat_map(|&s| anchors.aspect_ratios.iter().map(move |&r| [s / r.sqrt(), s * r.sqrt()]))
        .collect();
    if sizes.is_empty() {
        return 0.0;
    }
    sizes.iter().map(|&b| shapes.iter().map(|&a| centred_iou(b, a)).fold(0.0, f64::max)).sum::<f64>()
        / sizes.len() as f64
}

/// What [`fit_anchors`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorFit {
    pub anchors: AnchorConfig,
    pub boxes: usize,
    /// Mean best IoU of the fitted anchors and of the ones they replace.
    pub fitted_iou: f64,
    pub default_iou: f64,
}

/// Anchors for `levels` pyramid levels (one size each) and `ratios` aspect ratios fitted to `sizes`; `None` without
/// boxes. Sizes are the centroids of the boxes made square (side `√(w·h)`), so that they cluster by scale alone;
/// ratios (height / width) are the centroids of the boxes scaled to one area, so that they cluster by shape alone.
pub fn fit_anchors(
    sizes: &[Size],
    levels: usize,
    ratios: usize,
    default: &AnchorConfig,
    seed: u64,
) -> Option<AnchorFit> {
    if sizes.is_empty() {
        return None;
    }
    // Scale alone: each box as the square of its area, so that shapes do not split a size's cluster.
    let squares: Vec<Size> = sizes.iter().map(|&[w, h]| [(w * h).sqrt(); 2]).collect();
    let mut fitted: Vec<f64> = kmeans(&squares, levels, seed).iter().map(|c| c[0].round().max(1.0)).collect();
    // Fewer distinct boxes than levels: the larger levels double the last size.
    while fitted.len() < levels {
        let last = *fitted.last().expect("one size");
        fitted.push(last * 2.0);
    }
    let unit: Vec<Size> = sizes.iter().map(|&[w, h]| [(w / h).sqrt(), (h / w).sqrt()]).collect();
    let mut aspect: Vec<f64> =
        kmeans(&unit, ratios, seed ^ 1).iter().map(|c| (c[1] / c[0] * 100.0).round() / 100.0).collect();
    aspect.sort_by(f64::total_cmp);
    aspect.dedup();
    let anchors = AnchorConfig { sizes: fitted.into_iter().map(|s| vec![s]).collect(), aspect_ratios: aspect };
    Some(AnchorFit {
        fitted_iou: mean_best_iou(sizes, &anchors),
        default_iou: mean_best_iou(sizes, default),
        anchors,
        boxes: sizes.len(),
    })
}

/// `kiln train --anchors auto`: fits Faster R-CNN's anchors to `config`'s training split and writes them into
/// `config` (so the run's `config.yaml` keeps them). Refused for FCOS, which has no anchors.
pub fn fit_into_config(config: &mut TrainConfig) -> Result<AnchorFit> {
    let refuse = |reason: String| Error::InvalidSetting { key: "--anchors".into(), reason };
    if config.task != TaskKind::Detect {
        return Err(refuse(format!("auto fits a detector's anchors; this is a {} run", config.task)));
    }
    let mut settings: DetectSettings = config.task_settings()?;
    if settings.head != DetectHead::FasterRcnn {
        return Err(refuse(format!(
            "auto fits Faster R-CNN's anchors, but detect.head is {} (FCOS has no anchors); set detect.head: \
             faster_rcnn",
            settings.head
        )));
    }
    let dataset = open_dataset(config)?;
    let sizes = letterboxed_sizes(&dataset.train, config.img_size);
    let ratios = settings.anchors.aspect_ratios.len();
    let fit = fit_anchors(&sizes, settings.anchors.sizes.len(), ratios, &settings.anchors, config.seed)
        .ok_or_else(|| refuse(format!("the training split of {} has no boxes to fit", config.data.display())))?;
    settings.anchors = fit.anchors.clone();
    config.set_task_settings(&settings);
    Ok(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_of_known_clusters_are_recovered() {
        // Five sizes, each in three shapes (ratios 0.5, 1, 2), with ±5 % noise.
        let mut rng = SplitMix64::new(9);
        let mut noise = || 1.0 + ((rng.next_u64() % 1000) as f64 / 1000.0 - 0.5) * 0.1;
        let mut sizes = Vec::new();
        for s in [12.0, 30.0, 70.0, 150.0, 300.0] {
            for r in [0.5f64, 1.0, 2.0] {
                for _ in 0..40 {
                    sizes.push([s / r.sqrt() * noise(), s * r.sqrt() * noise()]);
                }
            }
        }
        let fit = fit_anchors(&sizes, 5, 3, &AnchorConfig::default(), 0).unwrap();
        let got: Vec<f64> = fit.anchors.sizes.iter().map(|s| s[0]).collect();
        for (g, want) in got.iter().zip([12.0, 30.0, 70.0, 150.0, 300.0]) {
            assert!((g / want - 1.0).abs() < 0.1, "sizes {got:?}");
        }
        for (g, want) in fit.anchors.aspect_ratios.iter().zip([0.5, 1.0, 2.0]) {
            assert!((g / want - 1.0).abs() < 0.1, "ratios {:?}", fit.anchors.aspect_ratios);
        }
        assert!(fit.fitted_iou > 0.85 && fit.fitted_iou > fit.default_iou, "{fit:?}");
        assert_eq!(fit.boxes, 600);
    }

    #[test]
    fn iou_of_centred_boxes_and_degenerate_inputs() {
        assert_eq!(centred_iou([10.0, 10.0], [10.0, 10.0]), 1.0);
        assert!((centred_iou([10.0, 20.0], [20.0, 10.0]) - 100.0 / 300.0).abs() < 1e-12);
        assert!(fit_anchors(&[], 5, 3, &AnchorConfig::default(), 0).is_none());
        let one = fit_anchors(&[[8.0, 8.0]], 5, 3, &AnchorConfig::default(), 0).unwrap();
        assert_eq!(one.anchors.sizes, [[8.0], [16.0], [32.0], [64.0], [128.0]].map(|s| s.to_vec()).to_vec());
        assert_eq!(one.anchors.aspect_ratios, [1.0]);
    }
}
