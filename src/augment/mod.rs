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
