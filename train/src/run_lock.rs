//! One writer per run directory. A training holds an OS advisory lock on `<run>/.lock` for its whole life, and a
//! command that writes into a finished run (a calibration, an export into it) holds it for its write; the OS
//! releases it when the holder exits or dies, so a crash never leaves a run locked. A second writer is refused with
//! the holder's pid, host and command, which the holder writes into the lock file. Read-only commands take no lock.
//! Taking the lock also removes the temp files a killed writer left in the run (`kiln_export::sweep_stale_temps`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The lock file's name in a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held run lock; dropping it releases the run.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

/// This machine's name, for the lock's holder line.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "an unknown host".into())
}

/// Takes an exclusive advisory lock on `file` without waiting (`flock`, as std's `File::try_lock` does from Rust
/// 1.89, past kiln's MSRV): `Ok(false)` when another open file holds it. Released when the file closes.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns and keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(code) if code == libc::EWOULDBLOCK => Ok(false),
        _ => Err(error),
    }
}

/// Elsewhere the run is not locked (kiln trains on Linux; the lock is advisory).
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

impl RunLock {
    /// Takes `run`'s lock for `command` (e.g. `kiln train --resume`), or says who holds it.
    pub fn acquire(run: &RunDir, command: &str) -> Result<RunLock> {
        let path = run.path.join(LOCK_FILE);
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process (it has not said who)" } else { holder };
                return Err(Error::RunLocked { path: run.path.clone(), holder: holder.to_string() });
            }
            Err(source) => return Err(io(source)),
        }
        let line = format!("pid {} on {} ({command})\n", std::process::id(), host_name());
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        for dir in [run.path.clone(), run.weights_dir()] {
            if dir.is_dir() {
                kiln_export::sweep_stale_temps(&dir).map_err(|source| Error::Io { path: dir, source })?;
            }
        }
        Ok(RunLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // The holder line goes with the lock; the OS releases the lock when the file closes (or the process dies).
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("weights")).unwrap();
        let run = RunDir { path: dir.path().to_path_buf() };
        (dir, run)
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holder_and_admitted_after_it() {
        let (_dir, run) = run();
        let held = RunLock::acquire(&run, "kiln train").unwrap();
        let err = RunLock::acquire(&run, "kiln train --resume").unwrap_err().to_string();
        let pid = format!("pid {}", std::process::id());
        assert!(err.contains(&pid) && err.contains("kiln train)") && err.contains(&host_name()), "{err}");
        assert!(err.contains(&run.path.display().to_string()), "{err}");
        drop(held);
        let again = RunLock::acquire(&run, "kiln export").unwrap();
        assert!(std::fs::read_to_string(again.path()).unwrap().contains("(kiln export)"));
    }

    #[test]
    fn taking_the_lock_sweeps_a_killed_writers_temps() {
        let (_dir, run) = run();
        let stale = run.weights_dir().join(format!(".last.safetensors.4194305.abcdef{}", kiln_export::TEMP_SUFFIX));
        std::fs::write(&stale, b"half a checkpoint").unwrap();
        let _lock = RunLock::acquire(&run, "kiln train --resume").unwrap();
        assert!(!stale.exists());
    }
}
