//! The producer/consumer spine: a producer thread walks the sampler, has each batch read,
//! augmented and collated on the rayon pool, and sends it in order over a bounded tokio channel;
//! the consumer (the trainer's own thread, or an async task) takes batches epoch by epoch.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::ThreadPool;
use serde::Serialize;
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::batch::{BatchGuard, Recycler};
use super::config::{LoaderConfig, Phase};
use super::error::{Item, StreamError};
use super::producer::Producer;
use super::sampler::Sampler;
use crate::augment::Augmenter;
use crate::store::Images;

/// Consumer-side and producer-side counters for one epoch.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EpochStats {
    /// Epoch number.
    pub epoch: usize,
    /// Batches received.
    pub batches: usize,
    /// Images received.
    pub images: usize,
    /// Seconds from asking for the first batch to receiving the last.
    pub wall_seconds: f64,
    /// Seconds the consumer spent blocked waiting for a batch (trainer stall).
    pub wait_seconds: f64,
    /// Receives that found the queue empty and had to wait.
    pub empty_waits: usize,
    /// Sum over receives of the batches already queued, for the mean queue depth.
    pub depth_sum: usize,
    /// Seconds the producer spent blocked on a full queue during this epoch.
    pub producer_blocked_seconds: f64,
    /// Batch buffers allocated since the start of the run (bounded by prefetch + 2).
    pub buffers: usize,
}

impl EpochStats {
    /// Mean number of ready batches found in the queue at each receive.
    pub fn mean_depth(&self) -> f64 {
        self.depth_sum as f64 / self.batches.max(1) as f64
    }

    /// Fraction of the epoch's wall time the consumer waited for data.
    pub fn stall(&self) -> f64 {
        self.wait_seconds / self.wall_seconds.max(1e-12)
    }
}

/// A running data stream over several epochs.
pub struct Loader {
    rx: mpsc::Receiver<Item>,
    sampler: Sampler,
    epochs: Range<usize>,
    next_epoch: usize,
    start_batch: usize,
    phase: Phase,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    producer: Option<JoinHandle<()>>,
    buffers: Arc<AtomicUsize>,
    blocked_ns: Arc<AtomicU64>,
    capacity: usize,
    /// Guards the consumer holds now.
    held: Arc<AtomicUsize>,
    /// Epochs below this were dropped before their end: the producer skips their remaining
    /// batches and the consumer discards any already queued.
    abandoned: Arc<AtomicUsize>,
}

impl Loader {
    /// Starts the producer thread. `cancel` ends the stream early (Ctrl-C).
    pub fn start(
        images: Arc<dyn Images + Send + Sync>,
        augmenter: Arc<Augmenter>,
        pool: Arc<ThreadPool>,
        config: LoaderConfig,
        cancel: Arc<AtomicBool>,
    ) -> Loader {
        let sampler = config.sampler(images.len());
        let prefetch = config.prefetch.max(1);
        // One buffer being filled, `prefetch` queued, one held by the consumer.
        let capacity = prefetch + 2;
        let recycler = Recycler::new(capacity, config.batch_size, augmenter.output_len());
        let buffers = recycler.created();
        let (tx, rx) = mpsc::channel::<Item>(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let blocked_ns = Arc::new(AtomicU64::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let producer = Producer {
            images,
            augmenter,
            pool,
            sampler: sampler.clone(),
            recycler,
            tx,
            stop: stop.clone(),
            cancel: cancel.clone(),
            blocked_ns: blocked_ns.clone(),
            abandoned: abandoned.clone(),
            epochs: config.epochs.clone(),
            start_batch: config.start_batch,
            phase: config.phase.name(),
        };
        let producer = std::thread::Builder::new()
            .name("producer".into())
            .spawn(move || producer.run())
            .expect("spawn the producer thread");
        Loader {
            rx,
            sampler,
            next_epoch: config.epochs.start,
            start_batch: config.start_batch,
            phase: config.phase,
            epochs: config.epochs,
            cancel,
            stop,
            producer: Some(producer),
            buffers,
            blocked_ns,
            capacity,
            held: Arc::new(AtomicUsize::new(0)),
            abandoned,
        }
    }

    /// Batches in each epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.sampler.batches_per_epoch()
    }

    /// Images in each epoch.
    pub fn images_per_epoch(&self) -> usize {
        self.sampler.images_per_epoch()
    }

    /// The most batch buffers this loader will ever allocate.
    pub fn buffer_capacity(&self) -> usize {
        self.capacity
    }

    /// The next epoch's batches, or `None` once every epoch has been handed out. The first
    /// epoch of a loader started at `start_batch` holds only the batches from there on.
    pub fn epoch(&mut self) -> Option<Epoch<'_>> {
        if self.next_epoch >= self.epochs.end {
            return None;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let first_batch = if epoch == self.epochs.start {
            self.start_batch.min(self.sampler.batches_per_epoch())
        } else {
            0
        };
        let blocked_at_start = self.blocked_ns.load(Ordering::Relaxed);
        Some(Epoch {
            stats: EpochStats {
                epoch,
                ..EpochStats::default()
            },
            loader: self,
            start: Instant::now(),
            blocked_at_start,
            failed: false,
            first_batch,
        })
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the receiver fails the producer's pending send; queued batches go home.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

/// One epoch of batches, in order; yields `Err` once and then ends if the producer fails.
/// Dropped before its end, it takes its remaining batches with it: the next epoch starts clean.
pub struct Epoch<'a> {
    loader: &'a mut Loader,
    stats: EpochStats,
    start: Instant,
    blocked_at_start: u64,
    failed: bool,
    first_batch: usize,
}

impl Drop for Epoch<'_> {
    fn drop(&mut self) {
        if self.remaining() {
            self.loader
                .abandoned
                .fetch_max(self.stats.epoch + 1, Ordering::Relaxed);
        }
    }
}

impl Epoch<'_> {
    /// This epoch's counters so far.
    pub fn stats(&self) -> &EpochStats {
        &self.stats
    }

    fn remaining(&self) -> bool {
        !self.failed
            && self.first_batch + self.stats.batches < self.loader.sampler.batches_per_epoch()
    }

    /// A batch of an earlier, abandoned epoch (queued before its epoch was dropped).
    fn stale(&self, item: &Item) -> bool {
        matches!(item, Ok(b) if b.epoch < self.stats.epoch)
    }

    /// What a receive returns without receiving: the end of the epoch (`Some(None)`), or an
    /// error when no batch can ever arrive (`Some(Some(Err))`); `None` to go on and receive.
    fn before_receive(&mut self) -> Option<Option<Item>> {
        if !self.remaining() {
            return Some(None);
        }
        let error = self.exhausted()?;
        self.failed = true;
        Some(Some(error))
    }

    /// The consumer holds every buffer and the queue is empty: no batch can ever arrive.
    fn exhausted(&self) -> Option<Item> {
        let held = self.loader.held.load(Ordering::Relaxed);
        (held >= self.loader.capacity && self.loader.rx.is_empty())
            .then_some(Err(StreamError::BuffersExhausted { held }))
    }

    fn account(
        &mut self,
        item: Option<Item>,
        waited: f64,
        empty: bool,
        depth: usize,
    ) -> Option<Item> {
        let epoch = self.stats.epoch;
        let item = match item {
            Some(item) => item,
            None if self.loader.cancel.load(Ordering::Relaxed) => Err(StreamError::Interrupted),
            None => Err(StreamError::ProducerGone {
                epoch,
                batch: self.stats.batches,
            }),
        };
        self.stats.wait_seconds += waited;
        self.stats.empty_waits += empty as usize;
        self.stats.depth_sum += depth;
        let item = match item {
            Ok(mut batch) => {
                self.stats.batches += 1;
                self.stats.images += batch.len();
                batch.hand_over(&self.loader.held);
                Ok(batch)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        };
        self.stats.wall_seconds = self.start.elapsed().as_secs_f64();
        let blocked = self.loader.blocked_ns.load(Ordering::Relaxed) - self.blocked_at_start;
        self.stats.producer_blocked_seconds = blocked as f64 * 1e-9;
        self.stats.buffers = self.loader.buffers.load(Ordering::Relaxed);
        Some(item)
    }

    /// The next batch, waiting on the calling thread (for the trainer's own thread).
    pub fn next_blocking(&mut self) -> Option<Item> {
        loop {
            if let Some(done) = self.before_receive() {
                return done;
            }
            let depth = self.loader.rx.len();
            let (item, waited, empty) = match self.loader.rx.try_recv() {
                Ok(item) => (Some(item), 0.0, false),
                Err(TryRecvError::Disconnected) => (None, 0.0, false),
                Err(TryRecvError::Empty) => {
                    let _wait =
                        tracing::info_span!("wait", phase = self.loader.phase.name()).entered();
                    let t = Instant::now();
                    let item = self.loader.rx.blocking_recv();
                    (item, t.elapsed().as_secs_f64(), true)
                }
            };
            if item.as_ref().is_some_and(|i| self.stale(i)) {
                continue;
            }
            return self.account(item, waited, empty, depth);
        }
    }

    /// The next batch, awaited (for consumers living on a tokio runtime).
    pub async fn next_async(&mut self) -> Option<Item> {
        loop {
            if let Some(done) = self.before_receive() {
                return done;
            }
            let depth = self.loader.rx.len();
            let empty = depth == 0;
            let t = Instant::now();
            let item = self.loader.rx.recv().await;
            let waited = if empty {
                t.elapsed().as_secs_f64()
            } else {
                0.0
            };
            if item.as_ref().is_some_and(|i| self.stale(i)) {
                continue;
            }
            return self.account(item, waited, empty, depth);
        }
    }
}

impl Iterator for Epoch<'_> {
    type Item = Result<BatchGuard, StreamError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_blocking()
    }
}
