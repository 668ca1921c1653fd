//! pycocotools (from PyPI, in a throwaway environment) as the second client of `kiln infer --format coco`: it loads
//! the results file against the test split's ground truth and scores it to the mAP `kiln test` reported for the
//! same model. Skipped with a printed reason where the environment cannot be built; `KILN_REQUIRE_PYTHON=1`
//! (`.ci/run`) makes that a failure.

mod common;

use kiln_testkit::PythonEnv;
use kiln_train::config::TaskKind;
use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::export::ExportOptions;
use kiln_train::TrainConfig;
use serde_json::{json, Value};

const PYCOCOTOOLS: [&str; 2] = ["pycocotools==2.0.11", "numpy==2.4.6"];

#[test]
fn pycocotools_scores_kiln_infer_results_as_kiln_test_does() {
    let test = "pycocotools_scores_kiln_infer_results_as_kiln_test_does";
    let Some(python) = PythonEnv::create_or_skip(test, "pycocotools", &PYCOCOTOOLS) else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    let spec = ScenesSpec { classes: 2, images: (48, 8, 12), size: (96, 64), max_objects: 3, ..Default::default() };
    generate_scenes(&data, &spec).unwrap();
    let mut config = TrainConfig {
        task: TaskKind::Detect,
        data: data.clone(),
        model: "convnext_atto".into(),
        epochs: 3,
        batch: 8,
        lr: 3e-3,
        img_size: 64,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        // 18 steps: the lighter 2-conv head detects something by then (this test compares scorers, not recipes).
        ..TrainConfig::default()
    };
    config.set_task_settings(&kiln_train::detect::DetectSettings { head_convs: 2, ..Default::default() });
    let outcome = kiln_train::detect::train(&config).unwrap();
    let tested = outcome.test.as_ref().expect("a test split").metrics.coco.clone();
    let onnx = dir.path().join("det.onnx");
    kiln_train::tasks::export_run(&outcome.run, &ExportOptions { out: Some(onnx.clone()), ..Default::default() })
        .unwrap();

    // The test split as COCO instances, with ids that are not 0, 1, 2, … to catch positional mix-ups.
    let dataset = kiln_train::detect::annotations::open(&data, None).unwrap();
    let (mut images, mut annotations) = (Vec::new(), Vec::new());
    for (i, sample) in dataset.test.iter().enumerate() {
        let image_id = 100 + 3 * i;
        let file_name = sample.path.file_name().unwrap().to_string_lossy().into_owned();
        images.push(json!({"id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height}));
        for b in &sample.boxes {
            let [x1, y1, x2, y2] = b.bbox;
            annotations.push(json!({
                "id": annotations.len() + 1, "image_id": image_id, "category_id": 10 + b.class,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            }));
        }
    }
    let categories: Vec<Value> =
        dataset.class_names.iter().enumerate().map(|(i, name)| json!({"id": 10 + i, "name": name})).collect();
    let gt = dir.path().join("test_gt.json");
    let gt_json = json!({"images": images, "annotations": annotations, "categories": categories});
    std::fs::write(&gt, gt_json.to_string()).unwrap();

    let mut args = vec!["infer".to_string(), "--model".into(), onnx.to_string_lossy().into()];
    args.extend(["--format".into(), "coco".into(), "--coco-gt".into(), gt.to_string_lossy().into()]);
    args.extend(dataset.test.iter().map(|s| s.path.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::kiln(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results_file = dir.path().join("results.json");
    std::fs::write(&results_file, &out.stdout).unwrap();
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = results.as_array().unwrap().len();
    assert!(count > 0, "the model detects something");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/coco_eval_pycocotools.py");
    let scored = python.run(&script, &[gt.as_os_str(), results_file.as_os_str()]).unwrap();
    let stats: Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert_eq!(stats["results"], count, "pycocotools loaded every result");
    eprintln!("pycocotools {stats}\nkiln test {tested:?}");
    for (name, ours) in
        [("map", tested.map), ("map_50", tested.map_50), ("map_75", tested.map_75), ("mar_100", tested.mar_100)]
    {
        let theirs = stats[name].as_f64().unwrap();
        assert!((theirs - ours).abs() < 2e-3, "{name}: pycocotools {theirs}, kiln test {ours}");
    }
    // Three epochs make a weak detector, but one whose detections match objects: the numbers compared are not zeros.
    assert!(tested.map > 0.0 && tested.mar_100 > 0.05, "a real comparison needs matched detections: {tested:?}");
}
