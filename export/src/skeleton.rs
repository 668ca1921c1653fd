//! A model's skeleton: its protobuf without the graph's initializers (the weights), parsed from the file's bytes
//! without decoding or copying them. Loading needs the metadata, inputs, outputs and opsets, not a second copy
//! of every weight while the runtime builds its own.

use onnx_protobuf::ModelProto;
use protobuf::Message;

use crate::{Error, Result};

/// `ModelProto.graph`.
const MODEL_GRAPH: u32 = 7;
/// `GraphProto.initializer` and `GraphProto.sparse_initializer`.
const GRAPH_INITIALIZERS: [u32; 2] = [5, 15];

fn malformed(reason: &str) -> Error {
    Error::MalformedProtobuf(reason.into())
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or_else(|| malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One field of a message: its number, and the byte ranges of the whole field and of its payload.
struct Field {
    number: u32,
    whole: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

/// The top-level fields of the message in `bytes`.
fn fields(bytes: &[u8]) -> Result<Vec<Field>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let start = at;
        let tag = varint(bytes, &mut at)?;
        let (number, wire) = ((tag >> 3) as u32, tag & 7);
        let payload_start = at;
        let len = match wire {
            0 => {
                varint(bytes, &mut at)?;
                0
            }
            1 => 8,
            2 => {
                let len = varint(bytes, &mut at)? as usize;
                out.push(Field { number, whole: start..0, payload: at..0 });
                len
            }
            5 => 4,
            _ => return Err(malformed("unsupported wire type")),
        };
        if wire == 2 {
            let field = out.last_mut().expect("pushed above");
            let end = field.payload.start.checked_add(len).filter(|&e| e <= bytes.len());
            let end = end.ok_or_else(|| malformed("field runs past the end"))?;
            field.payload.end = end;
            field.whole.end = end;
            at = end;
        } else {
            at += len;
            if at > bytes.len() {
                return Err(malformed("field runs past the end"));
            }
            out.push(Field { number, whole: start..at, payload: payload_start..at });
        }
    }
    Ok(out)
}

/// The model in `bytes` without its initializers (graph inputs, outputs, nodes, opsets and metadata intact).
pub fn skeleton(bytes: &[u8]) -> Result<ModelProto> {
    let mut model = Vec::new();
    for field in fields(bytes)? {
        if field.number != MODEL_GRAPH {
            model.extend_from_slice(&bytes[field.whole]);
            continue;
        }
        let graph_bytes = &bytes[field.payload];
        let mut graph = Vec::new();
        for inner in fields(graph_bytes)? {
            if !GRAPH_INITIALIZERS.contains(&inner.number) {
                graph.extend_from_slice(&graph_bytes[inner.whole]);
            }
        }
        put_varint(&mut model, u64::from(MODEL_GRAPH << 3 | 2));
        put_varint(&mut model, graph.len() as u64);
        model.extend_from_slice(&graph);
    }
    Ok(ModelProto::parse_from_bytes(&model)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dim, ElemType, Graph};

    #[test]
    fn the_skeleton_is_the_model_without_its_weights() {
        let mut g = Graph::new(19, ElemType::F32).unwrap();
        let x = g.input("x", ElemType::F32, &[Dim::Symbolic("batch".into()), Dim::Fixed(4)]).unwrap();
        let w = g.weight("w", &[4, 4], &[0.5; 16]).unwrap();
        let y = g.op("MatMul", &[&x, &w], vec![]).unwrap();
        g.output(&y, "y", ElemType::F32, &[Dim::Symbolic("batch".into()), Dim::Fixed(4)]).unwrap();
        let model = g.into_model("m", &[("kiln", "{\"a\": 1}".into())]);
        let bytes = crate::to_bytes(&model).unwrap();

        let skeleton = skeleton(&bytes).unwrap();
        assert!(skeleton.graph.initializer.is_empty() && !model.graph.initializer.is_empty());
        let mut expected = model.clone();
        expected.graph.mut_or_insert_default().initializer.clear();
        assert_eq!(skeleton, expected, "everything else is intact");

        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(super::skeleton(&bytes[..cut]).is_err(), "a file cut at {cut} bytes is refused");
        }
    }
}
