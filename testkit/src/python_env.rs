//! A throwaway Python virtual environment with pinned packages from PyPI, for tests that use the reference tools
//! (pycocotools, Optuna, jiwer) as second clients of what kiln writes.
//!
//! `python3 -m venv`, then `pip install --only-binary=:all:` of the requirements, in
//! `$KILN_VENV_DIR/<name>-<hash of the requirements>` (default: the system temp dir's `kiln-test-venvs/`), built
//! once and reused by later tests and runs; a half-built environment is never used (it is built under a temporary
//! name and renamed into place when complete, so concurrent tests race safely).
//!
//! Where it cannot be built (no `python3`, no network to PyPI), [`PythonEnv::create_or_skip`] prints `SKIPPED`
//! and why, and returns `None`; with `KILN_REQUIRE_PYTHON=1` (set by `.ci/run`) it panics instead, so CI cannot
//! pass without running these tests.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A ready environment.
pub struct PythonEnv {
    dir: PathBuf,
}

/// The file marking a completely built environment.
const COMPLETE: &str = "kiln-complete";
/// Where each build's duration is appended, in `$KILN_VENV_DIR`.
pub const BUILD_LOG: &str = "builds.log";

impl PythonEnv {
    /// The environment `name` with `requirements` (pip specifiers such as `pycocotools==2.0.10`), built if it is
    /// not there yet, or why it could not be.
    pub fn create(name: &str, requirements: &[&str]) -> Result<Self, String> {
        let root = std::env::var_os("KILN_VENV_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-test-venvs"));
        let dir = root.join(format!("{name}-{:016x}", fnv1a(requirements)));
        if dir.join(COMPLETE).is_file() {
            return Ok(Self { dir });
        }
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let staging =
            root.join(format!(".{name}-building-{}-{}", std::process::id(), BUILDS.fetch_add(1, Ordering::Relaxed)));
        let started = std::time::Instant::now();
        let result = build(&staging, requirements);
        if result.is_ok() {
            // What building the reference tools costs (`.ci/run` prints it after the suite).
            let line = format!("{name}: built in {:.0} s\n", started.elapsed().as_secs_f64());
            let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join(BUILD_LOG));
            let _ = log.and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        }
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        // Another test may have finished first: then its environment is used and ours discarded.
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            if !dir.join(COMPLETE).is_file() {
                return Err(format!("{}: could not be put in place", dir.display()));
            }
        }
        Ok(Self { dir })
    }

    /// [`create`](Self::create), or `None` after printing `SKIPPED <test>: <reason>`; panics instead when
    /// `KILN_REQUIRE_PYTHON=1`.
    pub fn create_or_skip(test: &str, name: &str, requirements: &[&str]) -> Option<Self> {
        match Self::create(name, requirements) {
            Ok(env) => Some(env),
            Err(reason) if std::env::var("KILN_REQUIRE_PYTHON").as_deref() == Ok("1") => {
                panic!("{test}: KILN_REQUIRE_PYTHON=1 but the Python environment {requirements:?} failed: {reason}")
            }
            Err(reason) => {
                eprintln!("SKIPPED {test}: no Python environment with {requirements:?}: {reason}");
                crate::record_skip("python", test, &reason);
                None
            }
        }
    }

    /// The environment's interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// Runs `script` (a file) with `args`; the output, or stderr's tail when it fails.
    pub fn run(&self, script: &Path, args: &[&OsStr]) -> Result<Output, String> {
        let out = Command::new(self.python())
            .arg(script)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", self.python().display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            return Err(format!(
                "{} {} failed ({}): {}",
                self.python().display(),
                script.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(out)
    }
}

fn build(staging: &Path, requirements: &[&str]) -> Result<(), String> {
    let run = |program: &OsStr, args: &[&OsStr]| -> Result<(), String> {
        let out =
            Command::new(program).args(args).output().map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!("{} {args:?}: {}", program.to_string_lossy(), stderr.lines().last().unwrap_or("failed")))
        }
    };
    run(OsStr::new("python3"), &[OsStr::new("-m"), OsStr::new("venv"), staging.as_os_str()])?;
    let python = staging.join("bin/python");
    let mut args: Vec<&OsStr> =
        ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
            .into_iter()
            .map(OsStr::new)
            .collect();
    args.extend(requirements.iter().map(OsStr::new));
    run(python.as_os_str(), &args)?;
    std::fs::write(staging.join(COMPLETE), requirements.join("\n")).map_err(|e| format!("{}: {e}", staging.display()))
}

/// FNV-1a over the requirements, so that changing a pin builds a new environment.
fn fnv1a(requirements: &[&str]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in requirements.iter().flat_map(|r| r.bytes().chain([0])) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_name_their_environment() {
        assert_eq!(fnv1a(&["a==1"]), fnv1a(&["a==1"]));
        assert_ne!(fnv1a(&["a==1"]), fnv1a(&["a==2"]));
        assert_ne!(fnv1a(&["ab"]), fnv1a(&["a", "b"]), "the separator counts");
    }
}
