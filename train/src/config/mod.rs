//! The training configuration: defaults, a YAML/TOML/JSON file, and command-line overrides, merged in that order
//! and checked. Unknown keys are rejected by name. The resolved config is what a run saves before step 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod augment;
pub mod cache_mode;
pub mod classify;
pub mod task_kind;
pub mod task_settings;

use crate::data::{LoaderSettings, Normalize};
use crate::precision::AmpMode;
use crate::{Error, Result};
pub use augment::{AugmentConfig, AutoAugment, EraseFill, RandomErasing};
pub use cache_mode::CacheMode;
pub use classify::{Distill, Mixup};
pub use task_kind::TaskKind;
pub use task_settings::TaskSettings;

/// The optimiser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    AdamW,
    /// Adam with L2 weight decay added to the gradient (PyTorch's `torch.optim.Adam`).
    Adam,
    Sgd,
}

/// How much of the encoder is frozen: a fraction of its units (stem, downsamplers, blocks) from the input side.
/// `true` is 1, `false` is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Freeze(pub f64);

impl FromStr for Freeze {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let value = match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" => 1.0,
            "false" | "no" => 0.0,
            other => other.parse::<f64>().map_err(|_| format!("'{s}' is not true, false or a fraction"))?,
        };
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("{value} is not a fraction in [0, 1]"));
        }
        Ok(Freeze(value))
    }
}

impl<'de> Deserialize<'de> for Freeze {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Freeze(if b { 1.0 } else { 0.0 })),
            Value::Number(n) => {
                Freeze::from_str(&n.to_string()).map_err(|e| serde::de::Error::custom(format!("freeze: {e}")))
            }
            Value::String(s) => Freeze::from_str(&s).map_err(|e| serde::de::Error::custom(format!("freeze: {e}"))),
            other => Err(serde::de::Error::custom(format!("freeze: {other} is not true, false or a fraction"))),
        }
    }
}

/// How much of the training split an epoch uses (`limit_train_batches`, as Lightning's): an integer is a number of
/// batches, a float in (0, 1] a fraction of them (at least one batch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchLimit {
    Count(usize),
    Fraction(f64),
}

impl BatchLimit {
    /// The batches an epoch of `batches` takes.
    pub fn of(self, batches: usize) -> usize {
        match self {
            BatchLimit::Count(n) => n.min(batches),
            BatchLimit::Fraction(f) => ((batches as f64 * f).floor() as usize).clamp(1.min(batches), batches),
        }
    }
}

impl Serialize for BatchLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            BatchLimit::Count(n) => s.serialize_u64(n as u64),
            BatchLimit::Fraction(f) => s.serialize_f64(f),
        }
    }
}

impl<'de> Deserialize<'de> for BatchLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bad = |v: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!(
                "limit_train_batches: {v} is neither a number of batches (an integer >= 1) nor a fraction in (0, 1]"
            ))
        };
        match Value::deserialize(d)? {
            Value::Number(n) if n.is_u64() => match n.as_u64() {
                Some(0) | None => Err(bad(&n)),
                Some(c) => Ok(BatchLimit::Count(c as usize)),
            },
            Value::Number(n) => match n.as_f64() {
                Some(f) if f > 0.0 && f <= 1.0 => Ok(BatchLimit::Fraction(f)),
                _ => Err(bad(&n)),
            },
            other => Err(bad(&other)),
        }
    }
}

/// `fast_dev_run` as Lightning reads it: `true` is one batch, `false` none, an integer that many.
fn fast_dev_run_batches<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(on) => Ok(usize::from(on)),
        Value::Number(n) if n.is_u64() => Ok(n.as_u64().expect("checked") as usize),
        other => Err(serde::de::Error::custom(format!(
            "fast_dev_run: {other} is neither true/false nor a number of batches"
        ))),
    }
}

/// Which epochs `save_top_k` keeps (Lightning's `ModelCheckpoint(monitor, mode, every_n_epochs)`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointPolicy {
    /// The validation metric that ranks epochs (one of the task's: `loss`, `accuracy`, `top5`, ... for
    /// classification); by default the task's objective.
    pub monitor: Option<String>,
    /// `min` or `max` (also `minimize` / `maximize`); by default the objective's direction, or `min` for a
    /// metric named `loss`.
    pub mode: Option<kiln_tune::Direction>,
    /// Only every N-th epoch may enter the top k (1: every epoch).
    pub every_n_epochs: Option<usize>,
}

/// Every setting of a training run. Unknown keys are refused by name ([`TrainConfig::unknown_keys`]: a key that
/// is no setting is kept only as a task's section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub task: TaskKind,
    /// Dataset root (ImageFolder layout).
    pub data: PathBuf,
    /// `convnext_atto` … `convnext_base`.
    pub model: String,
    /// A safetensors file with timm-named weights (a timm checkpoint saved locally, or a kiln checkpoint).
    pub weights: Option<PathBuf>,
    pub freeze: Freeze,
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate, reached after warm-up.
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub warmup_epochs: f64,
    /// The warm-up lasts at least this many optimiser steps (capped at a fifth of the run; none when
    /// `warmup_epochs` is 0): small sets have few steps an epoch. See [`crate::optim::warmup_steps`]. A run config
    /// written before this key existed means 0, the schedule that run trained with.
    #[serde(default)]
    pub warmup_min_steps: usize,
    /// Learning rate at the end of the cosine schedule.
    pub min_lr: f64,
    pub label_smoothing: f64,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    /// Keep an exponential moving average of the weights and evaluate/save it.
    pub ema: bool,
    pub ema_decay: f64,
    /// Mixed precision on CUDA: `auto` (bf16 where the GPU computes it natively, else fp16), `bf16`, `fp16`
    /// (with loss scaling) or `false`. The CPU always trains in fp32.
    pub amp: AmpMode,
    /// Channels-last memory format for parameters and batches on CUDA (ignored on the CPU).
    pub channels_last: bool,
    pub img_size: u32,
    /// Image decoding threads.
    pub workers: usize,
    /// Decoded images kept between epochs: `auto` (RAM when they plainly fit), `none`, `ram` or `disk`.
    pub cache: CacheMode,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub threads: usize,
    pub seed: u64,
    /// Stop after this many epochs without a better validation metric; 0 disables early stopping.
    pub patience: usize,
    /// Also keep the checkpoints of the best `save_top_k` epochs as `weights/epoch_<N>.safetensors`; 0 keeps
    /// only `best` and `last`.
    pub save_top_k: usize,
    /// What `save_top_k` ranks and how often it looks.
    pub checkpoint: CheckpointPolicy,
    /// Train on only part of each epoch: a number of batches or a fraction of them (the schedule follows).
    pub limit_train_batches: Option<BatchLimit>,
    /// Lightning's `fast_dev_run`: `true` or a number N of batches runs N training steps and N batches of val
    /// and of test, and writes nothing but `fast_dev_run.json` (no checkpoint, no results); 0 / `false`: off.
    #[serde(deserialize_with = "fast_dev_run_batches")]
    pub fast_dev_run: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Fractions of train used as val / test when those folders are missing.
    pub val_split: f64,
    pub test_split: f64,
    pub drop_path_rate: f64,
    pub drop_rate: f64,
    pub augment: AugmentConfig,
    /// Classification's MixUp / CutMix of each training batch (off by default).
    pub mixup: Mixup,
    /// Classification's knowledge distillation from a teacher run (off by default).
    pub distill: Distill,
    pub normalize: Normalize,
    /// Classification's evaluation resize (validation, test, predict and the exported model): absent, the image is
    /// stretched to `img_size` × `img_size`; a value in (0, 1] is timm's `crop_pct`: the shorter side to
    /// `floor(img_size / crop_pct)`, then the centre crop, keeping the aspect ratio.
    pub eval_crop_pct: Option<f64>,
    /// Runs go to `<project>/<task>/<name>`.
    pub project: PathBuf,
    /// Run name; by default the first free of `exp`, `exp2`, `exp3`, …
    pub name: Option<String>,
    /// For studies (`--trials`): the distribution of each tuned config key (dotted for nested keys); by default
    /// learning rate, weight decay, batch size, drop-path rate and colour jitter.
    pub search_space: Option<kiln_tune::SearchSpace>,
    /// Each task's own section, under the task's name (`detect:`, `ocr:`), read by the task as its
    /// `Task::Settings` ([`TrainConfig::task_settings`]).
    #[serde(flatten)]
    pub sections: BTreeMap<String, Value>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            task: TaskKind::Classify,
            data: PathBuf::new(),
            model: "convnext_tiny".into(),
            weights: None,
            freeze: Freeze(0.0),
            epochs: 30,
            batch: 32,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW,
            weight_decay: 0.05,
            momentum: 0.9,
            warmup_epochs: 1.0,
            warmup_min_steps: 100,
            min_lr: 1e-6,
            label_smoothing: 0.1,
            grad_clip: 0.0,
            ema: false,
            ema_decay: 0.9998,
            amp: AmpMode::Auto,
            channels_last: true,
            img_size: 224,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            cache: CacheMode::Auto,
            threads: 0,
            seed: 0,
            patience: 0,
            save_top_k: 0,
            checkpoint: CheckpointPolicy::default(),
            limit_train_batches: None,
            fast_dev_run: 0,
            device: "auto".into(),
            val_split: 0.1,
            test_split: 0.1,
            drop_path_rate: 0.1,
            drop_rate: 0.0,
            augment: AugmentConfig::default(),
            mixup: Default::default(),
            distill: Default::default(),
            normalize: Normalize::default(),
            eval_crop_pct: None,
            project: PathBuf::from("runs"),
            name: None,
            search_space: None,
            sections: BTreeMap::new(),
        }
    }
}

/// Reads a config file (`.yaml`/`.yml`, `.toml` or `.json`) as a JSON value.
pub fn read_config_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let reason = |e: &dyn std::fmt::Display| Error::Config { path: path.to_path_buf(), reason: e.to_string() };
    let value: Value = match ext.as_str() {
        "yaml" | "yml" => serde_yaml::from_str(&text).map_err(|e| reason(&e))?,
        "toml" => toml::from_str(&text).map_err(|e| reason(&e))?,
        "json" => serde_json::from_str(&text).map_err(|e| reason(&e))?,
        _ => return Err(reason(&"unknown config format (use .yaml, .yml, .toml or .json)")),
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(reason(&"the config must be a mapping of keys to values")),
    }
}

/// Merges `overrides` into `base` key by key (nested mappings merge recursively).
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl TrainConfig {
    /// How this config's loaders batch: its batch size, workers and seed, two batches prepared ahead.
    pub fn loader_settings(&self) -> LoaderSettings {
        LoaderSettings { batch_size: self.batch, workers: self.workers.max(1), prefetch: 2, seed: self.seed }
    }

    /// Defaults ← `file` ← `overrides` (a JSON object of keys set on the command line), then validated.
    pub fn resolve(file: Option<&Path>, overrides: &Value) -> Result<Self> {
        let mut value = serde_json::to_value(TrainConfig::default()).expect("the default config serialises");
        if let Some(path) = file {
            merge(&mut value, &read_config_file(path)?);
        }
        merge(&mut value, overrides);
        let source = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<command line>"));
        let config: TrainConfig =
            serde_json::from_value(value).map_err(|e| Error::Config { path: source.clone(), reason: e.to_string() })?;
        config.refuse_unknown_keys(&source)?;
        let config = config.with_img_size_rounded();
        config.validate()?;
        Ok(config)
    }

    /// `img_size` rounded up to the next multiple of 32 (ConvNeXt's output stride), with a warning when it moves,
    /// as Ultralytics rounds to its stride.
    pub fn with_img_size_rounded(mut self) -> Self {
        let rounded = self.img_size.max(32).div_ceil(32) * 32;
        if rounded != self.img_size {
            eprintln!(
                "warning: img_size {} is not a multiple of 32 (ConvNeXt's output stride); using {rounded}",
                self.img_size
            );
            self.img_size = rounded;
        }
        self
    }

    /// Reads a config saved by a run (every key present).
    pub fn load(path: &Path) -> Result<Self> {
        let config: TrainConfig = serde_json::from_value(read_config_file(path)?)
            .map_err(|e| Error::Config { path: path.to_path_buf(), reason: e.to_string() })?;
        config.refuse_unknown_keys(path)?;
        config.validate()?;
        Ok(config)
    }

    fn refuse_unknown_keys(&self, source: &Path) -> Result<()> {
        match self.unknown_keys().first() {
            Some(key) => Err(Error::Config {
                path: source.to_path_buf(),
                reason: format!("unknown field `{key}`: neither a setting nor a task's section"),
            }),
            None => Ok(()),
        }
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::InvalidSetting { key: key.into(), reason });
        if self.data.as_os_str().is_empty() {
            return bad("data", "no dataset given (--data DIR)".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("batch", "must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if self.img_size < 32 || self.img_size % 32 != 0 {
            return bad("img_size", format!("{} is not a multiple of 32 (ConvNeXt's output stride)", self.img_size));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", format!("{} is not in [0, 1)", self.label_smoothing));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", format!("{} is not in [0, 1)", self.ema_decay));
        }
        if self.grad_clip < 0.0 || self.weight_decay < 0.0 || self.warmup_epochs < 0.0 || self.min_lr < 0.0 {
            return bad("grad_clip/weight_decay/warmup_epochs/min_lr", "must not be negative".into());
        }
        let [lo, hi] = self.augment.scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return bad("augment.scale", format!("[{lo}, {hi}] is not a range within (0, 1]"));
        }
        let [lo, hi] = self.augment.ratio;
        if !(0.0 < lo && lo <= hi) {
            return bad("augment.ratio", format!("[{lo}, {hi}] is not a positive range"));
        }
        if let Some(policy) = &self.augment.auto_augment {
            policy.validate().or_else(|(key, reason)| bad(&key, reason))?;
        }
        self.augment.random_erasing.validate().or_else(|(key, reason)| bad(&key, reason))?;
        self.mixup.validate().or_else(|(key, reason)| bad(&key, reason))?;
        self.distill.validate().or_else(|(key, reason)| bad(&key, reason))?;
        if self.distill.teacher.is_some() && self.task != TaskKind::Classify {
            return bad("distill.teacher", format!("distillation is for classification, not {}", self.task.name()));
        }
        if self.checkpoint.every_n_epochs == Some(0) {
            return bad("checkpoint.every_n_epochs", "must be at least 1".into());
        }
        if self.mixup.enabled() && self.task != TaskKind::Classify {
            return bad("mixup", format!("MixUp and CutMix are for classification, not {}", self.task.name()));
        }
        if self.normalize.std.iter().any(|s| *s <= 0.0) {
            return bad("normalize.std", "must be positive".into());
        }
        if let Some(pct) = self.eval_crop_pct {
            if !(pct > 0.0 && pct <= 1.0) {
                return bad("eval_crop_pct", format!("{pct} is not in (0, 1]"));
            }
        }
        if let Some(key) = self.unknown_keys().first() {
            return bad(key, "unknown: neither a setting nor a task's section".into());
        }
        kiln_models::ConvNextConfig::from_name(&self.model)?;
        Ok(())
    }

    /// The YAML text a run saves as `config.yaml`.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("the config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_added_later_keep_what_older_run_configs_trained_with() {
        // A new run starts from the defaults; a run config saved before a key existed reads as that run trained.
        // (Task sections: `Task::Settings`' own tests.)
        let new = TrainConfig::resolve(None, &json!({"data": "/d"})).unwrap();
        assert_eq!(new.warmup_min_steps, 100);
        let mut saved = serde_json::to_value(&new).unwrap();
        saved.as_object_mut().unwrap().remove("warmup_min_steps");
        let old: TrainConfig = serde_json::from_value(saved).unwrap();
        assert_eq!(old.warmup_min_steps, 0);
    }

    #[test]
    fn every_committed_config_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
        assert!(!files.is_empty(), "no config in {}", dir.display());
        let resolve = |file: &Path| {
            TrainConfig::resolve(Some(file), &json!({"data": "/d"}))
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        };
        for file in &files {
            crate::tasks::check_settings(&resolve(file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        // The flips-only baseline is the light recipe without its augmentation, as its header says.
        let light = resolve(&dir.join("recipe_fashion_mnist_light.yaml"));
        let mut baseline = resolve(&dir.join("baseline_fashion_mnist_flips.yaml"));
        assert_eq!(baseline.augment.auto_augment, Default::default());
        assert_eq!(baseline.mixup, Default::default());
        (baseline.augment, baseline.mixup) = (light.augment.clone(), light.mixup);
        assert_eq!(baseline.to_yaml(), light.to_yaml());
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "data: /d\nepochs: 7\nlr: 0.01\naugment:\n  hflip: 0.0\nfreeze: 0.5\n").unwrap();
        let c = TrainConfig::resolve(Some(&file), &json!({"lr": 0.002, "batch": 8})).unwrap();
        assert_eq!((c.epochs, c.batch, c.lr), (7, 8, 0.002));
        assert_eq!(c.augment.hflip, 0.0);
        assert_eq!(c.augment.color_jitter, AugmentConfig::default().color_jitter, "nested defaults kept");
        assert_eq!(c.freeze, Freeze(0.5));
        assert_eq!(c.model, "convnext_tiny");

        let toml_file = dir.path().join("c.toml");
        std::fs::write(&toml_file, "data = \"/d\"\nfreeze = true\n[augment]\nscale = [0.5, 1.0]\n").unwrap();
        let t = TrainConfig::resolve(Some(&toml_file), &json!({})).unwrap();
        assert_eq!(t.freeze, Freeze(1.0));
        assert_eq!(t.augment.scale, [0.5, 1.0]);
    }

    #[test]
    fn fast_dev_run_reads_as_lightning_does() {
        let read = |v: serde_json::Value| TrainConfig::resolve(None, &json!({"data": "/d", "fast_dev_run": v}));
        assert_eq!(read(json!(true)).unwrap().fast_dev_run, 1);
        assert_eq!(read(json!(false)).unwrap().fast_dev_run, 0);
        assert_eq!(read(json!(3)).unwrap().fast_dev_run, 3);
        assert_eq!(TrainConfig::default().fast_dev_run, 0, "off by default");
        for bad in [json!(-1), json!(0.5), json!("yes")] {
            let err = read(bad.clone()).unwrap_err().to_string();
            assert!(err.contains("fast_dev_run"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_search_space_reads_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "data: /d\nsearch_space:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n  batch: {type: categorical, choices: [16, 32]}\n  augment.hflip: {type: float, low: 0.0, high: 0.5, step: 0.25}\n  epochs: {type: int, low: 5, high: 20, step: 5}\n",
        )
        .unwrap();
        let c = TrainConfig::resolve(Some(&file), &json!({})).unwrap();
        let space = c.search_space.clone().unwrap();
        assert_eq!(space.len(), 4);
        assert_eq!(space["epochs"], kiln_tune::Distribution::Int { low: 5, high: 20, step: 5, log: false });
        let saved = dir.path().join("config.yaml");
        std::fs::write(&saved, c.to_yaml()).unwrap();
        assert_eq!(TrainConfig::load(&saved).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "data: /d\nlearning_rate: 0.1\n").unwrap();
        let err = TrainConfig::resolve(Some(&file), &json!({})).unwrap_err().to_string();
        assert!(err.contains("c.yaml") && err.contains("learning_rate"), "{err}");
        std::fs::write(&file, "data: /d\naugment:\n  flip: 1\n").unwrap();
        let err = TrainConfig::resolve(Some(&file), &json!({})).unwrap_err().to_string();
        assert!(err.contains("flip"), "{err}");
        std::fs::write(&file, "data: /d\nnormalize:\n  stdev: [0.5, 0.5, 0.5]\n").unwrap();
        let err = TrainConfig::resolve(Some(&file), &json!({})).unwrap_err().to_string();
        assert!(err.contains("stdev"), "a misspelt normalize key is refused: {err}");
    }

    #[test]
    fn img_size_is_rounded_up_to_the_stride() {
        for (given, used) in [(100, 128), (224, 224), (225, 256), (1, 32)] {
            let c = TrainConfig::resolve(None, &json!({"data": "/d", "img_size": given})).unwrap();
            assert_eq!(c.img_size, used, "{given}");
        }
        let direct = TrainConfig { data: "/d".into(), img_size: 100, ..TrainConfig::default() };
        assert!(direct.validate().unwrap_err().to_string().contains("img_size"), "validate alone still refuses");
    }

    #[test]
    fn saved_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = TrainConfig::resolve(None, &json!({"data": "/x", "model": "convnext_atto", "ema": true})).unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, c.to_yaml()).unwrap();
        assert_eq!(TrainConfig::load(&path).unwrap(), c);
    }

    #[test]
    fn invalid_values_are_named() {
        for (overrides, key) in [
            (json!({"data": "/d", "epochs": 0}), "epochs"),
            (json!({"data": "/d", "model": "vit"}), "vit"),
            (json!({"data": "/d", "freeze": 2}), "freeze"),
            (json!({}), "data"),
            (json!({"data": "/d", "eval_crop_pct": 1.2}), "eval_crop_pct"),
            (json!({"data": "/d", "eval_crop_pct": 0}), "eval_crop_pct"),
        ] {
            let err = TrainConfig::resolve(None, &overrides).and_then(|c| c.validate()).unwrap_err().to_string();
            assert!(err.contains(key), "{overrides}: {err}");
        }
        assert_eq!("false".parse::<Freeze>().unwrap(), Freeze(0.0));
        assert!("half".parse::<Freeze>().is_err());
    }
}
