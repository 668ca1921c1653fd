//! Where the loader gets each sample's decoded image: decoded from its file every epoch (`none`), from one uint8
//! store in memory filled once (`ram`), or from decoded arrays on disk under a key of the file's path, size and
//! modification time (`disk`), so that a second run skips decoding. `auto` takes `ram` when the decoded split
//! plainly fits in memory and `none` otherwise.
//!
//! Every mode hands the augmentation the same *working image*, so a cached epoch is the very batch a streamed one
//! is (same seed): for training, the decoded image shrunk (never enlarged) until its shorter side is
//! [`working_side`]; for evaluation, the image resized to the input size exactly as `kiln-infer` resizes it, so
//! validation still sees what production sees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;
use kiln_infer::preprocess::{center_crop_region, resize_region, Crop};
use rayon::prelude::*;

use kiln_infer::preprocess::decode_rgb;

use super::image_folder::Sample;
use super::transform::Transform;
pub use crate::config::CacheMode;
use crate::data::SkipLog;
use crate::{Error, Result};

/// The shorter side training images are shrunk to after decoding: the input size over timm's default crop
/// fraction (0.875; 256 for 224), so random crops of the whole image still start from more pixels than they keep.
pub fn working_side(img_size: u32) -> u32 {
    (img_size as f64 / 0.875).ceil() as u32
}

/// The working size of a `width`×`height` image for `transform` at input size `img_size`.
pub fn working_dims(width: u32, height: u32, img_size: u32, transform: &Transform) -> (u32, u32) {
    match transform {
        Transform::Eval | Transform::EvalCenterCrop(_) => (img_size, img_size),
        Transform::Train(_) => {
            let side = working_side(img_size);
            let short = width.min(height);
            if short <= side {
                return (width, height);
            }
            let scale = side as f64 / short as f64;
            let fit = |v: u32| ((v as f64 * scale).round() as u32).max(1);
            if width <= height {
                (side, fit(height))
            } else {
                (fit(width), side)
            }
        }
    }
}

/// `image` brought to its working size (see the module docs).
pub fn working_image(image: RgbImage, img_size: u32, transform: &Transform) -> RgbImage {
    let (w, h) = working_dims(image.width(), image.height(), img_size, transform);
    let crop = match transform {
        Transform::EvalCenterCrop(pct) => center_crop_region(image.width(), image.height(), h, w, *pct),
        _ if (w, h) == image.dimensions() => return image,
        _ => Crop::full(&image),
    };
    let pixels = resize_region(&image, crop, w, h);
    RgbImage::from_raw(w, h, pixels).expect("resize_region returns width x height RGB8")
}

/// Bytes of memory the system can still give (`MemAvailable` of /proc/meminfo); `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Working sizes of a split read from the file headers alone (no decoding), and the bytes they take as RGB8.
#[derive(Clone, Debug)]
pub struct Estimate {
    /// Per sample; `None` when the header cannot be read (the file is then reported when it is decoded).
    pub dims: Vec<Option<(u32, u32)>>,
    pub bytes: u64,
}

impl Estimate {
    pub fn of(samples: &[Sample], img_size: u32, transform: &Transform, pool: &rayon::ThreadPool) -> Self {
        let dims: Vec<Option<(u32, u32)>> = pool.install(|| {
            samples
                .par_iter()
                .map(|s| {
                    let (w, h) =
                        image::ImageReader::open(&s.path).ok()?.with_guessed_format().ok()?.into_dimensions().ok()?;
                    Some(working_dims(w, h, img_size, transform))
                })
                .collect()
        });
        let bytes = dims.iter().flatten().map(|&(w, h)| w as u64 * h as u64 * 3).sum();
        Self { dims, bytes }
    }
}

/// A human-readable byte count (MiB or GiB).
pub fn format_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Every decoded working image of a split in one contiguous uint8 buffer.
pub struct RamStore {
    data: Vec<u8>,
    /// (offset, width, height) per sample; `None` for a file that could not be decoded.
    entries: Vec<Option<(usize, u32, u32)>>,
}

impl RamStore {
    /// Decodes every sample once on `pool`. Files that cannot be decoded are recorded in `skips` and left out of
    /// every epoch, as streaming leaves them out.
    pub fn fill(
        samples: &[Sample],
        estimate: &Estimate,
        img_size: u32,
        transform: &Transform,
        pool: &rayon::ThreadPool,
        skips: &SkipLog,
    ) -> Self {
        let mut data = vec![0u8; estimate.bytes as usize];
        let mut slots: Vec<(usize, &mut [u8])> = Vec::with_capacity(samples.len());
        let mut rest: &mut [u8] = &mut data;
        let mut offset = 0;
        for dims in &estimate.dims {
            let len = dims.map_or(0, |(w, h)| w as usize * h as usize * 3);
            let (slot, tail) = std::mem::take(&mut rest).split_at_mut(len);
            slots.push((offset, slot));
            rest = tail;
            offset += len;
        }
        let entries = pool.install(|| {
            slots
                .into_par_iter()
                .zip(samples.par_iter())
                .map(|((offset, slot), sample)| {
                    let decoded = decode_rgb(&sample.path).map(|img| working_image(img, img_size, transform));
                    match decoded {
                        Ok(img) if img.as_raw().len() == slot.len() => {
                            slot.copy_from_slice(img.as_raw());
                            Some((offset, img.width(), img.height()))
                        }
                        Ok(img) => {
                            let (w, h) = img.dimensions();
                            skips.record(&sample.path, format!("decoded as {w}x{h}, which its header does not say"));
                            None
                        }
                        Err(reason) => {
                            skips.record(&sample.path, reason);
                            None
                        }
                    }
                })
                .collect()
        });
        Self { data, entries }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn get(&self, index: usize) -> Option<RgbImage> {
        let (offset, w, h) = self.entries[index]?;
        let len = w as usize * h as usize * 3;
        RgbImage::from_raw(w, h, self.data[offset..offset + len].to_vec())
    }
}

/// Decoded working images as files, one per (image file path, size, modification time, working size).
pub struct DiskCache {
    dir: PathBuf,
    warned: AtomicBool,
}

const DISK_MAGIC: &[u8; 8] = b"KILNRGB1";

/// FNV-1a, 64 bits: a cache key that is the same in every run and every build.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for &b in *part {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x100000001b3);
    }
    hash
}

impl DiskCache {
    /// `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/decoded`, else `~/.cache/kiln/decoded`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("kiln").join("decoded")
    }

    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        Ok(Self { dir, warned: AtomicBool::new(false) })
    }

    /// The entry of `path` as it is now; `None` when the file cannot be read.
    fn key_path(&self, path: &Path, img_size: u32, transform: &Transform) -> Option<PathBuf> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        let canonical = std::fs::canonicalize(path).ok()?;
        let mode: Vec<u8> = match transform {
            Transform::Train(_) => b"train".to_vec(),
            Transform::Eval => b"eval".to_vec(),
            Transform::EvalCenterCrop(pct) => format!("eval-crop-{pct}").into_bytes(),
        };
        let key = fnv1a(&[
            canonical.as_os_str().as_encoded_bytes(),
            &meta.len().to_le_bytes(),
            &modified.as_nanos().to_le_bytes(),
            &img_size.to_le_bytes(),
            &mode,
        ]);
        let hex = format!("{key:016x}");
        Some(self.dir.join(&hex[..2]).join(format!("{hex}.rgb")))
    }

    fn read(entry: &Path) -> Option<RgbImage> {
        let bytes = std::fs::read(entry).ok()?;
        let header = bytes.get(..16)?;
        if &header[..8] != DISK_MAGIC {
            return None;
        }
        let w = u32::from_le_bytes(header[8..12].try_into().ok()?);
        let h = u32::from_le_bytes(header[12..16].try_into().ok()?);
        // A torn or foreign file has the wrong length and is decoded again.
        RgbImage::from_raw(w, h, bytes[16..].to_vec())
    }

    /// Temp file + rename (no fsync: a lost entry is only decoded again).
    fn write(entry: &Path, image: &RgbImage) -> std::io::Result<()> {
        let dir = entry.parent().expect("entries live in a subfolder");
        std::fs::create_dir_all(dir)?;
        let name = entry.file_name().expect("entries have a file name").to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
        let mut file = std::fs::File::create(&tmp)?;
        let written = file
            .write_all(DISK_MAGIC)
            .and_then(|_| file.write_all(&image.width().to_le_bytes()))
            .and_then(|_| file.write_all(&image.height().to_le_bytes()))
            .and_then(|_| file.write_all(image.as_raw()))
            .and_then(|_| std::fs::rename(&tmp, entry));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        Ok(())
    }

    fn load(&self, sample: &Sample, img_size: u32, transform: &Transform) -> std::result::Result<RgbImage, String> {
        let entry = self.key_path(&sample.path, img_size, transform);
        if let Some(image) = entry.as_deref().and_then(Self::read) {
            return Ok(image);
        }
        let image = working_image(decode_rgb(&sample.path)?, img_size, transform);
        if let Some(entry) = entry {
            if let Err(e) = Self::write(&entry, &image) {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    eprintln!("warning: cannot write the decoded-image cache {}: {e}", self.dir.display());
                }
            }
        }
        Ok(image)
    }
}

/// Where a loader's working images come from.
pub enum ImageSource {
    Stream,
    Ram(RamStore),
    Disk(DiskCache),
}

impl ImageSource {
    /// The working image of sample `index`, or why it cannot be read.
    pub fn load(
        &self,
        index: usize,
        sample: &Sample,
        img_size: u32,
        transform: &Transform,
    ) -> std::result::Result<RgbImage, String> {
        match self {
            ImageSource::Stream => decode_rgb(&sample.path).map(|img| working_image(img, img_size, transform)),
            ImageSource::Ram(store) => store.get(index).ok_or_else(|| "could not be decoded".to_string()),
            ImageSource::Disk(cache) => cache.load(sample, img_size, transform),
        }
    }

    /// Whether `load` may fail for a file the fill already reported (the RAM store reports at fill time).
    pub fn reports_at_fill(&self) -> bool {
        matches!(self, ImageSource::Ram(_))
    }
}

/// One split to be cached: its samples and its transform.
pub struct SplitToCache<'a> {
    pub name: &'a str,
    pub samples: &'a [Sample],
    pub transform: &'a Transform,
}

/// Resolves `requested` for these splits against `available` bytes of memory: `auto` becomes `ram` when the
/// decoded splits take under a quarter of it and `none` otherwise (saying which and why); `ram` is refused when
/// they would take more than 80 %. Returns the mode and, for `ram`, each split's header estimate.
pub fn plan(
    requested: CacheMode,
    splits: &[SplitToCache],
    img_size: u32,
    available: Option<u64>,
    pool: &rayon::ThreadPool,
) -> Result<(CacheMode, Vec<Estimate>)> {
    if matches!(requested, CacheMode::None | CacheMode::Disk) {
        return Ok((requested, Vec::new()));
    }
    let estimates: Vec<Estimate> =
        splits.iter().map(|s| Estimate::of(s.samples, img_size, s.transform, pool)).collect();
    let needed: u64 = estimates.iter().map(|e| e.bytes).sum();
    let images: usize = splits.iter().map(|s| s.samples.len()).sum();
    let names: Vec<&str> = splits.iter().map(|s| s.name).collect();
    let what = format!("{images} decoded {} images ({})", names.join(" + "), format_bytes(needed));
    let Some(available) = available else {
        return match requested {
            CacheMode::Ram => Ok((CacheMode::Ram, estimates)),
            _ => {
                eprintln!("cache: auto -> none (available memory unknown; {what})");
                Ok((CacheMode::None, Vec::new()))
            }
        };
    };
    match requested {
        CacheMode::Ram if needed as f64 > 0.8 * available as f64 => Err(Error::InvalidSetting {
            key: "cache".into(),
            reason: format!(
                "ram needs {} for {what} but {} of memory is available; use --cache disk (decoded arrays on disk, \
                 memory stays flat) or --cache none",
                format_bytes(needed),
                format_bytes(available)
            ),
        }),
        CacheMode::Ram => Ok((CacheMode::Ram, estimates)),
        _ if (needed as f64) < 0.25 * available as f64 => {
            eprintln!("cache: auto -> ram ({what}; {} available)", format_bytes(available));
            Ok((CacheMode::Ram, estimates))
        }
        _ => {
            eprintln!(
                "cache: auto -> none ({what} would take more than a quarter of the {} available)",
                format_bytes(available)
            );
            Ok((CacheMode::None, Vec::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::loader::{Batch, ClassifyItems, ClassifyLoader};
    use crate::config::AugmentConfig;
    use crate::data::{Batches, LoaderSettings, Normalize};
    use std::sync::Arc;

    /// Images of several sizes (some larger than the working size, so it is exercised) and one corrupt file.
    fn dataset(dir: &Path) -> Vec<Sample> {
        let mut samples: Vec<Sample> = [(20, 10), (90, 60), (33, 120), (64, 64), (48, 200), (12, 12)]
            .iter()
            .enumerate()
            .map(|(i, &(w, h))| {
                let path = dir.join(format!("{i}.png"));
                RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + i as u32) as u8, (y * 5) as u8, (x ^ y) as u8]))
                    .save(&path)
                    .unwrap();
                Sample { path, label: i % 2 }
            })
            .collect();
        let broken = dir.join("broken.png");
        std::fs::write(&broken, b"\x89PNG not really").unwrap();
        samples.insert(2, Sample { path: broken, label: 0 });
        samples
    }

    fn loader(samples: Vec<Sample>, transform: Transform, skips: Arc<SkipLog>) -> ClassifyLoader {
        let settings = LoaderSettings { batch_size: 3, workers: 2, prefetch: 2, seed: 5 };
        ClassifyLoader::new(ClassifyItems::new(samples, transform, Normalize::default(), 32, skips), settings).unwrap()
    }

    fn epochs(l: &ClassifyLoader) -> Vec<Batch> {
        (0..2).flat_map(|e| l.epoch(e, true).map(Result::unwrap).collect::<Vec<_>>()).collect()
    }

    fn assert_same_batches(a: &[Batch], b: &[Batch], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: batch count");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.paths, y.paths, "{what}: order");
            assert!(x.images.equal(&y.images), "{what}: pixels");
            assert!(x.labels.equal(&y.labels), "{what}: labels");
        }
    }

    #[test]
    fn ram_and_disk_give_the_streamed_batches_and_skip_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let samples = dataset(dir.path());
        let cache_dir = dir.path().join("cache");
        for transform in [Transform::Train(AugmentConfig::default()), Transform::Eval] {
            let streamed_skips = Arc::new(SkipLog::default());
            let streamed = epochs(&loader(samples.clone(), transform.clone(), Arc::clone(&streamed_skips)));

            let ram_skips = Arc::new(SkipLog::default());
            let mut ram = loader(samples.clone(), transform.clone(), Arc::clone(&ram_skips));
            let estimate = Estimate::of(&samples, 32, &transform, ram.pool());
            let store = RamStore::fill(&samples, &estimate, 32, &transform, ram.pool(), &ram_skips);
            assert_eq!(store.bytes() as u64, estimate.bytes);
            ram.items_mut().set_source(ImageSource::Ram(store));
            assert_same_batches(&epochs(&ram), &streamed, "ram");
            assert_eq!(ram_skips.entries(), streamed_skips.entries(), "the corrupt file is reported once, alike");

            let mut disk = loader(samples.clone(), transform.clone(), Arc::default());
            disk.items_mut().set_source(ImageSource::Disk(DiskCache::new(cache_dir.clone()).unwrap()));
            assert_same_batches(&epochs(&disk), &streamed, "disk, first run (writes the cache)");
            assert_same_batches(&epochs(&disk), &streamed, "disk, from the cache");
        }
        let entries = walk(&cache_dir);
        assert_eq!(entries.len(), 2 * 6, "one entry per readable image and transform: {entries:?}");
    }

    #[test]
    fn eval_batches_are_what_production_preprocessing_gives() {
        use kiln_infer::preprocess::{ChannelOrder, Preprocess};
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<Sample> = dataset(dir.path()).into_iter().filter(|s| decode_rgb(&s.path).is_ok()).collect();
        let norm = Normalize::default();
        for transform in [Transform::Eval, Transform::EvalCenterCrop(0.875)] {
            let production = Preprocess {
                size: [32, 32],
                resize: transform.eval_resize().unwrap(),
                mean: norm.mean,
                std: norm.std,
                channels: ChannelOrder::Rgb,
            };
            let l = loader(samples.clone(), transform.clone(), Arc::default());
            for batch in l.epoch(0, false) {
                let batch = batch.unwrap();
                for (k, path) in batch.paths.iter().enumerate() {
                    let mut expected = vec![0f32; production.tensor_len()];
                    production.apply(&decode_rgb(path).unwrap(), &mut expected);
                    let got: Vec<f32> = Vec::try_from(batch.images.get(k as i64).flatten(0, -1)).unwrap();
                    assert_eq!(got, expected, "{transform:?}: {}", path.display());
                }
            }
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn a_changed_file_invalidates_its_disk_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        RgbImage::from_pixel(16, 16, image::Rgb([200, 0, 0])).save(&path).unwrap();
        let sample = Sample { path: path.clone(), label: 0 };
        let cache = DiskCache::new(dir.path().join("cache")).unwrap();
        let red = cache.load(&sample, 32, &Transform::Eval).unwrap();
        assert_eq!(red.get_pixel(0, 0).0, [200, 0, 0]);
        // Same path, new content (and size): the key changes, the old entry is not used.
        RgbImage::from_pixel(20, 16, image::Rgb([0, 0, 250])).save(&path).unwrap();
        let blue = cache.load(&sample, 32, &Transform::Eval).unwrap();
        assert_eq!(blue.get_pixel(0, 0).0, [0, 0, 250]);
        assert_eq!(walk(&dir.path().join("cache")).len(), 2);
        // A torn entry is decoded again rather than trusted.
        let entry = cache.key_path(&path, 32, &Transform::Eval).unwrap();
        std::fs::write(&entry, b"KILNRGB1\x20\0\0\0\x20\0\0\0short").unwrap();
        assert_eq!(cache.load(&sample, 32, &Transform::Eval).unwrap().get_pixel(0, 0).0, [0, 0, 250]);
    }

    #[test]
    fn working_sizes_shrink_training_images_and_fit_eval_ones_exactly() {
        let train = Transform::Train(AugmentConfig::default());
        assert_eq!(working_side(224), 256);
        assert_eq!(working_dims(640, 480, 224, &train), (341, 256));
        assert_eq!(working_dims(480, 640, 224, &train), (256, 341));
        assert_eq!(working_dims(200, 100, 224, &train), (200, 100), "never enlarged");
        assert_eq!(working_dims(640, 480, 224, &Transform::Eval), (224, 224));
    }

    #[test]
    fn ram_is_refused_or_auto_falls_back_when_it_would_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let samples = dataset(dir.path());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let transform = Transform::Train(AugmentConfig::default());
        let splits = [SplitToCache { name: "train", samples: &samples, transform: &transform }];
        let needed = Estimate::of(&samples, 32, &transform, &pool).bytes;
        assert!(needed > 0);
        let err = plan(CacheMode::Ram, &splits, 32, Some(needed), &pool).unwrap_err().to_string();
        assert!(err.contains("cache") && err.contains("--cache disk") && err.contains("available"), "{err}");
        let (mode, _) = plan(CacheMode::Ram, &splits, 32, Some(needed * 2), &pool).unwrap();
        assert_eq!(mode, CacheMode::Ram);
        let (mode, estimates) = plan(CacheMode::Auto, &splits, 32, Some(needed * 2), &pool).unwrap();
        assert_eq!((mode, estimates.len()), (CacheMode::None, 0), "over a quarter: stream");
        let (mode, estimates) = plan(CacheMode::Auto, &splits, 32, Some(needed * 5), &pool).unwrap();
        assert_eq!((mode, estimates.len()), (CacheMode::Ram, 1));
        assert_eq!(plan(CacheMode::Disk, &splits, 32, Some(0), &pool).unwrap().0, CacheMode::Disk);
        assert_eq!("RAM".parse::<CacheMode>().unwrap(), CacheMode::Ram);
        assert!("memory".parse::<CacheMode>().is_err());
    }
}
