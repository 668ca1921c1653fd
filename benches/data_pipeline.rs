//! The training data pipeline, per core: decoding a 640×480 JPEG, and decoding + augmenting (random resized crop,
//! flip, colour jitter, normalisation) to a 224 px CHW tensor; then the whole loader on every core.
//!
//! `cargo bench --bench data_pipeline` (or `make bench`); throughput is in images per second.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;

use kiln_infer::preprocess::decode_rgb;
use kiln_train::classify::transform::{transform_into, Transform};
use kiln_train::classify::{ClassifyItems, ClassifyLoader, Sample};
use kiln_train::config::AugmentConfig;
use kiln_train::data::{Batches, LoaderSettings, Normalize, SkipLog};
use kiln_train::synthetic::{draw_shape, Palette};

/// Writes `n` 640×480 JPEGs (quality 90): a drawn scene resized up, so the JPEG has natural-image statistics
/// rather than pure noise.
fn jpegs(dir: &std::path::Path, n: usize) -> Vec<PathBuf> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    (0..n)
        .map(|i| {
            let scene = draw_shape(i % 5, 160, Palette::Random, &mut rng);
            let image = image::imageops::resize(&scene, 640, 480, image::imageops::FilterType::Triangle);
            let path = dir.join(format!("{i}.jpg"));
            let file = std::fs::File::create(&path).unwrap();
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90);
            encoder.encode_image(&image).unwrap();
            path
        })
        .collect()
}

fn per_core(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let files = jpegs(dir.path(), 8);
    let norm = Normalize::default();
    let train = Transform::Train(AugmentConfig::default());
    let mut out = vec![0f32; 3 * 224 * 224];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("per_core");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("decode_jpeg_640x480", |b| {
        b.iter(|| {
            i = (i + 1) % files.len();
            decode_rgb(&files[i]).unwrap()
        })
    });
    group.bench_function("decode_and_train_augment_224", |b| {
        b.iter(|| {
            i = (i + 1) % files.len();
            let image = decode_rgb(&files[i]).unwrap();
            transform_into(&image, 224, &train, &norm, &mut rng, &mut out);
        })
    });
    group.bench_function("decode_and_eval_resize_224", |b| {
        b.iter(|| {
            i = (i + 1) % files.len();
            let image = decode_rgb(&files[i]).unwrap();
            transform_into(&image, 224, &Transform::Eval, &norm, &mut rng, &mut out);
        })
    });
    group.finish();
}

fn loader_all_cores(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<Sample> = jpegs(dir.path(), 64).into_iter().map(|path| Sample { path, label: 0 }).collect();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let settings = LoaderSettings { batch_size: 32, workers, prefetch: 2, seed: 0 };
    let items = ClassifyItems::new(
        samples,
        Transform::Train(AugmentConfig::default()),
        Normalize::default(),
        224,
        Arc::new(SkipLog::default()),
    );
    let loader = ClassifyLoader::new(items, settings).unwrap();
    let mut group = c.benchmark_group(format!("loader_{workers}_workers"));
    group.throughput(Throughput::Elements(64));
    group.sample_size(10);
    let mut epoch = 0;
    group.bench_function("epoch_of_64_train_224", |b| {
        b.iter(|| {
            epoch += 1;
            loader.epoch(epoch, true).count()
        })
    });
    group.finish();
}

criterion_group!(benches, per_core, loader_all_cores);
criterion_main!(benches);
