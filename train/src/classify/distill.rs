//! Knowledge distillation (`kiln train --teacher RUN_DIR`, `distill:` in the config): the training loss gains
//! `weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))` (Hinton et al., 2015), the teacher being a
//! finished classification run's checkpoint (any ConvNeXt variant) with the same classes and normalisation, run in
//! inference mode on the very batch the student sees (augmented and mixed). With a teacher that computes what the
//! student computes the term is zero and the loss is the student's own.

use std::path::PathBuf;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::ImageClassifier;

use super::model::classifier_config;
use crate::checkpoint;
pub use crate::config::classify::Distill;
use crate::config::{TaskKind, TrainConfig};
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// A loaded teacher.
pub struct Teacher {
    model: ImageClassifier,
    pub variant: String,
    pub checkpoint: PathBuf,
    _vs: nn::VarStore,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Teacher({} from {})", self.variant, self.checkpoint.display())
    }
}

impl Teacher {
    /// Loads the best checkpoint of the run at `dir` onto `device`, checking it classifies `class_names` with the
    /// student's normalisation.
    pub fn open(dir: &std::path::Path, student: &TrainConfig, class_names: &[String], device: Device) -> Result<Self> {
        let bad = |reason: String| Error::InvalidSetting { key: "distill.teacher".into(), reason };
        let run = RunDir::open(dir)?;
        let teacher_config = TrainConfig::load(&run.config())?;
        if teacher_config.task != TaskKind::Classify {
            return Err(bad(format!("{} is a {} run, not a classifier", dir.display(), teacher_config.task.name())));
        }
        let ckpt = checkpoint::load(&run.checkpoint(Which::Best))?;
        if ckpt.state.class_names != class_names {
            return Err(bad(format!(
                "{} was trained on other classes: {:?}; this dataset has {:?}",
                dir.display(),
                ckpt.state.class_names,
                class_names
            )));
        }
        if teacher_config.normalize != student.normalize {
            return Err(bad(format!(
                "{} normalises its input with mean {:?} / std {:?}, this run with {:?} / {:?}",
                dir.display(),
                teacher_config.normalize.mean,
                teacher_config.normalize.std,
                student.normalize.mean,
                student.normalize.std
            )));
        }
        let vs = nn::VarStore::new(device);
        let model = ImageClassifier::new(&vs.root(), &classifier_config(&teacher_config, class_names.len()))?;
        load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
        let mut vs = vs;
        vs.freeze();
        Ok(Self { model, variant: teacher_config.model, checkpoint: ckpt.path, _vs: vs })
    }

    /// The teacher's logits (float32) for a batch already prepared for the student's precision.
    pub fn logits(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.model.forward_t(&images.to_kind(Kind::Float), false)).to_kind(Kind::Float)
    }
}

/// `T² · mean_n KL(softmax(teacher / T) ‖ softmax(student / T))`: the distillation term (before its weight).
pub fn distillation_term(student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
    let log_student = (student / temperature).log_softmax(-1, Kind::Float);
    let log_teacher = (teacher / temperature).log_softmax(-1, Kind::Float);
    let kl = (log_teacher.exp() * (&log_teacher - log_student)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    kl.mean(Kind::Float) * (temperature * temperature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_is_zero_for_equal_logits_and_kl_times_t_squared_otherwise() {
        let s = Tensor::from_slice(&[2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0]).reshape([2, 3]);
        assert!(distillation_term(&s, &s, 4.0).double_value(&[]).abs() < 1e-7);
        let t = Tensor::from_slice(&[0.0f32, 2.0, 0.0, 1.0, 0.0, 0.0]).reshape([2, 3]);
        // By hand at T = 1: KL(p_t || p_s) per row, averaged.
        let row = |s: [f64; 3], t: [f64; 3]| {
            let soft = |z: [f64; 3]| {
                let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
                let sum: f64 = e.iter().sum();
                e.into_iter().map(|v| v / sum).collect::<Vec<_>>()
            };
            let (ps, pt) = (soft(s), soft(t));
            pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum::<f64>()
        };
        let expected = (row([2.0, 0.0, -1.0], [0.0, 2.0, 0.0]) + row([0.5, 0.5, 3.0], [1.0, 0.0, 0.0])) / 2.0;
        assert!((distillation_term(&s, &t, 1.0).double_value(&[]) - expected).abs() < 1e-5);
        // At T = 2 the logits are halved and the KL scaled by 4.
        let halved = (row([1.0, 0.0, -0.5], [0.0, 1.0, 0.0]) + row([0.25, 0.25, 1.5], [0.5, 0.0, 0.0])) / 2.0;
        assert!((distillation_term(&s, &t, 2.0).double_value(&[]) - 4.0 * halved).abs() < 1e-5);
        assert!(Distill { temperature: 0.0, ..Default::default() }.validate().is_err());
    }
}
