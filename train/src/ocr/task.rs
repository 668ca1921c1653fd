//! Text-line recognition as a [`Task`] of the shared engine: a `labels.txt` / `gt.txt` dataset, the CRNN
//! recognizer (ConvNeXt + BiLSTM), the CTC loss, CER as the objective (minimised), and the test report.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::nn;

use kiln_models::weights::{load_into, read_safetensors, HeadPolicy};
use kiln_models::TextLineRecognizer;

use super::charset::Charset;
use super::dataset::{self, TextDataset};
use super::evaluate::{evaluate, TextEvaluation, TextMetrics, TextShare};
use super::export::{recognizer_onnx, RecognizerGraphSpec};
use super::loader::{LineTarget, TextBatch, TextLoader, TextTransform, WIDTH_STRIDE};
use super::loss::batch_loss;
use super::report::{report_split, TextReport};
use super::settings::OcrSettings;
pub use super::setup::{line_input, make_loader, open_dataset, recognizer_config};
use crate::checkpoint::{Checkpoint, TRAINING_PREFIXES};
use crate::config::{TaskKind, TrainConfig};
use crate::data::{SkipLog, Split};
use crate::engine::{self, Built, Direction, EpochCallback, LoadedRun, Losses, Objective, Task};
use crate::export::ExportOptions;
use crate::optim::Param;
use crate::precision::Precision;
use crate::run_dir::RunDir;
use crate::{Error, Result};
use kiln_tune::{Distribution, SearchSpace};

/// What a finished OCR run reports.
pub type TrainOutcome = engine::Outcome<TextRecognition>;

/// Starts a new OCR run.
pub fn train(config: &TrainConfig) -> Result<TrainOutcome> {
    train_observed(config, &mut |_| ControlFlow::Continue(()))
}

/// [`train`] with a callback after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    engine::train::<TextRecognition>(config, on_epoch)
}

/// Continues an OCR run from its `last` checkpoint.
pub fn resume(run: RunDir) -> Result<TrainOutcome> {
    engine::resume::<TextRecognition>(run, &mut |_| ControlFlow::Continue(()))
}

/// The OCR task over one dataset.
pub struct TextRecognition {
    dataset: TextDataset,
}

impl engine::Evaluation for TextEvaluation {
    fn values(&self) -> Vec<Option<f64>> {
        let m = &self.metrics;
        vec![Some(self.loss), Some(m.cer), Some(m.wer), Some(m.accuracy), Some(m.mean_ned)]
    }
    fn images(&self) -> usize {
        self.images
    }
}

impl Task for TextRecognition {
    const KIND: TaskKind = TaskKind::Ocr;
    const LOSSES: &'static [&'static str] = &["loss"];
    const METRICS: &'static [&'static str] = &["loss", "cer", "wer", "accuracy", "mean_ned"];
    const OBJECTIVE: Objective = Objective { metric: "cer", direction: Direction::Minimize };
    const PLOTTED: &'static [(&'static str, &'static str)] =
        &[("cer", "CER"), ("wer", "WER"), ("accuracy", "exact match")];
    const LOSS_LABEL: &'static str = "CTC";

    type Settings = OcrSettings;
    type Model = TextLineRecognizer;
    type Loader = TextLoader;
    type Evaluation = TextEvaluation;
    type Metrics = TextMetrics;
    type Report = TextReport;
    type EvalSettings = ();
    type PredictSettings = ();
    type Prediction = super::predict::LinePrediction;
    type GraphSpec = RecognizerGraphSpec;
    const DEPLOYED_METRIC: &'static str = "CER";

    /// The OCR body's name when it is not a ConvNeXt preset (`vgg_bn`), else the preset's.
    fn model_name(config: &TrainConfig) -> String {
        match config.task_settings::<OcrSettings>() {
            Ok(ocr) => ocr.model_name(&config.model),
            Err(_) => config.model.clone(),
        }
    }

    fn open(config: &TrainConfig) -> Result<Self> {
        Ok(Self { dataset: open_dataset(config, None)? })
    }

    /// The labels are read within the checkpoint's charset.
    fn open_eval(config: &TrainConfig, classes: &[String]) -> Result<Self> {
        Ok(Self { dataset: open_dataset(config, Some(classes))? })
    }

    /// The step benchmark's lines are `config.img_size` pixels wide (a multiple of the frame width).
    fn synthetic(config: &TrainConfig, class_names: Vec<String>) -> Result<Self> {
        if config.img_size % WIDTH_STRIDE != 0 {
            return Err(Error::InvalidSetting {
                key: "img_size".into(),
                reason: format!("{} (the line width for ocr) is not a multiple of {WIDTH_STRIDE}", config.img_size),
            });
        }
        let dataset = TextDataset {
            root: PathBuf::new(),
            layout: dataset::TextLayout::LabelsTxt,
            charset: Charset::new(class_names),
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
            skipped: Vec::new(),
        };
        Ok(Self { dataset })
    }

    fn class_names(&self) -> &[String] {
        self.dataset.charset.chars()
    }

    fn dataset_summary(&self) -> serde_json::Value {
        let d = &self.dataset;
        let split = |s: &[dataset::TextSample]| {
            let chars: usize = s.iter().map(|x| super::charset::graphemes(&x.text).len()).sum();
            serde_json::json!({"lines": s.len(), "characters": chars})
        };
        serde_json::json!({
            "root": d.root, "layout": d.layout, "charset": d.charset.chars(),
            "train": split(&d.train), "val": split(&d.val), "test": split(&d.test), "skipped": d.skipped,
        })
    }

    fn describe(&self) -> String {
        let d = &self.dataset;
        format!(
            "{} characters in the charset; {} train / {} val / {} test lines",
            d.charset.len(),
            d.train.len(),
            d.val.len(),
            d.test.len()
        )
    }

    fn has_test(&self) -> bool {
        !self.dataset.test.is_empty()
    }

    fn check_resume(&self, config: &TrainConfig, ckpt: &Checkpoint) -> Result<()> {
        if self.dataset.charset.chars() != ckpt.state.class_names.as_slice() {
            return Err(Error::ClassMismatch {
                root: config.data.clone(),
                split: "train (charset)".into(),
                expected: ckpt.state.class_names.clone(),
                found: self.dataset.charset.chars().to_vec(),
            });
        }
        Ok(())
    }

    fn new_model(vs: &nn::VarStore, config: &TrainConfig, class_names: &[String]) -> Result<TextLineRecognizer> {
        Ok(TextLineRecognizer::new(&vs.root(), &recognizer_config(config, class_names.len())?)?)
    }

    fn build_model(&self, vs: &nn::VarStore, config: &TrainConfig) -> Result<Built<TextLineRecognizer>> {
        let model = TextLineRecognizer::new(&vs.root(), &recognizer_config(config, self.dataset.charset.len())?)?;
        let loaded = match &config.weights {
            Some(path) => {
                let tensors = read_safetensors(path)?;
                let report = load_into(vs, tensors, path, HeadPolicy::ReinitialiseHead, &TRAINING_PREFIXES)?;
                let fresh = if report.reinitialised.is_empty() { "" } else { " (the head starts fresh)" };
                Some(format!("loaded {} tensors from {}{fresh}", report.loaded, path.display()))
            }
            None => None,
        };
        Ok(Built { model, loaded })
    }

    fn trainable_params(&self, vs: &nn::VarStore, model: &TextLineRecognizer, config: &TrainConfig) -> Vec<Param> {
        engine::freeze::trainable_params(vs, &model.encoder_units(), config.freeze.0)
    }

    fn loaders(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<(TextLoader, Option<TextLoader>)> {
        let train = make_loader(
            config,
            &self.dataset,
            Split::Train,
            TextTransform::Train(config.task_settings::<OcrSettings>()?.augment.effective()),
            skips,
        )?;
        let val = if self.dataset.val.is_empty() {
            None
        } else {
            Some(make_loader(config, &self.dataset, Split::Val, TextTransform::Eval, skips)?)
        };
        Ok((train, val))
    }

    fn test_loader(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<Option<TextLoader>> {
        (!self.dataset.test.is_empty())
            .then(|| make_loader(config, &self.dataset, Split::Test, TextTransform::Eval, skips))
            .transpose()
    }

    fn losses(
        &self,
        model: &TextLineRecognizer,
        batch: &TextBatch,
        precision: &Precision,
        _config: &TrainConfig,
    ) -> Result<Losses> {
        batch_loss(model, batch, precision)
    }

    /// Full-width lines `config.img_size` pixels wide with fixed 8-character labels.
    fn synthetic_batch(&self, config: &TrainConfig, device: tch::Device) -> Result<TextBatch> {
        let classes = self.dataset.charset.len().max(1) as i64 + 1;
        let (h, w) = (line_input(config)?.height as i64, config.img_size as i64);
        Ok(TextBatch {
            images: tch::Tensor::randn([config.batch as i64, 3, h, w], (tch::Kind::Float, device)),
            targets: (0..config.batch)
                .map(|i| LineTarget {
                    classes: (0..8).map(|k| 1 + ((i + k) as i64 % (classes - 1))).collect(),
                    frames: (config.img_size / WIDTH_STRIDE) as usize,
                    index: i,
                })
                .collect(),
            paths: Vec::new(),
        })
    }

    fn evaluate(
        &self,
        model: &TextLineRecognizer,
        loader: &TextLoader,
        precision: &Precision,
    ) -> Result<TextEvaluation> {
        evaluate(model, loader, &self.dataset.charset, precision)
    }

    fn metrics(evaluation: &TextEvaluation) -> TextMetrics {
        evaluation.metrics.clone()
    }

    const MERGES_EVALUATIONS: bool = true;

    fn evaluation_share(evaluation: &TextEvaluation) -> Result<Vec<u8>> {
        engine::task::encode_share(&TextShare::of(evaluation))
    }

    fn merge_evaluation_shares(&self, shares: Vec<Vec<u8>>) -> Result<TextEvaluation> {
        Ok(TextShare::merge(engine::task::decode_shares(&shares)?, &self.dataset.val))
    }

    fn default_space() -> SearchSpace {
        SearchSpace::from([
            ("lr".to_string(), Distribution::Float { low: 3e-4, high: 3e-3, log: true, step: None }),
            ("weight_decay".to_string(), Distribution::Float { low: 1e-4, high: 1e-1, log: true, step: None }),
            ("batch".to_string(), Distribution::Categorical { choices: vec![16.into(), 32.into(), 64.into()] }),
            (
                "ocr.lstm_hidden".to_string(),
                Distribution::Categorical { choices: vec![64.into(), 128.into(), 256.into()] },
            ),
            ("ocr.augment.enabled".to_string(), Distribution::Categorical { choices: vec![false.into(), true.into()] }),
            ("ocr.augment.rotate".to_string(), Distribution::Float { low: 0.0, high: 4.0, log: false, step: None }),
            ("ocr.augment.noise".to_string(), Distribution::Float { low: 0.0, high: 0.08, log: false, step: None }),
        ])
    }

    fn evaluate_split(
        &self,
        loaded: &LoadedRun<TextLineRecognizer>,
        run: &RunDir,
        split: Split,
        _settings: &(),
    ) -> Result<TextReport> {
        report_split(&self.dataset, loaded, run, split)
    }

    fn predict(
        loaded: &LoadedRun<TextLineRecognizer>,
        files: &[PathBuf],
        _settings: &(),
    ) -> Result<Vec<super::predict::LinePrediction>> {
        super::predict::predict_loaded(loaded, files)
    }

    fn graph_spec(_run: &RunDir, ckpt: &Checkpoint, options: &ExportOptions) -> Result<RecognizerGraphSpec> {
        super::export::graph_spec(ckpt, options)
    }

    fn onnx(
        model: &TextLineRecognizer,
        spec: &RecognizerGraphSpec,
        options: &ExportOptions,
    ) -> Result<(Vec<u8>, kiln_export::ModelMetadata, usize)> {
        recognizer_onnx(model, spec, options)
    }

    fn split_images(config: &TrainConfig, split: Split) -> Result<crate::data::LabelledImages> {
        Ok(open_dataset(config, None)?.split(split.name()).iter().map(|s| (s.path.clone(), None)).collect())
    }

    fn deployed_metric(config: &TrainConfig, path: &Path) -> Result<Option<f64>> {
        super::deployed::deployed_cer(config, path)
    }
}
