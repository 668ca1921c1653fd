//! Resume's repair of a run that a crash stopped between its checkpoint writes. Each epoch writes `last` first,
//! then `best` and the epoch's top-k copy (the same bytes), then removes the top-k files that left the list; a kill
//! in between leaves `last` naming a best or a top-k file that is older or missing, or top-k files `last` does not
//! know. (kiln before this wrote `best` first, so its crash could leave a `best` from an epoch `last` never
//! reached.) `last` is the record a resume continues from, and the files are made to agree with it.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CheckpointState};
use crate::fsutil::write_atomic;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// The epoch of top-k file `name` (`epoch_<N>.safetensors`).
fn top_k_epoch(name: &str) -> Option<usize> {
    name.strip_prefix("epoch_")?.strip_suffix(".safetensors")?.parse().ok()
}

/// Copies checkpoint `from` to `to` atomically.
fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|source| Error::Io { path: from.to_path_buf(), source })?;
    write_atomic(to, &bytes)
}

/// Makes `best` and the top-k files of `run` agree with `last` (whose record is `last`), and returns what it did,
/// one line each, for the log.
pub fn reconcile_checkpoints(run: &RunDir, last: &CheckpointState) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let last_path = run.checkpoint(Which::Last);
    let kept = |epoch: usize| last.top_k.iter().any(|(e, _)| *e == epoch);
    // Top-k files `last` does not list: from an epoch after it, or dropped but not yet removed.
    let weights = run.weights_dir();
    let entries = std::fs::read_dir(&weights).map_err(|source| Error::Io { path: weights.clone(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { path: weights.clone(), source })?.path();
        let Some(epoch) = path.file_name().and_then(|n| n.to_str()).and_then(top_k_epoch) else { continue };
        if !kept(epoch) {
            std::fs::remove_file(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            done.push(format!("removed {} (epoch {epoch} is not in last's top-k)", path.display()));
        }
    }
    // Top-k files `last` lists but that were not written: only this epoch's can be missing, and it is `last`.
    for &(epoch, _) in &last.top_k {
        let path = run.top_k_checkpoint(epoch);
        if !path.is_file() && epoch == last.epoch {
            copy(&last_path, &path)?;
            done.push(format!("wrote {} from last (epoch {epoch})", path.display()));
        }
    }
    // `best` must be the epoch `last` names.
    let best_path = run.checkpoint(Which::Best);
    let best_on_disk = checkpoint::read_state(&best_path).ok().map(|s| s.epoch);
    if best_on_disk != Some(last.best_epoch) {
        let source: Option<PathBuf> = if last.best_epoch == last.epoch {
            Some(last_path.clone())
        } else {
            Some(run.top_k_checkpoint(last.best_epoch)).filter(|p| p.is_file())
        };
        let found = best_on_disk.map_or("none".to_string(), |e| format!("epoch {e}"));
        match source {
            Some(from) => {
                copy(&from, &best_path)?;
                done.push(format!(
                    "best was {found}, last names epoch {}: restored from {}",
                    last.best_epoch,
                    from.display()
                ));
            }
            None => done.push(format!(
                "best is {found} but last names epoch {}, of which no copy is left: best stays until an epoch \
                 beats epoch {}'s score",
                last.best_epoch, last.best_epoch
            )),
        }
    }
    Ok(done)
}
