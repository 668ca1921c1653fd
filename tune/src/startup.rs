//! What a study process sets up before its first trial: its worker id, the default storage, and the Ctrl-C
//! handler that fails the running trial instead of leaving it RUNNING until a heartbeat times out.

use std::path::Path;

use crate::storage::StorageUrl;
use crate::study::{record_interrupted, RunningTrial};
use crate::{Error, Result};

/// This machine's name and the process id (`host-1234`): what tells a study's workers apart.
pub fn worker_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname NUL-terminates on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = std::ffi::CStr::from_bytes_until_nul(&buf).ok().and_then(|c| c.to_str().ok()).unwrap_or("");
    let host = if ok && !name.is_empty() { name } else { "host" };
    format!("{host}-{}", std::process::id())
}

/// The storage of a study that names none: `study.db` (SQLite) in the study's directory, which is created.
pub fn default_storage(dir: &Path) -> Result<StorageUrl> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    Ok(StorageUrl::Sqlite(dir.join("study.db")))
}

/// Installs the process's Ctrl-C handler: it marks the trial `running` names FAIL ("interrupted (Ctrl-C)")
/// through its own connection, so the storage stays consistent, then exits at once with status 130. Rerunning
/// the study runs the missing trials.
pub fn fail_trial_on_interrupt(running: RunningTrial) -> Result<()> {
    ctrlc::set_handler(move || {
        // The study thread holds this lock only to tell what it runs, never across a storage call.
        if let Some(trial) = running.lock().unwrap_or_else(|e| e.into_inner()).take() {
            match record_interrupted(&trial, "interrupted (Ctrl-C)") {
                Ok(what) => eprintln!("\ninterrupted: {what}"),
                Err(e) => eprintln!("\ninterrupted: could not record trial {}: {e}", trial.number),
            }
        }
        // Leave at once: running exit handlers while a trainer's threads are mid-computation can crash.
        // SAFETY: _exit ends the process without touching Rust or C state.
        unsafe { libc::_exit(130) }
    })
    .map_err(|e| Error::InvalidSetting { key: "Ctrl-C handler".into(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_id_ends_in_this_process_and_the_default_storage_is_made() {
        let id = worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())) && id.len() > 2, "{id}");
        let dir = tempfile::tempdir().unwrap();
        let url = default_storage(&dir.path().join("runs/classify/s")).unwrap();
        assert_eq!(url, StorageUrl::Sqlite(dir.path().join("runs/classify/s/study.db")));
        assert!(dir.path().join("runs/classify/s").is_dir());
    }
}
