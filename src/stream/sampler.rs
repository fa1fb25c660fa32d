//! The epoch sampler: a seeded permutation of the dataset per epoch, cut into batches.

use crate::seed;

/// Seed-derivation tag of the sampler's stream, kept apart from the per-image augmentation
/// streams (which are `(epoch, index)`).
const SAMPLER_STREAM: u64 = u64::MAX;

/// One rank's share of every epoch in data-parallel training, as PyTorch's
/// `DistributedSampler`: the epoch's permutation (the same on every rank) dealt out in turn, so
/// position `p` goes to rank `p % world`. The ranks' batch `b` together hold exactly the images
/// of batch `b` of one process with `world` times the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
    /// Drop the permutation's tail so every rank gets the same count (training: the ranks step
    /// together); otherwise every image goes to exactly one rank (evaluation).
    pub even: bool,
}

/// Which images go into which batch of each epoch.
#[derive(Clone, Debug)]
pub struct Sampler {
    len: usize,
    batch_size: usize,
    drop_last: bool,
    shuffle: bool,
    seed: u64,
    limit: Option<usize>,
    shard: Option<Shard>,
}

impl Sampler {
    /// A sampler over `len` images; `shuffle = false` keeps dataset order (evaluation).
    pub fn new(len: usize, batch_size: usize, drop_last: bool, shuffle: bool, seed: u64) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        Sampler {
            len,
            batch_size,
            drop_last,
            shuffle,
            seed,
            limit: None,
            shard: None,
        }
    }

    /// Takes only `shard`'s share of each epoch (`None`: every image).
    pub fn shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard.filter(|s| s.world > 1);
        self
    }

    /// Images of each epoch this sampler deals from (its shard's share).
    fn local_len(&self) -> usize {
        match self.shard {
            None => self.len,
            Some(s) if s.even => self.len / s.world,
            Some(s) => self.len.saturating_sub(s.rank).div_ceil(s.world),
        }
    }

    /// Stops each epoch after `limit` batches (`None`: every batch), for quick runs and profiles;
    /// the batches kept are the first of the epoch's usual order.
    pub fn limit(mut self, limit: Option<usize>) -> Self {
        self.limit = limit;
        self
    }

    /// Images per full batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch: `len / batch` with `drop_last`, else rounded up; at most the limit.
    pub fn batches_per_epoch(&self) -> usize {
        let len = self.local_len();
        let all = if self.drop_last {
            len / self.batch_size
        } else {
            len.div_ceil(self.batch_size)
        };
        self.limit.map_or(all, |limit| all.min(limit))
    }

    /// Images delivered per epoch.
    pub fn images_per_epoch(&self) -> usize {
        let len = self.local_len();
        let all = if self.drop_last {
            len / self.batch_size * self.batch_size
        } else {
            len
        };
        all.min(self.batches_per_epoch() * self.batch_size)
    }

    /// The epoch's order of image indices (every index exactly once; with a shard, its share).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            seed::rng(self.seed, &[SAMPLER_STREAM, epoch as u64]).shuffle(&mut order);
        }
        match self.shard {
            None => order,
            Some(s) => {
                let dealt = if s.even {
                    self.len / s.world * s.world
                } else {
                    self.len
                };
                order[..dealt]
                    .iter()
                    .skip(s.rank)
                    .step_by(s.world)
                    .copied()
                    .collect()
            }
        }
    }

    /// Batch `k` of an epoch whose order is `order`.
    pub fn batch<'a>(&self, order: &'a [usize], k: usize) -> &'a [usize] {
        let start = k * self.batch_size;
        &order[start..(start + self.batch_size).min(order.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_per_epoch_and_a_new_order_each_epoch() {
        let s = Sampler::new(103, 10, false, true, 4);
        let a = s.order(0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>());
        assert_ne!(a, s.order(1));
        assert_eq!(a, s.order(0));
        assert_eq!(s.batches_per_epoch(), 11);
        assert_eq!(s.batch(&a, 10).len(), 3);
        let all: Vec<usize> = (0..11).flat_map(|k| s.batch(&a, k).to_vec()).collect();
        assert_eq!(all, a);
    }

    #[test]
    fn drop_last_drops_the_short_batch() {
        let s = Sampler::new(103, 10, true, true, 4);
        assert_eq!(s.batches_per_epoch(), 10);
        assert_eq!(s.images_per_epoch(), 100);
        let unshuffled = Sampler::new(5, 2, false, false, 0);
        assert_eq!(unshuffled.order(3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn shards_deal_the_permutation_so_ranks_together_make_the_wide_batches() {
        let one = Sampler::new(103, 8, true, true, 4);
        let ranks: Vec<Sampler> = (0..2)
            .map(|rank| {
                Sampler::new(103, 4, true, true, 4).shard(Some(Shard {
                    rank,
                    world: 2,
                    even: true,
                }))
            })
            .collect();
        assert_eq!(ranks[0].batches_per_epoch(), one.batches_per_epoch());
        assert_eq!(ranks[1].images_per_epoch(), 48);
        for epoch in 0..2 {
            let (o, r0, r1) = (
                one.order(epoch),
                ranks[0].order(epoch),
                ranks[1].order(epoch),
            );
            for b in 0..one.batches_per_epoch() {
                let mut together: Vec<usize> = ranks[0].batch(&r0, b).to_vec();
                together.extend_from_slice(ranks[1].batch(&r1, b));
                together.sort();
                let mut wide = one.batch(&o, b).to_vec();
                wide.sort();
                assert_eq!(together, wide, "epoch {epoch} batch {b}");
            }
        }
        // Evaluation: uneven shards, every image exactly once.
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|rank| {
                let s = Sampler::new(10, 4, false, false, 0).shard(Some(Shard {
                    rank,
                    world: 3,
                    even: false,
                }));
                let o = s.order(0);
                (0..s.batches_per_epoch())
                    .flat_map(|b| s.batch(&o, b).to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_limit_keeps_the_first_batches_and_never_adds_any() {
        let s = Sampler::new(103, 10, false, true, 4).limit(Some(4));
        assert_eq!((s.batches_per_epoch(), s.images_per_epoch()), (4, 40));
        let s = Sampler::new(103, 10, false, true, 4).limit(Some(50));
        assert_eq!((s.batches_per_epoch(), s.images_per_epoch()), (11, 103));
        let s = Sampler::new(103, 10, true, true, 4).limit(Some(50));
        assert_eq!((s.batches_per_epoch(), s.images_per_epoch()), (10, 100));
        // The order, and so each kept batch, is the unlimited sampler's.
        let full = Sampler::new(103, 10, false, true, 4);
        let o = s.order(2);
        assert_eq!(o, full.order(2));
        assert_eq!(s.batch(&o, 3), full.batch(&o, 3));
    }
}
