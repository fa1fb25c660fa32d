//! The producer thread: for each epoch, for each batch of the sampler's permutation, take a free
//! buffer, read the images (faulting their pages in), augment and collate them on the rayon pool,
//! and send the batch over the bounded channel, in order.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rayon::ThreadPool;
use tokio::sync::mpsc;

use super::batch::{BatchGuard, Recycler};
use super::error::{Item, StreamError};
use super::sampler::Sampler;
use crate::augment::{collate, Augmenter};
use crate::store::Images;

/// Everything the producer thread owns or shares with its loader.
pub(super) struct Producer {
    pub images: Arc<dyn Images + Send + Sync>,
    pub augmenter: Arc<Augmenter>,
    pub pool: Arc<ThreadPool>,
    pub sampler: Sampler,
    pub recycler: Recycler,
    pub tx: mpsc::Sender<Item>,
    /// Set when the loader is dropped.
    pub stop: Arc<AtomicBool>,
    /// Set by Ctrl-C.
    pub cancel: Arc<AtomicBool>,
    /// Nanoseconds spent blocked on a full channel, summed.
    pub blocked_ns: Arc<AtomicU64>,
    /// Epochs below this were dropped by the consumer: skip the rest of their batches.
    pub abandoned: Arc<AtomicUsize>,
    pub epochs: Range<usize>,
    /// The first epoch starts at this batch.
    pub start_batch: usize,
    /// The `phase` field of the spans.
    pub phase: &'static str,
}

impl Producer {
    /// Produces every batch of every epoch until done, stopped, cancelled or failed (a failure
    /// is sent as the last item).
    pub fn run(mut self) {
        let halt = {
            let (stop, cancel) = (self.stop.clone(), self.cancel.clone());
            move || stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed)
        };
        for epoch in self.epochs.clone() {
            let order = self.sampler.order(epoch);
            let first = if epoch == self.epochs.start {
                self.start_batch
            } else {
                0
            };
            for batch in first..self.sampler.batches_per_epoch() {
                if halt() {
                    return;
                }
                if self.abandoned.load(Ordering::Relaxed) > epoch {
                    break;
                }
                let Some(guard) = self.recycler.take(&halt) else {
                    return;
                };
                let indices = self.sampler.batch(&order, batch);
                let item = self.produce(guard, indices, epoch, batch);
                let failed = item.is_err();
                let t = Instant::now();
                let sent = {
                    let _send = tracing::info_span!("send", phase = self.phase).entered();
                    self.tx.blocking_send(item)
                };
                let blocked = t.elapsed().as_nanos() as u64;
                self.blocked_ns.fetch_add(blocked, Ordering::Relaxed);
                if sent.is_err() || failed {
                    return;
                }
            }
        }
    }

    /// Batch `batch` of `epoch` (images `indices`) into `guard`, or why it could not be made.
    fn produce(
        &mut self,
        mut guard: BatchGuard,
        indices: &[usize],
        epoch: usize,
        batch: usize,
    ) -> Item {
        // A store cut short under the map would fault on the next read: look at its length
        // first and say so instead.
        self.images.check_intact().map_err(StreamError::Store)?;
        let phase = self.phase;
        let (images, augmenter, pool) = (&*self.images, &self.augmenter, &self.pool);
        catch_unwind(AssertUnwindSafe(|| {
            let _span = tracing::trace_span!("produce", epoch, batch).entered();
            {
                let _read = tracing::info_span!("read", phase, images = indices.len()).entered();
                touch(images, indices);
            }
            let _aug = tracing::info_span!("augment", phase, images = indices.len()).entered();
            pool.install(|| collate(augmenter, images, indices, epoch, &mut guard));
            guard.batch = batch;
        }))
        .map_err(|panic| StreamError::ProducerFailed {
            epoch,
            batch,
            message: panic_message(&*panic),
        })?;
        Ok(guard)
    }
}

/// Faults the batch's images in from the map (one byte per page), so that storage time shows
/// up in the `read` stage rather than inside augmentation.
fn touch(images: &dyn Images, indices: &[usize]) {
    let mut acc = 0u8;
    for &i in indices {
        let img = images.image(i);
        for b in img.iter().step_by(4096) {
            acc ^= b;
        }
        acc ^= img[img.len() - 1];
    }
    std::hint::black_box(acc);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
