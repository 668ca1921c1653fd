//! The ImageFolder layout: `ROOT/{train,val,test}/<class>/*.{jpg,jpeg,png,bmp,webp}`, with val and test split
//! from train (seeded, per class) when their folders are missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

use crate::data::inputs::{is_image, IMAGE_EXTENSIONS};
pub use crate::data::Split;

/// One labelled image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// Where a split's samples came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitSource {
    /// Its own folder under the root.
    Folder,
    /// Taken from train with the seeded ratio.
    FromTrain,
}

/// How to split train when val or test has no folder of its own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRatios {
    pub val: f64,
    pub test: f64,
    pub seed: u64,
}

/// A scanned ImageFolder dataset. Only paths are held; images are decoded on the fly by the loader.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub class_names: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    pub sources: BTreeMap<String, SplitSource>,
}

impl ImageFolder {
    /// Scans `root`. `train/` is required; `val/` and `test/` are split from train when missing.
    pub fn open(root: &Path, ratios: SplitRatios) -> Result<Self> {
        let err = |reason: String| Error::Dataset { root: root.to_path_buf(), reason };
        if !root.is_dir() {
            return Err(err("no such directory".into()));
        }
        let train_dir = root.join("train");
        if !train_dir.is_dir() {
            return Err(err(format!("no 'train' folder (expected {}/<class>/<image>)", train_dir.display())));
        }
        let class_names = class_folders(&train_dir)?;
        if class_names.is_empty() {
            return Err(err(format!("{} has no class folders", train_dir.display())));
        }
        let mut train = scan_split(root, &train_dir, &class_names)?;
        let mut sources = BTreeMap::from([("train".to_string(), SplitSource::Folder)]);
        let mut folder_splits = BTreeMap::new();
        for split in [Split::Val, Split::Test] {
            let dir = root.join(split.name());
            if dir.is_dir() {
                let found = class_folders(&dir)?;
                if found != class_names {
                    return Err(Error::ClassMismatch {
                        root: root.to_path_buf(),
                        split: split.name().into(),
                        expected: class_names.clone(),
                        found,
                    });
                }
                folder_splits.insert(split, scan_split(root, &dir, &class_names)?);
                sources.insert(split.name().into(), SplitSource::Folder);
            } else {
                sources.insert(split.name().into(), SplitSource::FromTrain);
            }
        }
        let want_val = if folder_splits.contains_key(&Split::Val) { 0.0 } else { ratios.val };
        let want_test = if folder_splits.contains_key(&Split::Test) { 0.0 } else { ratios.test };
        if !(0.0..1.0).contains(&(want_val + want_test)) || want_val < 0.0 || want_test < 0.0 {
            return Err(Error::InvalidSetting {
                key: "val_split/test_split".into(),
                reason: format!("{want_val} + {want_test} must be in [0, 1)"),
            });
        }
        let (split_val, split_test) = split_off(&mut train, class_names.len(), want_val, want_test, ratios.seed);
        let val = folder_splits.remove(&Split::Val).unwrap_or(split_val);
        let test = folder_splits.remove(&Split::Test).unwrap_or(split_test);
        if train.is_empty() {
            return Err(err("no training images left after splitting off val and test".into()));
        }
        Ok(Self { root: root.to_path_buf(), class_names, train, val, test, sources })
    }

    pub fn split(&self, split: Split) -> &[Sample] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    Ok(entries)
}

/// The class folder names of a split directory, sorted (hidden folders ignored). A folder whose name is not text
/// (not UTF-8) is refused, named lossily: dropping it would leave its class untrained without a word.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for path in read_dir_sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        let Some(name) = path.file_name() else { continue };
        let Some(name) = name.to_str() else {
            return Err(Error::Dataset {
                root: dir.to_path_buf(),
                reason: format!(
                    "class folder '{}' has a name that is not UTF-8 text; rename it (class names are text)",
                    name.to_string_lossy()
                ),
            });
        };
        if !name.starts_with('.') {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn scan_split(root: &Path, dir: &Path, class_names: &[String]) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (label, class) in class_names.iter().enumerate() {
        let class_dir = dir.join(class);
        let before = samples.len();
        samples.extend(
            read_dir_sorted(&class_dir)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .map(|path| Sample { path, label }),
        );
        if samples.len() == before {
            return Err(Error::Dataset {
                root: root.to_path_buf(),
                reason: format!("class folder {} has no images ({})", class_dir.display(), IMAGE_EXTENSIONS.join(", ")),
            });
        }
    }
    Ok(samples)
}

/// Moves a seeded, per-class (stratified) `val` and `test` fraction out of `train`.
fn split_off(
    train: &mut Vec<Sample>,
    num_classes: usize,
    val: f64,
    test: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    if val == 0.0 && test == 0.0 {
        return (Vec::new(), Vec::new());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); num_classes];
    for sample in train.drain(..) {
        by_class[sample.label].push(sample);
    }
    let (mut val_out, mut test_out) = (Vec::new(), Vec::new());
    for mut samples in by_class {
        samples.shuffle(&mut rng);
        let n = samples.len();
        // At least one image per class in each requested split when the class has enough to spare.
        let count = |ratio: f64| if ratio > 0.0 && n >= 3 { ((n as f64 * ratio).round() as usize).max(1) } else { 0 };
        let (mut n_val, mut n_test) = (count(val), count(test));
        // Rounding up can take every image of a small class: keep at least one for training (test gives first).
        while n > 0 && n_val + n_test >= n {
            if n_test > 0 {
                n_test -= 1;
            } else {
                n_val -= 1;
            }
        }
        let mut rest = samples.split_off((n_val + n_test).min(n));
        let mut taken = samples;
        test_out.extend(taken.split_off(n_val.min(taken.len())));
        val_out.append(&mut taken);
        rest.sort_by(|a, b| a.path.cmp(&b.path));
        train.append(&mut rest);
    }
    (val_out, test_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    const RATIOS: SplitRatios = SplitRatios { val: 0.2, test: 0.1, seed: 3 };

    #[cfg(target_os = "linux")]
    #[test]
    fn a_class_folder_whose_name_is_not_text_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "train/cat/0.png");
        let latin1 = dir.path().join("train").join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir(&latin1).unwrap();
        std::fs::write(latin1.join("0.png"), b"").unwrap();
        let err = ImageFolder::open(dir.path(), RATIOS).unwrap_err().to_string();
        assert!(err.contains("caf\u{fffd}") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn a_small_class_keeps_a_training_image() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            touch(dir.path(), &format!("train/few/{i}.png"));
        }
        for i in 0..20 {
            touch(dir.path(), &format!("train/many/{i}.png"));
        }
        // 3 images at 0.4 + 0.5 would round to 1 + 2: the class would vanish from training.
        let ratios = SplitRatios { val: 0.4, test: 0.5, seed: 1 };
        let ds = ImageFolder::open(dir.path(), ratios).unwrap();
        let few = |samples: &[Sample]| samples.iter().filter(|s| s.label == 0).count();
        assert_eq!((few(&ds.train), few(&ds.val), few(&ds.test)), (1, 1, 1));
        // (An empty class folder is refused by name when scanning: bad_layouts_are_clear_errors.)
    }

    #[test]
    fn splits_missing_val_and_test_from_train_per_class_and_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["cat", "dog"] {
            for i in 0..20 {
                touch(dir.path(), &format!("train/{class}/{i}.PNG"));
            }
        }
        touch(dir.path(), "train/cat/notes.txt");
        let a = ImageFolder::open(dir.path(), RATIOS).unwrap();
        assert_eq!(a.class_names, ["cat", "dog"]);
        assert_eq!((a.train.len(), a.val.len(), a.test.len()), (28, 8, 4));
        for split in [&a.val, &a.test] {
            assert_eq!(split.iter().filter(|s| s.label == 0).count() * 2, split.len(), "stratified");
        }
        let b = ImageFolder::open(dir.path(), RATIOS).unwrap();
        assert_eq!(a.val, b.val);
        let c = ImageFolder::open(dir.path(), SplitRatios { seed: 4, ..RATIOS }).unwrap();
        assert_ne!(a.val, c.val, "another seed gives another split");
        let mut all: Vec<_> = a.train.iter().chain(&a.val).chain(&a.test).map(|s| s.path.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40, "no image lost or duplicated");
    }

    #[test]
    fn uses_existing_split_folders() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "val", "test"] {
            for class in ["a", "b"] {
                touch(dir.path(), &format!("{split}/{class}/x.jpg"));
            }
        }
        let ds = ImageFolder::open(dir.path(), RATIOS).unwrap();
        assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (2, 2, 2));
        assert_eq!(ds.sources["val"], SplitSource::Folder);
    }

    #[test]
    fn bad_layouts_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ImageFolder::open(&dir.path().join("nope"), RATIOS).unwrap_err().to_string();
        assert!(missing.contains("nope") && missing.contains("no such directory"), "{missing}");
        let no_train = ImageFolder::open(dir.path(), RATIOS).unwrap_err().to_string();
        assert!(no_train.contains("no 'train' folder"), "{no_train}");

        touch(dir.path(), "train/a/1.jpg");
        std::fs::create_dir_all(dir.path().join("train/b")).unwrap();
        let empty = ImageFolder::open(dir.path(), RATIOS).unwrap_err().to_string();
        assert!(empty.contains("train/b") && empty.contains("no images"), "{empty}");

        touch(dir.path(), "train/b/1.jpg");
        touch(dir.path(), "val/a/1.jpg");
        touch(dir.path(), "val/c/1.jpg");
        let mismatch = ImageFolder::open(dir.path(), RATIOS).unwrap_err().to_string();
        assert!(mismatch.contains("'val'") && mismatch.contains("\"c\""), "{mismatch}");
    }
}
