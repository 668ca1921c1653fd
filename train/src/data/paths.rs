//! Paths written inside label and annotation files (detection's CSV / COCO / YOLO, OCR's `gt.txt`): each must
//! stay below its data root.

use std::path::{Component, Path, PathBuf};

/// Why a path written in an annotation file is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
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
pub fn safe_relative(value: &str) -> Result<PathBuf, PathProblem> {
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
