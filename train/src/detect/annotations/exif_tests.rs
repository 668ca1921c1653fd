//! EXIF-rotated images in every layout: a JPEG stored 40×24 with EXIF orientation 6 (displayed 24×40, as a phone
//! held upright takes it), one box drawn on the displayed image. With `detect.exif: apply` (the default) each layout
//! reads the displayed size and the box as drawn; with `ignore` the stored size. Whatever the convention, the size a
//! sample records is the size its image decodes to, so boxes and pixels agree.

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use kiln_infer::exif::jpeg_with_orientation;
use kiln_infer::preprocess::decode_rgb_with;
use kiln_infer::Exif;
use serde_json::json;

use super::*;

const STORED: (u32, u32) = (40, 24);
const DISPLAYED: (u32, u32) = (24, 40);
/// Drawn on the displayed image: its bottom reaches below the stored image's height.
const BOX: [f32; 4] = [2.0, 20.0, 14.0, 36.0];

fn rotated_jpeg(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let stored = RgbImage::from_fn(STORED.0, STORED.1, |x, y| image::Rgb([(x * 6) as u8, (y * 10) as u8, 90]));
    fs::write(path, jpeg_with_orientation(&stored, 6)).unwrap();
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn csv(root: &Path) -> PathBuf {
    rotated_jpeg(&root.join("images/photo.jpg"));
    let [x1, y1, x2, y2] = BOX;
    write(&root.join("train.csv"), &format!("filename,xmin,ymin,xmax,ymax,label\nphoto.jpg,{x1},{y1},{x2},{y2},cat\n"));
    root.to_path_buf()
}

fn yolo(root: &Path) -> PathBuf {
    rotated_jpeg(&root.join("images/train/photo.jpg"));
    write(&root.join("data.yaml"), "train: images/train\nnames: [cat]\n");
    // Normalised by the displayed size, as Ultralytics' tools write it.
    let (w, h) = (DISPLAYED.0 as f32, DISPLAYED.1 as f32);
    let [x1, y1, x2, y2] = BOX;
    let line = format!("0 {} {} {} {}\n", (x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h);
    write(&root.join("labels/train/photo.txt"), &line);
    root.to_path_buf()
}

/// COCO recording the image as `recorded` (width, height), with one box `bbox` (xyxy).
fn coco(root: &Path, recorded: (u32, u32), bbox: [f32; 4]) -> PathBuf {
    rotated_jpeg(&root.join("train/photo.jpg"));
    let [x1, y1, x2, y2] = bbox;
    let file = json!({
        "categories": [{"id": 1, "name": "cat"}],
        "images": [{"id": 7, "file_name": "photo.jpg", "width": recorded.0, "height": recorded.1}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}],
    });
    write(&root.join("train/_annotations.coco.json"), &file.to_string());
    root.to_path_buf()
}

fn ignoring(layout: Layout) -> OpenOptions {
    OpenOptions { layout: Some(layout), exif: Exif::Ignore, coco: None }
}

/// The one training sample, checked to decode to the size it records.
fn sample(ds: &DetectionDataset) -> &DetectionSample {
    assert_eq!(ds.train.len(), 1, "{:?}", ds.report);
    let sample = &ds.train[0];
    let decoded = decode_rgb_with(&sample.path, ds.exif).unwrap();
    assert_eq!(decoded.dimensions(), (sample.width, sample.height), "the recorded size is the decoded size");
    sample
}

#[test]
fn every_layout_reads_an_exif_rotated_photo_as_displayed_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let roots = [
        (Layout::Csv, csv(&dir.path().join("csv"))),
        (Layout::Yolo, yolo(&dir.path().join("yolo"))),
        (Layout::Coco, coco(&dir.path().join("coco"), DISPLAYED, BOX)),
    ];
    for (layout, root) in &roots {
        let ds = open(root, Some(*layout)).unwrap();
        assert_eq!(ds.exif, Exif::Apply);
        let s = sample(&ds);
        assert_eq!((s.width, s.height), DISPLAYED, "{layout}");
        assert_eq!(s.boxes.len(), 1, "{layout}");
        for (got, want) in s.boxes[0].bbox.iter().zip(BOX) {
            assert!((got - want).abs() < 1e-3, "{layout}: {:?} vs {BOX:?}", s.boxes[0].bbox);
        }
        assert!(ds.report.is_clean(), "{layout}: {}", ds.report);
    }
    // Read as stored instead, the sizes are the stored ones and the box no longer fits: the CSV box is clipped.
    for (layout, root) in &roots {
        let ds = open_with(root, &ignoring(*layout)).unwrap();
        assert_eq!((sample(&ds).width, sample(&ds).height), STORED, "{layout}");
    }
    let csv_stored = open_with(&roots[0].1, &ignoring(Layout::Csv)).unwrap();
    assert_eq!(csv_stored.report.clipped_boxes.len(), 1, "{}", csv_stored.report);
}

#[test]
fn a_coco_size_recorded_in_the_other_convention_is_reported_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Annotated by a tool that ignores EXIF (torchvision's CocoDetection reads it that way): the stored size.
    // The same object on the stored pixels (turned back a quarter: x' = y, y' = 24 - x).
    let stored_box = [BOX[1], STORED.1 as f32 - BOX[2], BOX[3], STORED.1 as f32 - BOX[0]];
    let root = coco(&dir.path().join("stored"), STORED, stored_box);
    let ds = open(&root, Some(Layout::Coco)).unwrap();
    assert_eq!((sample(&ds).width, sample(&ds).height), DISPLAYED, "the image's own size is used");
    let mismatch = &ds.report.size_mismatches;
    assert_eq!(mismatch.len(), 1, "{}", ds.report);
    assert_eq!((mismatch[0].recorded, mismatch[0].read, mismatch[0].other_convention), (STORED, DISPLAYED, true));
    let text = ds.report.to_string();
    assert!(text.contains("records") && text.contains("set detect.exif: ignore"), "{text}");
    // The convention that file was made with reads it cleanly.
    let ds = open_with(&root, &ignoring(Layout::Coco)).unwrap();
    assert!(ds.report.is_clean(), "{}", ds.report);
    // A size that is neither is reported without a hint.
    let odd = coco(&dir.path().join("odd"), (50, 50), BOX);
    let report = open(&odd, Some(Layout::Coco)).unwrap().report;
    assert_eq!(report.size_mismatches.len(), 1);
    assert!(!report.size_mismatches[0].other_convention && !report.to_string().contains("set detect.exif"));
}

#[test]
fn coco_files_named_in_detect_coco_are_read_in_any_arrangement() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A common export: {split}/images/ and {split}/instances_{split}.json, which no folder rule recognises.
    let [x1, y1, x2, y2] = BOX;
    for split in ["train", "val"] {
        rotated_jpeg(&root.join(split).join("images/photo.jpg"));
        let file = json!({
            "categories": [{"id": 3, "name": "cat"}],
            "images": [{"id": 1, "file_name": "photo.jpg", "width": DISPLAYED.0, "height": DISPLAYED.1}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [x1, y1, x2 - x1, y2 - y1]}],
        });
        write(&root.join(split).join(format!("instances_{split}.json")), &file.to_string());
    }
    let refused = open(root, None).err().unwrap().to_string();
    assert!(refused.contains("name the files in detect.coco"), "{refused}");
    let named = |split: &str| CocoSplitPaths {
        images: PathBuf::from(split).join("images"),
        annotations: PathBuf::from(split).join(format!("instances_{split}.json")),
    };
    let coco = CocoPaths { train: Some(named("train")), val: Some(named("val")), test: None };
    let ds = open_with(root, &OpenOptions { coco: Some(coco.clone()), ..Default::default() }).unwrap();
    assert_eq!((ds.layout, ds.class_names.clone()), (Layout::Coco, vec!["cat".to_string()]));
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (1, 1, 0));
    assert_eq!(sample(&ds).boxes[0].bbox, BOX);
    // An absolute path works too; a missing file names its key.
    let absolute = CocoSplitPaths { images: root.join("val/images"), annotations: root.join("val/instances_val.json") };
    let only_val = CocoPaths { val: Some(absolute), ..Default::default() };
    assert_eq!(open_with(root, &OpenOptions { coco: Some(only_val), ..Default::default() }).unwrap().val.len(), 1);
    let wrong = CocoPaths { test: Some(named("test")), ..coco };
    let err = open_with(root, &OpenOptions { coco: Some(wrong), ..Default::default() }).err().unwrap().to_string();
    assert!(err.contains("detect.coco.test.annotations") && err.contains("instances_test.json"), "{err}");
}
