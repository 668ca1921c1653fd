//! `kiln infer`: classify images (or, with a detection model, detect objects; with an OCR model, read text) with an exported ONNX model on ONNX
//! Runtime or tract, streaming results.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use kiln_infer::preprocess::Preprocess;
use kiln_infer::{file_batches, Backend, Classifier, Ep, Model};

use super::output::Format;
use kiln_infer::listing::{write_error, write_header};
use kiln_infer::{Classification, Listed};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpArg {
    Cpu,
    Cuda,
    Tensorrt,
}

/// `--backend`: `ort` (its execution provider from `--ep` and `--device`) or a backend string as `kiln bench`
/// takes it (`ort-cpu`, `ort-cuda[:N]`, `ort-tensorrt[:N][-fp16]`, `tract`), through the one parser
/// (`Backend::from_str`).
#[derive(Clone, Debug, PartialEq)]
pub enum BackendChoice {
    /// ONNX Runtime with `--ep` / `--device`.
    Ort,
    Exact(Backend),
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("ort") {
            return Ok(Self::Ort);
        }
        s.parse().map(Self::Exact).map_err(|e| format!("{e} (or ort, with --ep and --device)"))
    }
}

/// Which backend to open a model on, from the command line.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// ort (with --ep, --device) or ort-cpu | ort-cuda[:N] | ort-tensorrt[:N][-fp16] | tract, as kiln bench takes.
    #[arg(long, default_value = "ort")]
    pub backend: BackendChoice,
    /// With --backend ort: the ONNX Runtime execution provider.
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
    /// With --backend ort: the GPU number for cuda and tensorrt.
    #[arg(long, default_value_t = 0)]
    pub device: i32,
    /// TensorRT: keep built engines in this folder between runs.
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendArgs {
    pub fn backend(&self) -> Backend {
        let backend = match (&self.backend, self.ep) {
            (BackendChoice::Exact(b), _) => b.clone(),
            (BackendChoice::Ort, EpArg::Cpu) => Backend::Ort(Ep::Cpu),
            (BackendChoice::Ort, EpArg::Cuda) => Backend::Ort(Ep::Cuda { device: self.device }),
            (BackendChoice::Ort, EpArg::Tensorrt) => {
                Backend::Ort(Ep::TensorRt { device: self.device, fp16: false, cache_dir: None })
            }
        };
        with_trt_cache(backend, self.trt_cache.as_deref())
    }
}

/// `backend` with TensorRT's engine cache in `dir` (other backends unchanged).
pub fn with_trt_cache(backend: Backend, dir: Option<&std::path::Path>) -> Backend {
    match (backend, dir) {
        (Backend::Ort(Ep::TensorRt { device, fp16, .. }), Some(dir)) => {
            Backend::Ort(Ep::TensorRt { device, fp16, cache_dir: Some(dir.to_path_buf()) })
        }
        (backend, _) => backend,
    }
}

/// Opens `path` on `backend`, looking for ONNX Runtime in the deps directory kiln was built with; `raw` is the
/// preprocessing of a model without kiln metadata (`--raw-*`).
pub fn open_model(
    path: &std::path::Path,
    backend: Backend,
    threads: Option<usize>,
    raw: Option<Preprocess>,
) -> kiln_infer::Result<Model> {
    let mut builder = Model::builder().backend(backend).ort_deps(env!("KILN_DEFAULT_DEPS"));
    if let Some(n) = threads {
        builder = builder.threads(n);
    }
    if let Some(raw) = raw {
        builder = builder.raw(raw);
    }
    builder.open(path)
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// An ONNX model exported by kiln; several detection models (`--model a.onnx --model b.onnx`) are fused by
    /// weighted boxes fusion.
    #[arg(long, value_name = "FILE.onnx", required = true)]
    pub model: Vec<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Image files and folders (searched recursively).
    #[arg(required = true, value_name = "IMAGES_OR_DIRS")]
    pub inputs: Vec<PathBuf>,
    /// table, json (one JSON object per line) or csv.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Images per run (a fixed-batch model is filled up to its own batch size).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// With --format coco: a COCO ground-truth file whose image ids and category ids the results use.
    #[arg(long, value_name = "INSTANCES.json")]
    pub coco_gt: Option<PathBuf>,
    /// Detection models: also write each image with its boxes drawn to DIR/<name>.png.
    #[arg(long, value_name = "DIR")]
    pub save_vis: Option<PathBuf>,
    /// Detection models: NMS overrides.
    #[command(flatten)]
    pub nms: super::infer_detect::NmsArgs,
    #[command(flatten)]
    pub decode: super::infer_ocr::DecodeArgs,
    /// A model without kiln metadata: its preprocessing and class names.
    #[command(flatten)]
    pub raw: super::raw::RawArgs,
}

pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let files = kiln_train::data::expand_inputs(&args.inputs)?;
    let raw = args.raw.preprocess()?;
    let mut models = Vec::with_capacity(args.model.len());
    for path in &args.model {
        let model = open_model(path, args.backend.backend(), args.backend.threads, raw.clone())?;
        if model.metadata().is_none() && raw.is_none() {
            anyhow::bail!(
                "{} has no kiln metadata: give its preprocessing with {}",
                path.display(),
                super::raw::RAW_FLAGS
            );
        }
        eprintln!(
            "{} on {} (loaded in {:.0} ms)",
            path.display(),
            model.backend(),
            model.load_time().as_secs_f64() * 1e3
        );
        models.push(model);
    }
    if models[0].metadata().is_some_and(|m| m.task == "detect") {
        let coco = args.coco_gt.as_deref().map(kiln_infer::coco_results::CocoGroundTruth::read).transpose()?;
        let options = super::infer_detect::DetectOutput {
            format: args.format,
            coco_gt: coco.as_ref(),
            save_vis: args.save_vis.as_deref(),
        };
        return super::infer_detect::run(models, &files, args.batch, &args.nms, &options);
    }
    anyhow::ensure!(models.len() == 1, "several --model files are fused for detection models only");
    let model = models.remove(0);
    if model.metadata().is_some_and(|m| m.task == "ocr") {
        return super::infer_ocr::run(model, &files, args.batch, args.format, &args.decode);
    }
    let Some(listing) = args.format.listing() else {
        anyhow::bail!("--format coco is for detection models; {} classifies", args.model[0].display());
    };
    let class_names = args.raw.class_names(&model, &args.model[0])?;
    let classifier = match model.metadata() {
        Some(_) if args.raw.raw_classes.is_none() => Classifier::new(model)?,
        _ => Classifier::with_classes(model, class_names)?,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_header::<Classification>(&mut out, listing)?;
    let mut failed = 0;
    for batch in file_batches(&files, args.batch) {
        for (path, reason) in &batch.unreadable {
            failed += 1;
            write_error::<Classification>(&mut out, listing, path, reason)?;
        }
        if batch.images.is_empty() {
            continue;
        }
        for (path, result) in batch.paths.iter().zip(classifier.classify_batch(&batch.images, args.top_k)?) {
            result.write(&mut out, listing, path, &[])?;
        }
        out.flush()?;
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", files.len());
    }
    if let Some(mib) = super::output::peak_rss_mib() {
        eprintln!("{} image(s); peak resident memory {mib:.0} MiB", files.len());
    }
    Ok(())
}
