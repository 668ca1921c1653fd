//! The task contract from outside kiln: a fourth task, defined only here, a regression of each image's mean
//! brightness on generated data, goes through the generic engine: fit (`engine::train`), evaluation
//! (`engine::evaluate_run`, also the test pass after training), prediction (`engine::predict_run`), ONNX export
//! (`engine::export_run`) and the step bench (`engine::bench_step`). Its exported model runs in
//! `kiln_infer::Model` and computes what the libtorch model computes. Nothing under `train/` or `src/` names it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_export::{Dim, ElemType, Graph, ModelMetadata, TrainingInfo};
use kiln_infer::{ListingFormat, Model};
use kiln_train::checkpoint::Checkpoint;
use kiln_train::config::{TaskKind, TaskSettings, TrainConfig};
use kiln_train::data::batcher::ItemSource;
use kiln_train::data::{ItemLoader, Items, SkipLog, Split};
use kiln_train::engine::{
    self, Batches, Built, Direction, EvalOptions, Evaluation, LoadedRun, Losses, Objective, PredictOptions,
    PredictionListing, Task,
};
use kiln_train::export::{declare_output, model_bytes, rgb_input, ExportOptions, GraphDescription};
use kiln_train::optim::Param;
use kiln_train::precision::Precision;
use kiln_train::step_timer::StepBenchConfig;
use kiln_train::tune::{Distribution, SearchSpace};
use kiln_train::{Result, RunDir};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

const SIZE: u32 = 32;

/// Writes `n` images per split as `<split>/<index>_<brightness in %>.png`: a uniform grey level with noise.
fn make_data(root: &Path, n: usize) {
    let mut state = 12345u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64) / ((1u64 << 31) as f64)
    };
    for split in ["train", "val", "test"] {
        std::fs::create_dir_all(root.join(split)).unwrap();
        for i in 0..n {
            let level = (10.0 + 80.0 * next()).round();
            let image = image::RgbImage::from_fn(SIZE, SIZE, |_, _| {
                let v = (level / 100.0 * 255.0 + (next() - 0.5) * 40.0).clamp(0.0, 255.0) as u8;
                image::Rgb([v, v, v])
            });
            image.save(root.join(split).join(format!("{i:03}_{level}.png"))).unwrap();
        }
    }
}

/// The target of an image: the brightness in its name.
fn target(path: &Path) -> f32 {
    let stem = path.file_stem().unwrap().to_string_lossy();
    stem.rsplit('_').next().unwrap().parse::<f32>().unwrap() / 100.0
}

/// An image's pixels on 0..1, channels first (CHW).
fn read_image(path: &Path) -> std::result::Result<Vec<f32>, String> {
    let image = image::open(path).map_err(|e| e.to_string())?.to_rgb8();
    if image.dimensions() != (SIZE, SIZE) {
        return Err(format!("{:?} is not {SIZE}x{SIZE}", image.dimensions()));
    }
    let plane = (SIZE * SIZE) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = pixel[c] as f32 / 255.0;
        }
    }
    Ok(chw)
}

/// The task's own settings, its section of the config (`brightness:`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BrightnessSettings {
    /// Channels of the convolution.
    channels: i64,
}

impl Default for BrightnessSettings {
    fn default() -> Self {
        Self { channels: 8 }
    }
}

impl TaskSettings for BrightnessSettings {
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        if self.channels < 1 {
            return Err(("brightness.channels".into(), format!("{} is not a positive count", self.channels)));
        }
        Ok(())
    }
}

/// A small CNN: conv 3x3 stride 2, ReLU, global average pooling, a linear layer to one value.
struct BrightnessNet {
    conv: nn::Conv2D,
    fc: nn::Linear,
}

impl BrightnessNet {
    fn new(vs: &nn::VarStore, channels: i64) -> Self {
        let root = vs.root();
        let config = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
        Self {
            conv: nn::conv2d(&root / "conv", 3, channels, 3, config),
            fc: nn::linear(&root / "fc", channels, 1, Default::default()),
        }
    }

    fn forward(&self, images: &Tensor) -> Tensor {
        let x = self.conv.forward(images).relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        self.fc.forward(&x).squeeze_dim(1)
    }
}

struct Brightness {
    files: [Vec<PathBuf>; 3],
}

fn split_index(split: Split) -> usize {
    Split::ALL.iter().position(|s| *s == split).unwrap()
}

/// One split's images on kiln's one loader (`data::ItemLoader`): how to prepare an image and assemble a batch.
struct BrightnessItems {
    files: Vec<PathBuf>,
    skips: Arc<SkipLog>,
}

type BrightnessLoader = ItemLoader<BrightnessItems>;

struct BrightnessBatch {
    images: Tensor,
    targets: Tensor,
}

impl ItemSource for BrightnessItems {
    type Target = f32;
    fn path(&self, index: usize) -> &Path {
        &self.files[index]
    }
    fn prepare(&self, index: usize, _seed: u64, out: &mut [f32]) -> std::result::Result<f32, String> {
        let path = &self.files[index];
        let pixels = read_image(path).inspect_err(|reason| {
            self.skips.record(path, reason.clone());
        })?;
        out.copy_from_slice(&pixels);
        Ok(target(path))
    }
}

impl Items for BrightnessItems {
    type Batch = BrightnessBatch;
    fn len(&self) -> usize {
        self.files.len()
    }
    fn item_shape(&self) -> [usize; 3] {
        [3, SIZE as usize, SIZE as usize]
    }
    fn batch(images: Tensor, targets: Vec<f32>, _paths: Vec<PathBuf>) -> BrightnessBatch {
        BrightnessBatch { images, targets: Tensor::from_slice(&targets) }
    }
    fn batch_len(batch: &BrightnessBatch) -> usize {
        batch.targets.size()[0] as usize
    }
}

fn loader(files: &[PathBuf], config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<BrightnessLoader> {
    ItemLoader::new(BrightnessItems { files: files.to_vec(), skips: skips.clone() }, config.loader_settings())
}

struct BrightnessEvaluation {
    mae: f64,
    images: usize,
}

impl Evaluation for BrightnessEvaluation {
    fn values(&self) -> Vec<Option<f64>> {
        vec![Some(self.mae)]
    }
    fn images(&self) -> usize {
        self.images
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BrightnessMetrics {
    mae: f64,
}

impl std::fmt::Display for BrightnessMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MAE {:.4}", self.mae)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BrightnessReport {
    split: Split,
    images: usize,
    mae: f64,
}

impl std::fmt::Display for BrightnessReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({} images): MAE {:.4}", self.split, self.images, self.mae)
    }
}

struct BrightnessPrediction {
    path: PathBuf,
    value: Option<f32>,
    error: Option<String>,
}

impl PredictionListing for BrightnessPrediction {
    fn path(&self) -> &Path {
        &self.path
    }
    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    fn write_listing(
        predictions: &[Self],
        _format: ListingFormat,
        _names: &[String],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        for p in predictions {
            writeln!(out, "{}  {:?}", p.path.display(), p.value)?;
        }
        Ok(())
    }
}

fn mae(model: &BrightnessNet, loader: &BrightnessLoader) -> Result<BrightnessEvaluation> {
    let (mut sum, mut n) = (0.0, 0);
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            sum += (model.forward(&batch.images) - &batch.targets).abs().sum(Kind::Double).double_value(&[]);
            n += BrightnessLoader::batch_len(&batch);
        }
        Ok(())
    })?;
    Ok(BrightnessEvaluation { mae: sum / n.max(1) as f64, images: n })
}

impl Task for Brightness {
    const KIND: TaskKind = TaskKind::new("brightness");
    const LOSSES: &'static [&'static str] = &["loss"];
    const METRICS: &'static [&'static str] = &["mae"];
    const OBJECTIVE: Objective = Objective { metric: "mae", direction: Direction::Minimize };
    const PLOTTED: &'static [(&'static str, &'static str)] = &[("mae", "MAE")];
    const LOSS_LABEL: &'static str = "L1";
    const DEPLOYED_METRIC: &'static str = "MAE";

    type Settings = BrightnessSettings;
    type Model = BrightnessNet;
    type Loader = BrightnessLoader;
    type Evaluation = BrightnessEvaluation;
    type Metrics = BrightnessMetrics;
    type Report = BrightnessReport;
    type EvalSettings = ();
    type PredictSettings = ();
    type Prediction = BrightnessPrediction;
    type GraphSpec = TrainingInfo;

    fn open(config: &TrainConfig) -> Result<Self> {
        let list = |split: &str| -> Vec<PathBuf> {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(config.data.join(split)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            files
        };
        Ok(Self { files: [list("train"), list("val"), list("test")] })
    }
    fn open_eval(config: &TrainConfig, _classes: &[String]) -> Result<Self> {
        Self::open(config)
    }
    fn synthetic(_config: &TrainConfig, _class_names: Vec<String>) -> Result<Self> {
        Ok(Self { files: Default::default() })
    }
    fn class_names(&self) -> &[String] {
        &[]
    }
    fn dataset_summary(&self) -> serde_json::Value {
        serde_json::json!({ "images": self.files.iter().map(Vec::len).collect::<Vec<_>>() })
    }
    fn describe(&self) -> String {
        format!("{} train images", self.files[0].len())
    }
    fn has_test(&self) -> bool {
        !self.files[2].is_empty()
    }
    fn check_resume(&self, _config: &TrainConfig, _ckpt: &Checkpoint) -> Result<()> {
        Ok(())
    }
    fn new_model(vs: &nn::VarStore, config: &TrainConfig, _class_names: &[String]) -> Result<BrightnessNet> {
        Ok(BrightnessNet::new(vs, config.task_settings::<BrightnessSettings>()?.channels))
    }
    fn build_model(&self, vs: &nn::VarStore, config: &TrainConfig) -> Result<Built<BrightnessNet>> {
        Ok(Built { model: Self::new_model(vs, config, &[])?, loaded: None })
    }
    fn trainable_params(&self, vs: &nn::VarStore, _model: &BrightnessNet, _config: &TrainConfig) -> Vec<Param> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().map(|(name, tensor)| Param::new(name, tensor)).collect()
    }
    fn loaders(
        &self,
        config: &TrainConfig,
        skips: &Arc<SkipLog>,
    ) -> Result<(BrightnessLoader, Option<BrightnessLoader>)> {
        Ok((loader(&self.files[0], config, skips)?, Some(loader(&self.files[1], config, skips)?)))
    }
    fn test_loader(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<Option<BrightnessLoader>> {
        Ok(Some(loader(&self.files[2], config, skips)?))
    }
    fn losses(
        &self,
        model: &BrightnessNet,
        batch: &BrightnessBatch,
        precision: &Precision,
        _config: &TrainConfig,
    ) -> Result<Losses> {
        let images = batch.images.to_device(precision.device);
        let targets = batch.targets.to_device(precision.device);
        Ok(Losses::single((model.forward(&images) - targets).abs().mean(Kind::Float)))
    }
    fn synthetic_batch(&self, config: &TrainConfig, device: Device) -> Result<BrightnessBatch> {
        let (n, s) = (config.batch as i64, config.img_size as i64);
        Ok(BrightnessBatch {
            images: Tensor::rand([n, 3, s, s], (Kind::Float, device)),
            targets: Tensor::rand([n], (Kind::Float, device)),
        })
    }
    fn evaluate(
        &self,
        model: &BrightnessNet,
        loader: &BrightnessLoader,
        _precision: &Precision,
    ) -> Result<BrightnessEvaluation> {
        mae(model, loader)
    }
    fn metrics(evaluation: &BrightnessEvaluation) -> BrightnessMetrics {
        BrightnessMetrics { mae: evaluation.mae }
    }
    fn default_space() -> SearchSpace {
        SearchSpace::from([("lr".to_string(), Distribution::Float { low: 1e-3, high: 1e-1, log: true, step: None })])
    }
    fn evaluate_split(
        &self,
        loaded: &LoadedRun<BrightnessNet>,
        run: &RunDir,
        split: Split,
        _settings: &(),
    ) -> Result<BrightnessReport> {
        let skips = Arc::new(SkipLog::default());
        let eval = mae(&loaded.model, &loader(&self.files[split_index(split)], &loaded.config, &skips)?)?;
        let report = BrightnessReport { split, images: eval.images, mae: eval.mae };
        kiln_train::fsutil::write_atomic(&run.metrics(split.name()), &serde_json::to_vec(&report).unwrap())?;
        Ok(report)
    }
    fn predict(
        loaded: &LoadedRun<BrightnessNet>,
        files: &[PathBuf],
        _settings: &(),
    ) -> Result<Vec<BrightnessPrediction>> {
        Ok(files
            .iter()
            .map(|path| match read_image(path) {
                Ok(pixels) => {
                    let image = Tensor::from_slice(&pixels).view([1, 3, SIZE as i64, SIZE as i64]);
                    let value = tch::no_grad(|| loaded.model.forward(&image).double_value(&[0]));
                    BrightnessPrediction { path: path.clone(), value: Some(value as f32), error: None }
                }
                Err(reason) => BrightnessPrediction { path: path.clone(), value: None, error: Some(reason) },
            })
            .collect())
    }
    fn graph_spec(_run: &RunDir, ckpt: &Checkpoint, _options: &ExportOptions) -> Result<TrainingInfo> {
        Ok(TrainingInfo { epoch: ckpt.state.epoch, metrics: ckpt.state.val_metrics.clone() })
    }
    fn onnx(
        model: &BrightnessNet,
        training: &TrainingInfo,
        options: &ExportOptions,
    ) -> Result<(Vec<u8>, ModelMetadata, usize)> {
        let mut g = Graph::new(options.opset, ElemType::F32)?;
        let s = SIZE as i64;
        let batch = Dim::Fixed(1);
        let images = g.input("images", ElemType::F32, &[batch.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)])?;
        let x = kiln_models::onnx::conv2d(&mut g, "conv", &model.conv, 2, 1, 1, &images)?;
        let x = g.op("Relu", &[&x], vec![])?;
        let x = g.op("GlobalAveragePool", &[&x], vec![])?;
        let x = g.op("Flatten", &[&x], vec![kiln_export::Attr::Int("axis", 1)])?;
        let value = kiln_models::onnx::linear(&mut g, "fc", &model.fc, &x)?;
        let outputs =
            vec![declare_output(&mut g, &value, "value", ElemType::F32, &[batch, Dim::Fixed(1)], "mean brightness")?];
        let normalize = kiln_train::data::Normalize { mean: [0.0; 3], std: [1.0; 3] };
        let input = rgb_input(
            vec![Some(1), Some(3), Some(s), Some(s)],
            ElemType::F32,
            "stretch",
            None,
            [SIZE, SIZE],
            normalize,
        );
        let description = GraphDescription {
            task: Self::KIND,
            architecture: "tiny-cnn".into(),
            variant: "brightness".into(),
            class_names: Vec::new(),
            input,
            outputs,
            training: training.clone(),
            nms: None,
            ctc: None,
            temperature_scaling: None,
        };
        model_bytes(g, description, options)
    }
    fn split_images(config: &TrainConfig, split: Split) -> Result<Vec<(PathBuf, Option<usize>)>> {
        Ok(Self::open(config)?.files[split_index(split)].iter().map(|p| (p.clone(), None)).collect())
    }
    fn deployed_metric(_config: &TrainConfig, _path: &Path) -> Result<Option<f64>> {
        Ok(None)
    }
}

#[test]
fn a_task_defined_outside_kiln_trains_evaluates_exports_and_benches_on_the_generic_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 24);
    let mut config = TrainConfig {
        task: Brightness::KIND,
        data: data.clone(),
        project: dir.path().join("runs"),
        epochs: 8,
        batch: 8,
        lr: 3e-2,
        img_size: SIZE,
        warmup_epochs: 0.0,
        device: "cpu".into(),
        threads: 1,
        name: Some("b".into()),
        ..TrainConfig::default()
    };
    // The task's section is read by the task: a bad value is refused naming its key, before any run exists.
    config.sections.insert("brightness".into(), serde_json::json!({"channels": 0}));
    let Err(refused) = engine::train::<Brightness>(&config, &mut |_| std::ops::ControlFlow::Continue(())) else {
        panic!("channels 0 is refused");
    };
    let refused = refused.to_string();
    assert!(refused.contains("brightness.channels"), "{refused}");
    assert!(!dir.path().join("runs").exists(), "nothing written");
    config.sections.insert("brightness".into(), serde_json::json!({"channels": 6}));
    let outcome = {
        let _serial = common::one_training_at_a_time();
        engine::train::<Brightness>(&config, &mut |_| std::ops::ControlFlow::Continue(())).unwrap()
    };
    let run = outcome.run.clone();
    let saved = TrainConfig::load_saved::<BrightnessSettings>(&run.config()).unwrap();
    assert_eq!(saved.task_settings::<BrightnessSettings>().unwrap(), BrightnessSettings { channels: 6 });
    assert!(run.path.starts_with(dir.path().join("runs/brightness")), "{}", run.path.display());
    // A constant guess of the mean brightness (0.5) is off by about 0.2 on these images.
    let test = outcome.test.as_ref().expect("the test pass ran");
    assert!(test.images == 24 && test.mae.is_finite() && test.mae < 0.15, "{test}");
    assert!(run.metrics("test").is_file() && run.path.join("results.csv").is_file());

    let val = engine::evaluate_run::<Brightness>(&run, Split::Val, &EvalOptions::default(), &()).unwrap();
    let best_val = outcome.best_val.as_ref().unwrap().mae;
    assert!((val.mae - best_val).abs() < 1e-6, "val {} vs best {best_val}", val.mae);

    let image = data.join("test").read_dir().unwrap().next().unwrap().unwrap().path();
    let (names, predictions) =
        engine::predict_run::<Brightness>(&run, &[data.join("test")], &PredictOptions::default(), &()).unwrap();
    assert!(names.is_empty() && predictions.len() == 24 && predictions.iter().all(|p| p.value.is_some()));

    let export = engine::export_run::<Brightness>(&run, &ExportOptions::default()).unwrap();
    assert_eq!(export.metadata.task, "brightness");
    let model = Model::builder().open(&export.path).unwrap();
    let preprocess = model.preprocess().expect("kiln metadata").clone();
    let decoded = kiln_infer::preprocess::decode_rgb(&image).unwrap();
    let mut input = vec![0.0; preprocess.tensor_len()];
    preprocess.apply(&decoded, &mut input);
    let onnx = model.run(&input, 1).unwrap()[0].data[0];
    let torch = predictions.iter().find(|p| p.path == image).unwrap().value.unwrap();
    assert!((onnx - torch).abs() < 1e-4 && onnx.is_finite(), "onnx {onnx} vs libtorch {torch}");

    let bench = StepBenchConfig {
        task: Brightness::KIND,
        img_size: SIZE,
        batch: 4,
        warmup: 1,
        steps: 2,
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    };
    let timed = engine::bench_step::<Brightness>(&bench).unwrap();
    assert!(timed.steps == 2 && timed.task == Brightness::KIND && timed.mean_step_ms > 0.0);

    // kiln's own registry does not know it: the CLI's entry points refuse it by name.
    let err = kiln_train::tasks::export_run(&run, &ExportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("'brightness' is not one of kiln's tasks"), "{err}");
}
