//! The dataset splits every task reads: `train`, `val`, `test`.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Splits a validation set off `train` where a dataset has none: `fraction` of it (at least one sample, and one
/// left to train on), drawn with `seed`; both parts come back sorted by path. Fewer than two samples, or a
/// fraction of 0, leave `train` whole.
pub fn hold_out<T>(mut train: Vec<T>, fraction: f64, seed: u64, path: impl Fn(&T) -> &Path) -> (Vec<T>, Vec<T>) {
    if fraction <= 0.0 || train.len() < 2 {
        return (train, Vec::new());
    }
    train.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n = ((train.len() as f64 * fraction).round() as usize).clamp(1, train.len() - 1);
    let mut val = train.split_off(train.len() - n);
    train.sort_by(|a, b| path(a).cmp(path(b)));
    val.sort_by(|a, b| path(a).cmp(path(b)));
    (train, val)
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| format!("'{s}' is not train, val or test"))
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_held_out_set_is_a_seeded_sorted_share_that_leaves_training_data() {
        let files: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i:02}.png"))).collect();
        let (train, val) = hold_out(files.clone(), 0.2, 7, |p| p.as_path());
        assert_eq!((train.len(), val.len()), (8, 2));
        assert!(train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]), "sorted");
        let mut all = [train.clone(), val.clone()].concat();
        all.sort();
        assert_eq!(all, files, "every sample once");
        assert_eq!(hold_out(files.clone(), 0.2, 7, |p| p.as_path()), (train, val), "seeded");
        assert_ne!(
            hold_out(files.clone(), 0.2, 8, |p| p.as_path()).1,
            hold_out(files.clone(), 0.2, 7, |p| p.as_path()).1
        );
        assert_eq!(hold_out(files.clone(), 0.99, 7, |p| p.as_path()).0.len(), 1, "one left to train on");
        assert_eq!(hold_out(files.clone(), 0.01, 7, |p| p.as_path()).1.len(), 1, "at least one held out");
        assert_eq!(hold_out(files[..1].to_vec(), 0.5, 7, |p| p.as_path()).1.len(), 0);
        assert_eq!(hold_out(files.clone(), 0.0, 7, |p| p.as_path()).0, files);
    }
}
