//! The one loader every task trains and evaluates on: an [`ItemLoader`] over a task's [`Items`] implements the
//! engine's [`Batches`] once. A task says how to prepare one item (decode, augment, normalise into its slice of
//! the batch) and how a batch is assembled from the prepared pixels and targets; the loader owns the order of a
//! pass (shuffled per epoch, or drawn with per-item weights), the worker pool, the prefetch queue
//! ([`super::batcher`]) and `fast_dev_run`'s subset.

use std::path::PathBuf;
use std::sync::Arc;

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Tensor;

use super::batcher::{mix, spawn_epoch, spread, BatchIter, ItemSource};
use super::batches::Batches;
use crate::{Error, Result};

/// A task's items: what the batcher prepares ([`ItemSource`]) plus the batch the consumer gets.
pub trait Items: ItemSource {
    type Batch;
    /// How many items there are (indices `0..len`).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[channels, height, width]` of every prepared item.
    fn item_shape(&self) -> [usize; 3];
    /// The batch of `images` `[N, C, H, W]` with their targets and files, on the consumer's thread.
    fn batch(images: Tensor, targets: Vec<Self::Target>, paths: Vec<PathBuf>) -> Self::Batch;
    /// Images in a batch.
    fn batch_len(batch: &Self::Batch) -> usize;
}

/// How a loader batches: batch size, preparing threads, batches prepared ahead, and the seed of every pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderSettings {
    pub batch_size: usize,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
}

/// Batches of a task's items; each [`Batches::epoch`] call is one pass. Unreadable items are left out of their
/// batch (the items record why), a batch in which none could be read is not produced.
pub struct ItemLoader<S> {
    items: Arc<S>,
    /// The items a pass visits (all of them, or `fast_dev_run`'s spread).
    indices: Vec<usize>,
    /// Per entry of `indices`: weights of sampling with replacement (`None`: each item once per pass).
    weights: Option<Vec<f64>>,
    settings: LoaderSettings,
    pool: Arc<rayon::ThreadPool>,
    /// Data-parallel training: each pass deals this rank its share of the shared order.
    shard: Option<Shard>,
}

/// A rank's share of every pass: of `world` ranks, rank `rank`; `padded` (training) repeats the order's start so that
/// every rank gets as many items, unpadded (evaluation) shares are disjoint and together exactly the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shard {
    world: usize,
    rank: usize,
    padded: bool,
}

impl<S: Items> ItemLoader<S> {
    /// A loader over all of `items`; a pool that cannot be started is an error of the `workers` setting.
    pub fn new(items: S, settings: LoaderSettings) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.workers.max(1))
            .thread_name(|i| format!("kiln-data-{i}"))
            .build()
            .map_err(|e| Error::InvalidSetting { key: "workers".into(), reason: e.to_string() })?;
        let indices = (0..items.len()).collect();
        let settings = LoaderSettings { batch_size: settings.batch_size.max(1), ..settings };
        Ok(Self { items: Arc::new(items), indices, weights: None, settings, pool: Arc::new(pool), shard: None })
    }

    /// Training passes draw as many items as there are, with replacement, item `i` with weight `weights[i]`
    /// (evaluation passes, unshuffled, still take each once).
    pub fn with_weights(mut self, weights: Vec<f64>) -> Self {
        assert_eq!(weights.len(), self.indices.len(), "one weight per item");
        self.weights = Some(weights);
        self
    }

    /// Data-parallel training: every pass is this rank's share of the order all `world` ranks compute alike (the
    /// same seed), as torch's `DistributedSampler` deals it ([`crate::distributed::deal`]): disjoint but for the
    /// padding that gives every rank the same number of items, and dealt anew each epoch.
    pub fn with_shard(mut self, world: usize, rank: usize) -> Self {
        assert!(rank < world, "rank {rank} of {world}");
        self.shard = (world > 1).then_some(Shard { world, rank, padded: true });
        self
    }

    /// Sharded evaluation: every pass is this rank's items of the order at positions `rank`, `rank + world`, …, so
    /// that the ranks' shares are disjoint and together exactly the split (ranks may get one item fewer).
    pub fn with_exact_shard(mut self, world: usize, rank: usize) -> Self {
        assert!(rank < world, "rank {rank} of {world}");
        self.shard = (world > 1).then_some(Shard { world, rank, padded: false });
        self
    }

    pub fn items(&self) -> &S {
        &self.items
    }

    /// The items, to change between passes (no pass may be running: an epoch borrows the loader).
    pub fn items_mut(&mut self) -> &mut S {
        Arc::get_mut(&mut self.items).expect("no pass holds the items between epochs")
    }

    /// The preparing threads (for filling a cache).
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    pub fn settings(&self) -> LoaderSettings {
        self.settings
    }

    /// The item indices of one pass, in order, and the pass's seed: each item once (shuffled with
    /// `(seed, epoch)` when `shuffle`), or with weights as many weighted draws with replacement.
    pub fn epoch_order(&self, epoch: usize, shuffle: bool) -> (Vec<usize>, u64) {
        let epoch_seed = mix(self.settings.seed ^ mix(epoch as u64 + 1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(epoch_seed);
        let mut order = self.indices.clone();
        match &self.weights {
            Some(weights) if shuffle && !weights.is_empty() => {
                let draw = WeightedIndex::new(weights).expect("positive finite weights");
                order = (0..self.indices.len()).map(|_| self.indices[draw.sample(&mut rng)]).collect();
            }
            _ if shuffle => order.shuffle(&mut rng),
            _ => {}
        }
        match self.shard {
            Some(Shard { world, rank, padded: true }) => order = crate::distributed::deal(&order, world, rank),
            Some(Shard { world, rank, padded: false }) => {
                order = order.into_iter().skip(rank).step_by(world).collect();
            }
            None => {}
        }
        (order, epoch_seed)
    }
}

impl<S: Items> Batches for ItemLoader<S> {
    type Batch = S::Batch;

    fn len(&self) -> usize {
        let n = self.indices.len();
        match self.shard {
            Some(Shard { world, padded: true, .. }) => n.div_ceil(world),
            Some(Shard { world, rank, padded: false }) => (n + world - 1 - rank) / world,
            None => n,
        }
    }

    fn num_batches(&self) -> usize {
        self.len().div_ceil(self.settings.batch_size)
    }

    fn epoch(&self, epoch: usize, shuffle: bool) -> Box<dyn Iterator<Item = Result<S::Batch>> + '_> {
        let (order, epoch_seed) = self.epoch_order(epoch, shuffle);
        let shape = self.items.item_shape();
        let inner = spawn_epoch(
            Arc::clone(&self.items),
            order,
            self.settings.batch_size,
            shape.iter().product(),
            Arc::clone(&self.pool),
            self.settings.prefetch,
            epoch_seed,
        );
        Box::new(Epoch::<S> { inner, shape })
    }

    fn batch_len(batch: &S::Batch) -> usize {
        S::batch_len(batch)
    }

    /// This loader over `batches` batches' worth of its items, spread evenly over them ([`spread`]); the items
    /// (and any cache they read from) are shared.
    fn sample_batches(&self, batches: usize) -> Self {
        let count = batches.saturating_mul(self.settings.batch_size);
        Self {
            items: Arc::clone(&self.items),
            indices: spread(&self.indices, count),
            weights: self.weights.as_ref().map(|w| spread(w, count)),
            settings: self.settings,
            pool: Arc::clone(&self.pool),
            shard: self.shard,
        }
    }

    fn shard(self, world: usize, rank: usize) -> Self {
        self.with_shard(world, rank)
    }

    fn shard_exact(self, world: usize, rank: usize) -> Self {
        self.with_exact_shard(world, rank)
    }
}

/// The batches of one pass, in order, each `Ok`; a worker that panicked ends the pass with one `Err` naming the
/// file, never with a silent early end. Dropping it stops the producer.
struct Epoch<S: Items> {
    inner: BatchIter<S::Target>,
    shape: [usize; 3],
}

impl<S: Items> Iterator for Epoch<S> {
    type Item = Result<S::Batch>;

    fn next(&mut self) -> Option<Result<S::Batch>> {
        let [c, h, w] = self.shape.map(|d| d as i64);
        Some(self.inner.next()?.map(|b| {
            let images = Tensor::from_slice(&b.pixels).view([b.targets.len() as i64, c, h, w]);
            S::batch(images, b.targets, b.paths)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Items `0..n`, item `i` filled with `i`; items listed in `unreadable` fail.
    struct Numbers {
        paths: Vec<PathBuf>,
        unreadable: Vec<usize>,
    }

    impl ItemSource for Numbers {
        type Target = usize;
        fn path(&self, index: usize) -> &Path {
            &self.paths[index]
        }
        fn prepare(&self, index: usize, _seed: u64, out: &mut [f32]) -> std::result::Result<usize, String> {
            if self.unreadable.contains(&index) {
                return Err("unreadable".into());
            }
            out.fill(index as f32);
            Ok(index)
        }
    }

    impl Items for Numbers {
        type Batch = (Tensor, Vec<usize>);
        fn len(&self) -> usize {
            self.paths.len()
        }
        fn item_shape(&self) -> [usize; 3] {
            [1, 2, 3]
        }
        fn batch(images: Tensor, targets: Vec<usize>, _paths: Vec<PathBuf>) -> Self::Batch {
            (images, targets)
        }
        fn batch_len(batch: &Self::Batch) -> usize {
            batch.1.len()
        }
    }

    fn loader(n: usize, unreadable: Vec<usize>) -> ItemLoader<Numbers> {
        let paths = (0..n).map(|i| PathBuf::from(format!("{i}.png"))).collect();
        let settings = LoaderSettings { batch_size: 4, workers: 2, prefetch: 2, seed: 3 };
        ItemLoader::new(Numbers { paths, unreadable }, settings).unwrap()
    }

    fn pass(l: &ItemLoader<Numbers>, epoch: usize, shuffle: bool) -> Vec<(Tensor, Vec<usize>)> {
        l.epoch(epoch, shuffle).map(Result::unwrap).collect()
    }

    #[test]
    fn a_pass_shapes_batches_and_leaves_out_unreadable_items() {
        let l = loader(10, vec![5]);
        assert_eq!((l.len(), l.num_batches()), (10, 3));
        let batches = pass(&l, 0, false);
        let targets: Vec<Vec<usize>> = batches.iter().map(|b| b.1.clone()).collect();
        assert_eq!(targets, vec![vec![0, 1, 2, 3], vec![4, 6, 7], vec![8, 9]]);
        assert_eq!(batches[1].0.size(), vec![3, 1, 2, 3]);
        // Item 6's pixels follow item 4's once item 5 is left out.
        assert_eq!(batches[1].0.get(1).mean(tch::Kind::Float).double_value(&[]), 6.0);
        assert_eq!(ItemLoader::<Numbers>::batch_len(&batches[2]), 2);
    }

    #[test]
    fn two_ranks_shards_of_a_pass_are_disjoint_complete_equal_and_reshuffled() {
        let l = loader(11, vec![]);
        let shard = |rank| loader(11, vec![]).with_shard(2, rank);
        let (a, b) = (shard(0), shard(1));
        assert_eq!((a.len(), a.num_batches(), b.len()), (6, 2, 6), "ceil(11 / 2) items each, equal steps");
        let order =
            |l: &ItemLoader<Numbers>, epoch| pass(l, epoch, true).into_iter().flat_map(|b| b.1).collect::<Vec<_>>();
        for epoch in 0..2 {
            let (mine, theirs) = (order(&a, epoch), order(&b, epoch));
            let mut both: Vec<usize> = mine.iter().chain(&theirs).copied().collect();
            both.sort_unstable();
            both.dedup();
            assert_eq!(both, (0..11).collect::<Vec<_>>(), "epoch {epoch}: together, every item");
            let whole = order(&l, epoch);
            assert_eq!(mine, whole.iter().step_by(2).copied().collect::<Vec<_>>(), "dealt from the shared order");
            assert_eq!(theirs[..5], whole.iter().skip(1).step_by(2).copied().collect::<Vec<_>>()[..]);
            assert_eq!(theirs[5], whole[0], "the padding repeats the order's start");
        }
        assert_ne!(order(&a, 0), order(&a, 1), "dealt anew each epoch");
        assert_eq!(loader(11, vec![]).with_shard(1, 0).len(), 11, "one rank: the whole split");
    }

    #[test]
    fn evaluation_shares_are_disjoint_and_exactly_the_split() {
        let whole = pass(&loader(11, vec![]), 0, false).into_iter().flat_map(|b| b.1).collect::<Vec<_>>();
        for world in [2, 3, 12] {
            let shares: Vec<ItemLoader<Numbers>> =
                (0..world).map(|rank| loader(11, vec![]).with_exact_shard(world, rank)).collect();
            let mut all: Vec<usize> = Vec::new();
            for (rank, share) in shares.iter().enumerate() {
                let items: Vec<usize> = pass(share, 0, false).into_iter().flat_map(|b| b.1).collect();
                assert_eq!(items.len(), share.len(), "world {world}, rank {rank}: len() counts the share");
                assert_eq!(items, whole.iter().skip(rank).step_by(world).copied().collect::<Vec<_>>());
                all.extend(items);
            }
            all.sort_unstable();
            assert_eq!(all, (0..11).collect::<Vec<_>>(), "world {world}: each item exactly once");
        }
    }

    #[test]
    fn shuffled_passes_are_reproducible_per_epoch() {
        let l = loader(20, vec![]);
        let order = |epoch| pass(&l, epoch, true).into_iter().flat_map(|b| b.1).collect::<Vec<_>>();
        let first = order(0);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>(), "each item once");
        assert_eq!(first, order(0), "same seed and epoch, same order");
        assert_ne!(first, order(1), "another epoch, another order");
    }

    #[test]
    fn weighted_passes_draw_by_weight_and_evaluation_takes_each_once() {
        let mut weights = vec![0.0; 10];
        weights[7] = 1.0;
        let l = loader(10, vec![]).with_weights(weights);
        let (drawn, _) = l.epoch_order(0, true);
        assert_eq!(drawn, vec![7; 10], "only the weighted item is drawn");
        assert_eq!(l.epoch_order(0, false).0, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_sample_of_batches_spreads_over_the_items_and_keeps_their_indices() {
        let l = loader(40, vec![]);
        let small = l.sample_batches(2);
        assert_eq!((small.len(), small.num_batches()), (8, 2));
        let seen: Vec<usize> = pass(&small, 0, false).into_iter().flat_map(|b| b.1).collect();
        assert_eq!(seen, vec![0, 5, 10, 15, 20, 25, 30, 35]);
    }
}
