//! Paths found inside annotation files: the escape check, image probing and image listing.

use std::path::{Component, Path, PathBuf};

use super::{AnnotationError, Location};

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// Why a path written in an annotation file is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathProblem {
    Empty,
    Absolute,
    ParentDir,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "empty path",
            PathProblem::Absolute => "an absolute path leaves the data root",
            PathProblem::ParentDir => "a '..' component leaves the data root",
        })
    }
}

/// Turns a path written in an annotation file into a relative path that stays below its base folder.
///
/// The check is lexical: `/` and `\` both separate components (so Windows-written paths work and `..\x` is
/// caught), `.` and empty components are dropped, and an absolute path (leading `/` or `\`, a drive such as `C:`)
/// or any `..` component is refused. Symbolic links inside the root are not followed or checked.
pub(crate) fn safe_relative(value: &str) -> Result<PathBuf, PathProblem> {
    let bytes = value.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if value.starts_with('/') || value.starts_with('\\') || drive || Path::new(value).is_absolute() {
        return Err(PathProblem::Absolute);
    }
    let mut out = PathBuf::new();
    for part in value.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(PathProblem::ParentDir),
            _ => out.push(part),
        }
    }
    // Defensive: on platforms with path prefixes, a part such as `C:` would not come back as a normal component.
    if out.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(PathProblem::Absolute);
    }
    if out.as_os_str().is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(out)
}

/// [`safe_relative`], with a refusal turned into the error that names `file` and `at`.
pub(super) fn checked_relative(value: &str, file: &Path, at: Location) -> Result<PathBuf, AnnotationError> {
    safe_relative(value).map_err(|problem| match problem {
        PathProblem::Empty => AnnotationError::malformed(file, at, "empty path"),
        PathProblem::Absolute | PathProblem::ParentDir => escaping(value, file, at, problem, String::new()),
    })
}

/// The [`AnnotationError::EscapingPath`] for `value`.
pub(super) fn escaping(value: &str, file: &Path, at: Location, problem: PathProblem, hint: String) -> AnnotationError {
    let why = match problem {
        PathProblem::Absolute => "absolute path",
        PathProblem::ParentDir | PathProblem::Empty => "'..' component",
    };
    AnnotationError::EscapingPath { path: file.to_path_buf(), at, value: value.to_string(), why, hint }
}

/// What [`probe_image`] found.
pub(super) enum Probe {
    Size(u32, u32),
    Missing,
    Unreadable(String),
}

/// Reads an image's width and height from its header, without decoding the pixels.
pub(super) fn probe_image(path: &Path) -> Probe {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.to_string()),
        Ok(meta) if !meta.is_file() => return Probe::Unreadable("not a regular file".to_string()),
        Ok(_) => {}
    }
    match image::image_dimensions(path) {
        Ok((w, h)) if w > 0 && h > 0 => Probe::Size(w, h),
        Ok((w, h)) => Probe::Unreadable(format!("the image is {w}x{h} pixels")),
        Err(e) => Probe::Unreadable(e.to_string()),
    }
}

/// Whether the file name has one of [`IMAGE_EXTENSIONS`].
pub(super) fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| e.eq_ignore_ascii_case(known)))
}

/// Every file below `dir` (recursively) that `keep` accepts, sorted by path. Hidden entries (a name starting with
/// '.') are skipped; symbolic links to files are listed, links to folders are not followed (no cycles).
pub(super) fn walk_files(dir: &Path, keep: fn(&Path) -> bool) -> Result<Vec<PathBuf>, AnnotationError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| AnnotationError::io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| AnnotationError::io(&current, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| AnnotationError::io(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if (kind.is_file() || (kind.is_symlink() && path.is_file())) && keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `path` relative to `root` for messages, or `path` itself when it is not below `root`.
pub(super) fn shown<'a>(path: &'a Path, root: &Path) -> &'a Path {
    path.strip_prefix(root).unwrap_or(path)
}
