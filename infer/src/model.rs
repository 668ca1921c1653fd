//! A loaded ONNX model, committed to a backend: [`Model::builder`] → [`ModelBuilder::open`] → [`Model::run`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_export::ModelMetadata;
use onnx_protobuf::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tract_onnx::prelude::{
    tvec, Datum, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, TypedRunnableModel,
};

use crate::backend::{Backend, Ep};
use crate::preprocess::Preprocess;
use crate::{metadata_check, runtime, Error, Result};

/// The element type of a graph input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    /// Counts and class indices (a detector with NMS in its graph).
    I64,
    /// Any other ONNX element type (its `TensorProto.DataType` number), which [`Model::run`] cannot return.
    Other(i32),
}

impl TensorType {
    fn from_onnx(elem: i32) -> Self {
        match elem {
            1 => Self::F32,
            10 => Self::F16,
            7 => Self::I64,
            other => Self::Other(other),
        }
    }
}

/// A graph input or output: name, dimensions (`None` where chosen at run time) and element type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Option<usize>>,
    pub dtype: TensorType,
}

impl TensorSpec {
    pub fn is_half(&self) -> bool {
        self.dtype == TensorType::F16
    }
}

fn tensor_spec(info: &ValueInfoProto) -> TensorSpec {
    let (shape, elem) = match &info.type_.value {
        Some(type_proto::Value::TensorType(t)) => (
            t.shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) if *v > 0 => Some(*v as usize),
                    _ => None,
                })
                .collect(),
            t.elem_type,
        ),
        _ => (Vec::new(), 0),
    };
    TensorSpec { name: info.name.clone(), shape, dtype: TensorType::from_onnx(elem) }
}

/// One output of a run, as f32 whatever the model's output type (int64 outputs are counts and class indices, exact
/// in f32 below 2^24).
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

enum Engine {
    /// ONNX Runtime's `run` needs `&mut Session`: calls on one model take turns (each run is itself parallel).
    Ort(Mutex<Session>),
    /// tract plans run through `&self`: concurrent calls run concurrently.
    Tract(TractPlans),
}

/// tract optimises far better for concrete shapes than for a symbolic batch, so a dynamic-batch model gets one
/// optimised plan per batch size, built on first use and kept. A fixed-batch model has one plan, built at load,
/// and the parsed model is then dropped (it would hold a second copy of the weights).
struct TractPlans {
    model: Option<InferenceModel>,
    plans: Mutex<HashMap<usize, Arc<TypedRunnableModel>>>,
}

impl TractPlans {
    /// Parses the model; with a known image shape, also builds the plan for `first_batch`.
    fn new(path: &Path, input: &TensorSpec, image: Option<[usize; 3]>, first_batch: usize) -> Result<Self> {
        let model = tract_onnx::onnx().model_for_path(path).map_err(tract_error)?;
        let mut plans = Self { model: Some(model), plans: Mutex::new(HashMap::new()) };
        if let Some(image) = image {
            plans.plan(input.is_half(), image, first_batch)?;
            if input.shape[0].is_some() {
                plans.model = None;
            }
        }
        Ok(plans)
    }

    fn plan(&self, half: bool, [c, h, w]: [usize; 3], batch: usize) -> Result<Arc<TypedRunnableModel>> {
        if let Some(plan) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&batch) {
            return Ok(Arc::clone(plan));
        }
        let model = self.model.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!("the model has a fixed batch; it cannot run batches of {batch}"))
        })?;
        let dims = vec![batch, c, h, w];
        let dt = if half { half::f16::datum_type() } else { f32::datum_type() };
        let plan = model
            .clone()
            .with_input_fact(0, InferenceFact::dt_shape(dt, dims))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(tract_error)?;
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(batch, Arc::clone(&plan));
        Ok(plan)
    }
}

/// ONNX operators kiln's exports can contain that tract 0.23 does not implement: `RoiAlign` (Faster R-CNN's
/// pooling).
pub const TRACT_CANNOT_RUN: [&str; 1] = ["RoiAlign"];

fn tract_error(e: tract_onnx::prelude::TractError) -> Error {
    Error::Tract(format!("{e:#}"))
}

/// Chooses how a model is opened. `Model::builder().backend(Backend::Tract).threads(2).open("m.onnx")`.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ModelBuilder {
    backend: Backend,
    threads: Option<usize>,
    raw: Option<Preprocess>,
    ort_deps: Option<PathBuf>,
}

impl ModelBuilder {
    /// ONNX Runtime with an execution provider (the default: CPU), or tract.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Intra-op threads for ONNX Runtime (tract runs on the calling thread).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Preprocessing for a model without kiln metadata (or to override it): input size, resize, mean and std.
    pub fn raw(mut self, preprocess: Preprocess) -> Self {
        self.raw = Some(preprocess);
        self
    }

    /// A kiln deps directory to look for ONNX Runtime in, after `ORT_DYLIB_PATH` and `KILN_DEPS`.
    pub fn ort_deps(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ort_deps = Some(dir.into());
        self
    }

    /// Loads the model on the chosen backend. An execution provider that cannot be registered is an error, never
    /// a silent fallback to the CPU.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let file_err = |reason: String| Error::ModelFile { path: path.to_path_buf(), reason };
        // What loading needs from the file is read from its skeleton (no copy of the weights); the file's bytes
        // are dropped before the runtime reads the file itself, so that its peak is not on top of two copies.
        let proto = {
            let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
            kiln_export::skeleton(&bytes).map_err(|e| file_err(format!("not an ONNX model ({e})")))?
        };
        if proto.graph.node.is_empty() || proto.graph.input.is_empty() {
            return Err(file_err("not an ONNX model (no graph)".into()));
        }
        let metadata =
            ModelMetadata::from_model(&proto).map_err(|source| Error::Metadata { path: path.to_path_buf(), source })?;
        let input = tensor_spec(&proto.graph.input[0]);
        let outputs: Vec<TensorSpec> = proto.graph.output.iter().map(tensor_spec).collect();
        if outputs.is_empty() {
            return Err(file_err("the graph has no outputs".into()));
        }
        if let Some(output) = outputs.iter().find(|o| matches!(o.dtype, TensorType::Other(_))) {
            return Err(file_err(format!(
                "output '{}' has ONNX element type {:?}; kiln reads float32, float16 and int64 outputs",
                output.name, output.dtype
            )));
        }
        if input.shape.len() != 4 {
            return Err(Error::Unsupported(format!(
                "input '{}' has rank {}, expected NCHW",
                input.name,
                input.shape.len()
            )));
        }
        let raw_mode = self.raw.is_some();
        let preprocess = match (self.raw, &metadata) {
            (Some(raw), _) => {
                metadata_check::check_preprocess(&raw)
                    .map_err(|(field, reason)| Error::InvalidInput(format!("preprocessing {field}: {reason}")))?;
                Some(raw)
            }
            (None, Some(m)) => Some(Preprocess::from_metadata(m)?),
            (None, None) => None,
        };
        if let Some(m) = &metadata {
            let from_metadata = preprocess.as_ref().filter(|_| !raw_mode);
            metadata_check::check_against_graph(path, m, from_metadata, &input, &outputs)?;
        }
        if let Some(p) = &preprocess {
            let fixed = [input.shape[2], input.shape[3]];
            if fixed != [Some(p.size[0] as usize), Some(p.size[1] as usize)] && fixed.iter().all(Option::is_some) {
                return Err(Error::InvalidInput(format!(
                    "preprocessing makes {}x{} images but the model's input '{}' is {:?}",
                    p.size[0], p.size[1], input.name, input.shape
                )));
            }
        }
        // The shape of one image: the model's fixed dimensions, else the preprocessing's size (3 channels).
        let image = match ([input.shape[1], input.shape[2], input.shape[3]], &preprocess) {
            ([Some(c), Some(h), Some(w)], _) => Some([c, h, w]),
            ([c, _, _], Some(p)) => Some([c.unwrap_or(3), p.size[0] as usize, p.size[1] as usize]),
            _ => None,
        };
        let started = Instant::now();
        let engine = match &self.backend {
            Backend::Ort(ep) => {
                let session = ort_session(path, ep, self.threads, self.ort_deps.as_deref()).map_err(|e| match e {
                    Error::Ort(reason) => Error::ModelFile {
                        path: path.to_path_buf(),
                        reason: format!("ONNX Runtime cannot build a session from it: {reason}"),
                    },
                    other => other,
                })?;
                Engine::Ort(Mutex::new(session))
            }
            Backend::Tract => {
                // Refused by name rather than by tract's translation error deep inside the graph.
                if let Some(op) = proto.graph.node.iter().find(|n| TRACT_CANNOT_RUN.contains(&n.op_type.as_str())) {
                    return Err(Error::ModelFile {
                        path: path.to_path_buf(),
                        reason: format!(
                            "tract cannot run its {} node '{}' ({}); open it with ONNX Runtime (`--backend ort-cpu`)",
                            op.op_type,
                            op.name,
                            metadata.as_ref().map(|m| m.architecture.as_str()).unwrap_or("this graph"),
                        ),
                    });
                }
                Engine::Tract(TractPlans::new(path, &input, image, input.shape[0].unwrap_or(1))?)
            }
        };
        Ok(Model {
            path: path.to_path_buf(),
            metadata,
            preprocess,
            backend: self.backend,
            input,
            image,
            outputs,
            engine,
            load_time: started.elapsed(),
        })
    }
}

fn ort_session(path: &Path, ep: &Ep, threads: Option<usize>, deps: Option<&Path>) -> Result<Session> {
    let env = runtime::environment(deps)?;
    let mut builder =
        Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::All).map_err(ort::Error::from)?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n).map_err(ort::Error::from)?;
    }
    let dispatch = match ep {
        Ep::Cpu => None,
        Ep::Cuda { device } => Some(ort::ep::CUDA::default().with_device_id(*device).build().error_on_failure()),
        Ep::TensorRt { device, fp16, cache_dir } => {
            let mut trt = ort::ep::TensorRT::default().with_device_id(*device).with_fp16(*fp16);
            if let Some(dir) = cache_dir {
                trt = trt.with_engine_cache(true).with_engine_cache_path(dir.display());
            }
            Some(trt.build().error_on_failure())
        }
    };
    if let Some(dispatch) = dispatch {
        builder = builder.with_execution_providers([dispatch]).map_err(|e| unavailable(ep, e.to_string()))?;
    }
    builder.commit_from_file(path).map_err(|e| match ep {
        Ep::Cpu => Error::Ort(e.to_string()),
        _ => gpu_session_failure(ep, e.to_string(), || cpu_rejects(env, path)),
    })
}

/// Why a CUDA or TensorRT session could not be created although the provider registered: the model itself
/// (malformed, an opset or operator ONNX Runtime does not have), when the CPU provider refuses it too
/// (`cpu_rejection`, tried only on this failure path), or else the provider.
fn gpu_session_failure(ep: &Ep, reason: String, cpu_rejection: impl FnOnce() -> Option<String>) -> Error {
    match cpu_rejection() {
        Some(cpu_reason) => Error::Ort(cpu_reason),
        None => unavailable(ep, reason),
    }
}

/// ONNX Runtime's CPU provider's reason for refusing the model at `path`, or `None` when it builds a session.
fn cpu_rejects(env: &ort::environment::Environment, path: &Path) -> Option<String> {
    let session = Session::builder(env)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(ort::Error::from))
        .and_then(|mut b| b.commit_from_file(path));
    session.err().map(|e| e.to_string())
}

fn unavailable(ep: &Ep, reason: String) -> Error {
    Error::EpUnavailable { ep: ep.provider_name().into(), reason, needs: ep.requirements().into() }
}

/// A model ready to run. `Send + Sync`: share it between threads behind an `Arc`. On ONNX Runtime concurrent
/// calls take turns on the one session (each run already uses `threads` cores); on tract they run in parallel.
/// For more throughput from ONNX Runtime, open one model per worker.
pub struct Model {
    path: PathBuf,
    metadata: Option<ModelMetadata>,
    preprocess: Option<Preprocess>,
    backend: Backend,
    input: TensorSpec,
    /// One image's `[channels, height, width]`: fixed by the model or set by its preprocessing.
    image: Option<[usize; 3]>,
    outputs: Vec<TensorSpec>,
    engine: Engine,
    load_time: Duration,
}

impl Model {
    pub fn builder() -> ModelBuilder {
        ModelBuilder::default()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's kiln metadata; `None` for other ONNX files (raw mode).
    pub fn metadata(&self) -> Option<&ModelMetadata> {
        self.metadata.as_ref()
    }

    /// The model's precision from its metadata (`fp32`, `fp16`, `int8 static (…)`), or `unknown` without kiln's.
    pub fn precision(&self) -> String {
        self.metadata.as_ref().map_or_else(|| "unknown".into(), ModelMetadata::precision_description)
    }

    /// The preprocessing from the metadata or from [`ModelBuilder::raw`].
    pub fn preprocess(&self) -> Option<&Preprocess> {
        self.preprocess.as_ref()
    }

    /// The backend and execution provider in use (registration failures are errors, so this is what runs).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn input(&self) -> &TensorSpec {
        &self.input
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The batch size the model is fixed to, or `None` for a dynamic batch.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.input.shape[0]
    }

    /// How long creating the session took (graph optimisation; for TensorRT, engine building may also happen at
    /// the first run; tract optimises a dynamic-batch model again at the first run of each new batch size).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Runs the model on `batch` images already preprocessed into `input` (`[batch, 3, H, W]`, f32).
    pub fn run(&self, input: &[f32], batch: usize) -> Result<Vec<Output>> {
        let Some([c, h, w]) = self.image else {
            return Err(Error::InvalidInput(format!(
                "the model's input {:?} has free dimensions and no preprocessing sets them",
                self.input.shape
            )));
        };
        if let Some(fixed) = self.fixed_batch() {
            if batch != fixed {
                return Err(Error::InvalidInput(format!("the model takes batches of {fixed}, not {batch}")));
            }
        }
        if input.len() != batch * c * h * w {
            return Err(Error::InvalidInput(format!(
                "{} values for a batch of {batch} x {c} x {h} x {w} ({} expected)",
                input.len(),
                batch * c * h * w
            )));
        }
        let shape = [batch, c, h, w];
        let outputs = match &self.engine {
            Engine::Ort(session) => self.run_ort(session, input, shape),
            Engine::Tract(plans) => self.run_tract(&plans.plan(self.input.is_half(), [c, h, w], batch)?, input, shape),
        }?;
        metadata_check::check_outputs(&self.path, &self.outputs, &outputs)?;
        Ok(outputs)
    }

    fn run_ort(&self, session: &Mutex<Session>, input: &[f32], shape: [usize; 4]) -> Result<Vec<Output>> {
        let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
        // An f32 input is borrowed, not copied (ONNX Runtime reads the caller's buffer); fp16 is converted.
        let outputs = if self.input.is_half() {
            let data: Vec<half::f16> = input.iter().map(|&v| half::f16::from_f32(v)).collect();
            let value = ort::value::Tensor::from_array((shape, data))?;
            session.run(ort::inputs![self.input.name.as_str() => value])?
        } else {
            let value = ort::value::TensorRef::from_array_view((shape, input))?;
            session.run(ort::inputs![self.input.name.as_str() => value])?
        };
        self.outputs
            .iter()
            .map(|spec| {
                let value = &outputs[spec.name.as_str()];
                let (dims, data) = match spec.dtype {
                    TensorType::F16 => {
                        let (s, d) = value.try_extract_tensor::<half::f16>()?;
                        (s.to_vec(), d.iter().map(|v| v.to_f32()).collect())
                    }
                    TensorType::I64 => {
                        let (s, d) = value.try_extract_tensor::<i64>()?;
                        (s.to_vec(), d.iter().map(|&v| v as f32).collect())
                    }
                    _ => {
                        let (s, d) = value.try_extract_tensor::<f32>()?;
                        (s.to_vec(), d.to_vec())
                    }
                };
                Ok(Output { name: spec.name.clone(), shape: dims.iter().map(|&d| d as usize).collect(), data })
            })
            .collect()
    }

    fn run_tract(&self, plan: &Arc<TypedRunnableModel>, input: &[f32], shape: [usize; 4]) -> Result<Vec<Output>> {
        let tract = tract_error;
        let tensor = if self.input.is_half() {
            let data: Vec<half::f16> = input.iter().map(|&v| half::f16::from_f32(v)).collect();
            tract_onnx::prelude::Tensor::from_shape(&shape, &data).map_err(tract)?
        } else {
            tract_onnx::prelude::Tensor::from_shape(&shape, input).map_err(tract)?
        };
        let results = plan.run(tvec!(tensor.into())).map_err(tract)?;
        self.outputs
            .iter()
            .zip(results.iter())
            .map(|(spec, value)| {
                let value = value.cast_to::<f32>().map_err(tract)?;
                let view = value.to_plain_array_view::<f32>().map_err(tract)?;
                Ok(Output {
                    name: spec.name.clone(),
                    shape: view.shape().to_vec(),
                    data: view.iter().copied().collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_model_can_be_shared_between_threads() {
        assert_send_sync::<Model>();
    }

    #[test]
    fn missing_and_non_onnx_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Model::builder().open(dir.path().join("nope.onnx")).err().unwrap().to_string();
        assert!(err.contains("nope.onnx"), "{err}");
        let junk = dir.path().join("junk.onnx");
        std::fs::write(&junk, b"this is not protobuf at all \xff\xff").unwrap();
        let err = Model::builder().backend(Backend::Tract).open(&junk).err().unwrap().to_string();
        assert!(err.contains("junk.onnx") && err.contains("not an ONNX model"), "{err}");
    }

    /// A valid model: y = Relu(x), x of shape [1, 3, 8, 8], at `opset`; a model past ONNX Runtime's opsets when
    /// `opset` is stamped over the graph builder's.
    fn relu_model(opset: i64) -> Vec<u8> {
        use kiln_export::{Dim, ElemType, Graph};
        let mut g = Graph::new(19, ElemType::F32).unwrap();
        let dims = [Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)];
        let x = g.input("x", ElemType::F32, &dims).unwrap();
        let y = g.op("Relu", &[&x], vec![]).unwrap();
        g.output(&y, "y", ElemType::F32, &dims).unwrap();
        let mut model = g.into_model("relu", &[]);
        model.opset_import[0].version = opset;
        kiln_export::to_bytes(&model).unwrap()
    }

    #[test]
    fn a_gpu_session_failure_is_the_model_when_the_cpu_provider_refuses_it_too() {
        let env = runtime::environment(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        assert_eq!(cpu_rejects(env, &file("ok.onnx", &relu_model(19))), None);
        let too_new = cpu_rejects(env, &file("new.onnx", &relu_model(99))).expect("opset 99 is refused");
        assert!(too_new.contains("99"), "{too_new}");
        assert!(cpu_rejects(env, &file("junk.onnx", b"\x08\xff not a model")).is_some());

        let cuda = Ep::Cuda { device: 0 };
        let model_fault = gpu_session_failure(&cuda, "CUDA said no".into(), || Some(too_new.clone()));
        assert!(matches!(&model_fault, Error::Ort(r) if r == &too_new), "{model_fault}");
        let provider_fault = gpu_session_failure(&cuda, "CUDA said no".into(), || None);
        assert!(
            matches!(&provider_fault, Error::EpUnavailable { reason, .. } if reason == "CUDA said no"),
            "{provider_fault}"
        );
    }

    #[test]
    fn a_model_onnx_runtime_cannot_load_names_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opset99.onnx");
        std::fs::write(&path, relu_model(99)).unwrap();
        let err = Model::builder().backend(Backend::Ort(Ep::Cpu)).open(&path).err().unwrap();
        assert!(matches!(err, Error::ModelFile { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("opset99.onnx") && text.contains("cannot build a session") && text.contains("99"),
            "{text}"
        );
    }
}
