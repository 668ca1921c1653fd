//! Helpers shared by the end-to-end tests: small generated data sets and configs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_train::synthetic::{generate_shapes, ShapesSpec};
use kiln_train::TrainConfig;

/// Tests in one binary run on parallel threads, and libtorch's random generator is global: two trainings at once
/// interleave their draws (dropout, initialisation, drop-path), so a trained metric varies from run to run (the
/// classification accuracy test: best validation accuracy 0.867 and 0.883 in two full-suite runs against its 0.9
/// bar, above it in others). Each in-process training test holds this lock, so every run sees the same numbers.
pub fn one_training_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A study of `trials` trials in `dir/study.db` for the tests: random sampler, no pruner, the task's default
/// space, one worker.
pub fn sqlite_study(dir: &Path, name: &str, trials: usize) -> kiln_train::tune::StudyOptions {
    use kiln_train::tune::{PrunerKind, SamplerKind, StorageUrl, StudyOptions};
    StudyOptions {
        trials,
        storage: StorageUrl::Sqlite(dir.join("study.db")),
        name: name.into(),
        sampler: SamplerKind::Random,
        pruner: PrunerKind::None,
        space: None,
        heartbeat_timeout: std::time::Duration::from_secs(60),
        worker: "test".into(),
        running: None,
    }
}

/// A 3-class shapes set (circle, square, triangle) at 64 px with train/val/test folders.
pub fn shapes(root: &Path, per_class: (usize, usize, usize), seed: u64) -> PathBuf {
    let data = root.join("shapes");
    generate_shapes(&data, &ShapesSpec { classes: 3, per_class, size: 64, seed, ..Default::default() }).unwrap();
    data
}

/// A fast CPU config for convnext_atto at 64 px.
pub fn quick_config(data: &Path, project: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        model: "convnext_atto".into(),
        epochs,
        batch: 32,
        lr: 2e-3,
        warmup_epochs: 1.0,
        drop_path_rate: 0.0,
        img_size: 64,
        workers: 2,
        device: "cpu".into(),
        project: project.to_path_buf(),
        ..TrainConfig::default()
    }
}

/// A PNG cut in half: its header decodes, its pixel data does not.
pub fn write_truncated_png(path: &Path) {
    let image = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// Runs the `kiln` binary in `cwd`.
pub fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).current_dir(cwd).output().expect("kiln runs")
}

/// `tests/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The tensors of a fixture's safetensors file, by name.
pub fn read_fixture(dir: &Path, file: &str) -> HashMap<String, tch::Tensor> {
    kiln_models::weights::read_safetensors(&dir.join(file)).unwrap().into_iter().collect()
}

/// max |a − b| over two slices of one length, for the parity tests. Fails on a length mismatch (a `zip` would
/// compare the shorter prefix) and on an empty comparison; any NaN, on either side, makes the result NaN, which
/// fails every `<` and `<=` bound (`fold(0.0, f32::max)` skipped NaN, so an all-NaN output "matched").
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    max_diff_by(a, b, |x, y| (x - y).abs())
}

/// max |a − b| / max(1, |a|) (relative where values are large: box coordinates), with [`max_abs_diff`]'s rules;
/// `a` is the reference.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    max_diff_by(a, b, |x, y| (x - y).abs() / x.abs().max(1.0))
}

fn max_diff_by(a: &[f32], b: &[f32], diff: impl Fn(f32, f32) -> f32) -> f32 {
    assert_eq!(a.len(), b.len(), "the compared outputs differ in length");
    assert!(!a.is_empty(), "nothing to compare");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| diff(x, y))
        .fold(0.0, |max, d| if d.is_nan() || max.is_nan() { f32::NAN } else { max.max(d) })
}

/// Fails unless `ours` and `theirs` have one shape and differ by at most `tolerance` · max(1, max |theirs|)
/// everywhere (NaN fails): the parity tests' comparison of a kiln record with a reference's.
pub fn assert_close(what: &str, ours: &tch::Tensor, theirs: &tch::Tensor, tolerance: f64) {
    use tch::Kind;
    assert_eq!(ours.size(), theirs.size(), "{what}: shapes");
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let diff = (ours.to_kind(Kind::Float) - theirs.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(diff <= tolerance * scale, "{what}: differs by {diff:e} (scale {scale:.3})");
}
