//! Test-time augmentation for classification (`kiln val|test|predict --tta`): every image is seen at each of a
//! set of scales (the whole preprocessed image resized, its side rounded to ConvNeXt's stride of 32), plain and,
//! when asked, mirrored; the views' softmax probabilities are averaged. With only scale 1 and no flip it is
//! plain evaluation, exactly.

use serde::{Deserialize, Serialize};
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

use kiln_models::ImageClassifier;

use crate::precision::Precision;
use crate::{Error, Result};

/// The views test-time augmentation averages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tta {
    /// Also evaluate the mirrored image.
    pub flip: bool,
    /// Input sizes as multiples of the trained one (1 is the image as evaluated without TTA).
    pub scales: Vec<f64>,
}

impl Default for Tta {
    /// No augmentation: one view, as plain evaluation.
    fn default() -> Self {
        Self { flip: false, scales: vec![1.0] }
    }
}

impl Tta {
    /// `--tta` alone: the image and its mirror at the trained size.
    pub fn flip() -> Self {
        Self { flip: true, scales: vec![1.0] }
    }

    /// Whether this is plain evaluation.
    pub fn is_identity(&self) -> bool {
        !self.flip && self.scales == [1.0]
    }

    /// Checks the scales: at least one, each positive and finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidSetting { key: "tta".into(), reason });
        if self.scales.is_empty() {
            return bad("an empty scale set: give at least one scale (1 is the trained size)".into());
        }
        if let Some(s) = self.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("scale {s} is not a positive number"));
        }
        Ok(())
    }

    /// The number of views per image.
    pub fn views(&self) -> usize {
        self.scales.len() * if self.flip { 2 } else { 1 }
    }

    /// The input side for `scale` of an `img_size` model: rounded to a multiple of 32, at least 32.
    pub fn side(img_size: i64, scale: f64) -> i64 {
        (((img_size as f64 * scale) / 32.0).round() as i64).max(1) * 32
    }

    /// The log of the views' mean softmax probabilities `[N, classes]` for a preprocessed batch `images`
    /// `[N, 3, S, S]` on the model's device (inference mode, under `precision`), and the energy score of each
    /// unaugmented image.
    pub fn scores(&self, model: &ImageClassifier, images: &Tensor, precision: &Precision) -> Result<Scores> {
        let side = images.size()[3];
        let forward = |x: &Tensor| -> Result<Tensor> {
            let xs = precision.prepare_batch(x)?;
            Ok(precision.autocast(|| model.forward_t(&xs, false)).to_kind(Kind::Float))
        };
        let mut views = Vec::with_capacity(self.views());
        let mut energy = None;
        for &scale in &self.scales {
            let target = Self::side(side, scale);
            let scaled = if target == side {
                images.shallow_clone()
            } else {
                images.f_internal_upsample_bilinear2d_aa([target, target], false, None, None)?
            };
            let logits = forward(&scaled)?;
            if target == side && energy.is_none() {
                energy = Some(energy_score(&logits));
            }
            views.push(logits.log_softmax(-1, Kind::Float));
            if self.flip {
                views.push(forward(&scaled.flip([3]))?.log_softmax(-1, Kind::Float));
            }
        }
        let energy = match energy {
            Some(e) => e,
            None => energy_score(&forward(images)?),
        };
        // log(mean_v p_v) = logsumexp_v(log p_v) - log V; one view gives its log-softmax exactly.
        let stacked = Tensor::stack(&views, 0);
        let mean = stacked.logsumexp([0i64].as_slice(), false);
        let log_probs = if views.len() == 1 { mean } else { mean - (views.len() as f64).ln() };
        Ok(Scores { log_probs, energy })
    }
}

/// What a batch's evaluation gives per image.
pub struct Scores {
    /// `[N, classes]`: the log of the views' mean probabilities.
    pub log_probs: Tensor,
    /// `[N]`: the energy score of the unaugmented image.
    pub energy: Tensor,
}

/// The energy score `−logsumexp(logits)` (Liu et al., 2020, temperature 1) per row of `logits` `[N, classes]`:
/// lower for inputs like the training data, higher for out-of-distribution ones.
pub fn energy_score(logits: &Tensor) -> Tensor {
    -logits.logsumexp([-1i64].as_slice(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_models::ClassifierConfig;
    use tch::{nn, Device};

    fn model(vs: &nn::VarStore) -> ImageClassifier {
        tch::manual_seed(5);
        ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", 4)).unwrap()
    }

    fn cpu() -> Precision {
        Precision::resolve(crate::precision::AmpMode::Off, false, Device::Cpu).unwrap()
    }

    #[test]
    fn one_view_is_the_logits_log_softmax_and_views_average_probabilities() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs);
        let images = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let plain = model.forward_t(&images, false).log_softmax(-1, Kind::Float);
            let identity = Tta::default().scores(&model, &images, &cpu()).unwrap().log_probs;
            assert_eq!(
                Vec::<f32>::try_from(identity.flatten(0, -1)).unwrap(),
                Vec::<f32>::try_from(plain.flatten(0, -1)).unwrap()
            );

            // Flip: the mean of the image's and its mirror's probabilities.
            let mirrored = model.forward_t(&images.flip([3]), false).softmax(-1, Kind::Float);
            let expected = ((plain.exp() + mirrored) / 2.0).log();
            let flip = Tta::flip().scores(&model, &images, &cpu()).unwrap().log_probs;
            assert!(flip.allclose(&expected, 1e-5, 1e-6, false));

            // A mirror-symmetric image gains nothing from its mirror.
            let symmetric = &images + images.flip([3]);
            let one = Tta::default().scores(&model, &symmetric, &cpu()).unwrap().log_probs;
            let two = Tta::flip().scores(&model, &symmetric, &cpu()).unwrap().log_probs;
            assert!(one.allclose(&two, 1e-5, 1e-6, false));

            // Scales: 1.5 x 32 px runs the model at 64 px; the average is normalised.
            let scaled = Tta { flip: true, scales: vec![1.0, 1.5] }.scores(&model, &images, &cpu()).unwrap().log_probs;
            let sums = scaled.exp().sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            assert!(sums.allclose(&Tensor::ones([3], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false));
            let at_64 = model
                .forward_t(&images.internal_upsample_bilinear2d_aa([64, 64], false, None, None), false)
                .softmax(-1, Kind::Float);
            let at_64_mirror = model
                .forward_t(&images.internal_upsample_bilinear2d_aa([64, 64], false, None, None).flip([3]), false)
                .softmax(-1, Kind::Float);
            let expected = ((plain.exp() + mirrored_probs(&model, &images) + at_64 + at_64_mirror) / 4.0).log();
            assert!(scaled.allclose(&expected, 1e-5, 1e-6, false));
        });
    }

    fn mirrored_probs(model: &ImageClassifier, images: &Tensor) -> Tensor {
        model.forward_t(&images.flip([3]), false).softmax(-1, Kind::Float)
    }

    #[test]
    fn sides_round_to_the_stride_and_bad_scale_sets_are_refused() {
        assert_eq!(Tta::side(224, 1.0), 224);
        assert_eq!(Tta::side(224, 1.15), 256);
        assert_eq!(Tta::side(32, 0.5), 32, "never below one stride");
        assert_eq!(Tta::side(32, 1.5), 64);
        assert_eq!(Tta::flip().views(), 2);
        assert!(Tta::default().is_identity() && !Tta::flip().is_identity());
        let empty = Tta { flip: true, scales: vec![] }.validate().unwrap_err().to_string();
        assert!(empty.contains("empty scale set"), "{empty}");
        let negative = Tta { flip: false, scales: vec![1.0, -2.0] }.validate().unwrap_err().to_string();
        assert!(negative.contains("-2"), "{negative}");
    }
}
