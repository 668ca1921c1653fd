//! The fp32 / fp16 / int8 comparison an int8 export prints and saves: file size, the task's metric and agreement
//! with fp32 on the val split, and latency at batch 1 and 8 (8 only for a dynamic batch) on ONNX Runtime's CPU
//! provider and tract, one thread each so that the rows compare kernels, not thread pools.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use kiln_infer::{Backend, Model};
use serde::Serialize;

use super::calibrate::open_temporary;
use crate::data::Split;
use crate::{Error, Result};

/// Latency rows are timed after one warm-up run for at least this many runs, and up to this many seconds (a
/// model whose warm-up took longer than that is timed once).
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 30;
const SECONDS: f64 = 1.5;

/// One latency cell.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub backend: String,
    pub batch: usize,
    /// Median of the timed runs; `None` when the backend could not run the model (see `status`).
    pub ms: Option<f64>,
    pub status: String,
}

/// One model's row.
#[derive(Clone, Debug, Serialize)]
pub struct ModelRow {
    pub precision: String,
    pub file: String,
    pub bytes: u64,
    /// The task's metric on the val split: top-1 accuracy, mAP@[.5:.95] or CER (see `Comparison::metric_name`).
    pub metric: Option<f64>,
    /// Share of val images whose top class equals fp32's (classification).
    pub argmax_agreement: Option<f64>,
    /// Largest absolute difference from fp32, per output.
    pub max_abs_diff: BTreeMap<String, f64>,
    pub latency: Vec<Latency>,
}

/// The whole table.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub metric_name: String,
    pub val_images: usize,
    pub threads: usize,
    pub rows: Vec<ModelRow>,
}

/// Median milliseconds of running `bytes` on `probe` (one image, repeated to `batch`) on ONNX Runtime, one thread.
pub fn time_bytes(bytes: &[u8], scratch: &Path, probe: &[f32], batch: usize) -> Result<f64> {
    let (model, _guard) = open_temporary(bytes, scratch, "plan", Some(1))?;
    let input = probe.repeat(batch);
    time_model(&model, &input, batch).map_err(|reason| Error::Int8 { path: scratch.into(), reason })
}

fn time_model(model: &Model, input: &[f32], batch: usize) -> std::result::Result<f64, String> {
    let t = Instant::now();
    model.run(input, batch).map_err(|e| e.to_string())?;
    let first = t.elapsed().as_secs_f64();
    if first > SECONDS {
        // Too slow to repeat (tract's fp16): one more run is the measurement.
        let t = Instant::now();
        model.run(input, batch).map_err(|e| e.to_string())?;
        return Ok(t.elapsed().as_secs_f64() * 1e3);
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < MIN_RUNS || (runs.len() < MAX_RUNS && started.elapsed().as_secs_f64() < SECONDS) {
        let t = Instant::now();
        model.run(input, batch).map_err(|e| e.to_string())?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

/// The outputs of `model` on each of `images` (one row per image: every output flattened, in output order).
fn outputs_per_image(model: &Model, images: &[Vec<f32>]) -> Result<Vec<Vec<Vec<f32>>>> {
    let batch = model.fixed_batch().unwrap_or(8);
    let mut rows = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch) {
        let mut input: Vec<f32> = chunk.concat();
        let n = if model.fixed_batch().is_some() {
            while input.len() < batch * chunk[0].len() {
                input.extend_from_slice(&chunk[0]);
            }
            batch
        } else {
            chunk.len()
        };
        let outputs =
            model.run(&input, n).map_err(|e| Error::Int8 { path: model.path().into(), reason: e.to_string() })?;
        for i in 0..chunk.len() {
            rows.push(
                outputs
                    .iter()
                    .map(|o| {
                        let per = o.data.len() / n.max(1);
                        o.data[i * per..(i + 1) * per].to_vec()
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Measures `models` (`(precision, path)`, fp32 first) on the run's val split.
pub fn compare(run: &super::RunData<'_>, models: &[(&str, &Path)]) -> Result<Comparison> {
    let val = (run.split_images)(run.config, Split::Val)?;
    let first = Model::builder()
        .open(models[0].1)
        .map_err(|e| Error::Int8 { path: models[0].1.into(), reason: e.to_string() })?;
    let preprocess = first
        .preprocess()
        .cloned()
        .ok_or_else(|| Error::Int8 { path: models[0].1.into(), reason: "the model has no kiln metadata".into() })?;
    let mut tensors = Vec::new();
    let mut labels = Vec::new();
    for (path, label) in &val {
        if let Ok(image) = kiln_infer::preprocess::decode_rgb(path) {
            let mut t = vec![0.0; preprocess.tensor_len()];
            preprocess.apply(&image, &mut t);
            tensors.push(t);
            labels.push(*label);
        }
    }
    let names: Vec<String> = first.outputs().iter().map(|o| o.name.clone()).collect();
    let dynamic = first.fixed_batch().is_none();
    drop(first);
    // Images labelled as a whole (classification): the metric is top-1 from the outputs, and argmax agreement
    // with fp32 is measured.
    let classify = !labels.is_empty() && labels.iter().all(Option::is_some);
    let mut reference: Option<Vec<Vec<Vec<f32>>>> = None;
    let mut rows = Vec::new();
    for (precision, path) in models {
        let bytes = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
        let model =
            Model::builder().open(path).map_err(|e| Error::Int8 { path: path.to_path_buf(), reason: e.to_string() })?;
        let outputs = if tensors.is_empty() { Vec::new() } else { outputs_per_image(&model, &tensors)? };
        let mut row = ModelRow {
            precision: precision.to_string(),
            file: path.display().to_string(),
            bytes,
            metric: None,
            argmax_agreement: None,
            max_abs_diff: BTreeMap::new(),
            latency: Vec::new(),
        };
        row.metric = (run.metric)(run.config, path)?;
        if row.metric.is_none() && classify && !outputs.is_empty() {
            let correct = outputs.iter().zip(&labels).filter(|(o, l)| Some(argmax(&o[0])) == **l).count();
            row.metric = Some(correct as f64 / outputs.len() as f64);
        }
        if let Some(reference) = &reference {
            for (k, name) in names.iter().enumerate() {
                let diff = outputs
                    .iter()
                    .zip(reference)
                    .flat_map(|(a, b)| a[k].iter().zip(&b[k]).map(|(x, y)| (x - y).abs() as f64))
                    .fold(0.0, f64::max);
                row.max_abs_diff.insert(name.clone(), diff);
            }
            if classify && !outputs.is_empty() {
                let same = outputs.iter().zip(reference).filter(|(a, b)| argmax(&a[0]) == argmax(&b[0])).count();
                row.argmax_agreement = Some(same as f64 / outputs.len() as f64);
            }
        }
        drop(model);
        let probe = tensors.first().cloned().unwrap_or_else(|| vec![0.0; preprocess.tensor_len()]);
        for backend in [Backend::default(), Backend::Tract] {
            let batches: &[usize] = if dynamic { &[1, 8] } else { &[1] };
            for &batch in batches {
                let label = match backend {
                    Backend::Tract => "tract",
                    _ => "ort-cpu",
                };
                let timed = Model::builder()
                    .backend(backend.clone())
                    .threads(1)
                    .open(path)
                    .map_err(|e| e.to_string())
                    .and_then(|m| time_model(&m, &probe.repeat(batch), batch));
                row.latency.push(match timed {
                    Ok(ms) => Latency { backend: label.into(), batch, ms: Some(ms), status: "ok".into() },
                    Err(reason) => Latency { backend: label.into(), batch, ms: None, status: reason },
                });
            }
        }
        if reference.is_none() {
            reference = Some(outputs);
        }
        rows.push(row);
    }
    Ok(Comparison { metric_name: run.metric_name.into(), val_images: tensors.len(), threads: 1, rows })
}
