//! The producer/consumer spine: a producer thread walks the sampler, has each batch read,
//! augmented and collated on the rayon pool, and sends it in order over a bounded tokio channel;
//! the consumer (the trainer's own thread, or an async task) takes batches epoch by epoch.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::ThreadPool;
use serde::Serialize;
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::batch::{BatchGuard, Recycler};
use super::sampler::{Sampler, Shard};
use crate::augment::{collate, Augmenter};
use crate::store::Images;

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

/// Why the stream could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The producer panicked (a bad image, a failing store…); the message says why.
    #[error("data producer failed at epoch {epoch} batch {step}: {message}")]
    ProducerFailed {
        epoch: usize,
        step: usize,
        message: String,
    },
    /// The producer ended without a word before the epoch was complete.
    #[error("data producer stopped before epoch {epoch} batch {step}")]
    ProducerGone { epoch: usize, step: usize },
    /// The run was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// The images went bad under the stream (a store file truncated while mapped).
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The consumer holds every batch buffer and asks for another: none can ever come.
    #[error(
        "the consumer holds all {held} batch buffers and asks for another; drop a batch \
         before taking the next (at most prefetch + 1 can be held)"
    )]
    BuffersExhausted { held: usize },
}

type Item = Result<BatchGuard, StreamError>;

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
        let producer = {
            let (sampler, stop, cancel, blocked_ns, abandoned) = (
                sampler.clone(),
                stop.clone(),
                cancel.clone(),
                blocked_ns.clone(),
                abandoned.clone(),
            );
            let (epochs, start_batch, phase) = (
                config.epochs.clone(),
                config.start_batch,
                config.phase.name(),
            );
            std::thread::Builder::new()
                .name("producer".into())
                .spawn(move || {
                    let halt = || stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed);
                    for epoch in epochs.clone() {
                        let order = sampler.order(epoch);
                        let first = if epoch == epochs.start {
                            start_batch
                        } else {
                            0
                        };
                        for step in first..sampler.batches_per_epoch() {
                            if halt() {
                                return;
                            }
                            if abandoned.load(Ordering::Relaxed) > epoch {
                                break;
                            }
                            let Some(mut guard) = recycler.take(&halt) else {
                                return;
                            };
                            let indices = sampler.batch(&order, step);
                            // A store cut short under the map would fault on the next read:
                            // look at its length first and say so instead.
                            let produced = match images.check_intact() {
                                Err(e) => Err(StreamError::Store(e)),
                                Ok(()) => catch_unwind(AssertUnwindSafe(|| {
                                    let _span =
                                        tracing::trace_span!("produce", epoch, step).entered();
                                    {
                                        let _read = tracing::info_span!(
                                            "read",
                                            phase,
                                            images = indices.len()
                                        )
                                        .entered();
                                        touch(&*images, indices);
                                    }
                                    let _aug = tracing::info_span!(
                                        "augment",
                                        phase,
                                        images = indices.len()
                                    )
                                    .entered();
                                    pool.install(|| {
                                        collate(&augmenter, &*images, indices, epoch, &mut guard)
                                    });
                                    guard.step = step;
                                }))
                                .map_err(|panic| {
                                    StreamError::ProducerFailed {
                                        epoch,
                                        step,
                                        message: panic_message(&*panic),
                                    }
                                }),
                            };
                            let item = produced.map(|()| guard);
                            let failed = item.is_err();
                            let t = Instant::now();
                            let sent = {
                                let _send = tracing::info_span!("send", phase).entered();
                                tx.blocking_send(item)
                            };
                            blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            if sent.is_err() || failed {
                                return;
                            }
                        }
                    }
                })
                .expect("spawn the producer thread")
        };
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
                step: self.stats.batches,
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
