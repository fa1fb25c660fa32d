//! Streaming stage throughput with a null consumer, against calling augmentation + collation
//! directly in a loop on the same threads (the channel, sampler and recycling overhead); and a
//! consumer slower than the stream (a training step), whose epoch should take its own time
//! alone: the stall it sees is printed (the share of the epoch it waited for a batch).

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cifar_stream::augment::{collate, AugmentConfig, Augmenter, Batch};
use cifar_stream::source::synthetic;
use cifar_stream::store::Memory;
use cifar_stream::stream::{Loader, LoaderConfig, Sampler};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use indicatif::ProgressBar;

const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f64; 3] = [0.247, 0.243, 0.261];
const PER_CLASS: usize = 500; // 5,000 images = 39 batches of 128 per epoch

fn bench_stream(c: &mut Criterion) {
    let d = synthetic::generate(PER_CLASS, 0, &ProgressBar::hidden());
    let images = Arc::new(Memory {
        shape: d.shape,
        pixels: d.train.pixels,
        labels: d.train.labels,
    });
    // Epoch 200 of 230: deep in PBA's schedule.
    let aug = Arc::new(Augmenter::new(
        &AugmentConfig::recipe(),
        230,
        0,
        images.shape,
        &MEAN,
        &STD,
    ));
    let mut group = c.benchmark_group("pipeline_pba");
    group.sample_size(20);
    let sampler = Sampler::new(images.labels.len(), 128, true, true, 0);
    group.throughput(Throughput::Elements(sampler.images_per_epoch() as u64));
    for threads in [1, 2] {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        );
        group.bench_function(format!("direct_loop/{threads}_threads"), |b| {
            let mut batch = Batch::with_capacity(128, aug.output_len());
            b.iter(|| {
                let order = sampler.order(200);
                for k in 0..sampler.batches_per_epoch() {
                    pool.install(|| {
                        collate(&aug, &*images, sampler.batch(&order, k), 200, &mut batch)
                    });
                }
                black_box(&batch.images);
            })
        });
        group.bench_function(format!("stream_null_consumer/{threads}_threads"), |b| {
            b.iter(|| {
                let mut loader = start(&images, &aug, &pool);
                let mut epoch = loader.epoch().unwrap();
                while let Some(batch) = epoch.next_blocking() {
                    black_box(&batch.unwrap().images);
                }
            })
        });
    }
    group.finish();
    bench_slow_consumer(c, images, aug);
}

/// One epoch (200 of 230) of batches of 128, prefetch 4.
fn start(images: &Arc<Memory>, aug: &Arc<Augmenter>, pool: &Arc<rayon::ThreadPool>) -> Loader {
    let config = LoaderConfig {
        batch_size: 128,
        drop_last: true,
        shuffle: true,
        prefetch: 4,
        seed: 0,
        epochs: 200..201,
        max_batches: None,
        ..LoaderConfig::default()
    };
    let cancel = Arc::new(AtomicBool::new(false));
    Loader::start(images.clone(), aug.clone(), pool.clone(), config, cancel)
}

/// A consumer that spends STEP per batch, as a trainer would: the epoch should take
/// batches × STEP, the loader filling the queue meanwhile.
fn bench_slow_consumer(c: &mut Criterion, images: Arc<Memory>, aug: Arc<Augmenter>) {
    const STEP: std::time::Duration = std::time::Duration::from_millis(40);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let mut group = c.benchmark_group("slow_consumer");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(17)); // 10 epochs of ~1.6 s
    let mut last = None;
    group.bench_function("pba_2_threads_step_40ms", |b| {
        b.iter(|| {
            let mut loader = start(&images, &aug, &pool);
            let mut epoch = loader.epoch().unwrap();
            while let Some(batch) = epoch.next_blocking() {
                black_box(&batch.unwrap().images);
                std::thread::sleep(STEP);
            }
            last = Some(epoch.stats().clone());
        })
    });
    group.finish();
    if let Some(s) = last {
        let ideal = s.batches as f64 * STEP.as_secs_f64();
        println!(
            "slow_consumer: {} batches, ideal {ideal:.2} s, stall {:.2}% of the epoch, \
             {} empty waits, mean queue depth {:.2}",
            s.batches,
            100.0 * s.stall(),
            s.empty_waits,
            s.mean_depth()
        );
    }
}

criterion_group!(benches, bench_stream);
criterion_main!(benches);
