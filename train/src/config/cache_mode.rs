//! `cache`: how a classification loader keeps decoded images between epochs (the mechanism is
//! `classify::cache`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How decoded images are kept between epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// `ram` when the decoded images take under a quarter of the available memory, else `none`.
    #[default]
    Auto,
    /// Decode every image every epoch; memory stays flat whatever the dataset's size.
    None,
    /// Decode each image once into memory (refused when it would not fit).
    Ram,
    /// Decoded arrays on disk (`KILN_CACHE_DIR`, else `~/.cache/kiln/decoded`), reused across runs.
    Disk,
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(CacheMode::Auto),
            "none" | "false" => Ok(CacheMode::None),
            "ram" | "true" => Ok(CacheMode::Ram),
            "disk" => Ok(CacheMode::Disk),
            other => Err(format!("'{other}' is not auto, none, ram or disk")),
        }
    }
}
