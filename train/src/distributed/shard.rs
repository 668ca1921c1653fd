//! Each rank's shard of a split, as torch's `DistributedSampler` deals it: the split's indices shuffled with a seed
//! all ranks share (the run's seed plus the epoch, so every epoch deals anew), padded by repeating from the start to
//! a multiple of the world size, and dealt round-robin. Every rank gets the same number of items, so every rank
//! takes the same number of steps; the shards are disjoint but for the padding, and together cover the split.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Rank `rank`'s indices into a split of `len` items for `epoch` (shuffled unless `shuffle` is false).
pub fn shard_indices(len: usize, world: usize, rank: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64));
        order.shuffle(&mut rng);
    }
    deal(&order, world, rank)
}

/// Rank `rank`'s share of a pass's `order` (the same on every rank): padded by repeating from its start to a
/// multiple of `world`, then dealt round-robin, so every rank gets `ceil(len / world)` entries.
pub fn deal(order: &[usize], world: usize, rank: usize) -> Vec<usize> {
    assert!(rank < world, "rank {rank} of {world}");
    if order.is_empty() {
        return Vec::new();
    }
    let total = order.len().div_ceil(world) * world;
    (rank..total).step_by(world).map(|i| order[i % order.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn shards_are_disjoint_complete_equal_and_dealt_anew_each_epoch() {
        for (len, world) in [(10, 2), (11, 2), (7, 3), (3, 4), (1, 2)] {
            let shards: Vec<Vec<usize>> = (0..world).map(|r| shard_indices(len, world, r, 42, 0, true)).collect();
            let per = len.div_ceil(world);
            assert!(shards.iter().all(|s| s.len() == per), "{len}/{world}: equal steps {shards:?}");
            let all: Vec<usize> = shards.iter().flatten().copied().collect();
            let distinct: BTreeSet<usize> = all.iter().copied().collect();
            assert_eq!(distinct, (0..len).collect(), "{len}/{world}: every item dealt");
            assert_eq!(all.len() - distinct.len(), per * world - len, "{len}/{world}: repeats only as padding");
        }
        let first = shard_indices(100, 2, 0, 7, 0, true);
        assert_ne!(first, shard_indices(100, 2, 0, 7, 1, true), "another epoch, another deal");
        assert_eq!(first, shard_indices(100, 2, 0, 7, 0, true), "the same seed and epoch, the same deal");
        assert_eq!(
            shard_indices(5, 2, 1, 0, 0, false),
            vec![1, 3, 0],
            "unshuffled: round-robin, padded from the start"
        );
        assert!(shard_indices(0, 2, 0, 0, 0, true).is_empty());
    }
}
