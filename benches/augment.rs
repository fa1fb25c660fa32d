//! Augmentation stage throughput: each op, the full per-image recipe path, and collation of a
//! 128-image batch on the rayon pool (images/s).

use std::hint::black_box;

use cifar_stream::augment::policy::{self, Canvas, Op};
use cifar_stream::augment::{collate, AugmentConfig, Augmenter, Batch, PolicyName};
use cifar_stream::source::synthetic;
use cifar_stream::store::{Memory, Shape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use indicatif::ProgressBar;

const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f64; 3] = [0.247, 0.243, 0.261];
const N: usize = 1000;

fn images() -> Memory {
    let d = synthetic::generate(N / 10, 0, &ProgressBar::hidden());
    Memory {
        shape: d.shape,
        pixels: d.train.pixels,
        labels: d.train.labels,
    }
}

fn bench_ops(c: &mut Criterion) {
    let imgs = images();
    let shape = Shape::CIFAR;
    let mut group = c.benchmark_group("op");
    group.throughput(Throughput::Elements(N as u64));
    let all = Op::PBA_ORDER;
    for op in all {
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{op:?}")),
            &op,
            |b, &op| {
                let mut work = vec![0u8; shape.image_len()];
                let mut scratch = vec![0u8; shape.image_len()];
                let fill = [125u8, 123, 114];
                let mut rng = fastrand::Rng::with_seed(1);
                b.iter(|| {
                    for img in imgs.pixels.chunks_exact(shape.image_len()) {
                        work.copy_from_slice(img);
                        let mut canvas = Canvas {
                            shape,
                            fill: &fill,
                            scratch: &mut scratch,
                        };
                        policy::apply(op, 7, &mut rng, &mut work, &mut canvas);
                    }
                    black_box(&work);
                })
            },
        );
    }
    group.finish();
}

fn bench_recipe(c: &mut Criterion) {
    let imgs = images();
    let mut group = c.benchmark_group("augment");
    group.throughput(Throughput::Elements(N as u64));
    for policy in [PolicyName::Pba, PolicyName::Autoaugment, PolicyName::Basic] {
        // Epoch 200 of 230: deep in PBA's schedule, where its policies are strongest.
        let aug = Augmenter::new(
            &AugmentConfig::with_policy(policy),
            230,
            0,
            imgs.shape,
            &MEAN,
            &STD,
        );
        let mut out = vec![0f32; imgs.shape.image_len()];
        group.bench_function(format!("one_thread/{policy:?}"), |b| {
            b.iter(|| {
                for i in 0..N {
                    aug.augment_into(&imgs.pixels[i * 3072..(i + 1) * 3072], 200, i, &mut out);
                }
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn bench_collate(c: &mut Criterion) {
    let imgs = images();
    let mut group = c.benchmark_group("collate_128");
    group.throughput(Throughput::Elements(128));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for policy in [PolicyName::Pba, PolicyName::None] {
            let aug = Augmenter::new(
                &AugmentConfig::with_policy(policy),
                230,
                0,
                imgs.shape,
                &MEAN,
                &STD,
            );
            let mut batch = Batch::with_capacity(128, aug.output_len());
            let mut step = 0;
            group.bench_function(format!("{policy:?}/{threads}_threads"), |b| {
                b.iter(|| {
                    let start = (step * 128) % (N - 128);
                    let indices: Vec<usize> = (start..start + 128).collect();
                    pool.install(|| collate(&aug, &imgs, &indices, 200, &mut batch));
                    step += 1;
                    black_box(&batch.images);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_ops, bench_recipe, bench_collate);
criterion_main!(benches);
