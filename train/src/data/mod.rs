//! Data every task uses: the [`Batches`] the engine iterates, the one [`ItemLoader`] that implements it over a
//! task's [`Items`] (on the batching machinery of [`batcher`]), normalisation, the skip log, splits, safe
//! annotation paths and the walking of named inputs. What one task alone reads (classification's ImageFolder,
//! cache and augmentation) lives in that task's folder.

pub mod batcher;
pub mod batches;
pub mod inputs;
pub mod item_loader;
pub mod normalize;
pub mod paths;
pub mod skip_log;
pub mod split;

pub use batches::Batches;
pub use inputs::{expand_inputs, is_image, IMAGE_EXTENSIONS};
pub use item_loader::{ItemLoader, Items, LoaderSettings};
pub use normalize::{Normalize, IMAGENET_MEAN, IMAGENET_STD};
pub use skip_log::SkipLog;
pub use split::Split;

/// Image files of a split with their class index where a task labels whole images (classification), for
/// calibrating and comparing exported models.
pub type LabelledImages = Vec<(std::path::PathBuf, Option<usize>)>;
