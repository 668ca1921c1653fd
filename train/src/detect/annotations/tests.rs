//! Tests of the annotation readers: one scene written in every layout, and each bad input's message.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn png(path: &Path, width: u32, height: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::new(width, height).save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn write_json(path: &Path, value: &Value) {
    write(path, &serde_json::to_string_pretty(value).unwrap());
}

/// The error of `open`, and its message.
fn open_err(root: &Path, layout: Option<Layout>) -> (AnnotationError, String) {
    match open(root, layout) {
        Ok(ds) => panic!("expected an error, read {} train samples", ds.train.len()),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

fn assert_close(got: [f32; 4], want: [f64; 4]) {
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-3, "box {got:?}, expected {want:?}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The scene: five images over three splits, two classes, one negative.

struct SceneImage {
    split: Split,
    name: &'static str,
    width: u32,
    height: u32,
    /// (class, xyxy pixels)
    boxes: &'static [(usize, [f64; 4])],
}

const CLASSES: [&str; 2] = ["cat", "dog"];

const SCENE: [SceneImage; 5] = [
    SceneImage {
        split: Split::Train,
        name: "a.png",
        width: 64,
        height: 48,
        boxes: &[(0, [4.0, 6.0, 20.0, 30.0]), (1, [30.5, 10.25, 60.0, 40.0])],
    },
    SceneImage { split: Split::Train, name: "b.png", width: 32, height: 32, boxes: &[] },
    SceneImage { split: Split::Train, name: "c.png", width: 40, height: 40, boxes: &[(1, [0.0, 0.0, 40.0, 40.0])] },
    SceneImage {
        split: Split::Val,
        name: "d.png",
        width: 50,
        height: 30,
        boxes: &[(0, [10.0, 5.0, 25.0, 25.0]), (0, [1.5, 2.5, 8.0, 9.0])],
    },
    SceneImage { split: Split::Test, name: "e.png", width: 20, height: 20, boxes: &[(1, [2.0, 2.0, 10.0, 10.0])] },
];

/// CSV: `images/<split>/<name>`, columns shuffled and an extra one.
fn write_scene_csv(root: &Path) {
    for split in Split::ALL {
        let mut text = String::from("label,xmax,filename,ymin,notes,xmin,ymax\n");
        for image in SCENE.iter().filter(|i| i.split == split) {
            png(&root.join("images").join(split.name()).join(image.name), image.width, image.height);
            let file = format!("{}/{}", split.name(), image.name);
            if image.boxes.is_empty() {
                text += &format!(",,{file},,a negative,,\n");
            }
            for (class, [x1, y1, x2, y2]) in image.boxes {
                text += &format!("{},{x2},{file},{y1},,{x1},{y2}\n", CLASSES[*class]);
            }
        }
        write(&root.join(format!("{}.csv", split.name())), &text);
    }
}

/// One COCO file for `split`, with Roboflow's placeholder category 0.
fn scene_coco_json(split: Split) -> Value {
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for (image_id, image) in SCENE.iter().enumerate().filter(|(_, i)| i.split == split) {
        images.push(json!({"id": image_id, "file_name": image.name, "width": image.width, "height": image.height}));
        for (class, [x1, y1, x2, y2]) in image.boxes {
            annotations.push(json!({
                "id": annotations.len() + 100,
                "image_id": image_id,
                "category_id": class + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
                "segmentation": [],
            }));
        }
    }
    json!({
        "info": {"description": "scene"},
        "categories": [
            {"id": 0, "name": "animals", "supercategory": "none"},
            {"id": 1, "name": "cat", "supercategory": "animals"},
            {"id": 2, "name": "dog", "supercategory": "animals"},
        ],
        "images": images,
        "annotations": annotations,
    })
}

/// COCO as Roboflow exports it: `{train,valid,test}/_annotations.coco.json` beside the images.
fn write_scene_coco(root: &Path) {
    for (split, dir) in [(Split::Train, "train"), (Split::Val, "valid"), (Split::Test, "test")] {
        for image in SCENE.iter().filter(|i| i.split == split) {
            png(&root.join(dir).join(image.name), image.width, image.height);
        }
        write_json(&root.join(dir).join("_annotations.coco.json"), &scene_coco_json(split));
    }
}

/// Classic COCO: `annotations/instances_{split}2017.json`, images in `{split}2017/`.
fn write_scene_coco_classic(root: &Path) {
    for split in Split::ALL {
        for image in SCENE.iter().filter(|i| i.split == split) {
            png(&root.join(format!("{}2017", split.name())).join(image.name), image.width, image.height);
        }
        let file = root.join("annotations").join(format!("instances_{}2017.json", split.name()));
        write_json(&file, &scene_coco_json(split));
    }
}

/// YOLO: `images/<split>/`, `labels/<split>/`, normalised to six decimals; the negative has no label file.
fn write_scene_yolo(root: &Path) {
    write(
        &root.join("data.yaml"),
        "train: images/train\nval: images/val\ntest: images/test\nnc: 2\nnames: [cat, dog]\n",
    );
    for image in &SCENE {
        let split = image.split.name();
        png(&root.join("images").join(split).join(image.name), image.width, image.height);
        if image.boxes.is_empty() {
            continue;
        }
        let (w, h) = (f64::from(image.width), f64::from(image.height));
        let mut text = String::new();
        for (class, [x1, y1, x2, y2]) in image.boxes {
            let (cx, cy, bw, bh) = ((x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h);
            text += &format!("{class} {cx:.6} {cy:.6} {bw:.6} {bh:.6}\n");
        }
        let stem = image.name.trim_end_matches(".png");
        write(&root.join("labels").join(split).join(format!("{stem}.txt")), &text);
    }
}

fn assert_scene(ds: &DetectionDataset) {
    assert_eq!(ds.class_names, CLASSES, "{:?}", ds.layout);
    for split in Split::ALL {
        let want: Vec<&SceneImage> = SCENE.iter().filter(|i| i.split == split).collect();
        let got = ds.split(split);
        assert_eq!(got.len(), want.len(), "{} {split}", ds.layout);
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.path.file_name().unwrap(), w.name);
            assert!(g.path.starts_with(&ds.root));
            assert_eq!((g.width, g.height), (w.width, w.height));
            assert_eq!(g.boxes.len(), w.boxes.len(), "{} {}", ds.layout, w.name);
            for (gb, (class, xyxy)) in g.boxes.iter().zip(w.boxes) {
                assert_eq!(gb.class, *class);
                assert!(!gb.crowd);
                assert_close(gb.bbox, *xyxy);
            }
        }
    }
    assert!(ds.report.is_clean(), "{}", ds.report);
    assert_eq!(ds.report.summary(), "no issues");
    assert_eq!(ds.num_boxes(), 6);
    assert_eq!(ds.train.iter().filter(|s| s.is_negative()).count(), 1);
}

#[test]
fn the_same_scene_reads_alike_in_every_layout() {
    type Writer = fn(&Path);
    let writers: [(Layout, Writer); 4] = [
        (Layout::Csv, write_scene_csv),
        (Layout::Coco, write_scene_coco),
        (Layout::Coco, write_scene_coco_classic),
        (Layout::Yolo, write_scene_yolo),
    ];
    for (layout, write_scene) in writers {
        let dir = tmp();
        write_scene(dir.path());
        assert_eq!(detect_layout(dir.path()).unwrap(), layout);
        let detected = open(dir.path(), None).unwrap();
        assert_eq!(detected.layout, layout);
        assert_scene(&detected);
        let named = open(dir.path(), Some(layout)).unwrap();
        assert_eq!(named.train, detected.train);
        assert_eq!(named.val, detected.val);
        assert_eq!(named.test, detected.test);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Layouts

#[test]
fn layout_parses_from_its_name() {
    assert_eq!("csv".parse::<Layout>().unwrap(), Layout::Csv);
    assert_eq!("COCO".parse::<Layout>().unwrap(), Layout::Coco);
    assert_eq!(" yolo ".parse::<Layout>().unwrap(), Layout::Yolo);
    let err = "voc".parse::<Layout>().unwrap_err();
    assert_eq!(err.to_string(), "unknown annotation layout 'voc' (expected csv, coco or yolo)");
    for layout in Layout::ALL {
        assert_eq!(layout.to_string().parse::<Layout>().unwrap(), layout);
    }
}

#[test]
fn detection_fails_listing_what_it_looked_for() {
    let dir = tmp();
    png(&dir.path().join("images/x.png"), 4, 4);
    let err = detect_layout(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AnnotationError::Layout { .. }), "{text}");
    for wanted in ["no annotation layout recognised", "train.csv", "_annotations.coco.json", "instances_", "data.yaml"]
    {
        assert!(text.contains(wanted), "{text}");
    }
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("no annotation layout recognised"), "{text}");

    let (_, text) = open_err(&dir.path().join("nope"), None);
    assert!(text.contains("nope"), "{text}");
}

#[test]
fn detection_refuses_to_guess_between_layouts() {
    let dir = tmp();
    write(&dir.path().join("train.csv"), "filename,xmin,ymin,xmax,ymax,label\n");
    write(&dir.path().join("data.yaml"), "names: [a]\n");
    let text = detect_layout(dir.path()).unwrap_err().to_string();
    assert!(text.contains("several annotation layouts found"), "{text}");
    assert!(text.contains("csv (train.csv)") && text.contains("yolo (data.yaml)"), "{text}");
}

#[test]
fn a_named_layout_that_is_absent_says_what_is_missing() {
    let dir = tmp();
    png(&dir.path().join("images/x.png"), 4, 4);
    for (layout, wanted) in
        [(Layout::Csv, "train.csv"), (Layout::Coco, "_annotations.coco.json"), (Layout::Yolo, "data.yaml")]
    {
        let (err, text) = open_err(dir.path(), Some(layout));
        assert!(matches!(err, AnnotationError::Layout { .. }) && text.contains(wanted), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CSV

const HEADER: &str = "filename,xmin,ymin,xmax,ymax,label\n";

fn csv_root(rows: &str) -> tempfile::TempDir {
    let dir = tmp();
    png(&dir.path().join("images/a.png"), 64, 48);
    write(&dir.path().join("train.csv"), &format!("{HEADER}{rows}"));
    dir
}

#[test]
fn csv_rejects_absolute_filenames() {
    let dir = csv_root("a.png,1,1,5,5,cat\n/etc/passwd,1,1,5,5,cat\n");
    let (err, text) = open_err(dir.path(), None);
    assert!(matches!(&err, AnnotationError::EscapingPath { at: Location::Line(3), .. }), "{text}");
    assert!(text.contains("train.csv:3: path '/etc/passwd' escapes the data root (absolute path)"), "{text}");
}

#[test]
fn csv_rejects_parent_dir_filenames() {
    for name in ["../secret.png", "sub/../../secret.png", "sub\\..\\..\\secret.png"] {
        let dir = csv_root(&format!("{name},1,1,5,5,cat\n"));
        let (err, text) = open_err(dir.path(), None);
        assert!(matches!(&err, AnnotationError::EscapingPath { at: Location::Line(2), .. }), "{text}");
        assert!(text.contains("train.csv:2:") && text.contains("'..' component"), "{text}");
    }
}

#[test]
fn csv_reports_a_bad_number_with_its_line() {
    let dir = csv_root("a.png,1,1,5,5,cat\na.png,1,abc,5,5,cat\n");
    let (err, text) = open_err(dir.path(), None);
    assert!(matches!(&err, AnnotationError::Malformed { at: Location::Line(3), .. }), "{text}");
    assert!(text.ends_with("train.csv:3: ymin 'abc' is not a finite number"), "{text}");

    let dir = csv_root("a.png,1,1,nan,5,cat\n");
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("train.csv:2: xmax 'nan' is not a finite number"), "{text}");
}

#[test]
fn csv_header_and_row_shape_errors_name_the_line() {
    let dir = tmp();
    png(&dir.path().join("images/a.png"), 8, 8);
    write(&dir.path().join("train.csv"), "filename,xmin,ymin,xmax,ymax\na.png,1,1,2,2\n");
    let (_, text) = open_err(dir.path(), Some(Layout::Csv));
    assert!(text.contains("train.csv:1: the header lacks column(s) label"), "{text}");

    let dir = csv_root("a.png,1,1,5,5,cat\na.png,1,1,5,5\n");
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("train.csv:3: the row has 5 fields, but the header has 6"), "{text}");

    let dir = csv_root("a.png,1,1,,,cat\n");
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("train.csv:2: xmax, ymax empty while the other box fields are set"), "{text}");

    let dir = csv_root(",1,1,5,5,cat\n");
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("train.csv:2: empty filename"), "{text}");
}

#[test]
fn csv_classes_are_the_sorted_labels_of_all_splits() {
    let dir = csv_root("a.png,1,1,5,5,zebra\na.png,1,1,5,5,Ant\n");
    write(&dir.path().join("val.csv"), &format!("{HEADER}a.png,1,1,5,5,bee\nmissing.png,1,1,5,5,yak\n"));
    let ds = open(dir.path(), None).unwrap();
    // Byte order: upper case first; 'yak' counts although its image is missing.
    assert_eq!(ds.class_names, ["Ant", "bee", "yak", "zebra"]);
    let classes: Vec<usize> = ds.train[0].boxes.iter().map(|b| b.class).collect();
    assert_eq!(classes, [3, 0]);
    assert!(ds.test.is_empty());
}

#[test]
fn csv_requires_the_images_folder() {
    let dir = tmp();
    write(&dir.path().join("train.csv"), HEADER);
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("the images/ folder is missing"), "{text}");
}

// ---------------------------------------------------------------------------------------------------------------
// COCO

/// A Roboflow-style root with `train/a.png` (64x48) and the given json.
fn coco_root(value: &Value) -> tempfile::TempDir {
    let dir = tmp();
    png(&dir.path().join("train/a.png"), 64, 48);
    write_json(&dir.path().join("train/_annotations.coco.json"), value);
    dir
}

fn coco_one(file_name: &str, annotations: Value) -> Value {
    json!({
        "images": [{"id": 7, "file_name": file_name, "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat", "supercategory": "none"}],
    })
}

#[test]
fn coco_rejects_escaping_file_names() {
    for (name, why) in [("/data/a.png", "absolute path"), ("../a.png", "'..' component"), ("x/../../a.png", "'..'")] {
        let dir = coco_root(&coco_one(name, json!([])));
        let (err, text) = open_err(dir.path(), None);
        assert!(matches!(&err, AnnotationError::EscapingPath { at: Location::Image(7), .. }), "{text}");
        assert!(text.contains("_annotations.coco.json (image id 7): path '") && text.contains(why), "{text}");
    }
}

#[test]
fn coco_unknown_category_names_file_and_annotation() {
    let annotations = json!([
        {"id": 41, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4]},
        {"id": 42, "image_id": 7, "category_id": 9, "bbox": [1, 1, 4, 4]},
    ]);
    let dir = coco_root(&coco_one("a.png", annotations));
    let (err, text) = open_err(dir.path(), None);
    assert!(
        matches!(&err, AnnotationError::UnknownCategory { at: Location::Annotation(42), category_id: 9, .. }),
        "{text}"
    );
    assert!(
        text.ends_with(
            "train/_annotations.coco.json (annotation id 42): category id 9 is not defined in the file's \
                        `categories` (defined: 1)"
        ),
        "{text}"
    );
}

#[test]
fn coco_unknown_image_id_is_an_error() {
    let annotations = json!([{"id": 5, "image_id": 8, "category_id": 1, "bbox": [1, 1, 4, 4]}]);
    let dir = coco_root(&coco_one("a.png", annotations));
    let (err, text) = open_err(dir.path(), None);
    assert!(matches!(&err, AnnotationError::UnknownImage { image_id: 8, .. }), "{text}");
    assert!(text.contains("(annotation id 5): image id 8 is not defined"), "{text}");
}

#[test]
fn coco_shape_errors() {
    let annotations = json!([{"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4]}]);
    let (_, text) = open_err(coco_root(&coco_one("a.png", annotations)).path(), None);
    assert!(text.contains("(annotation id 5): bbox has 3 numbers"), "{text}");

    let (_, text) = open_err(coco_root(&json!({"images": [{"id": 1}]})).path(), None);
    assert!(text.contains("_annotations.coco.json: invalid COCO JSON: missing field `file_name`"), "{text}");

    let mut value = coco_one("a.png", json!([]));
    value["images"][0]["width"] = json!(0);
    let (_, text) = open_err(coco_root(&value).path(), None);
    assert!(text.contains("(image id 7): width 0 is not a positive whole number"), "{text}");
}

#[test]
fn coco_drops_the_roboflow_placeholder_but_keeps_annotated_parents() {
    let categories = json!([
        {"id": 0, "name": "animals", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "animals"},
        {"id": 2, "name": "dog", "supercategory": "animals"},
    ]);
    let mut value = coco_one("a.png", json!([{"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 1, 4, 4]}]));
    value["categories"] = categories;
    let ds = open(coco_root(&value).path(), None).unwrap();
    assert_eq!(ds.class_names, ["cat", "dog"]);
    assert_eq!(ds.train[0].boxes[0].class, 1);

    // The placeholder has an annotation: it is a class.
    value["annotations"][0]["category_id"] = json!(0);
    let ds = open(coco_root(&value).path(), None).unwrap();
    assert_eq!(ds.class_names, ["animals", "cat", "dog"]);
    assert_eq!(ds.train[0].boxes[0].class, 0);

    // Classic COCO supercategories are not categories: nothing is dropped; order follows the ids.
    value["categories"] = json!([
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 0, "name": "bicycle", "supercategory": "vehicle"},
    ]);
    let ds = open(coco_root(&value).path(), None).unwrap();
    assert_eq!(ds.class_names, ["bicycle", "person", "car"]);
}

#[test]
fn coco_keeps_crowd_boxes_flagged() {
    let annotations = json!([
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 1},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [2, 2, 4, 4], "iscrowd": true},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [3, 3, 4, 4]},
    ]);
    let ds = open(coco_root(&coco_one("a.png", annotations)).path(), None).unwrap();
    let crowd: Vec<bool> = ds.train[0].boxes.iter().map(|b| b.crowd).collect();
    assert_eq!(crowd, [true, true, false]);
    assert_close(ds.train[0].boxes[0].bbox, [1.0, 1.0, 5.0, 5.0]);
}

#[test]
fn coco_splits_must_agree_on_categories() {
    let dir = coco_root(&coco_one("a.png", json!([])));
    let mut val = coco_one("a.png", json!([]));
    val["categories"][0]["name"] = json!("dog");
    write_json(&dir.path().join("valid/_annotations.coco.json"), &val);
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("valid/_annotations.coco.json: category id 1 is 'dog' here but 'cat' in"), "{text}");
}

#[test]
fn coco_refuses_two_files_for_one_split() {
    let dir = coco_root(&coco_one("a.png", json!([])));
    write_json(&dir.path().join("valid/_annotations.coco.json"), &coco_one("a.png", json!([])));
    write_json(&dir.path().join("val/_annotations.coco.json"), &coco_one("a.png", json!([])));
    let (_, text) = open_err(dir.path(), None);
    assert!(
        text.contains("both valid/_annotations.coco.json and val/_annotations.coco.json hold the val split"),
        "{text}"
    );
}

#[test]
fn coco_classic_layout_finds_images_under_images_split() {
    let dir = tmp();
    png(&dir.path().join("images/val/a.png"), 64, 48);
    let annotations = json!([{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4]}]);
    write_json(&dir.path().join("annotations/instances_val.json"), &coco_one("a.png", annotations));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.layout, Layout::Coco);
    assert!(ds.train.is_empty());
    assert_eq!(ds.val[0].path, dir.path().join("images/val/a.png"));

    fs::remove_dir_all(dir.path().join("images")).unwrap();
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("no image folder for annotations/instances_val.json; looked for val, images/val"), "{text}");
}

// ---------------------------------------------------------------------------------------------------------------
// YOLO

/// `images/train/a.png` (64x48) with the given data.yaml and label text (no label file when `None`).
fn yolo_root(data_yaml: &str, label: Option<&str>) -> tempfile::TempDir {
    let dir = tmp();
    png(&dir.path().join("images/train/a.png"), 64, 48);
    write(&dir.path().join("data.yaml"), data_yaml);
    if let Some(label) = label {
        write(&dir.path().join("labels/train/a.txt"), label);
    }
    dir
}

const NAMES: &str = "names: [cat, dog]\n";

#[test]
fn yolo_rejects_escaping_paths_in_data_yaml() {
    for (yaml, key, why) in [
        ("train: ../elsewhere/images\n", "train", "'..' component"),
        ("val: /srv/data/images/val\n", "val", "absolute path"),
        ("path: ../other\ntrain: images/train\n", "path", "'..' component"),
        ("path: /srv/other\n", "path", "absolute path"),
        ("test: [images/train, ../x]\n", "test", "'..' component"),
    ] {
        let dir = yolo_root(&format!("{NAMES}{yaml}"), None);
        let (err, text) = open_err(dir.path(), None);
        assert!(matches!(&err, AnnotationError::EscapingPath { .. }), "{text}");
        assert!(text.contains(&format!("data.yaml (key '{key}'): path '")) && text.contains(why), "{text}");
    }
}

#[test]
fn yolo_reads_roboflow_relative_paths_inside_the_root() {
    let dir = tmp();
    png(&dir.path().join("train/images/a.png"), 64, 48);
    write(&dir.path().join("train/labels/a.txt"), "0 0.5 0.5 0.25 0.25\n");
    // Roboflow's export: `../train/images` for the folder beside data.yaml, as Ultralytics reads it.
    write(&dir.path().join("data.yaml"), &format!("{NAMES}train: ../train/images\n"));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);
    assert_close(ds.train[0].boxes[0].bbox, [24.0, 18.0, 40.0, 30.0]);
    // A `..` path with no such folder inside the root still escapes.
    write(&dir.path().join("data.yaml"), &format!("{NAMES}train: ../elsewhere/images\n"));
    let (_, text) = open_err(dir.path(), None);
    assert!(text.contains("elsewhere"), "{text}");

    write(&dir.path().join("data.yaml"), &format!("{NAMES}train: train/images\n"));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);
    assert_close(ds.train[0].boxes[0].bbox, [24.0, 18.0, 40.0, 30.0]);
}

#[test]
fn yolo_path_key_may_name_the_root_or_a_folder_inside_it() {
    let dir = yolo_root("", Some("1 0.5 0.5 0.5 0.5\n"));
    let root = dir.path().canonicalize().unwrap();
    write(&dir.path().join("data.yaml"), &format!("{NAMES}path: {}\ntrain: images/train\n", root.display()));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);

    png(&dir.path().join("inner/images/val/b.png"), 10, 10);
    write(&dir.path().join("data.yaml"), &format!("{NAMES}path: inner\n"));
    let ds = open(dir.path(), None).unwrap();
    assert!(ds.train.is_empty());
    assert_eq!(ds.val[0].path, dir.path().join("inner/images/val/b.png"));
}

#[test]
fn yolo_class_out_of_range_names_file_and_line() {
    let dir = yolo_root(NAMES, Some("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n"));
    let (err, text) = open_err(dir.path(), None);
    assert!(matches!(&err, AnnotationError::ClassOutOfRange { class: 2, num_classes: 2, .. }), "{text}");
    assert!(
        text.ends_with("labels/train/a.txt:2: class id 2 is out of range: data.yaml names 2 classes (ids 0 to 1)"),
        "{text}"
    );
}

#[test]
fn yolo_malformed_lines_name_their_line() {
    for (label, wanted) in [
        ("0 0.5 0.5 0.1 0.1\n\n0 0.5 0.5 0.1\n", "a.txt:3: expected 5 fields `class cx cy w h`, found 4"),
        ("0 0.5 x 0.1 0.1\n", "a.txt:1: cy 'x' is not a finite number"),
        ("-1 0.5 0.5 0.1 0.1\n", "a.txt:1: class id '-1' is not a non-negative whole number"),
        ("cat 0.5 0.5 0.1 0.1\n", "a.txt:1: class id 'cat' is not a non-negative whole number"),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3\n", "a.txt:1: expected 5 fields `class cx cy w h`, found 7 (segmentation"),
    ] {
        let dir = yolo_root(NAMES, Some(label));
        let (err, text) = open_err(dir.path(), None);
        assert!(matches!(&err, AnnotationError::Malformed { at: Location::Line(_), .. }), "{text}");
        assert!(text.contains(wanted), "{text}");
    }
}

#[test]
fn yolo_images_without_labels_are_negatives() {
    let dir = yolo_root(NAMES, Some(""));
    png(&dir.path().join("images/train/b.png"), 8, 8);
    write(&dir.path().join("labels/train/b.txt"), "  \n\n");
    png(&dir.path().join("images/train/sub/c.png"), 8, 8);
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 3);
    assert!(ds.train.iter().all(DetectionSample::is_negative));
    assert!(ds.report.is_clean(), "{}", ds.report);
}

#[test]
fn yolo_names_as_a_map_and_nc_checks() {
    let dir = yolo_root("names:\n  0: cat\n  1: dog\n", Some("1 0.5 0.5 0.5 0.5\n"));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.class_names, CLASSES);
    assert_eq!(ds.train[0].boxes[0].class, 1);

    for (yaml, wanted) in [
        ("names:\n  0: cat\n  2: dog\n", "data.yaml (key 'names'): `names` ids must be 0..1 without gaps; id 1"),
        ("nc: 3\nnames: [cat, dog]\n", "data.yaml (key 'nc'): nc is 3 but `names` has 2 entries"),
        ("names: [cat, cat]\n", "data.yaml (key 'names'): class name 'cat' is used twice"),
        ("train: images/train\n", "data.yaml (key 'names'): data.yaml has no `names`"),
        ("names: [cat\n", "data.yaml: invalid YAML"),
        ("names: [cat]\nval: images/nowhere\n", "data.yaml (key 'val'): folder 'images/nowhere'"),
    ] {
        let dir = yolo_root(yaml, None);
        let (_, text) = open_err(dir.path(), None);
        assert!(text.contains(wanted), "{text}");
    }
}

#[test]
fn yolo_reports_label_files_without_images() {
    let dir = yolo_root(NAMES, Some("0 0.5 0.5 0.5 0.5\n"));
    write(&dir.path().join("labels/train/classes.txt"), "cat\ndog\n");
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.report.orphan_labels, [dir.path().join("labels/train/classes.txt")]);
    assert_eq!(ds.report.summary(), "1 label file without image");
}

// ---------------------------------------------------------------------------------------------------------------
// Rules common to the layouts

#[test]
fn missing_images_are_skipped_and_counted() {
    let dir = csv_root("a.png,1,1,5,5,cat\ngone.png,1,1,5,5,cat\ngone.png,2,2,6,6,cat\nalso_gone.png,,,,,\n");
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);
    let missing: Vec<(&Path, usize)> = ds.report.missing_images.iter().map(|m| (m.image.as_path(), m.boxes)).collect();
    let (gone, also_gone) = (dir.path().join("images/gone.png"), dir.path().join("images/also_gone.png"));
    assert_eq!(missing, [(also_gone.as_path(), 0), (gone.as_path(), 2)]);
    assert_eq!(ds.report.missing_images[0].referenced_by, dir.path().join("train.csv"));
    assert_eq!(ds.report.summary(), "2 missing images");

    let mut value = coco_one("a.png", json!([{"id": 1, "image_id": 9, "category_id": 1, "bbox": [1, 1, 4, 4]}]));
    value["images"].as_array_mut().unwrap().push(json!({"id": 9, "file_name": "gone.jpg", "width": 9, "height": 9}));
    let dir = coco_root(&value);
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);
    assert_eq!(ds.report.missing_images.len(), 1);
    assert_eq!(ds.report.missing_images[0].image, dir.path().join("train/gone.jpg"));
    assert_eq!(ds.report.missing_images[0].boxes, 1);
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let dir = csv_root("a.png,1,1,5,5,cat\nbroken.png,1,1,5,5,cat\n");
    write(&dir.path().join("images/broken.png"), "not a png");
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train.len(), 1);
    assert_eq!(ds.report.unreadable_images.len(), 1);
    assert_eq!(ds.report.unreadable_images[0].image, dir.path().join("images/broken.png"));
}

#[test]
fn boxes_without_area_are_dropped_and_reported() {
    // CSV: zero width on line 2, negative height on line 3.
    let dir = csv_root("a.png,5,1,5,9,cat\na.png,1,9,5,2,cat\na.png,1,1,5,5,cat\n");
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train[0].boxes.len(), 1);
    let dropped: Vec<&Location> = ds.report.dropped_boxes.iter().map(|b| &b.at).collect();
    assert_eq!(dropped, [&Location::Line(2), &Location::Line(3)]);
    let first = &ds.report.dropped_boxes[0];
    assert_eq!(first.file, dir.path().join("train.csv"));
    assert_eq!(first.image, dir.path().join("images/a.png"));
    assert_eq!(first.reason, "box [5, 1, 5, 9] has non-positive area");
    assert_eq!(ds.report.summary(), "2 dropped boxes");

    // COCO: w = 0 and h < 0.
    let annotations = json!([
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 4]},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, -4]},
    ]);
    let dir = coco_root(&coco_one("a.png", annotations));
    let ds = open(dir.path(), None).unwrap();
    assert!(ds.train[0].is_negative());
    let dropped: Vec<&Location> = ds.report.dropped_boxes.iter().map(|b| &b.at).collect();
    assert_eq!(dropped, [&Location::Annotation(1), &Location::Annotation(2)]);
    assert_eq!(ds.report.dropped_boxes[0].file, dir.path().join("train/_annotations.coco.json"));

    // YOLO: w = 0 on line 2.
    let dir = yolo_root(NAMES, Some("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n"));
    let ds = open(dir.path(), None).unwrap();
    assert_eq!(ds.train[0].boxes.len(), 1);
    assert_eq!(ds.report.dropped_boxes.len(), 1);
    assert_eq!(ds.report.dropped_boxes[0].file, dir.path().join("labels/train/a.txt"));
    assert_eq!(ds.report.dropped_boxes[0].at, Location::Line(2));
}

#[test]
fn boxes_reaching_outside_are_clipped_and_reported() {
    // 64x48 image: line 2 reaches out left and right, line 3 lies wholly outside (dropped).
    let dir = csv_root("a.png,-5,10,70,40,cat\na.png,70,10,80,40,cat\na.png,1,1,64,48,cat\n");
    let ds = open(dir.path(), None).unwrap();
    let boxes = &ds.train[0].boxes;
    assert_eq!(boxes.len(), 2);
    assert_close(boxes[0].bbox, [0.0, 10.0, 64.0, 40.0]);
    assert_close(boxes[1].bbox, [1.0, 1.0, 64.0, 48.0]);
    assert_eq!(ds.report.clipped_boxes.len(), 1);
    let clipped = &ds.report.clipped_boxes[0];
    assert_eq!((clipped.file.clone(), clipped.at.clone()), (dir.path().join("train.csv"), Location::Line(2)));
    assert_eq!(clipped.reason, "box [-5, 10, 70, 40] reaches outside the 64x48 image; clipped to [0, 10, 64, 40]");
    assert_eq!(ds.report.dropped_boxes.len(), 1);
    assert_eq!(ds.report.dropped_boxes[0].reason, "box [70, 10, 80, 40] lies outside the 64x48 image");
    assert_eq!(ds.report.summary(), "1 dropped box, 1 clipped box");
    assert!(ds.report.to_string().contains("clipped box"), "{}", ds.report);

    // YOLO: a box centred on the right edge, and one that only rounds past it (not reported).
    let dir = yolo_root(NAMES, Some("1 1.0 0.5 0.5 0.5\n0 0.8750001 0.5 0.25 0.25\n"));
    let ds = open(dir.path(), None).unwrap();
    assert_close(ds.train[0].boxes[0].bbox, [48.0, 12.0, 64.0, 36.0]);
    assert!(ds.train[0].boxes[1].bbox[2] <= 64.0);
    assert_eq!(ds.report.clipped_boxes.len(), 1);
    assert_eq!(ds.report.clipped_boxes[0].at, Location::Line(1));

    // COCO.
    let annotations = json!([{"id": 3, "image_id": 7, "category_id": 1, "bbox": [50, 40, 20, 20]}]);
    let ds = open(coco_root(&coco_one("a.png", annotations)).path(), None).unwrap();
    assert_close(ds.train[0].boxes[0].bbox, [50.0, 40.0, 64.0, 48.0]);
    assert_eq!(ds.report.clipped_boxes[0].at, Location::Annotation(3));
}

#[test]
fn samples_are_sorted_by_path() {
    let dir = tmp();
    for name in ["b.png", "a.png", "sub/c.png", "A.png"] {
        png(&dir.path().join("images").join(name), 8, 8);
    }
    let rows = "sub/c.png,,,,,\nb.png,1,1,2,2,x\n./a.png,,,,,\nA.png,,,,,\na.png,1,1,3,3,x\n";
    write(&dir.path().join("train.csv"), &format!("{HEADER}{rows}"));
    let ds = open(dir.path(), None).unwrap();
    let names: Vec<String> = ds
        .train
        .iter()
        .map(|s| s.path.strip_prefix(dir.path().join("images")).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["A.png", "a.png", "b.png", "sub/c.png"]);
    // `./a.png` and `a.png` are one image.
    assert_eq!(ds.train[1].boxes.len(), 1);
}

#[test]
fn fitting_keeps_rounding_noise_out_of_the_report() {
    assert_eq!(boxes::fit([0.0, 0.0, 10.0, 10.0], 10, 10), boxes::Fit::Kept([0.0, 0.0, 10.0, 10.0]));
    assert_eq!(boxes::fit([-0.001, 0.0, 10.004, 10.0], 10, 10), boxes::Fit::Kept([0.0, 0.0, 10.0, 10.0]));
    assert_eq!(boxes::fit([-0.5, 0.0, 10.0, 10.0], 10, 10), boxes::Fit::Clipped([0.0, 0.0, 10.0, 10.0]));
    assert!(matches!(boxes::fit([0.0, 0.0, 0.0, 10.0], 10, 10), boxes::Fit::Dropped(_)));
    assert!(matches!(boxes::fit([-9.0, 0.0, -1.0, 10.0], 10, 10), boxes::Fit::Dropped(_)));
}

#[test]
fn safe_relative_paths() {
    use paths::{safe_relative, PathProblem};
    assert_eq!(safe_relative("a/./b.png").unwrap(), Path::new("a/b.png"));
    assert_eq!(safe_relative("a\\b.png").unwrap(), Path::new("a/b.png"));
    assert_eq!(safe_relative("..a/b...png").unwrap(), Path::new("..a/b...png"));
    assert_eq!(safe_relative("C:\\x.png"), Err(PathProblem::Absolute));
    assert_eq!(safe_relative("\\x.png"), Err(PathProblem::Absolute));
    assert_eq!(safe_relative("a/.."), Err(PathProblem::ParentDir));
    assert_eq!(safe_relative("./"), Err(PathProblem::Empty));
}
