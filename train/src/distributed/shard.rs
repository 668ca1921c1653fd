//! Each rank's shard of a pass, as torch's `DistributedSampler` deals it: the pass's order (which every rank
//! computes alike: `ItemLoader::epoch_order`, shuffled anew each epoch with the run's seed), padded by repeating from
//! its start to a multiple of the world size, and dealt round-robin. Every rank gets the same number of items, so every rank
//! takes the same number of steps; the shards are disjoint but for the padding, and together cover the split.

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
    fn deals_are_disjoint_complete_and_equal_with_padding_from_the_start() {
        for (len, world) in [(10, 2), (11, 2), (7, 3), (3, 4), (1, 2)] {
            let order: Vec<usize> = (0..len).rev().collect();
            let shards: Vec<Vec<usize>> = (0..world).map(|r| deal(&order, world, r)).collect();
            let per = len.div_ceil(world);
            assert!(shards.iter().all(|s| s.len() == per), "{len}/{world}: equal steps {shards:?}");
            let all: Vec<usize> = shards.iter().flatten().copied().collect();
            let distinct: BTreeSet<usize> = all.iter().copied().collect();
            assert_eq!(distinct, (0..len).collect(), "{len}/{world}: every item dealt");
            assert_eq!(all.len() - distinct.len(), per * world - len, "{len}/{world}: repeats only as padding");
        }
        assert_eq!(deal(&[0, 1, 2, 3, 4], 2, 1), vec![1, 3, 0], "round-robin, padded from the order's start");
        assert!(deal(&[], 2, 0).is_empty());
    }
}
