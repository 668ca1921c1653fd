//! Paths found inside annotation files: the escape check, image probing and image listing.

use std::path::{Path, PathBuf};

use kiln_infer::Exif;

use super::{AnnotationError, Location};

pub(super) use crate::data::is_image as is_image_file;
pub(crate) use crate::data::paths::{safe_relative, PathProblem};
pub use crate::data::IMAGE_EXTENSIONS;

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

/// Reads an image's width and height from its header, without decoding the pixels, as displayed (EXIF
/// orientation applied) or as stored, as `exif` says.
pub(super) fn probe_image(path: &Path, exif: Exif) -> Probe {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.to_string()),
        Ok(meta) if !meta.is_file() => return Probe::Unreadable("not a regular file".to_string()),
        Ok(_) => {}
    }
    match kiln_infer::read_header(path).map(|header| header.size(exif)) {
        Ok((w, h)) if w > 0 && h > 0 => Probe::Size(w, h),
        Ok((w, h)) => Probe::Unreadable(format!("the image is {w}x{h} pixels")),
        Err(reason) => Probe::Unreadable(reason),
    }
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
