//! The augmentation stage: per-image policy ops (PBA, AutoAugment, RandAugment), pad-and-crop,
//! flip and cutout, then collation into normalised `f32` NCHW batches on the rayon pool.
//!
//! Every random draw for image `i` in epoch `e` comes from a generator seeded by
//! `(seed, e, i)`, so batches are bit-identical whatever the thread count or scheduling.

pub mod collate;
pub mod ops;
mod pipeline;
pub mod policy;
pub mod preview;

pub use collate::{collate, Batch};
pub use pipeline::{AugmentConfig, Augmenter, PolicyName};

/// The augmentation stage's thread pool: `threads` workers (0: one per core), named `augment-N`
/// so they stand apart in a profiler or a trace.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("augment-{i}"));
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    pool.build()
}
