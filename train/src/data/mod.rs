//! Data: the ImageFolder layout, decoding, augmentation, and the batch loader.

pub mod augment;
pub mod auto_augment;
pub mod batcher;
pub mod cache;
pub mod decode;
pub mod erasing;
pub mod image_folder;
pub mod inputs;
pub mod loader;
pub mod paths;
pub mod skip_log;
pub mod split;

pub use augment::{AugmentConfig, Normalize, Transform};
pub use cache::{CacheMode, ImageSource};
pub use image_folder::{ImageFolder, Sample, SplitRatios};
pub use inputs::expand_inputs;
pub use skip_log::SkipLog;
pub use split::Split;

/// Image files of a split with their class index where a task labels whole images (classification), for
/// calibrating and comparing exported models.
pub type LabelledImages = Vec<(std::path::PathBuf, Option<usize>)>;
pub use loader::{Batch, Loader, LoaderConfig};
