//! What the engine iterates: the batches of one split, one pass per epoch. [`super::ItemLoader`] implements it
//! once for every task.

use crate::Result;

/// Batches of one split, one pass per [`Batches::epoch`] call.
pub trait Batches {
    type Batch;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_batches(&self) -> usize;
    fn epoch(&self, epoch: usize, shuffle: bool) -> Box<dyn Iterator<Item = Result<Self::Batch>> + '_>;
    /// Images in a batch.
    fn batch_len(batch: &Self::Batch) -> usize;
    /// A loader like this one over `batches` batches' worth of its samples, spread evenly over them
    /// (`fast_dev_run`).
    fn sample_batches(&self, batches: usize) -> Self
    where
        Self: Sized;
    /// This loader as rank `rank` of `world` data-parallel ranks: every pass is this rank's share of the order all
    /// ranks compute alike, with the same number of batches on every rank.
    fn shard(self, world: usize, rank: usize) -> Self
    where
        Self: Sized;
    /// This loader as rank `rank`'s share of an evaluation split: the ranks' shares are disjoint and together
    /// exactly the split (no padding, so a rank may get one item fewer).
    fn shard_exact(self, world: usize, rank: usize) -> Self
    where
        Self: Sized;
}
