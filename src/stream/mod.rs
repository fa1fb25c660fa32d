//! The streaming stage: epoch sampler → producer thread (read, augment and collate on the rayon
//! pool) → bounded tokio channel (depth = prefetch) → the trainer, with batch buffers recycled
//! through a return path.
//!
//! Batches arrive strictly in order: the producer builds them one after another, each in
//! parallel across the pool. Memory is bounded by `prefetch + 2` batch buffers. Dropping the
//! [`Loader`] stops the producer; a producer panic arrives as [`StreamError::ProducerFailed`];
//! setting the cancel flag (Ctrl-C) ends the stream with [`StreamError::Interrupted`].

mod batch;
mod config;
mod drain;
mod error;
mod loader;
mod producer;
mod sampler;

pub use batch::{BatchGuard, Recycler};
pub use config::{LoaderConfig, Phase};
pub use drain::{drain, DrainObserver, Drained};
pub use error::StreamError;
pub use loader::{Epoch, EpochStats, Loader};
pub use sampler::{Sampler, Shard};
