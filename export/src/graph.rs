//! An ONNX graph under construction: typed inputs and outputs, named initializers, nodes with unique names, and
//! serialisation to a `ModelProto` (IR version, opset import, metadata).
//!
//! Layers append their own nodes (see `kiln-models`' `emit` methods): each takes the graph and its input
//! [`Value`] and returns its output [`Value`]. Weights become initializers named by their parameter path, so a
//! graph's initializers read like the checkpoint's keys.

use std::collections::{BTreeMap, HashSet};

use half::f16;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

use crate::{Error, Result};

/// The opsets kiln can write.
pub const MIN_OPSET: i64 = 13;
pub const MAX_OPSET: i64 = 21;
/// The ONNX IR version written (IR 8 covers opsets up to 19, IR 10 up to 21).
/// The IR version ONNX releases pair with an opset (ONNX's versioning table, docs/Versioning.md: ONNX 1.8–1.9
/// opsets 13–14 IR 7, 1.10–1.13 opsets 15–18 IR 8, 1.14–1.15 opsets 19–20 IR 9, 1.16 opset 21 IR 10).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// Element type of a tensor in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    I64,
}

impl ElemType {
    fn data_type(self) -> DataType {
        match self {
            ElemType::F32 => DataType::FLOAT,
            ElemType::F16 => DataType::FLOAT16,
            ElemType::I64 => DataType::INT64,
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named dimension chosen at run time (e.g. `batch`).
    Symbolic(String),
}

/// A tensor in the graph, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A node attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
    /// A string attribute (`mode`, `coordinate_transformation_mode`, …).
    Str(&'static str, &'static str),
}

impl Attr {
    fn proto(self) -> AttributeProto {
        let mut a = AttributeProto::new();
        match self {
            Attr::Int(name, v) => {
                a.name = name.into();
                a.type_ = AttributeType::INT.into();
                a.i = v;
            }
            Attr::Ints(name, v) => {
                a.name = name.into();
                a.type_ = AttributeType::INTS.into();
                a.ints = v;
            }
            Attr::Float(name, v) => {
                a.name = name.into();
                a.type_ = AttributeType::FLOAT.into();
                a.f = v;
            }
            Attr::Str(name, v) => {
                a.name = name.into();
                a.type_ = AttributeType::STRING.into();
                a.s = v.as_bytes().to_vec();
            }
        }
        a
    }
}

/// A graph being built for one opset, computing in `F32` or `F16` (the type weights and constants are stored in).
pub struct Graph {
    opset: i64,
    compute: ElemType,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    op_counts: BTreeMap<String, usize>,
    scope: Vec<String>,
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|d| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            });
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem.data_type() as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}

/// A tensor proto with raw little-endian data.
pub fn tensor_proto(name: &str, elem: ElemType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = elem.data_type() as i32;
    t.dims = dims.to_vec();
    t.raw_data = raw;
    t
}

fn f32_bytes(values: &[f32], elem: ElemType) -> Vec<u8> {
    match elem {
        ElemType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

impl Graph {
    /// A new graph for `opset`; an opset kiln cannot write is an error.
    pub fn new(opset: i64, compute: ElemType) -> Result<Self> {
        if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
            return Err(Error::UnsupportedOpset { requested: opset, min: MIN_OPSET, max: MAX_OPSET });
        }
        if compute == ElemType::I64 {
            return Err(Error::Graph("a graph computes in F32 or F16".into()));
        }
        Ok(Self {
            opset,
            compute,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            names: HashSet::new(),
            op_counts: BTreeMap::new(),
            scope: Vec::new(),
        })
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The element type weights and intermediate values have.
    pub fn compute_type(&self) -> ElemType {
        self.compute
    }

    fn claim(&mut self, name: String) -> Result<String> {
        if !self.names.insert(name.clone()) {
            return Err(Error::Graph(format!("the name '{name}' is used twice")));
        }
        Ok(name)
    }

    /// Runs `f` with node names prefixed by `scope` (e.g. a layer's parameter path).
    pub fn scoped<T, E>(&mut self, scope: &str, f: impl FnOnce(&mut Self) -> Result<T, E>) -> Result<T, E> {
        self.scope.push(scope.to_string());
        let result = f(self);
        self.scope.pop();
        result
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> Result<Value> {
        let name = self.claim(name.to_string())?;
        self.inputs.push(value_info(&name, elem, dims));
        Ok(Value(name))
    }

    /// Declares `value` as the graph output `name` (through an Identity node when it has another name).
    pub fn output(&mut self, value: &Value, name: &str, elem: ElemType, dims: &[Dim]) -> Result<Value> {
        let out = if value.0 == name {
            value.clone()
        } else {
            let name = self.claim(name.to_string())?;
            let mut node = NodeProto::new();
            node.op_type = "Identity".into();
            node.name = format!("{name}/Identity");
            node.input = vec![value.0.clone()];
            node.output = vec![name.clone()];
            self.nodes.push(node);
            Value(name)
        };
        self.outputs.push(value_info(&out.0, elem, dims));
        Ok(out)
    }

    /// A float initializer named `name`, stored in the graph's compute type.
    pub fn weight(&mut self, name: &str, dims: &[i64], values: &[f32]) -> Result<Value> {
        let expected: i64 = dims.iter().product();
        if expected as usize != values.len() {
            return Err(Error::Graph(format!("{name}: {} values for shape {dims:?}", values.len())));
        }
        let name = self.claim(name.to_string())?;
        self.initializers.push(tensor_proto(&name, self.compute, dims, f32_bytes(values, self.compute)));
        Ok(Value(name))
    }

    /// A float constant (scalar or small tensor) in the compute type, named after the current scope and `hint`.
    pub fn constant(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> Result<Value> {
        let name = self.unique_name(hint);
        self.weight(&name, dims, values)
    }

    /// A float32 constant whatever the compute type, for inputs the ONNX spec types as `float` (Resize's
    /// `scales`).
    pub fn constant_f32(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> Result<Value> {
        let expected: i64 = dims.iter().product();
        if expected as usize != values.len() {
            return Err(Error::Graph(format!("{hint}: {} values for shape {dims:?}", values.len())));
        }
        let name = self.unique_name(hint);
        let name = self.claim(name)?;
        self.initializers.push(tensor_proto(&name, ElemType::F32, dims, f32_bytes(values, ElemType::F32)));
        Ok(Value(name))
    }

    /// An int64 constant (shapes, axes).
    pub fn constant_i64(&mut self, hint: &str, values: &[i64]) -> Result<Value> {
        let name = self.unique_name(hint);
        let name = self.claim(name)?;
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor_proto(&name, ElemType::I64, &[values.len() as i64], raw));
        Ok(Value(name))
    }

    /// An int64 constant of any shape (`&[]` for a scalar).
    pub fn constant_i64_shaped(&mut self, hint: &str, dims: &[i64], values: &[i64]) -> Result<Value> {
        if dims.iter().product::<i64>() as usize != values.len() {
            return Err(Error::Graph(format!("{hint}: {} values for shape {dims:?}", values.len())));
        }
        let name = self.unique_name(hint);
        let name = self.claim(name)?;
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor_proto(&name, ElemType::I64, dims, raw));
        Ok(Value(name))
    }

    fn unique_name(&mut self, hint: &str) -> String {
        let base = if self.scope.is_empty() { hint.to_string() } else { format!("{}/{hint}", self.scope.join("/")) };
        let count = self.op_counts.entry(base.clone()).or_insert(0);
        *count += 1;
        let mut name = if *count == 1 { base.clone() } else { format!("{base}_{}", *count - 1) };
        while self.names.contains(&name) {
            *count += 1;
            name = format!("{base}_{}", *count - 1);
        }
        name
    }

    /// Appends a node `op_type(inputs)` with one output and returns it.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: Vec<Attr>) -> Result<Value> {
        let name = self.unique_name(op_type);
        let name = self.claim(name)?;
        let mut node = NodeProto::new();
        node.op_type = op_type.into();
        node.name = name.clone();
        node.input = inputs.iter().map(|v| v.0.clone()).collect();
        node.output = vec![name.clone()];
        node.attribute = attrs.into_iter().map(Attr::proto).collect();
        self.nodes.push(node);
        Ok(Value(name))
    }

    /// Appends a node `op_type(inputs)` with `outputs` outputs (TopK's values and indices) and returns them.
    pub fn op_multi(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<Attr>,
        outputs: usize,
    ) -> Result<Vec<Value>> {
        let name = self.unique_name(op_type);
        let name = self.claim(name)?;
        let names = (0..outputs).map(|i| self.claim(format!("{name}:{i}"))).collect::<Result<Vec<String>>>()?;
        let mut node = NodeProto::new();
        node.op_type = op_type.into();
        node.name = name;
        node.input = inputs.iter().map(|v| v.0.clone()).collect();
        node.output = names.clone();
        node.attribute = attrs.into_iter().map(Attr::proto).collect();
        self.nodes.push(node);
        Ok(names.into_iter().map(Value).collect())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The finished model: graph `name`, opset import, IR version, producer and `metadata` (key → value).
    pub fn into_model(self, name: &str, metadata: &[(&str, String)]) -> ModelProto {
        let mut graph = GraphProto::new();
        graph.name = name.into();
        graph.node = self.nodes;
        graph.initializer = self.initializers;
        graph.input = self.inputs;
        graph.output = self.outputs;
        let mut opset = OperatorSetIdProto::new();
        opset.domain = String::new();
        opset.version = self.opset;
        let mut model = ModelProto::new();
        model.ir_version = ir_version(self.opset);
        model.opset_import = vec![opset];
        model.producer_name = "kiln".into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        model.graph = Some(graph).into();
        model.metadata_props = metadata
            .iter()
            .map(|(k, v)| {
                let mut e = StringStringEntryProto::new();
                e.key = (*k).into();
                e.value = v.clone();
                e
            })
            .collect();
        model
    }
}

/// Serialises a model to protobuf bytes (deterministic: the same model gives the same bytes).
pub fn to_bytes(model: &ModelProto) -> Result<Vec<u8>> {
    Ok(model.write_to_bytes()?)
}

/// Parses protobuf bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<ModelProto> {
    Ok(ModelProto::parse_from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_scoped() {
        let mut g = Graph::new(17, ElemType::F32).unwrap();
        let x = g.input("images", ElemType::F32, &[Dim::Symbolic("batch".into()), Dim::Fixed(3)]).unwrap();
        let a = g.scoped("stem", |g| g.op("Relu", &[&x], vec![])).unwrap();
        let b = g.scoped("stem", |g| g.op("Relu", &[&a], vec![])).unwrap();
        assert_eq!((a.name(), b.name()), ("stem/Relu", "stem/Relu_1"));
        assert!(g.input("images", ElemType::F32, &[]).is_err(), "a name cannot be used twice");
        let w = g.weight("stem.0.weight", &[2], &[1.0, 2.0]).unwrap();
        assert_eq!(w.name(), "stem.0.weight");
        assert!(g.weight("bad", &[3], &[1.0]).is_err());
        g.output(&b, "out", ElemType::F32, &[Dim::Fixed(3)]).unwrap();
        let model = g.into_model("m", &[("kiln", "{}".into())]);
        let back = from_bytes(&to_bytes(&model).unwrap()).unwrap();
        assert_eq!(back.graph.node.len(), 3);
        assert_eq!(back.graph.output[0].name, "out");
        assert_eq!(back.opset_import[0].version, 17);
        assert_eq!(back.metadata_props[0].key, "kiln");
    }

    #[test]
    fn each_opset_gets_the_ir_version_onnx_pairs_it_with() {
        let table = [(13, 7), (14, 7), (15, 8), (16, 8), (17, 8), (18, 8), (19, 9), (20, 9), (21, 10)];
        for (opset, ir) in table {
            let model = Graph::new(opset, ElemType::F32).unwrap().into_model("m", &[]);
            assert_eq!(model.ir_version, ir, "opset {opset}");
        }
    }

    #[test]
    fn opsets_outside_the_range_are_refused() {
        let err = Graph::new(11, ElemType::F32).err().unwrap().to_string();
        assert!(err.contains("opset 11") && err.contains("13 to 21"), "{err}");
        assert!(Graph::new(22, ElemType::F32).is_err());
    }

    #[test]
    fn half_graphs_store_weights_as_f16() {
        let mut g = Graph::new(17, ElemType::F16).unwrap();
        g.weight("w", &[2], &[1.0, -2.5]).unwrap();
        let model = g.into_model("m", &[]);
        let t = &model.graph.initializer[0];
        assert_eq!(t.data_type, DataType::FLOAT16 as i32);
        assert_eq!(t.raw_data, [f16::from_f32(1.0).to_le_bytes(), f16::from_f32(-2.5).to_le_bytes()].concat());
    }

    #[test]
    fn float32_constants_and_string_attributes() {
        let mut g = Graph::new(17, ElemType::F16).unwrap();
        let x = g.input("x", ElemType::F16, &[Dim::Fixed(1)]).unwrap();
        let scales = g.constant_f32("scales", &[2], &[1.0, 2.0]).unwrap();
        assert!(g.constant_f32("bad", &[3], &[1.0]).is_err());
        g.op("Resize", &[&x, &scales], vec![Attr::Str("mode", "nearest")]).unwrap();
        let model = g.into_model("m", &[]);
        let t = &model.graph.initializer[0];
        assert_eq!((t.data_type, t.raw_data.len()), (DataType::FLOAT as i32, 8));
        let attr = &model.graph.node[0].attribute[0];
        assert_eq!((attr.name.as_str(), attr.s.as_slice()), ("mode", b"nearest".as_slice()));
        assert_eq!(attr.type_, AttributeType::STRING.into());
    }
}
