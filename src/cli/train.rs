//! `kiln train`: a new run from flags and an optional config file, or `--resume RUN_DIR`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value};

use kiln_train::config::CacheMode;
use kiln_train::config::{Freeze, OptimizerKind, TaskKind};
use kiln_train::precision::AmpMode;
use kiln_train::{RunDir, TrainConfig};

use super::output::print_outcome;

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "data", "trials"])]
    pub resume: Option<PathBuf>,
    /// What to train: classify | detect | ocr. Given, it overrides the config file's `task`; else the file's
    /// (or classify) holds.
    #[arg(long, value_name = "TASK")]
    pub task: Option<TaskKind>,
    /// Dataset root: ROOT/{train,val,test}/<class>/*.{jpg,png,...}
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// YAML, TOML or JSON file with config keys; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// convnext_atto | femto | pico | nano | tiny | small | base
    #[arg(long)]
    pub model: Option<String>,
    /// timm-named weights (safetensors) to start from; a head for other classes is re-initialised.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Freeze the encoder: true, false, or the fraction of its blocks to freeze from the input side.
    #[arg(long)]
    pub freeze: Option<Freeze>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Clip the global gradient norm to this value (0: off).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Keep an EMA of the weights and evaluate and save it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ema: Option<bool>,
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Mixed precision on CUDA: auto (bf16 where native, else fp16), bf16, fp16 or false. The CPU trains in fp32.
    #[arg(long)]
    pub amp: Option<AmpMode>,
    /// Channels-last memory format on CUDA (true/false; ignored on the CPU).
    #[arg(long)]
    pub channels_last: Option<bool>,
    /// Decoded images between epochs: auto (RAM when they plainly fit), none (decode every epoch), ram or disk.
    #[arg(long)]
    pub cache: Option<CacheMode>,
    #[arg(long)]
    pub img_size: Option<u32>,
    /// OCR: input line height (a multiple of the body's height stride: 16 for vgg_bn, 32 for convnext).
    #[arg(long)]
    pub ocr_h: Option<u32>,
    /// OCR: the convolutional body: vgg_bn (the default) or convnext (the seeds' CRNN, sized by --model; takes
    /// timm ConvNeXt weights).
    #[arg(long, value_name = "vgg_bn|convnext")]
    pub ocr_backbone: Option<String>,
    /// OCR: input line width (a multiple of 4; lines are padded to it, wider ones squeezed).
    #[arg(long)]
    pub ocr_w: Option<u32>,
    /// OCR: the characters read: a string with ranges (default 0-9A-Za-z), a file of characters, or auto (those
    /// of the training labels).
    #[arg(long, value_name = "STRING|FILE|auto")]
    pub charset: Option<String>,
    /// Image decoding threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// libtorch threads (0: libtorch's default).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many epochs without improvement (0: off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub val_split: Option<f64>,
    #[arg(long)]
    pub test_split: Option<f64>,
    #[arg(long)]
    pub drop_path_rate: Option<f64>,
    /// Classification: distil from this finished run's best checkpoint (same classes, any ConvNeXt variant): a
    /// KL term on its softened logits (distill.temperature, distill.weight).
    #[arg(long, value_name = "RUN_DIR")]
    pub teacher: Option<PathBuf>,
    /// Train on only part of each epoch: an integer number of batches or a fraction in (0, 1].
    #[arg(long, value_name = "N|FRACTION")]
    pub limit_train_batches: Option<String>,
    /// Run N training steps and N batches of val and of test (default 1) and write only fast_dev_run.json: a
    /// check of the config, data and model in seconds (Lightning's fast_dev_run).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub fast_dev_run: Option<usize>,
    /// Keep the best K epochs' checkpoints (ranked by checkpoint.monitor, default the objective).
    #[arg(long, value_name = "K")]
    pub save_top_k: Option<usize>,
    /// Runs go to PROJECT/<task>/<name>.
    #[arg(long)]
    pub project: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    /// Any config key, e.g. --set augment.hflip=0 (repeatable; values are YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run a study of this many trials in total (rerunning resumes it; a larger number adds trials).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Study storage: sqlite:///FILE (one machine; default: $KILN_STORAGE, else a study.db in the study's
    /// directory) or postgres://USER@HOST[:PORT]/DATABASE (workers on several machines; the password from
    /// PGPASSWORD or ~/.pgpass rather than the URL, which `ps` shows; TLS by ?sslmode=, as libpq; a lost connection
    /// is retried for $KILN_STORAGE_PATIENCE seconds, default 120).
    #[arg(long, value_name = "URL", requires = "trials")]
    pub storage: Option<String>,
    /// Study name (default: study).
    #[arg(long, requires = "trials")]
    pub study: Option<String>,
    /// How trials choose their parameters (grid: 3 points per numerical parameter, trial n takes combination n).
    #[arg(long, value_enum, default_value = "tpe", requires = "trials")]
    pub sampler: SamplerArg,
    /// Which unpromising trials stop early (median: below the median of earlier trials at the same epoch).
    #[arg(long, value_enum, default_value = "median", requires = "trials")]
    pub pruner: PrunerArg,
    /// A RUNNING trial whose worker has not beaten for this many seconds is marked FAIL (its worker died); workers
    /// beat every timeout/4 (at most every 30 s). Give every worker of a study the same value.
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = super::seconds::parse_seconds, requires = "trials")]
    pub heartbeat_timeout: std::time::Duration,
    /// Data-parallel training in N local processes (ranks), each with the per-rank batch `--batch`: the global
    /// batch is N x batch. CPU ranks split the cores. Under torchrun (or any launcher setting RANK, WORLD_SIZE,
    /// MASTER_ADDR, MASTER_PORT) leave it out.
    #[arg(long, value_name = "N", conflicts_with_all = ["trials", "fast_dev_run"])]
    pub nproc: Option<usize>,
    /// `auto`: fit Faster R-CNN's anchors to the training boxes (k-means with 1 - IoU at the letterboxed training
    /// scale, one size per pyramid level and the configured number of aspect ratios) and train with them; the run's
    /// config.yaml keeps them. Needs detect.head: faster_rcnn.
    #[arg(long, value_name = "auto", value_parser = ["auto"], conflicts_with = "resume")]
    pub anchors: Option<String>,
    /// Seconds a rank waits for the others (store, collectives) before it fails (default 300; under torchrun set
    /// KILN_DIST_TIMEOUT).
    #[arg(long, value_name = "SECONDS", value_parser = super::seconds::parse_seconds, requires = "nproc")]
    pub dist_timeout: Option<std::time::Duration>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum SamplerArg {
    #[default]
    Tpe,
    Random,
    Grid,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum PrunerArg {
    #[default]
    Median,
    Halving,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OptimizerArg {
    Adamw,
    Adam,
    Sgd,
}

fn insert_path(map: &mut Map<String, Value>, dotted: &str, value: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = map;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return;
        }
        let entry = current.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = entry.as_object_mut().expect("just made an object");
    }
}

impl TrainArgs {
    /// The keys given on the command line, as a JSON object to merge over the config file.
    pub fn overrides(&self) -> anyhow::Result<Value> {
        let mut map = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        };
        put("task", self.task.map(serde_json::to_value).transpose()?);
        put("data", self.data.as_ref().map(|p| Value::from(p.to_string_lossy().into_owned())));
        put("model", self.model.clone().map(Value::from));
        put("weights", self.weights.as_ref().map(|p| Value::from(p.to_string_lossy().into_owned())));
        put("freeze", self.freeze.map(|f| Value::from(f.0)));
        put("epochs", self.epochs.map(Value::from));
        put("batch", self.batch.map(Value::from));
        put("lr", self.lr.map(Value::from));
        let optimizer = self.optimizer.map(|o| match o {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        });
        put("optimizer", optimizer.map(serde_json::to_value).transpose()?);
        put("weight_decay", self.weight_decay.map(Value::from));
        put("momentum", self.momentum.map(Value::from));
        put("warmup_epochs", self.warmup_epochs.map(Value::from));
        put("min_lr", self.min_lr.map(Value::from));
        put("label_smoothing", self.label_smoothing.map(Value::from));
        put("grad_clip", self.grad_clip.map(Value::from));
        put("ema", self.ema.map(Value::from));
        put("ema_decay", self.ema_decay.map(Value::from));
        put("amp", self.amp.map(serde_json::to_value).transpose()?);
        put("channels_last", self.channels_last.map(Value::from));
        put("cache", self.cache.map(serde_json::to_value).transpose()?);
        put("img_size", self.img_size.map(Value::from));
        let mut ocr = Map::new();
        for (key, value) in [
            ("height", self.ocr_h.map(Value::from)),
            ("width", self.ocr_w.map(Value::from)),
            ("backbone", self.ocr_backbone.clone().map(Value::from)),
            ("charset", self.charset.clone().map(Value::from)),
        ] {
            if let Some(v) = value {
                ocr.insert(key.into(), v);
            }
        }
        put("ocr", (!ocr.is_empty()).then_some(Value::Object(ocr)));
        put("workers", self.workers.map(Value::from));
        put("threads", self.threads.map(Value::from));
        put("seed", self.seed.map(Value::from));
        put("patience", self.patience.map(Value::from));
        put("device", self.device.clone().map(Value::from));
        put("val_split", self.val_split.map(Value::from));
        put("test_split", self.test_split.map(Value::from));
        put("drop_path_rate", self.drop_path_rate.map(Value::from));
        if let Some(teacher) = &self.teacher {
            put("distill", Some(serde_json::json!({ "teacher": teacher.to_string_lossy() })));
        }
        if let Some(limit) = &self.limit_train_batches {
            let value: Value =
                serde_yaml::from_str(limit).with_context(|| format!("--limit-train-batches {limit}: not a number"))?;
            put("limit_train_batches", Some(value));
        }
        put("save_top_k", self.save_top_k.map(Value::from));
        put("fast_dev_run", self.fast_dev_run.map(Value::from));
        put("project", self.project.as_ref().map(|p| Value::from(p.to_string_lossy().into_owned())));
        put("name", self.name.clone().map(Value::from));
        for item in &self.set {
            let (key, raw) = item.split_once('=').with_context(|| format!("--set {item}: expected KEY=VALUE"))?;
            let value: Value = serde_yaml::from_str(raw).with_context(|| format!("--set {item}: bad value"))?;
            insert_path(&mut map, key.trim(), value);
        }
        Ok(Value::Object(map))
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(nproc) = args.nproc {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        anyhow::ensure!(nproc >= 1, "--nproc 0: a job needs at least one rank");
        anyhow::ensure!(
            nproc <= cores,
            "--nproc {nproc} asks for more ranks than this machine has cores ({cores}); CPU ranks split the cores"
        );
        if nproc > 1 {
            return super::launch::run_ranks(nproc, args.dist_timeout);
        }
    }
    if args.trials.is_some() {
        let mut config = TrainConfig::resolve(args.config.as_deref(), &args.overrides()?)?;
        kiln_train::tasks::check_settings(&config)?;
        fit_anchors(&args, &mut config)?;
        return run_study(&args, &config);
    }
    let outcome = match &args.resume {
        Some(dir) => {
            // A resumed run keeps its saved config; a setting given now would be ignored, so it is refused.
            let mut given = args.overrides()?;
            given.as_object_mut().expect("overrides are an object").remove("task");
            let given: Vec<&String> = given.as_object().expect("an object").keys().collect();
            anyhow::ensure!(
                given.is_empty(),
                "--resume continues {} with its saved config; it takes no other settings (given: {})",
                dir.display(),
                given.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            );
            kiln_train::tasks::resume(RunDir::open(dir)?)?
        }
        None => {
            let mut config = TrainConfig::resolve(args.config.as_deref(), &args.overrides()?)?;
            fit_anchors(&args, &mut config)?;
            if config.fast_dev_run > 0 {
                print_fast_dev_run(&kiln_train::tasks::fast_dev_run(&config)?);
                return Ok(());
            }
            kiln_train::tasks::train(&config)?
        }
    };
    // Under a data-parallel launcher, rank 0 reports for the job.
    let other_rank = std::env::var_os("WORLD_SIZE").is_some() && std::env::var("RANK").is_ok_and(|r| r.trim() != "0");
    if !other_rank {
        print_outcome(&*outcome);
    }
    Ok(())
}

/// `--anchors auto`: fits the anchors into `config` and says how well they and the ones they replace cover the boxes.
fn fit_anchors(args: &TrainArgs, config: &mut TrainConfig) -> anyhow::Result<()> {
    if args.anchors.is_none() {
        return Ok(());
    }
    let fit = kiln_train::detect::anchor_fit::fit_into_config(config)?;
    let sizes: Vec<String> = fit.anchors.sizes.iter().map(|s| format!("{}", s[0])).collect();
    let ratios: Vec<String> = fit.anchors.aspect_ratios.iter().map(|r| format!("{r}")).collect();
    println!(
        "anchors fitted to {} training boxes at {} px: sizes {} (P2-P6), aspect ratios {}; mean best IoU {:.3} \
         (the anchors they replace: {:.3})",
        fit.boxes,
        config.img_size,
        sizes.join(", "),
        ratios.join(", "),
        fit.fitted_iou,
        fit.default_iou
    );
    Ok(())
}

/// The fast dev run's report, a line per split.
fn print_fast_dev_run(report: &kiln_train::engine::FastDevRunReport) {
    let t = &report.train;
    let losses: Vec<String> = t.losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    println!(
        "fast dev run of {} ({}) on {}: {} batch(es) per split",
        report.model, report.task, report.device, report.batches
    );
    println!(
        "  train: {} step(s), {} images, {}, lr {:.2e}, {:.1}s",
        t.batches,
        t.images,
        losses.join(" "),
        t.lr,
        t.seconds
    );
    for (split, pass) in [("val", &report.val), ("test", &report.test)] {
        match pass {
            Some(p) => {
                let metrics: Vec<String> =
                    p.metrics.iter().filter_map(|(k, v)| v.map(|x| format!("{k} {x:.4}"))).collect();
                println!(
                    "  {split}: {} batch(es), {} images, {}, {:.1}s",
                    p.batches,
                    p.images,
                    metrics.join(" "),
                    p.seconds
                );
            }
            None => println!("  {split}: no {split} split"),
        }
    }
    if report.skipped_images > 0 {
        println!("  skipped {} unreadable image(s)", report.skipped_images);
    }
    println!("report: {} (no checkpoint or results written)", report.report.display());
}

fn run_study(args: &TrainArgs, config: &TrainConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var("WORLD_SIZE").map_or(true, |w| w.trim() == "1"),
        "a study under a data-parallel launcher (WORLD_SIZE is set) would run one study worker per rank: data-parallel \
         trials are not supported yet; run study workers side by side instead (the same command on each machine)"
    );
    anyhow::ensure!(
        config.fast_dev_run == 0,
        "--fast-dev-run checks one run's config and data; it does not run a study (drop --trials or fast_dev_run)"
    );
    use kiln_train::tune::{
        default_storage, fail_trial_on_interrupt, worker_id, PrunerKind, SamplerKind, StorageUrl, StudyOptions,
    };
    let name = args.study.clone().unwrap_or_else(|| "study".into());
    let storage = match args.storage.clone().or_else(|| std::env::var("KILN_STORAGE").ok().filter(|s| !s.is_empty())) {
        Some(url) => StorageUrl::parse(&url)?,
        None => default_storage(&kiln_train::tune::study_dir(config, &name))?,
    };
    let options = StudyOptions {
        trials: args.trials.unwrap_or(1),
        storage,
        name,
        sampler: match args.sampler {
            SamplerArg::Tpe => SamplerKind::Tpe,
            SamplerArg::Random => SamplerKind::Random,
            SamplerArg::Grid => SamplerKind::Grid,
        },
        pruner: match args.pruner {
            PrunerArg::Median => PrunerKind::Median,
            PrunerArg::Halving => PrunerKind::Halving,
            PrunerArg::None => PrunerKind::None,
        },
        space: None,
        heartbeat_timeout: args.heartbeat_timeout,
        worker: worker_id(),
        running: Some(Default::default()),
    };
    fail_trial_on_interrupt(options.running.clone().expect("set above"))?;
    let outcome = kiln_train::tune::run_study(config, &options)?;
    let objective = format!("val {}", kiln_train::tasks::objective(config)?.metric);
    super::study::print_trials(&outcome.trials, &objective);
    super::study::print_best(outcome.best.as_ref(), &objective)?;
    println!("study directory: {} (ran {} trial(s) now)", outcome.dir.display(), outcome.ran);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_set_become_nested_overrides() {
        let args = TrainArgs {
            epochs: Some(3),
            ema: Some(true),
            set: vec!["augment.hflip=0".into(), "name=x".into()],
            ..Default::default()
        };
        let v = args.overrides().unwrap();
        assert_eq!(v["epochs"], 3);
        assert_eq!(v["ema"], true);
        assert_eq!(v["augment"]["hflip"], 0);
        assert_eq!(v["name"], "x");
        assert!(v.get("lr").is_none(), "unset flags do not override the config file");
    }
}
