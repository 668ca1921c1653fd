//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{Error, Result};

/// The file name of the library inside a kiln deps directory.
pub const LIBRARY_IN_DEPS: &str = "onnxruntime/libonnxruntime.so";

/// The loaded runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtRuntime {
    pub path: PathBuf,
    /// The version, from the library's build information (e.g. `1.31.1`).
    pub version: Option<String>,
    /// ONNX Runtime's build information string.
    pub build_info: String,
}

/// The process's own deps directory ([`set_default_deps`]).
static DEFAULT_DEPS: OnceLock<PathBuf> = OnceLock::new();

/// Names the deps directory every model of this process looks in last, for ONNX Runtime (the `kiln` binary names
/// the one it was built with, at start-up): so that whatever opens a model (`kiln infer`, `kiln bench`, int8
/// calibration and comparison inside `kiln export`) finds the same library without `ORT_DYLIB_PATH`. The first call
/// wins; a builder's own [`crate::ModelBuilder::ort_deps`] comes before it.
pub fn set_default_deps(dir: impl Into<PathBuf>) {
    let _ = DEFAULT_DEPS.set(dir.into());
}

/// Where the library is looked for, in order: `$ORT_DYLIB_PATH`, `$KILN_DEPS/onnxruntime/`, then
/// `default_deps/onnxruntime/` (a builder's deps directory), else the process's ([`set_default_deps`]).
pub fn candidates(default_deps: Option<&Path>) -> Vec<PathBuf> {
    let default_deps = default_deps.or(DEFAULT_DEPS.get().map(PathBuf::as_path));
    candidates_from(std::env::var_os("ORT_DYLIB_PATH"), std::env::var_os("KILN_DEPS"), default_deps)
}

/// [`candidates`] for given values of `ORT_DYLIB_PATH` and `KILN_DEPS`.
fn candidates_from(
    ort_dylib_path: Option<std::ffi::OsString>,
    kiln_deps: Option<std::ffi::OsString>,
    default_deps: Option<&Path>,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = ort_dylib_path {
        paths.push(PathBuf::from(p));
    }
    if let Some(d) = kiln_deps {
        paths.push(PathBuf::from(d).join(LIBRARY_IN_DEPS));
    }
    if let Some(d) = default_deps {
        paths.push(d.join(LIBRARY_IN_DEPS));
    }
    paths
}

/// The first candidate that exists.
pub fn locate(default_deps: Option<&Path>) -> Result<PathBuf> {
    first_existing(candidates(default_deps))
}

fn first_existing(searched: Vec<PathBuf>) -> Result<PathBuf> {
    searched.iter().find(|p| p.is_file()).cloned().ok_or(Error::RuntimeNotFound { searched })
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`, e.g. `1.31.1`).
pub fn library_version(path: &Path) -> Option<String> {
    // SAFETY: loading ONNX Runtime runs no initialisers with preconditions, `OrtGetApiBase` has the signature
    // declared in onnxruntime_c_api.h, and the string it returns is static and NUL-terminated.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).GetVersionString)();
        (!version.is_null()).then(|| std::ffi::CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

type Loaded = std::result::Result<(OrtRuntime, ort::environment::Environment), String>;
static RUNTIME: OnceLock<Loaded> = OnceLock::new();

fn load_once(path: &Path) -> Result<&'static (OrtRuntime, ort::environment::Environment)> {
    RUNTIME
        .get_or_init(|| {
            let env = ort::init_from(path)
                .map_err(|e| e.to_string())?
                .with_name("kiln")
                .build()
                .map_err(|e| e.to_string())?;
            let build_info = ort::info().to_string();
            Ok((OrtRuntime { path: path.to_path_buf(), version: library_version(path), build_info }, env))
        })
        .as_ref()
        .map_err(|reason| Error::RuntimeLoad { path: path.to_path_buf(), reason: reason.clone() })
}

/// Loads ONNX Runtime from `path` once per process (ONNX Runtime allows one environment per process; later calls
/// return the first library, whatever their path).
pub fn load(path: &Path) -> Result<OrtRuntime> {
    load_once(path).map(|(runtime, _)| runtime.clone())
}

/// The process's ONNX Runtime environment, loading the library found by [`locate`] on first use.
pub fn environment(default_deps: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    if let Some(Ok((_, env))) = RUNTIME.get() {
        return Ok(env);
    }
    load_once(&locate(default_deps)?).map(|(_, env)| env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_library_reports_its_version() {
        // `make` points ORT_DYLIB_PATH at the ONNX Runtime that scripts/deps.sh installed: then it must load.
        match locate(None) {
            Err(e) if std::env::var_os("ORT_DYLIB_PATH").is_none() => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
            Ok(path) => {
                let version = library_version(&path).expect("OrtGetApiBase answers");
                assert!(version.starts_with("1."), "{version}");
                let runtime = load(&path).unwrap();
                assert_eq!(runtime.version, Some(version));
            }
        }
        assert_eq!(library_version(Path::new("/nonexistent/libonnxruntime.so")), None);
    }

    #[test]
    fn a_missing_library_lists_where_it_looked() {
        // Independent of the environment `make` sets: the variables are passed in.
        let searched = candidates_from(
            Some("/nonexistent/lib/libonnxruntime.so".into()),
            Some("/nonexistent/kiln-deps".into()),
            Some(Path::new("/nonexistent/deps")),
        );
        assert_eq!(
            searched,
            [
                PathBuf::from("/nonexistent/lib/libonnxruntime.so"),
                PathBuf::from("/nonexistent/kiln-deps/onnxruntime/libonnxruntime.so"),
                PathBuf::from("/nonexistent/deps/onnxruntime/libonnxruntime.so"),
            ],
            "ORT_DYLIB_PATH, then KILN_DEPS, then the build's deps"
        );
        let e = first_existing(searched).unwrap_err().to_string();
        for place in ["/nonexistent/lib/libonnxruntime.so", "/nonexistent/kiln-deps/", "/nonexistent/deps/onnxruntime/"]
        {
            assert!(e.contains(place), "{e}");
        }
        assert!(candidates_from(None, None, None).is_empty());
    }
}
