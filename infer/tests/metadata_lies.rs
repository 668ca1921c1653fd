//! Models whose kiln metadata lies, or whose graph gives outputs other than it declares: each is a typed error
//! naming the file and the field (or the output) when the model is opened or run, never a panic or an unbounded
//! allocation. The models are tiny graphs made here with kiln-export's builder and run on tract.

use std::path::{Path, PathBuf};

use image::RgbImage;
use kiln_export::{emit_nms, Attr, Dim, ElemType, Graph, NmsSettings, Value, NMS_OUTPUTS};
use kiln_infer::{Backend, Classifier, Detector, Error, Model, TextRecognizer};
use serde_json::{json, Value as Json};

/// The metadata of a model with input `images` `[N, 3, H, W]` of `size` and the given outputs.
fn metadata(task: &str, classes: &[&str], resize: &str, size: [u32; 2], outputs: &[&str]) -> Json {
    json!({
        "schema_version": 1,
        "kiln_version": "0.1.0",
        "task": task,
        "architecture": "test",
        "variant": "test",
        "class_names": classes,
        "input": {
            "name": "images", "shape": [null, 3, null, null], "layout": "NCHW", "dtype": "float32", "color": "RGB",
            "resize": resize, "size": size, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]
        },
        "outputs": outputs.iter().map(|name| json!({"name": name, "shape": [], "dtype": "float32", "meaning": "test"}))
            .collect::<Vec<_>>(),
        "precision": "fp32",
        "opset": 17,
        "training": {"epoch": 1, "metrics": null}
    })
}

fn symbolic(name: &str) -> Dim {
    Dim::Symbolic(name.into())
}

/// A graph with the dynamic input `images` `[N, 3, H, W]`; `body` adds the outputs.
fn graph(body: impl FnOnce(&mut Graph, &Value)) -> Graph {
    let mut g = Graph::new(17, ElemType::F32).unwrap();
    let dims = [symbolic("batch"), Dim::Fixed(3), symbolic("height"), symbolic("width")];
    let input = g.input("images", ElemType::F32, &dims).unwrap();
    body(&mut g, &input);
    g
}

fn save(dir: &Path, name: &str, g: Graph, meta: &Json) -> PathBuf {
    let path = dir.join(format!("{name}.onnx"));
    let model = g.into_model(name, &[("kiln", meta.to_string())]);
    std::fs::write(&path, kiln_export::to_bytes(&model).unwrap()).unwrap();
    path
}

fn open(path: &Path) -> kiln_infer::Result<Model> {
    Model::builder().backend(Backend::Tract).open(path)
}

/// `[N, W, 3]` frame probabilities: the mean over channels and rows, three scaled copies, softmaxed. With
/// `one_row`, the mean is over the batch too, so the output has one row whatever the batch.
fn line_probs(g: &mut Graph, input: &Value, one_row: bool) -> Value {
    let axes = if one_row { vec![0, 1, 2] } else { vec![1, 2] };
    let mean = g.op("ReduceMean", &[input], vec![Attr::Ints("axes", axes), Attr::Int("keepdims", 1)]).unwrap();
    let shape = g.constant_i64("shape", &[0, -1, 1]).unwrap();
    let column = g.op("Reshape", &[&mean, &shape], vec![]).unwrap();
    let twice = g.constant_f32("two", &[1], &[2.0]).unwrap();
    let doubled = g.op("Mul", &[&column, &twice], vec![]).unwrap();
    let negated = g.op("Neg", &[&column], vec![]).unwrap();
    let logits = g.op("Concat", &[&column, &doubled, &negated], vec![Attr::Int("axis", 2)]).unwrap();
    g.op("Softmax", &[&logits], vec![Attr::Int("axis", 2)]).unwrap()
}

/// A text-line recognizer over charset `a`, `b` (3 classes with the blank), each frame a column of the input.
fn recognizer(dir: &Path, name: &str, edit: impl FnOnce(&mut Json), one_row: bool) -> PathBuf {
    let g = graph(|g, input| {
        let probs = line_probs(g, input, one_row);
        let dims = [symbolic("batch"), symbolic("frames"), Dim::Fixed(3)];
        g.output(&probs, "probs", ElemType::F32, &dims).unwrap();
    });
    let mut meta = metadata("ocr", &["a", "b"], "fit_height", [8, 16], &["probs"]);
    meta["ctc"] = json!({"blank": 0, "width_stride": 1});
    edit(&mut meta);
    save(dir, name, g, &meta)
}

fn rgb(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 13) as u8, (y * 29) as u8, ((x + y) * 7) as u8]))
}

/// A model's name, the metadata field its lie is in, and the edit that makes the lie.
type Lie = (&'static str, &'static str, fn(&mut Json));

/// The field a [`Error::MetadataField`] names, or a failure showing what came instead.
fn field_of<T>(result: kiln_infer::Result<T>, path: &Path) -> String {
    match result {
        Err(Error::MetadataField { path: p, field, reason }) => {
            assert_eq!(p, path, "the error names the file");
            assert!(!reason.is_empty());
            field
        }
        Err(other) => panic!("expected a metadata error, got {other}"),
        Ok(_) => panic!("expected a metadata error, the model was accepted"),
    }
}

#[test]
fn an_honest_recognizer_reads_and_each_lie_in_its_metadata_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let honest = recognizer(dir.path(), "honest", |_| {}, false);
    let reader = TextRecognizer::new(open(&honest).unwrap()).unwrap();
    let readings = reader.predict_batch(&[rgb(16, 8), rgb(9, 8)]).unwrap();
    assert_eq!(readings.len(), 2);

    let cases: [Lie; 9] = [
        ("blank", "ctc.blank", |m| m["ctc"]["blank"] = json!(3)),
        ("stride", "ctc.width_stride", |m| m["ctc"]["width_stride"] = json!(0)),
        ("charset", "class_names", |m| m["class_names"] = json!(["a", "b", "c"])),
        ("empty", "class_names", |m| m["class_names"] = json!([])),
        ("zero", "input.size", |m| m["input"]["size"] = json!([0, 16])),
        ("huge", "input.size", |m| m["input"]["size"] = json!([100_000, 100_000])),
        ("std", "input.std", |m| m["input"]["std"] = json!([0.25, 0.0, 0.25])),
        ("input", "input.name", |m| m["input"]["name"] = json!("pixels")),
        ("output", "outputs[0].name", |m| m["outputs"][0]["name"] = json!("logits")),
    ];
    for (name, field, edit) in cases {
        let path = recognizer(dir.path(), name, edit, false);
        let opened = open(&path).and_then(TextRecognizer::new);
        assert_eq!(field_of(opened, &path), field, "{name}");
    }
    let batch = recognizer(dir.path(), "batch", |m| m["input"]["shape"][0] = json!(4), false);
    assert_eq!(field_of(open(&batch), &batch), "input.shape", "a fixed batch the graph does not have");
}

#[test]
fn a_recognizer_that_gives_fewer_rows_than_lines_is_an_output_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = recognizer(dir.path(), "one_row", |_| {}, true);
    let reader = TextRecognizer::new(open(&path).unwrap()).unwrap();
    assert_eq!(reader.predict_batch(&[rgb(16, 8)]).unwrap().len(), 1, "one line, one row: fine");
    match reader.predict_batch(&[rgb(16, 8), rgb(12, 8), rgb(8, 8)]) {
        Err(Error::ModelOutput { path: p, output, reason }) => {
            assert_eq!((p, output.as_str()), (path, "probs"));
            assert!(reason.contains("1 rows for a batch of 3"), "{reason}");
        }
        other => panic!("expected an output error, got {:?}", other.map(|r| r.len())),
    }
}

/// `value[start..end]` along `axis`.
fn slice(g: &mut Graph, value: &Value, axis: i64, start: i64, end: i64) -> Value {
    let (s, e, a) = (
        g.constant_i64("s", &[start]).unwrap(),
        g.constant_i64("e", &[end]).unwrap(),
        g.constant_i64("axis", &[axis]).unwrap(),
    );
    g.op("Slice", &[value, &s, &e, &a], vec![]).unwrap()
}

/// Boxes and scores of 2 classes from the input: `[N, A, 6]` rows of its values.
fn candidates(g: &mut Graph, input: &Value) -> (Value, Value) {
    let shape = g.constant_i64("shape", &[0, -1, 6]).unwrap();
    let rows = g.op("Reshape", &[input, &shape], vec![]).unwrap();
    let boxes = slice(g, &rows, 2, 0, 4);
    let logits = slice(g, &rows, 2, 4, 6);
    let scores = g.op("Sigmoid", &[&logits], vec![]).unwrap();
    (boxes, scores)
}

fn nms_settings() -> NmsSettings {
    NmsSettings {
        iou_threshold: 0.5,
        score_threshold: 0.1,
        max_detections: 5,
        class_agnostic: false,
        pre_nms_top_k: 32,
        in_graph: true,
    }
}

fn detector_metadata(outputs: &[&str]) -> Json {
    let mut meta = metadata("detect", &["x", "y"], "letterbox", [8, 8], outputs);
    meta["nms"] = serde_json::to_value(nms_settings()).unwrap();
    meta
}

/// A detector with NMS in its graph on 32 candidates of an 8×8 input.
fn nms_detector(dir: &Path, name: &str, edit: impl FnOnce(&mut Json)) -> PathBuf {
    let g = graph(|g, input| {
        let (boxes, scores) = candidates(g, input);
        let out = emit_nms(g, &boxes, &scores, 32, 2, &nms_settings()).unwrap();
        let (n, m) = (symbolic("batch"), Dim::Fixed(5));
        g.output(&out.num_detections, NMS_OUTPUTS[0], ElemType::I64, std::slice::from_ref(&n)).unwrap();
        g.output(&out.boxes, NMS_OUTPUTS[1], ElemType::F32, &[n.clone(), m.clone(), Dim::Fixed(4)]).unwrap();
        g.output(&out.scores, NMS_OUTPUTS[2], ElemType::F32, &[n.clone(), m.clone()]).unwrap();
        g.output(&out.classes, NMS_OUTPUTS[3], ElemType::I64, &[n, m]).unwrap();
    });
    let mut meta = detector_metadata(&NMS_OUTPUTS);
    edit(&mut meta);
    save(dir, name, g, &meta)
}

#[test]
fn a_detectors_nms_settings_are_held_against_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let honest = nms_detector(dir.path(), "honest", |_| {});
    let detector = Detector::new(open(&honest).unwrap()).unwrap();
    assert!(detector.nms_in_graph());
    let found = detector.predict_batch(&[rgb(8, 8), rgb(16, 4)]).unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|d| d.len() <= 5));

    assert_eq!(detector.exif(), kiln_infer::Exif::Apply, "no input.exif: images as displayed");
    let stored = nms_detector(dir.path(), "stored", |m| m["input"]["exif"] = json!("ignore"));
    assert_eq!(Detector::new(open(&stored).unwrap()).unwrap().exif(), kiln_infer::Exif::Ignore);

    let cases: [Lie; 5] = [
        ("exif", "input.exif", |m| m["input"]["exif"] = json!("rotate")),
        ("slots", "nms.max_detections", |m| m["nms"]["max_detections"] = json!(9)),
        ("none", "nms.max_detections", |m| m["nms"]["max_detections"] = json!(0)),
        ("iou", "nms.iou_threshold", |m| m["nms"]["iou_threshold"] = json!(1.5)),
        ("score", "nms.score_threshold", |m| m["nms"]["score_threshold"] = json!(-0.1)),
    ];
    for (name, field, edit) in cases {
        let path = nms_detector(dir.path(), name, edit);
        assert_eq!(field_of(open(&path).and_then(Detector::new), &path), field, "{name}");
    }
}

#[test]
fn nms_outputs_of_unequal_lengths_are_an_output_error() {
    let dir = tempfile::tempdir().unwrap();
    // Stand-in NMS outputs: 5 box slots but 3 score and class slots, and a count of 3 per image.
    let g = graph(|g, input| {
        let shape = g.constant_i64("flat", &[0, -1]).unwrap();
        let flat = g.op("Reshape", &[input, &shape], vec![]).unwrap();
        let (first, boxes, scores) = (slice(g, &flat, 1, 0, 1), slice(g, &flat, 1, 0, 20), slice(g, &flat, 1, 20, 23));
        let zero = g.constant_f32("zero", &[1], &[0.0]).unwrap();
        let three = g.constant_f32("three", &[1], &[3.0]).unwrap();
        let scaled = g.op("Mul", &[&first, &zero], vec![]).unwrap();
        let count = g.op("Add", &[&scaled, &three], vec![]).unwrap();
        let n_shape = g.constant_i64("n", &[-1]).unwrap();
        let count = g.op("Reshape", &[&count, &n_shape], vec![]).unwrap();
        let count = g.op("Cast", &[&count], vec![Attr::Int("to", 7)]).unwrap();
        let box_shape = g.constant_i64("boxes", &[0, 5, 4]).unwrap();
        let boxes = g.op("Reshape", &[&boxes, &box_shape], vec![]).unwrap();
        let scores = g.op("Sigmoid", &[&scores], vec![]).unwrap();
        let classes = g.op("Mul", &[&scores, &zero], vec![]).unwrap();
        let classes = g.op("Cast", &[&classes], vec![Attr::Int("to", 7)]).unwrap();
        let n = symbolic("batch");
        g.output(&count, NMS_OUTPUTS[0], ElemType::I64, std::slice::from_ref(&n)).unwrap();
        g.output(&boxes, NMS_OUTPUTS[1], ElemType::F32, &[n.clone(), symbolic("m"), Dim::Fixed(4)]).unwrap();
        g.output(&scores, NMS_OUTPUTS[2], ElemType::F32, &[n.clone(), symbolic("m")]).unwrap();
        g.output(&classes, NMS_OUTPUTS[3], ElemType::I64, &[n, symbolic("m")]).unwrap();
    });
    let path = save(dir.path(), "unequal", g, &detector_metadata(&NMS_OUTPUTS));
    let detector = Detector::new(open(&path).unwrap()).unwrap();
    match detector.predict_batch(&[rgb(8, 8), rgb(8, 8)]) {
        Err(Error::ModelOutput { path: p, reason, .. }) => {
            assert_eq!(p, path);
            assert!(reason.contains("unequal lengths"), "{reason}");
        }
        other => panic!("expected an output error, got {:?}", other.map(|d| d.len())),
    }
}

#[test]
fn a_classifier_whose_class_names_miscount_its_scores_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, classes: &[&str]| {
        let g = graph(|g, input| {
            let mean =
                g.op("ReduceMean", &[input], vec![Attr::Ints("axes", vec![2, 3]), Attr::Int("keepdims", 0)]).unwrap();
            let probs = g.op("Softmax", &[&mean], vec![Attr::Int("axis", 1)]).unwrap();
            g.output(&probs, "probs", ElemType::F32, &[symbolic("batch"), Dim::Fixed(3)]).unwrap();
        });
        save(dir.path(), name, g, &metadata("classify", classes, "stretch", [8, 8], &["probs"]))
    };
    let honest = make("honest", &["r", "g", "b"]);
    let classifier = Classifier::new(open(&honest).unwrap()).unwrap();
    assert_eq!(classifier.predict(&rgb(8, 8), 3).unwrap().len(), 3);
    let lying = make("four", &["r", "g", "b", "a"]);
    assert_eq!(field_of(open(&lying).and_then(Classifier::new), &lying), "class_names");
}
