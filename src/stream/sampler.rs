//! The epoch sampler: a seeded permutation of the dataset per epoch, cut into batches.

use crate::seed;

/// Seed-derivation tag of the sampler's stream, kept apart from the per-image augmentation
/// streams (which are `(epoch, index)`).
const SAMPLER_STREAM: u64 = u64::MAX;

/// Which images go into which batch of each epoch.
#[derive(Clone, Debug)]
pub struct Sampler {
    len: usize,
    batch_size: usize,
    drop_last: bool,
    shuffle: bool,
    seed: u64,
    limit: Option<usize>,
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
        let all = if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        };
        self.limit.map_or(all, |limit| all.min(limit))
    }

    /// Images delivered per epoch.
    pub fn images_per_epoch(&self) -> usize {
        let all = if self.drop_last {
            self.len / self.batch_size * self.batch_size
        } else {
            self.len
        };
        all.min(self.batches_per_epoch() * self.batch_size)
    }

    /// The epoch's order of image indices (every index exactly once).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            seed::rng(self.seed, &[SAMPLER_STREAM, epoch as u64]).shuffle(&mut order);
        }
        order
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
