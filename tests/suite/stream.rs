//! The streaming stage: order and determinism, epoch coverage, bounded memory, stall counters,
//! failure and shutdown behaviour.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use cifar_stream::augment::{AugmentConfig, Augmenter};
use cifar_stream::source::synthetic;
use cifar_stream::store::{Images, Memory, Shape};
use cifar_stream::stream::{Loader, LoaderConfig, StreamError};
use indicatif::ProgressBar;

const MEAN: [f64; 3] = [0.5, 0.5, 0.5];
const STD: [f64; 3] = [0.25, 0.25, 0.25];

fn images(per_class: usize) -> Arc<Memory> {
    let d = synthetic::generate(per_class, 1, &ProgressBar::hidden());
    Arc::new(Memory {
        shape: d.shape,
        pixels: d.train.pixels,
        labels: d.train.labels,
    })
}

fn config(batch_size: usize, prefetch: usize, drop_last: bool, epochs: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        drop_last,
        shuffle: true,
        prefetch,
        seed: 9,
        epochs: 0..epochs,
        max_batches: None,
        ..LoaderConfig::default()
    }
}

fn start(
    images: Arc<dyn Images + Send + Sync>,
    cfg: LoaderConfig,
    threads: usize,
    cancel: Arc<AtomicBool>,
) -> Loader {
    let aug = Augmenter::new(&AugmentConfig::recipe(), 10, 3, Shape::CIFAR, &MEAN, &STD);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap(),
    );
    Loader::start(images, Arc::new(aug), pool, cfg, cancel)
}

/// Every batch of every epoch: (epoch, step, indices, labels, images).
type Seen = Vec<(usize, usize, Vec<usize>, Vec<u32>, Vec<f32>)>;

fn collect(mut loader: Loader) -> Seen {
    let mut seen = Vec::new();
    while let Some(epoch) = loader.epoch() {
        for batch in epoch {
            let b = batch.unwrap();
            seen.push((
                b.epoch,
                b.batch,
                b.indices.clone(),
                b.labels.clone(),
                b.images.clone(),
            ));
        }
    }
    seen
}

fn no_cancel() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[test]
fn same_seed_same_batches_for_prefetch_1_and_8_and_threads_1_and_2() {
    let imgs = images(10);
    let a = collect(start(imgs.clone(), config(16, 1, false, 2), 1, no_cancel()));
    let b = collect(start(imgs.clone(), config(16, 8, false, 2), 2, no_cancel()));
    assert_eq!(a.len(), 2 * 7);
    assert_eq!(a, b);
    // Batches arrive in order.
    let order: Vec<(usize, usize)> = a.iter().map(|s| (s.0, s.1)).collect();
    let want: Vec<(usize, usize)> = (0..2).flat_map(|e| (0..7).map(move |k| (e, k))).collect();
    assert_eq!(order, want);
}

#[test]
fn every_index_once_per_epoch_with_and_without_drop_last() {
    let imgs = images(10); // 100 images
    let seen = collect(start(imgs.clone(), config(16, 2, false, 2), 2, no_cancel()));
    for epoch in 0..2 {
        let batches: Vec<_> = seen.iter().filter(|s| s.0 == epoch).collect();
        assert_eq!(batches.len(), 7);
        assert_eq!(
            batches.last().unwrap().2.len(),
            4,
            "the short last batch is kept"
        );
        let mut all: Vec<usize> = batches.iter().flat_map(|s| s.2.clone()).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        for s in &batches {
            assert_eq!(
                s.3,
                s.2.iter()
                    .map(|&i| imgs.labels[i] as u32)
                    .collect::<Vec<_>>()
            );
            assert_eq!(s.4.len(), s.2.len() * 3072);
        }
    }
    let e0: Vec<usize> = seen
        .iter()
        .filter(|s| s.0 == 0)
        .flat_map(|s| s.2.clone())
        .collect();
    let e1: Vec<usize> = seen
        .iter()
        .filter(|s| s.0 == 1)
        .flat_map(|s| s.2.clone())
        .collect();
    assert_ne!(e0, e1, "each epoch has its own permutation");

    let dropped = collect(start(imgs, config(16, 2, true, 1), 2, no_cancel()));
    assert_eq!(dropped.len(), 6);
    assert!(dropped.iter().all(|s| s.2.len() == 16));
}

#[test]
fn slow_consumer_keeps_memory_bounded_and_rarely_finds_the_queue_empty() {
    let imgs = images(10);
    let mut loader = start(imgs, config(8, 3, false, 1), 2, no_cancel());
    let bound = loader.buffer_capacity();
    assert_eq!(bound, 5);
    let mut epoch = loader.epoch().unwrap();
    // Let the producer fill the queue, then consume slowly.
    std::thread::sleep(Duration::from_millis(200));
    while let Some(b) = epoch.next_blocking() {
        let b = b.unwrap();
        std::thread::sleep(Duration::from_millis(25));
        drop(b);
        assert!(
            epoch.stats().buffers <= bound,
            "{} buffers > {bound}",
            epoch.stats().buffers
        );
    }
    let s = epoch.stats().clone();
    assert_eq!(s.batches, 13);
    assert_eq!(
        s.buffers, bound,
        "the producer ran ahead as far as allowed, and no further"
    );
    // A slow consumer finds the queue empty at most once (should a loaded machine delay the
    // producer by a whole consumer step) and the queue is on average more than one batch deep.
    // How long it waits is a timing, measured in benches/stream.rs (`slow_consumer`), not here.
    assert!(s.empty_waits <= 1, "{} empty waits", s.empty_waits);
    assert!(s.mean_depth() > 1.0);
}

#[test]
fn fast_consumer_waits_for_the_producer() {
    let imgs = images(20);
    let mut loader = start(imgs, config(8, 2, false, 1), 1, no_cancel());
    let mut epoch = loader.epoch().unwrap();
    while let Some(b) = epoch.next_blocking() {
        b.unwrap();
    }
    let s = epoch.stats();
    assert_eq!(s.batches, 25);
    assert!(
        s.empty_waits > 0,
        "a null consumer outruns one augmentation thread"
    );
    assert!(s.wait_seconds > 0.0 && s.stall() > 0.0);
}

/// Images whose `index` panics when read: a store going bad in the middle of a run.
struct Failing {
    inner: Arc<Memory>,
    bad: usize,
}

impl Images for Failing {
    fn shape(&self) -> Shape {
        self.inner.shape()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn image(&self, index: usize) -> &[u8] {
        assert!(index != self.bad, "image {index} failed verification");
        self.inner.image(index)
    }
    fn label(&self, index: usize) -> u8 {
        self.inner.label(index)
    }
}

/// Runs `f` on another thread and fails the test if it has not finished in 30 s (hang guard).
fn within_30s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(30)).expect("hung")
}

#[test]
fn a_failing_producer_surfaces_as_an_error_not_a_hang() {
    let err = within_30s(|| {
        let failing = Arc::new(Failing {
            inner: images(10),
            bad: 57,
        });
        let mut loader = start(failing, config(8, 2, false, 3), 2, no_cancel());
        let mut first_err = None;
        while let Some(epoch) = loader.epoch() {
            for b in epoch {
                if let Err(e) = b {
                    first_err = Some(e);
                    break;
                }
            }
            if first_err.is_some() {
                break;
            }
        }
        first_err.expect("the failure reaches the consumer")
    });
    match err {
        StreamError::ProducerFailed { message, .. } => {
            assert!(message.contains("image 57"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dropping_the_consumer_stops_the_producer() {
    within_30s(|| {
        let mut loader = start(images(20), config(8, 2, false, 100), 2, no_cancel());
        let first = loader.epoch().unwrap().next_blocking().unwrap().unwrap();
        drop(loader); // joins the producer thread: returns only once it has stopped
        drop(first);
    });
}

#[test]
fn cancel_ends_the_stream_with_interrupted() {
    let cancel = no_cancel();
    let err = within_30s({
        let cancel = cancel.clone();
        move || {
            let mut loader = start(images(20), config(8, 1, false, 1000), 1, cancel.clone());
            let mut n = 0;
            while let Some(epoch) = loader.epoch() {
                for b in epoch {
                    match b {
                        Ok(_) => {
                            n += 1;
                            if n == 5 {
                                cancel.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => return e,
                    }
                }
            }
            panic!("the stream ran to the end despite the cancel");
        }
    });
    assert!(matches!(err, StreamError::Interrupted), "{err:?}");
}

#[test]
fn async_consumer_sees_the_same_batches() {
    let imgs = images(5);
    let blocking = collect(start(imgs.clone(), config(16, 2, false, 1), 2, no_cancel()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut loader = start(imgs, config(16, 2, false, 1), 2, no_cancel());
    let seen = rt.block_on(async {
        let mut seen = Vec::new();
        let mut epoch = loader.epoch().unwrap();
        while let Some(b) = epoch.next_async().await {
            let b = b.unwrap();
            seen.push((
                b.epoch,
                b.batch,
                b.indices.clone(),
                b.labels.clone(),
                b.images.clone(),
            ));
        }
        seen
    });
    assert_eq!(seen, blocking);
}

#[test]
fn an_epoch_dropped_early_takes_its_batches_with_it() {
    let seen = within_30s(|| {
        let mut loader = start(images(10), config(8, 4, false, 3), 2, no_cancel());
        let mut seen = Vec::new();
        // Epoch 0: one batch, then the consumer walks away (a `break` out of the loop).
        {
            let mut epoch = loader.epoch().unwrap();
            let b = epoch.next_blocking().unwrap().unwrap();
            seen.push((b.epoch, b.batch));
        }
        while let Some(epoch) = loader.epoch() {
            for b in epoch {
                let b = b.unwrap();
                seen.push((b.epoch, b.batch));
            }
        }
        seen
    });
    // Nothing of epoch 0 leaks into epoch 1, and epochs 1 and 2 are whole and in order.
    let want: Vec<(usize, usize)> = std::iter::once((0, 0))
        .chain((1..3).flat_map(|e| (0..13).map(move |k| (e, k))))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn holding_every_buffer_and_asking_for_more_is_an_error_not_a_deadlock() {
    let err = within_30s(|| {
        let prefetch = 2;
        let mut loader = start(images(10), config(4, prefetch, false, 1), 1, no_cancel());
        let mut epoch = loader.epoch().unwrap();
        let mut held = Vec::new();
        loop {
            match epoch.next_blocking().unwrap() {
                Ok(b) => held.push(b),
                Err(e) => return (e, held.len()),
            }
        }
    });
    match err {
        (StreamError::BuffersExhausted { held }, n) => assert_eq!((held, n), (4, 4)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_loader_started_mid_epoch_continues_the_same_permutation() {
    let imgs = images(10);
    let full = collect(start(imgs.clone(), config(8, 2, false, 2), 2, no_cancel()));
    let resumed = collect(start(
        imgs,
        LoaderConfig {
            start_batch: 5,
            ..config(8, 2, false, 2)
        },
        2,
        no_cancel(),
    ));
    // Batches 5.. of epoch 0, then all of epoch 1: exactly the tail of the full stream.
    assert_eq!(resumed.len(), full.len() - 5);
    assert_eq!(&full[5..], &resumed[..]);
}

#[test]
fn a_store_truncated_under_the_stream_is_an_error_naming_it_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    cifar_stream::prep::write_store(&synthetic::generate(10, 1, &bar), tmp.path(), false, &bar)
        .unwrap();
    let path = cifar_stream::store::Split::Train.path_in(tmp.path());
    let reader = cifar_stream::store::Reader::open(&path).unwrap();
    // Another program cuts the file short while it is mapped.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(reader.file_len() / 2).unwrap();
    let err = within_30s(move || {
        let mut loader = start(Arc::new(reader), config(8, 2, false, 1), 2, no_cancel());
        let mut epoch = loader.epoch().unwrap();
        match epoch.next_blocking().unwrap() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a batch came from a truncated store"),
        }
    });
    assert!(
        err.contains("train.store") && err.contains("changed under the reader"),
        "{err}"
    );
}
