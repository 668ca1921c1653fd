//! Temperature scaling (Guo et al., 2017): one scalar `T` that divides the logits, fitted to minimise the
//! negative log-likelihood on the validation split, so that the softmax's confidence matches the accuracy. The
//! argmax, and so every accuracy, is unchanged. `kiln val --calibrate` fits it and writes `calibration.json`
//! (with NLL and expected calibration error before and after, and both reliability diagrams);
//! `kiln export onnx --calibrated` divides the exported logits by it and records it in the metadata.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use kiln_models::ImageClassifier;

use super::evaluate::EvalSettings;
use super::image_folder::ImageFolder;
use super::reliability::Reliability;
use super::report::evaluate_loaded;
use super::setup::open_dataset;
use crate::data::Split;
use crate::engine::{load_run, EvalOptions, LoadedRun, Task};
use crate::fsutil::write_atomic;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The temperatures searched: `T` in [1/20, 20].
const LOG_T_RANGE: (f64, f64) = (-2.995_732_273_553_991, 2.995_732_273_553_991);

/// A fitted temperature and what it did on the split it was fitted on (`calibration.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub temperature: f64,
    pub split: Split,
    /// The checkpoint whose logits were scaled, and its epoch.
    pub checkpoint: PathBuf,
    pub epoch: usize,
    pub images: usize,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
    /// The same temperature on the test split, which did not choose it (`None` without a test split).
    #[serde(default)]
    pub held_out: Option<HeldOut>,
}

/// What a fitted temperature does on a split it was not fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    pub split: Split,
    pub images: usize,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// NLL and the reliability table of a split's logits before and after dividing them by a temperature.
struct Scaling {
    nll_before: f64,
    nll_after: f64,
    before: Reliability,
    after: Reliability,
}

impl Scaling {
    fn measure(scores: &Tensor, labels: &Tensor, t: f64) -> Result<Self> {
        Ok(Scaling {
            nll_before: nll_at(scores, labels, 1.0),
            nll_after: nll_at(scores, labels, t),
            before: reliability_at(scores, labels, 1.0)?,
            after: reliability_at(scores, labels, t)?,
        })
    }
}

/// The logits and labels of `split` under the opened checkpoint, and how many images they are.
fn split_scores(
    dataset: &ImageFolder,
    loaded: &LoadedRun<ImageClassifier>,
    split: Split,
) -> Result<(Tensor, Tensor, usize)> {
    let settings = EvalSettings { keep_scores: true, ..Default::default() };
    let eval = evaluate_loaded(dataset, loaded, split, &settings)?.eval;
    let (scores, labels) = eval.scores.expect("keep_scores keeps the scores");
    Ok((scores, labels, eval.images))
}

/// The mean negative log-likelihood of `labels` under `softmax(scores / t)`.
pub fn nll_at(scores: &Tensor, labels: &Tensor, t: f64) -> f64 {
    let scaled = scores.to_kind(Kind::Double) / t;
    scaled.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0).double_value(&[])
}

/// The top-1 confidence against correctness of `softmax(scores / t)`.
pub fn reliability_at(scores: &Tensor, labels: &Tensor, t: f64) -> Result<Reliability> {
    let mut r = Reliability::default();
    r.add_batch(&(scores.to_kind(Kind::Double) / t).log_softmax(-1, Kind::Double), labels)?;
    Ok(r)
}

/// The temperature minimising [`nll_at`]: a golden-section search over `ln T` (the NLL of `β · scores` is convex
/// in `β = 1 / T`, so it has one minimum along `ln T`), to within 1e-6 of `ln T`.
pub fn fit_temperature(scores: &Tensor, labels: &Tensor) -> f64 {
    let f = |u: f64| nll_at(scores, labels, u.exp());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = LOG_T_RANGE;
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-6 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// `calibration.json` of a run.
pub fn calibration_path(run: &RunDir) -> PathBuf {
    run.path.join("calibration.json")
}

/// The run's saved calibration, if it has one.
pub fn read_calibration(run: &RunDir) -> Result<Option<Calibration>> {
    let path = calibration_path(run);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::InvalidSetting { key: path.display().to_string(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Fits the temperature of the run's checkpoint on its validation split (without test-time augmentation), checks
/// it on the test split when there is one ([`HeldOut`]), and writes `calibration.json` and the reliability
/// diagrams `val_reliability.png` /
/// `val_reliability_calibrated.png`.
/// Generic over the task (any whose model is the image classifier), so that classification's export can
/// calibrate a run without this file naming the task that names the export.
pub fn calibrate_run<T: Task<Model = ImageClassifier>>(run: &RunDir, options: &EvalOptions) -> Result<Calibration> {
    let loaded = load_run::<T>(run, options.which, options.device.as_deref(), "calibration", |c| {
        if let Some(data) = &options.data {
            c.data = data.clone();
        }
    })?;
    let dataset = open_dataset(&loaded.config)?;
    let (scores, labels, images) = split_scores(&dataset, &loaded, Split::Val).map_err(|e| match e {
        Error::Dataset { root, reason } => {
            Error::Dataset { root, reason: format!("{reason}: temperature scaling is fitted on the validation split") }
        }
        other => other,
    })?;
    let temperature = fit_temperature(&scores, &labels);
    let val = Scaling::measure(&scores, &labels, temperature)?;
    // The held-out check: the test split, when there is one, under the temperature the val split chose.
    let held_out = if dataset.split(Split::Test).is_empty() {
        None
    } else {
        match split_scores(&dataset, &loaded, Split::Test) {
            Ok((scores, labels, images)) => {
                let test = Scaling::measure(&scores, &labels, temperature)?;
                Some(HeldOut {
                    split: Split::Test,
                    images,
                    nll_before: test.nll_before,
                    nll_after: test.nll_after,
                    ece_before: test.before.ece(),
                    ece_after: test.after.ece(),
                })
            }
            // The fit on val stands; say why it is not checked rather than lose it.
            Err(e @ Error::NoReadableImages { .. }) => {
                eprintln!("warning: the temperature is not checked on held-out data: {e}");
                None
            }
            Err(e) => return Err(e),
        }
    };
    let calibration = Calibration {
        temperature,
        split: Split::Val,
        checkpoint: loaded.ckpt.path.clone(),
        epoch: loaded.ckpt.state.epoch,
        images,
        nll_before: val.nll_before,
        nll_after: val.nll_after,
        ece_before: val.before.ece(),
        ece_after: val.after.ece(),
        held_out,
    };
    write_atomic(&calibration_path(run), &serde_json::to_vec_pretty(&calibration).expect("serialises"))?;
    for (reliability, name, title) in [
        (&val.before, "val_reliability.png", "val".to_string()),
        (&val.after, "val_reliability_calibrated.png", format!("val, T = {temperature:.3}")),
    ] {
        if let Err(e) = reliability.plot(&title, &run.path.join(name)) {
            eprintln!("warning: no reliability diagram: {e}");
        }
    }
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Logits that are right 75 % of the time but claim about 99 %: `scale · (one-hot of the prediction)`.
    fn over_confident(scale: f64) -> (Tensor, Tensor) {
        let n = 400i64;
        let predicted = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(4);
        let labels: Vec<i64> = (0..n).map(|i| if i % 4 == 3 { (i + 1) % 4 } else { i % 4 }).collect();
        let labels = Tensor::from_slice(&labels);
        let logits = predicted.one_hot(4).to_kind(Kind::Double) * scale;
        (logits, labels)
    }

    #[test]
    fn temperature_scaling_lowers_nll_and_ece_on_an_over_confident_model() {
        let (logits, labels) = over_confident(8.0);
        let t = fit_temperature(&logits, &labels);
        assert!(t > 1.5, "an over-confident model is cooled: T = {t}");
        let (before, after) = (nll_at(&logits, &labels, 1.0), nll_at(&logits, &labels, t));
        assert!(after < before * 0.5, "NLL {before} -> {after}");
        // The optimum: the softmax's top probability equals the accuracy, 3/4 with the rest split 3 ways:
        // e^(8/T) / (e^(8/T) + 3) = 3/4, so 8/T = ln 9.
        assert!((t - 8.0 / 9f64.ln()).abs() < 1e-4, "T = {t}, expected {}", 8.0 / 9f64.ln());
        let ece_before = reliability_at(&logits, &labels, 1.0).unwrap().ece();
        let ece_after = reliability_at(&logits, &labels, t).unwrap().ece();
        assert!(ece_before > 0.2 && ece_after < 1e-4, "ECE {ece_before} -> {ece_after}");
        // Neighbouring temperatures are worse.
        for factor in [0.9, 1.1] {
            assert!(nll_at(&logits, &labels, t * factor) > after);
        }
    }

    #[test]
    fn an_under_confident_model_is_sharpened() {
        let (logits, labels) = over_confident(0.5);
        let t = fit_temperature(&logits, &labels);
        assert!(t < 1.0, "T = {t}");
        assert!((t - 0.5 / 9f64.ln()).abs() < 1e-4, "T = {t}");
    }
}
