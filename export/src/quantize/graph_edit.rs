//! Reading and editing a finished ONNX graph for the quantization passes: float initializers, node builders,
//! unique names, and pruning what the rewrite left unused.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, NodeProto, TensorProto,
};

use crate::{Error, Result};

/// A float initializer's values, from `raw_data` (little-endian) or `float_data`.
pub fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::FLOAT as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Some(t.float_data.clone())
}

pub fn dims_usize(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// An integer attribute of `node`, or `default`.
pub fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i)
}

pub fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

pub fn node(op: &str, name: String, inputs: Vec<String>, outputs: Vec<String>, axis: Option<i64>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name;
    n.input = inputs;
    n.output = outputs;
    if let Some(axis) = axis {
        let mut a = AttributeProto::new();
        a.name = "axis".into();
        a.type_ = AttributeType::INT.into();
        a.i = axis;
        n.attribute.push(a);
    }
    n
}

pub fn int_node(op: &str, name: String, inputs: Vec<String>, outputs: Vec<String>, attr: (&str, i64)) -> NodeProto {
    let mut n = node(op, name, inputs, outputs, None);
    let mut a = AttributeProto::new();
    a.name = attr.0.into();
    a.type_ = AttributeType::INT.into();
    a.i = attr.1;
    n.attribute.push(a);
    n
}

fn tensor(name: &str, data_type: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = data_type as i32;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = raw;
    t
}

pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    tensor(name, DataType::FLOAT, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn i8_tensor(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    tensor(name, DataType::INT8, dims, values.iter().map(|&v| v as u8).collect())
}

pub fn u8_tensor(name: &str, dims: &[usize], values: &[u8]) -> TensorProto {
    tensor(name, DataType::UINT8, dims, values.to_vec())
}

pub fn i32_tensor(name: &str, dims: &[usize], values: &[i32]) -> TensorProto {
    tensor(name, DataType::INT32, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// The graph's names (tensors and nodes), to make new ones that do not clash.
pub struct Names(HashSet<String>);

impl Names {
    pub fn of(graph: &GraphProto) -> Self {
        let mut names = HashSet::new();
        names.extend(graph.input.iter().map(|i| i.name.clone()));
        names.extend(graph.initializer.iter().map(|i| i.name.clone()));
        for n in &graph.node {
            names.extend(n.output.iter().cloned());
            names.insert(n.name.clone());
        }
        Self(names)
    }

    /// `base`, or `base_2`, `base_3`, … when taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// Where each tensor is produced (node index) and how many nodes read it.
pub fn producers(graph: &GraphProto) -> HashMap<String, usize> {
    graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i))).collect()
}

/// Removes nodes none of whose outputs is read (by a node or as a graph output), repeatedly, then initializers
/// nothing reads.
pub fn prune(graph: &mut GraphProto) {
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    loop {
        let read: HashSet<&str> = graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        let before = graph.node.len();
        let keep: Vec<bool> = graph
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| read.contains(o.as_str()) || outputs.contains(o)))
            .collect();
        let mut keep = keep.into_iter();
        graph.node.retain(|_| keep.next().unwrap_or(true));
        if graph.node.len() == before {
            break;
        }
    }
    let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| read.contains(&t.name));
}

/// Checks that every node reads only graph inputs, initializers or earlier nodes' outputs.
pub fn check_order(graph: &GraphProto) -> Result<()> {
    let mut known: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|i| i.name.as_str()));
    for n in &graph.node {
        if let Some(missing) = n.input.iter().find(|i| !i.is_empty() && !known.contains(i.as_str())) {
            return Err(Error::Graph(format!("node '{}' reads '{missing}' before it is made", n.name)));
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    Ok(())
}
