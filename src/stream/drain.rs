//! The data path alone: every batch of every epoch pulled into a null consumer, which measures
//! what the stream can deliver with no trainer behind it (`stream-train --pipeline-only`).

use super::error::StreamError;
use super::loader::{EpochStats, Loader};

/// Callbacks of [`drain`], for progress and per-epoch reports.
pub trait DrainObserver {
    /// An epoch of `images` images starts.
    fn epoch_start(&mut self, _epoch: usize, _images: usize) {}
    /// A batch of `images` arrived.
    fn batch(&mut self, _images: usize) {}
    /// An epoch ended (also one cut short by a cancel).
    fn epoch_end(&mut self, _stats: &EpochStats) {}
}

/// What [`drain`] received.
#[derive(Clone, Copy, Debug, Default)]
pub struct Drained {
    /// Images received over every epoch.
    pub images: usize,
    /// Seconds spent receiving them (sum of the epochs' wall times).
    pub seconds: f64,
    /// True when the cancel flag ended the stream early.
    pub interrupted: bool,
}

impl Drained {
    /// Images per second over the whole drain.
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-12)
    }
}

/// Pulls every remaining epoch of `loader` and drops the batches.
pub fn drain(
    loader: &mut Loader,
    observer: &mut dyn DrainObserver,
) -> Result<Drained, StreamError> {
    let per_epoch = loader.images_per_epoch();
    let mut total = Drained::default();
    while let Some(mut epoch) = loader.epoch() {
        observer.epoch_start(epoch.stats().epoch, per_epoch);
        while let Some(item) = epoch.next_blocking() {
            match item {
                Ok(batch) => observer.batch(batch.len()),
                Err(StreamError::Interrupted) => {
                    total.interrupted = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let stats = epoch.stats().clone();
        total.images += stats.images;
        total.seconds += stats.wall_seconds;
        observer.epoch_end(&stats);
        if total.interrupted {
            break;
        }
    }
    Ok(total)
}
