//! Metadata is checked, never trusted: when a model is opened, what its kiln metadata says is held against what
//! its graph declares (input name, element type and fixed dimensions; output names; class counts where the graph
//! fixes them; the task's own settings), and after every run each output is held against its declared shape. A
//! lie is [`Error::MetadataField`] naming the file and the field, or [`Error::ModelOutput`] naming the output,
//! never a panic or an unbounded allocation.

use std::path::Path;

use kiln_export::ModelMetadata;

use crate::model::{Output, TensorSpec, TensorType};
use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// The longest side an input may have (pixels).
pub const MAX_INPUT_SIDE: u32 = 16_384;
/// The most pixels an input may have: 64 Mpx (768 MiB of float32 per image).
pub const MAX_INPUT_PIXELS: u64 = 1 << 26;

fn lie(path: &Path, field: &str, reason: String) -> Error {
    Error::MetadataField { path: path.to_path_buf(), field: field.into(), reason }
}

/// An input size that can be allocated and resized to: both sides at least 1, at most [`MAX_INPUT_SIDE`], and
/// at most [`MAX_INPUT_PIXELS`] in all.
pub fn check_input_size([height, width]: [u32; 2]) -> std::result::Result<(), String> {
    if height == 0 || width == 0 {
        return Err(format!("{height}x{width}: a side of 0 pixels"));
    }
    if height > MAX_INPUT_SIDE || width > MAX_INPUT_SIDE || u64::from(height) * u64::from(width) > MAX_INPUT_PIXELS {
        return Err(format!(
            "{height}x{width}: larger than kiln runs (at most {MAX_INPUT_SIDE} pixels a side and {MAX_INPUT_PIXELS} \
             in all)"
        ));
    }
    Ok(())
}

/// Preprocessing that can run: a size [`check_input_size`] accepts, finite means, finite positive deviations.
pub fn check_preprocess(p: &Preprocess) -> std::result::Result<(), (&'static str, String)> {
    check_input_size(p.size).map_err(|reason| ("input.size", reason))?;
    if p.mean.iter().any(|m| !m.is_finite()) {
        return Err(("input.mean", format!("{:?} is not finite", p.mean)));
    }
    if p.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(("input.std", format!("{:?}: each must be a finite number above 0", p.std)));
    }
    Ok(())
}

/// What metadata says about the graph, checked against the graph (`input` and `outputs` as declared in it), and
/// the preprocessing it makes (`None` when the caller gave its own: raw mode).
pub(crate) fn check_against_graph(
    path: &Path,
    metadata: &ModelMetadata,
    preprocess: Option<&Preprocess>,
    input: &TensorSpec,
    outputs: &[TensorSpec],
) -> Result<()> {
    let meta_input = &metadata.input;
    if meta_input.name != input.name {
        return Err(lie(
            path,
            "input.name",
            format!("'{}', but the graph's input is '{}'", meta_input.name, input.name),
        ));
    }
    let dtype = match input.dtype {
        TensorType::F32 => "float32",
        TensorType::F16 => "float16",
        _ => "another type",
    };
    if meta_input.dtype != dtype {
        return Err(lie(path, "input.dtype", format!("{}, but the graph's input is {dtype}", meta_input.dtype)));
    }
    if meta_input.shape.len() != input.shape.len() {
        return Err(lie(
            path,
            "input.shape",
            format!("rank {}, the graph's {}", meta_input.shape.len(), input.shape.len()),
        ));
    }
    for (axis, (said, declared)) in meta_input.shape.iter().zip(&input.shape).enumerate() {
        let said = said.map(|d| usize::try_from(d).unwrap_or(0));
        // The batch must be dynamic or fixed on both sides; elsewhere, only two fixed sizes can disagree.
        let disagree = if axis == 0 { said != *declared } else { said.zip(*declared).is_some_and(|(a, b)| a != b) };
        if disagree {
            return Err(lie(
                path,
                "input.shape",
                format!("{:?}, but the graph declares {:?} (dimension {axis})", meta_input.shape, input.shape),
            ));
        }
    }
    if let Some(p) = preprocess {
        check_preprocess(p).map_err(|(field, reason)| lie(path, field, reason))?;
    }
    if let Some(exif) = &meta_input.exif {
        exif.parse::<crate::Exif>().map_err(|reason| lie(path, "input.exif", reason))?;
    }
    for (i, said) in metadata.outputs.iter().enumerate() {
        if !outputs.iter().any(|o| o.name == said.name) {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(lie(
                path,
                &format!("outputs[{i}].name"),
                format!("'{}' is not among the graph's outputs {names:?}", said.name),
            ));
        }
    }
    Ok(())
}

/// A task that scores classes (classify, detect, ocr) needs at least one; a regression or embedding model has none.
pub(crate) fn check_has_classes(path: &Path, metadata: &ModelMetadata) -> Result<()> {
    if metadata.class_names.is_empty() {
        return Err(lie(path, "class_names", format!("empty: a '{}' model scores at least one class", metadata.task)));
    }
    Ok(())
}

/// The last dimension of output `name` where the graph fixes it.
pub(crate) fn fixed_last_dim(outputs: &[TensorSpec], name: &str) -> Option<usize> {
    outputs.iter().find(|o| o.name == name).and_then(|o| *o.shape.last()?)
}

/// A class count the graph fixes must be the metadata's.
pub(crate) fn check_class_count(path: &Path, field: &str, said: usize, graph: Option<usize>, what: &str) -> Result<()> {
    match graph {
        Some(n) if n != said => Err(lie(path, field, format!("{said} {what}, but the graph's output has {n}"))),
        _ => Ok(()),
    }
}

/// Every output of a run holds as many values as its shape says, and has the dimensions its declaration fixes.
pub(crate) fn check_outputs(path: &Path, declared: &[TensorSpec], outputs: &[Output]) -> Result<()> {
    for (spec, output) in declared.iter().zip(outputs) {
        let wrong =
            |reason: String| Error::ModelOutput { path: path.to_path_buf(), output: output.name.clone(), reason };
        let values = output.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if values != Some(output.data.len()) {
            return Err(wrong(format!("shape {:?} but {} values", output.shape, output.data.len())));
        }
        let fixed_mismatch = spec.shape.len() != output.shape.len()
            || spec.shape.iter().zip(&output.shape).any(|(d, got)| d.is_some_and(|d| d != *got));
        if !spec.shape.is_empty() && fixed_mismatch {
            return Err(wrong(format!("shape {:?}, but the graph declares {:?}", output.shape, spec.shape)));
        }
    }
    Ok(())
}

/// The first dimension of a batched output must cover the batch it was run on.
pub(crate) fn check_batch_rows(path: &Path, output: &Output, batch: usize) -> Result<()> {
    match output.shape.first() {
        Some(&rows) if rows == batch => Ok(()),
        rows => Err(Error::ModelOutput {
            path: path.to_path_buf(),
            output: output.name.clone(),
            reason: format!("{} rows for a batch of {batch} (shape {:?})", rows.copied().unwrap_or(0), output.shape),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: &[Option<usize>]) -> TensorSpec {
        TensorSpec { name: "probs".into(), shape: shape.to_vec(), dtype: TensorType::F32 }
    }

    fn output(shape: &[usize], values: usize) -> Output {
        Output { name: "probs".into(), shape: shape.to_vec(), data: vec![0.5; values] }
    }

    #[test]
    fn outputs_must_hold_what_their_shapes_say_and_keep_declared_dimensions() {
        let path = Path::new("m.onnx");
        let declared = [spec(&[None, Some(3)])];
        assert!(check_outputs(path, &declared, &[output(&[2, 3], 6)]).is_ok());
        for (shape, values, says) in [
            (vec![2, 3], 5, "shape [2, 3] but 5 values"),
            (vec![2, 4], 8, "but the graph declares [None, Some(3)]"),
            (vec![6], 6, "but the graph declares"),
            (vec![usize::MAX, 2], 0, "but 0 values"),
        ] {
            match check_outputs(path, &declared, &[output(&shape, values)]) {
                Err(Error::ModelOutput { output, reason, .. }) => {
                    assert_eq!(output, "probs");
                    assert!(reason.contains(says), "{reason}");
                }
                other => panic!("{shape:?} with {values} values: {other:?}"),
            }
        }
        assert!(check_batch_rows(path, &output(&[2, 3], 6), 2).is_ok());
        let err = check_batch_rows(path, &output(&[1, 3], 3), 2).unwrap_err().to_string();
        assert!(err.contains("1 rows for a batch of 2"), "{err}");
    }

    #[test]
    fn input_sizes_are_bounded_on_both_sides() {
        assert!(check_input_size([224, 224]).is_ok());
        assert!(check_input_size([32, 16_384]).is_ok());
        for size in [[0, 16], [16, 0], [16_385, 8], [16_384, 16_384]] {
            assert!(check_input_size(size).is_err(), "{size:?}");
        }
    }
}
