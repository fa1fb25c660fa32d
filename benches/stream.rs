//! Streaming stage throughput with a null consumer, against calling augmentation + collation
//! directly in a loop on the same threads (the channel, sampler and recycling overhead).

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
                let mut loader = Loader::start(
                    images.clone(),
                    aug.clone(),
                    pool.clone(),
                    config,
                    Arc::new(AtomicBool::new(false)),
                );
                let mut epoch = loader.epoch().unwrap();
                while let Some(batch) = epoch.next_blocking() {
                    black_box(&batch.unwrap().images);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_stream);
criterion_main!(benches);
