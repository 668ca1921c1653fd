//! Writing a file atomically. The bytes go to a temp file created exclusively in the target directory (a fresh
//! random name with the writer's pid, never an existing file or a link planted there), are flushed to disk, and the
//! temp is renamed over the target; then the directory is flushed, so that the rename itself survives a power cut.
//! Temps a killed writer left behind are removed by [`sweep_stale_temps`].

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// The ending of kiln's temp files: `.<target name>.<pid>.<random>.kiln-tmp`.
pub const TEMP_SUFFIX: &str = ".kiln-tmp";

/// Writes `bytes` to `path` so that readers see either nothing (or the old file) or the whole new file, whatever
/// other threads or processes write to the same path at the same time. The directory must exist; on any failure no
/// temp file is left behind. A link at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    if !dir.is_dir() {
        return Err(io(std::io::Error::other("the output directory does not exist")));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", std::process::id()))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir).map_err(io)
}

/// Flushes a directory's entries (the rename) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The writer's pid in a name of kiln's temps: `.<name>.<pid>.<random>.kiln-tmp`, or `.<name>.<pid>.tmp` as kiln
/// named them before.
fn temp_writer(file_name: &str) -> Option<u32> {
    let body = file_name.strip_prefix('.')?;
    if let Some(stem) = body.strip_suffix(TEMP_SUFFIX) {
        let mut parts = stem.rsplitn(3, '.');
        let (_random, pid, name) = (parts.next()?, parts.next()?, parts.next()?);
        return (!name.is_empty()).then(|| pid.parse().ok()).flatten();
    }
    let stem = body.strip_suffix(".tmp")?;
    let (name, pid) = stem.rsplit_once('.')?;
    (!name.is_empty()).then(|| pid.parse().ok()).flatten()
}

/// Whether process `pid` runs on this machine (Linux's `/proc`; elsewhere every writer counts as running).
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes the temps of kiln's naming in `dir` whose writer no longer runs (a kill between create and rename), and
/// returns how many it removed. Other files, and temps of running writers, are left alone.
pub fn sweep_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_writer) else { continue };
        if !running(pid) && entry.file_type()?.is_file() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: above Linux's largest `pid_max`.
    const GONE: u32 = 4_194_305;

    #[test]
    fn a_missing_directory_is_named_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("no/m.onnx"), b"x").unwrap_err().to_string();
        assert!(err.contains("no/m.onnx") && err.contains("does not exist"), "{err}");
        write_atomic(&dir.path().join("m.onnx"), b"abc").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn threads_writing_one_file_never_mix_or_lose_their_writes() {
        // One temp name per process (kiln's naming before) let two threads truncate each other's temp.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let writes: Vec<Vec<u8>> = (0..8u8).map(|t| vec![t; 64 * 1024]).collect();
        std::thread::scope(|scope| {
            for bytes in &writes {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..25 {
                        write_atomic(path, bytes).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read(&path).unwrap();
        assert!(writes.contains(&last), "the file is one whole write");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.txt");
        std::fs::write(&elsewhere, b"keep").unwrap();
        let target = dir.path().join("m.onnx");
        std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
        write_atomic(&target, b"model").unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"model");
    }

    #[test]
    fn stale_temps_of_gone_writers_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let names = [
            (format!(".last.safetensors.{GONE}.aB3xYz{TEMP_SUFFIX}"), false),
            (format!(".m.onnx.{GONE}.tmp"), false),
            (format!(".best.safetensors.{me}.q1w2e3{TEMP_SUFFIX}"), true),
            (".notes.tmp".to_string(), true),
            ("results.csv".to_string(), true),
            (format!("x.{GONE}.tmp"), true),
        ];
        for (name, _) in &names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(sweep_stale_temps(dir.path()).unwrap(), 2);
        for (name, kept) in &names {
            assert_eq!(dir.path().join(name).exists(), *kept, "{name}");
        }
        assert_eq!(temp_writer(&format!(".a.b.json.{GONE}.zzzzzz{TEMP_SUFFIX}")), Some(GONE), "dots in the name");
    }
}
