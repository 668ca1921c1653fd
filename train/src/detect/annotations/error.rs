//! The error type of the annotation readers, and [`Location`], the place inside an annotation file that a message
//! points at.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Where inside an annotation file something was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// The file as a whole (or a place the parser could not narrow down).
    File,
    /// A 1-based line (CSV rows count the header as line 1; YOLO label files; YAML).
    Line(u64),
    /// A COCO annotation, by its `id`.
    Annotation(i64),
    /// A COCO image entry, by its `id`.
    Image(i64),
    /// A top-level key of a YAML file (`names`, `train`, `path`, ...).
    Key(String),
}

/// Written right after the file name: `train.csv:3`, `x.json (annotation id 7)`, `data.yaml (key 'val')`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File => Ok(()),
            Location::Line(line) => write!(f, ":{line}"),
            Location::Annotation(id) => write!(f, " (annotation id {id})"),
            Location::Image(id) => write!(f, " (image id {id})"),
            Location::Key(key) => write!(f, " (key '{key}')"),
        }
    }
}

/// Why an annotation set could not be read. Every variant names the file (`path`) and, where there is one, the
/// [`Location`] inside it; the message reads `PATH[LOCATION]: reason`.
///
/// Skippable problems (a missing image, a box with no area, a box outside its image) are not errors: they are
/// counted in the [`AnnotationReport`](super::AnnotationReport).
#[derive(thiserror::Error, Debug)]
pub enum AnnotationError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The folder does not hold a recognisable layout, holds several, or misses a part of the named one. `path`
    /// is the data root.
    #[error("dataset {path}: {reason}")]
    Layout { path: PathBuf, reason: String },

    /// A path written in an annotation file is absolute or climbs out of the data root with `..`.
    #[error(
        "{path}{at}: path '{value}' escapes the data root ({why}); paths in annotation files must be relative and \
         must not contain '..'{hint}"
    )]
    EscapingPath {
        path: PathBuf,
        at: Location,
        /// The offending path, as written.
        value: String,
        /// `absolute path` or `'..' component`.
        why: &'static str,
        /// Empty, or a suggestion starting with "; ".
        hint: String,
    },

    /// A COCO annotation names a `category_id` that the file's `categories` does not define.
    #[error("{path}{at}: category id {category_id} is not defined in the file's `categories` (defined: {defined})")]
    UnknownCategory {
        path: PathBuf,
        at: Location,
        category_id: i64,
        /// The category ids the file defines, for the message.
        defined: String,
    },

    /// A COCO annotation names an `image_id` that the file's `images` does not define.
    #[error("{path}{at}: image id {image_id} is not defined in the file's `images`")]
    UnknownImage { path: PathBuf, at: Location, image_id: i64 },

    /// A YOLO label line names a class id that `data.yaml` does not have.
    #[error(
        "{path}{at}: class id {class} is out of range: data.yaml names {num_classes} classes (ids 0 to {})",
        .num_classes.saturating_sub(1)
    )]
    ClassOutOfRange { path: PathBuf, at: Location, class: u64, num_classes: usize },

    /// Anything else that is wrong with the content of a file: bad syntax, a number that is not one, a missing
    /// column or key, a duplicate id, inconsistent categories between splits.
    #[error("{path}{at}: {reason}")]
    Malformed { path: PathBuf, at: Location, reason: String },
}

impl AnnotationError {
    /// The file (or, for [`AnnotationError::Layout`], the data root) the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            AnnotationError::Io { path, .. }
            | AnnotationError::Layout { path, .. }
            | AnnotationError::EscapingPath { path, .. }
            | AnnotationError::UnknownCategory { path, .. }
            | AnnotationError::UnknownImage { path, .. }
            | AnnotationError::ClassOutOfRange { path, .. }
            | AnnotationError::Malformed { path, .. } => path,
        }
    }

    /// Where inside the file, when the error has a place.
    pub fn location(&self) -> Option<&Location> {
        match self {
            AnnotationError::EscapingPath { at, .. }
            | AnnotationError::UnknownCategory { at, .. }
            | AnnotationError::UnknownImage { at, .. }
            | AnnotationError::ClassOutOfRange { at, .. }
            | AnnotationError::Malformed { at, .. } => Some(at),
            AnnotationError::Io { .. } | AnnotationError::Layout { .. } => None,
        }
    }

    pub(super) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AnnotationError::Io { path: path.into(), source }
    }

    pub(super) fn layout(root: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        AnnotationError::Layout { path: root.into(), reason: reason.into() }
    }

    pub(super) fn malformed(path: impl Into<PathBuf>, at: Location, reason: impl Into<String>) -> Self {
        AnnotationError::Malformed { path: path.into(), at, reason: reason.into() }
    }
}

pub use crate::detect::settings::ParseLayoutError;

impl From<AnnotationError> for crate::Error {
    fn from(e: AnnotationError) -> Self {
        crate::Error::Task(Box::new(e))
    }
}
