//! MixUp and CutMix as timm's `Mixup` defines them (batch mode): once per batch, with probability `prob`, either
//! MixUp (`lam · x + (1 − lam) · x.flip(0)`, `lam ~ Beta(mixup_alpha, mixup_alpha)`) or, with probability
//! `switch_prob` when both are on, CutMix (a box of side `sqrt(1 − lam)` of the image's, centred uniformly and
//! clipped, pasted from the flipped batch, `lam` then corrected to the area kept). Targets are soft: label-
//! smoothed one-hots of the labels and of the flipped labels, weighted `lam` and `1 − lam`. The draws come from
//! libtorch's CPU generator, which checkpoints keep, so a resumed run mixes as the uninterrupted one would.

use tch::{Device, Kind, Tensor};

pub use crate::config::classify::Mixup;
use crate::Result;

/// How a batch was mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixing {
    None,
    MixUp {
        lam: f64,
    },
    /// The box `[top, bottom) × [left, right)` pasted from the flipped batch; `lam` is the area kept.
    CutMix {
        lam: f64,
        top: i64,
        bottom: i64,
        left: i64,
        right: i64,
    },
}

impl Mixing {
    /// The weight of each image's own label.
    pub fn lam(&self) -> f64 {
        match *self {
            Mixing::None => 1.0,
            Mixing::MixUp { lam } | Mixing::CutMix { lam, .. } => lam,
        }
    }
}

/// A mixed batch: images and soft targets `[N, classes]` (rows sum to 1).
pub struct Mixed {
    pub images: Tensor,
    pub targets: Tensor,
    pub mixing: Mixing,
}

fn uniform() -> f64 {
    Tensor::rand([], (Kind::Double, Device::Cpu)).double_value(&[])
}

/// A draw of `Beta(alpha, alpha)` as the ratio of two gamma draws.
fn beta(alpha: f64) -> f64 {
    let g = Tensor::from_slice(&[alpha, alpha]).internal_standard_gamma();
    let (a, b) = (g.double_value(&[0]), g.double_value(&[1]));
    if a + b > 0.0 {
        a / (a + b)
    } else {
        0.5
    }
}

fn randint(high: i64) -> i64 {
    Tensor::randint(high.max(1), [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
}

impl Mixup {
    /// Draws how to mix the next batch of `height × width` images (timm's `_params_per_batch`, then its box).
    pub fn draw(&self, height: i64, width: i64) -> Mixing {
        if !self.enabled() || uniform() >= self.prob {
            return Mixing::None;
        }
        let cutmix = if self.mixup_alpha > 0.0 && self.cutmix_alpha > 0.0 {
            uniform() < self.switch_prob
        } else {
            self.cutmix_alpha > 0.0
        };
        let lam = beta(if cutmix { self.cutmix_alpha } else { self.mixup_alpha });
        if !cutmix {
            return if lam == 1.0 { Mixing::None } else { Mixing::MixUp { lam } };
        }
        let ratio = (1.0 - lam).sqrt();
        let (cut_h, cut_w) = ((height as f64 * ratio) as i64, (width as f64 * ratio) as i64);
        let (cy, cx) = (randint(height), randint(width));
        let top = (cy - cut_h / 2).clamp(0, height);
        let bottom = (cy + cut_h / 2).clamp(0, height);
        let left = (cx - cut_w / 2).clamp(0, width);
        let right = (cx + cut_w / 2).clamp(0, width);
        let lam = 1.0 - ((bottom - top) * (right - left)) as f64 / (height * width) as f64;
        if lam == 1.0 {
            Mixing::None
        } else {
            Mixing::CutMix { lam, top, bottom, left, right }
        }
    }

    /// Mixes `images` `[N, 3, H, W]` with `labels` `[N]` (on one device) into soft targets over `num_classes`,
    /// label-smoothed by `smoothing` as timm's `mixup_target`.
    pub fn mix(&self, images: &Tensor, labels: &Tensor, num_classes: i64, smoothing: f64) -> Result<Mixed> {
        let size = images.size();
        let mixing = self.draw(size[2], size[3]);
        Ok(apply(images, labels, num_classes, smoothing, mixing))
    }
}

/// Applies a drawn [`Mixing`] to a batch.
pub fn apply(images: &Tensor, labels: &Tensor, num_classes: i64, smoothing: f64, mixing: Mixing) -> Mixed {
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let soft = |labels: &Tensor| labels.one_hot(num_classes).to_kind(Kind::Float) * (on - off) + off;
    let lam = mixing.lam();
    let targets = if lam == 1.0 { soft(labels) } else { soft(labels) * lam + soft(&labels.flip([0])) * (1.0 - lam) };
    let images = match mixing {
        Mixing::None => images.shallow_clone(),
        Mixing::MixUp { lam } => images * lam + images.flip([0]) * (1.0 - lam),
        Mixing::CutMix { top, bottom, left, right, .. } => {
            let out = images.copy();
            let flipped = images.flip([0]);
            let (h, w) = (bottom - top, right - left);
            out.narrow(2, top, h).narrow(3, left, w).copy_(&flipped.narrow(2, top, h).narrow(3, left, w));
            out
        }
    };
    Mixed { images, targets, mixing }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> (Tensor, Tensor) {
        let images = Tensor::arange(4 * 3 * 8 * 10, (Kind::Float, Device::Cpu)).reshape([4, 3, 8, 10]);
        (images, Tensor::from_slice(&[0i64, 2, 1, 2]))
    }

    #[test]
    fn mixup_blends_images_and_targets_by_lam() {
        let (images, labels) = batch();
        let m = apply(&images, &labels, 3, 0.0, Mixing::MixUp { lam: 0.7 });
        let expected = &images * 0.7 + images.flip([0]) * 0.3;
        assert!(m.images.allclose(&expected, 1e-6, 1e-6, false));
        let t: Vec<f32> = Vec::try_from(m.targets.reshape([-1])).unwrap();
        // Row 0: label 0 with 0.7, the flipped row's label 2 with 0.3; row 1: label 2 and label 1.
        assert_eq!(&t[..6], &[0.7, 0.0, 0.3, 0.0, 0.3, 0.7]);
        let sums: Vec<f32> = Vec::try_from(m.targets.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
    }

    #[test]
    fn cutmix_pastes_a_box_whose_area_is_one_minus_lam() {
        let (images, labels) = batch();
        tch::manual_seed(3);
        let mixup = Mixup { cutmix_alpha: 1.0, ..Default::default() };
        let mut seen = 0;
        for _ in 0..50 {
            let m = mixup.mix(&images, &labels, 3, 0.1).unwrap();
            let Mixing::CutMix { lam, .. } = m.mixing else {
                assert_eq!(m.mixing, Mixing::None, "CutMix alone never blends");
                continue;
            };
            seen += 1;
            let from_flipped = m.images.eq_tensor(&images.flip([0])).logical_and(&m.images.ne_tensor(&images));
            let pasted = from_flipped.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
            assert!((pasted - (1.0 - lam)).abs() < 1e-9, "pasted area {pasted} vs 1 - lam {}", 1.0 - lam);
            // Smoothed targets: 0.1 / 3 off, the rest split by lam; every row sums to 1.
            let sums = m.targets.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            assert!(sums.allclose(&Tensor::ones([4], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
            let own = m.targets.double_value(&[0, 0]);
            assert!((own - (lam * (0.9 + 0.1 / 3.0) + (1.0 - lam) * 0.1 / 3.0)).abs() < 1e-6, "{own} at lam {lam}");
        }
        assert!(seen > 40, "most draws paste a box: {seen}");
    }

    #[test]
    fn the_switch_probability_splits_mixup_and_cutmix_and_prob_skips_batches() {
        tch::manual_seed(4);
        let both = Mixup { mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5 };
        let (mut mixups, mut cutmixes) = (0, 0);
        for _ in 0..2000 {
            match both.draw(32, 32) {
                Mixing::MixUp { lam } => {
                    assert!((0.0..1.0).contains(&lam));
                    mixups += 1
                }
                Mixing::CutMix { .. } => cutmixes += 1,
                Mixing::None => {}
            }
        }
        assert!((900..1100).contains(&mixups) && cutmixes > 850, "{mixups} MixUp, {cutmixes} CutMix");
        let rare = Mixup { mixup_alpha: 0.8, prob: 0.25, ..Default::default() };
        let mixed = (0..2000).filter(|_| rare.draw(32, 32) != Mixing::None).count();
        assert!((420..580).contains(&mixed), "a quarter of the batches: {mixed}");
        assert_eq!(Mixup::default().draw(32, 32), Mixing::None);
        assert!(!Mixup::default().enabled());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = Mixup { mixup_alpha: -1.0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.0, "mixup.mixup_alpha");
        let bad = Mixup { switch_prob: 2.0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.0, "mixup.switch_prob");
    }
}
