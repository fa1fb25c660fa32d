//! How a loader draws and buffers its batches ([`LoaderConfig`]), with the two usual shapes of
//! it: training ([`LoaderConfig::training`]) and evaluation ([`LoaderConfig::evaluation`]).

use std::ops::Range;

use serde::Serialize;

use super::sampler::{Sampler, Shard};

/// What a stream feeds: its spans carry this as `phase`, so a profile of training can leave
/// evaluation's reads and augmentation out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Training batches.
    #[default]
    Train,
    /// Evaluation batches.
    Eval,
}

impl Phase {
    /// The `phase` field of the stream's spans.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Train => "train",
            Phase::Eval => "eval",
        }
    }
}

/// How a run's batches are drawn and buffered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Drop the last short batch of each epoch.
    pub drop_last: bool,
    /// Shuffle each epoch (off for evaluation).
    pub shuffle: bool,
    /// Channel depth: batches ready and waiting for the consumer.
    pub prefetch: usize,
    /// Seed of the epoch permutations.
    pub seed: u64,
    /// Epochs to produce (a resumed run starts past 0).
    pub epochs: Range<usize>,
    /// Batches per epoch at most (`None`: the whole dataset).
    pub max_batches: Option<usize>,
    /// The first epoch starts at this batch (a run resumed in the middle of an epoch); the
    /// permutation is the same, so the rest of the epoch is what it would have been.
    pub start_batch: usize,
    /// What the batches are for (the `phase` field of the spans).
    pub phase: Phase,
    /// This rank's share of each epoch in data-parallel training (`None`: everything).
    pub shard: Option<Shard>,
}

impl LoaderConfig {
    /// The sampler a loader with this configuration deals batches from, over `len` images.
    pub fn sampler(&self, len: usize) -> Sampler {
        Sampler::new(
            len,
            self.batch_size,
            self.drop_last,
            self.shuffle,
            self.seed,
        )
        .limit(self.max_batches)
        .shard(self.shard)
    }

    /// Training batches: shuffled each epoch, the last short batch dropped, `prefetch` batches
    /// deep, over `epochs` from their first batch, every image, one process.
    pub fn training(
        batch_size: usize,
        prefetch: usize,
        seed: u64,
        epochs: Range<usize>,
    ) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            drop_last: true,
            shuffle: true,
            prefetch,
            seed,
            epochs,
            max_batches: None,
            start_batch: 0,
            phase: Phase::Train,
            shard: None,
        }
    }

    /// Evaluation batches: every image once, in order (one epoch, the short last batch kept),
    /// two batches deep.
    pub fn evaluation(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            drop_last: false,
            shuffle: false,
            prefetch: 2,
            seed: 0,
            epochs: 0..1,
            max_batches: None,
            start_batch: 0,
            phase: Phase::Eval,
            shard: None,
        }
    }
}
