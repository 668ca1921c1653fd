//! A run's directory, `<project>/<task>/<name>/`, and the files in it.

use std::path::{Path, PathBuf};

use crate::config::TaskKind;
use crate::{Error, Result};

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Which {
    /// The epoch with the best validation metric.
    #[default]
    Best,
    /// The last finished epoch (what `--resume` continues from).
    Last,
}

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            _ => Err(format!("'{s}' is not best or last")),
        }
    }
}

/// The files of a run.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates a new run directory. Without a name, the first free of `exp`, `exp2`, …; with a name that is
    /// taken, the first free of `name2`, `name3`, …, or of `name-2`, `name-3`, … when the name ends in a digit, so
    /// that a taken `trial_3` never becomes `trial_32` (trial 32's name).
    pub fn create(project: &Path, task: TaskKind, name: Option<&str>) -> Result<Self> {
        let run = Self::create_bare(project, task, name)?;
        std::fs::create_dir_all(run.weights_dir()).map_err(|source| Error::Io { path: run.weights_dir(), source })?;
        Ok(run)
    }

    /// [`RunDir::create`] without the `weights/` folder (a `fast_dev_run`, which saves no checkpoint).
    pub fn create_bare(project: &Path, task: TaskKind, name: Option<&str>) -> Result<Self> {
        let parent = project.join(task.name());
        std::fs::create_dir_all(&parent).map_err(|source| Error::Io { path: parent.clone(), source })?;
        let base = name.unwrap_or("exp");
        let separator = if base.ends_with(|c: char| c.is_ascii_digit()) { "-" } else { "" };
        for n in 1.. {
            let candidate = if n == 1 { parent.join(base) } else { parent.join(format!("{base}{separator}{n}")) };
            // A name with a slash (`study/trial_3`) nests the run under its study.
            if let Some(dir) = candidate.parent() {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
            }
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(Self { path: candidate }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(Error::Io { path: candidate, source }),
            }
        }
        unreachable!("the loop only ends by returning")
    }

    /// Opens an existing run (it must hold the `config.yaml` written when it started).
    pub fn open(path: &Path) -> Result<Self> {
        let run = Self { path: path.to_path_buf() };
        if !run.config().is_file() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: "not a kiln run directory (no config.yaml)".into(),
            });
        }
        Ok(run)
    }

    pub fn config(&self) -> PathBuf {
        self.path.join("config.yaml")
    }
    pub fn dataset(&self) -> PathBuf {
        self.path.join("dataset.json")
    }
    pub fn results(&self) -> PathBuf {
        self.path.join("results.csv")
    }
    pub fn curves(&self) -> PathBuf {
        self.path.join("curves.png")
    }
    pub fn weights_dir(&self) -> PathBuf {
        self.path.join("weights")
    }
    pub fn checkpoint(&self, which: Which) -> PathBuf {
        self.weights_dir().join(match which {
            Which::Best => "best.safetensors",
            Which::Last => "last.safetensors",
        })
    }
    /// The checkpoint of epoch `epoch` kept by `save_top_k`.
    pub fn top_k_checkpoint(&self, epoch: usize) -> PathBuf {
        self.weights_dir().join(format!("epoch_{epoch}.safetensors"))
    }
    /// `<split>_metrics.json`.
    pub fn metrics(&self, split: &str) -> PathBuf {
        self.path.join(format!("{split}_metrics.json"))
    }
    /// `<split>_confusion_matrix.png`.
    pub fn confusion_matrix(&self, split: &str) -> PathBuf {
        self.path.join(format!("{split}_confusion_matrix.png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_increment_and_open_needs_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::create(dir.path(), TaskKind::Classify, None).unwrap();
        let b = RunDir::create(dir.path(), TaskKind::Classify, None).unwrap();
        let c = RunDir::create(dir.path(), TaskKind::Classify, Some("demo")).unwrap();
        let d = RunDir::create(dir.path(), TaskKind::Classify, Some("demo")).unwrap();
        let names: Vec<_> = [&a, &b, &c, &d].iter().map(|r| r.path.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["exp", "exp2", "demo", "demo2"]);
        let trial_3 = RunDir::create(dir.path(), TaskKind::Classify, Some("s/trial_3")).unwrap();
        let again = RunDir::create(dir.path(), TaskKind::Classify, Some("s/trial_3")).unwrap();
        let trial_32 = RunDir::create(dir.path(), TaskKind::Classify, Some("s/trial_32")).unwrap();
        let names: Vec<_> =
            [&trial_3, &again, &trial_32].iter().map(|r| r.path.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["trial_3", "trial_3-2", "trial_32"], "a numbered name never takes another trial's name");
        assert!(a.weights_dir().is_dir());
        assert!(a.path.starts_with(dir.path().join("classify")));
        let err = RunDir::open(&a.path).unwrap_err().to_string();
        assert!(err.contains("no config.yaml"), "{err}");
        std::fs::write(a.config(), "data: x").unwrap();
        assert!(RunDir::open(&a.path).is_ok());
    }
}
