//! The training ops, fast (this crate's) against stock (candle-nn's): convolution and BatchNorm
//! forward and forward+backward at layer shapes of the `tiny` and `seed` models, and a whole
//! `tiny` training step (forward, loss, backward, SGD) at batch 128; the direct 3×3
//! convolution against im2col + GEMM at `fast-cpu`'s layer shapes; BatchNorm + GELU fused
//! against the two ops, at `fast-cpu`'s widest map; `fast-cpu`'s three 2×2 max-pools.
//!
//! `cargo bench --bench ops` (all) or e.g. `cargo bench --bench ops -- step`.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cifar_stream::model::{build, sorted_vars, Mode, ModelConfig};
use cifar_stream::ops::{conv2d, gelu, max_pool2, BatchNorm, Kernels, Statistics};
use cifar_stream::train::optim::{Optimizer, Param, Scalars, Sgd, StepScalars};

// What the binaries run with (glibc malloc alone costs ~1.4x here through page-fault churn).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    let v: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

const KERNELS: [(Kernels, &str); 2] = [(Kernels::Fast, "fast"), (Kernels::Stock, "stock")];

/// (name, batch, cin, cout, hw, k, stride): representative layers.
const CONVS: [(&str, usize, usize, usize, usize, usize, usize); 6] = [
    ("tiny-stem1-8x8x3x3@32", 128, 8, 8, 32, 3, 1),
    ("tiny-s0-conv1-16x8x1x1@32", 128, 16, 8, 32, 1, 1),
    ("tiny-s1-conv2-16x16x3x3s2@32", 128, 16, 16, 32, 3, 2),
    ("seed-stem2-64x128x3x3@32", 8, 64, 128, 32, 3, 1),
    ("seed-s1-conv2-128x128x3x3@16", 8, 128, 128, 16, 3, 1),
    ("seed-s3-conv3-512x2048x1x1@4", 8, 512, 2048, 4, 1, 1),
];

fn bench_conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(10);
    for (name, n, cin, cout, hw, k, stride) in CONVS {
        let x = Var::from_tensor(&random(&[n, cin, hw, hw], 1)).unwrap();
        let w = Var::from_tensor(&random(&[cout, cin, k, k], 2)).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        for (kernels, label) in KERNELS {
            let fwd = || conv2d(x.as_tensor(), w.as_tensor(), stride, k / 2, kernels).unwrap();
            group.bench_function(BenchmarkId::new(format!("fwd-{label}"), name), |b| {
                b.iter(|| black_box(fwd()))
            });
            group.bench_function(BenchmarkId::new(format!("fwd+bwd-{label}"), name), |b| {
                b.iter(|| black_box(fwd().sum_all().unwrap().backward().unwrap()))
            });
        }
    }
    group.finish();
}

/// (name, cin, cout, hw): the 3×3 layers of `fast-cpu`, at batch 200.
const DIRECT: [(&str, usize, usize, usize); 5] = [
    ("24x32@31", 24, 32, 31),
    ("32x32@15", 32, 32, 15),
    ("32x128@15", 32, 128, 15),
    ("128x128@7", 128, 128, 7),
    ("128x128@3", 128, 128, 3),
];

/// The direct 3×3 convolution (what `conv::forward`/`backward` pick for these) against the
/// im2col + GEMM path it replaced, on the same data: forward and both gradients.
fn bench_direct_conv(c: &mut Criterion) {
    use cifar_stream::ops::cpu::conv::{backward, forward, im2col_backward, im2col_forward};
    use cifar_stream::ops::Geometry;
    let mut group = c.benchmark_group("conv3x3");
    group.sample_size(10);
    let n = 200;
    for (name, cin, cout, hw) in DIRECT {
        let g = Geometry::new(&[n, cin, hw, hw], &[cout, cin, 3, 3], 1, 1).unwrap();
        let x = random(&[n, cin, hw, hw], 1)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let w = random(&[cout, cin, 3, 3], 2)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dy = random(&[n, cout, hw, hw], 3)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        group.throughput(Throughput::Elements(n as u64));
        // Each kernel in f32 and, where the CPU has AVX512-BF16, with bf16 products.
        let precisions: &[(&str, bool)] = if cifar_stream::ops::bf16_products_available() {
            &[("f32", false), ("bf16", true)]
        } else {
            &[("f32", false)]
        };
        for &(p, bf16) in precisions {
            group.bench_function(BenchmarkId::new(format!("fwd-{p}"), name), |b| {
                b.iter(|| black_box(forward(&g, &x, &w, bf16)))
            });
            group.bench_function(BenchmarkId::new(format!("dw-{p}"), name), |b| {
                b.iter(|| black_box(backward(&g, &x, &w, &dy, false, bf16)))
            });
            group.bench_function(BenchmarkId::new(format!("dx+dw-{p}"), name), |b| {
                b.iter(|| black_box(backward(&g, &x, &w, &dy, true, bf16)))
            });
        }
        group.bench_function(BenchmarkId::new("fwd+dx+dw-im2col", name), |b| {
            b.iter(|| {
                black_box((
                    im2col_forward(&g, &x, &w),
                    im2col_backward(&g, &x, &w, &dy, true),
                ))
            })
        });
    }
    group.finish();
}

fn bench_batch_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm_relu");
    group.sample_size(10);
    for (name, shape) in [
        ("tiny-128x16@32", [128, 16, 32, 32]),
        ("seed-8x256@16", [8, 256, 16, 16]),
    ] {
        let x = Var::from_tensor(&random(&shape, 1)).unwrap();
        group.throughput(Throughput::Elements(shape[0] as u64));
        for (kernels, label) in KERNELS {
            let vars = VarMap::new();
            let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
            let bn = BatchNorm::new(shape[1], 1e-5, 1.0, vb).unwrap();
            let batch = Statistics::Batch { sync: None };
            let fwd = || {
                bn.forward(x.as_tensor(), batch, true, kernels.into())
                    .unwrap()
            };
            group.bench_function(BenchmarkId::new(format!("fwd-{label}"), name), |b| {
                b.iter(|| black_box(fwd()))
            });
            group.bench_function(BenchmarkId::new(format!("fwd+bwd-{label}"), name), |b| {
                b.iter(|| black_box(fwd().sum_all().unwrap().backward().unwrap()))
            });
        }
    }
    group.finish();
}

fn bench_batch_norm_gelu(c: &mut Criterion) {
    cifar_stream::alloc::keep_freed_memory();
    let mut group = c.benchmark_group("batch_norm_gelu");
    group.sample_size(10);
    // fast-cpu's first group after its pool, at batch 1000.
    let shape = [1000, 32, 15, 15];
    let x = Var::from_tensor(&random(&shape, 1)).unwrap();
    group.throughput(Throughput::Elements(shape[0] as u64));
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let bn = BatchNorm::new(shape[1], 1e-5, 1.0, vb).unwrap();
    let batch = Statistics::Batch { sync: None };
    let ops = Kernels::Fast.into();
    let fused = || bn.forward_gelu(x.as_tensor(), batch, ops).unwrap();
    let apart = || gelu(&bn.forward(x.as_tensor(), batch, false, ops).unwrap(), ops).unwrap();
    group.bench_function("fwd+bwd-fused", |b| {
        b.iter(|| black_box(fused().sum_all().unwrap().backward().unwrap()))
    });
    group.bench_function("fwd+bwd-two-ops", |b| {
        b.iter(|| black_box(apart().sum_all().unwrap().backward().unwrap()))
    });
    group.finish();
}

fn bench_max_pool(c: &mut Criterion) {
    cifar_stream::alloc::keep_freed_memory();
    let mut group = c.benchmark_group("max_pool2");
    group.sample_size(10);
    // fast-cpu's three pools at batch 1000: odd maps, so each floors its last row and column.
    for (name, shape) in [
        ("32@31", [1000, 32, 31, 31]),
        ("128@15", [1000, 128, 15, 15]),
        ("128@7", [1000, 128, 7, 7]),
    ] {
        let x = Var::from_tensor(&random(&shape, 1)).unwrap();
        group.throughput(Throughput::Elements(shape[0] as u64));
        let fwd = || max_pool2(x.as_tensor(), Kernels::Fast).unwrap();
        group.bench_function(BenchmarkId::new("fwd", name), |b| {
            b.iter(|| black_box(fwd()))
        });
        group.bench_function(BenchmarkId::new("fwd+bwd", name), |b| {
            b.iter(|| black_box(fwd().sum_all().unwrap().backward().unwrap()))
        });
    }
    group.finish();
}

fn bench_step(c: &mut Criterion) {
    cifar_stream::alloc::keep_freed_memory();
    let mut group = c.benchmark_group("tiny_step");
    group.sample_size(10);
    let batch = 128;
    group.throughput(Throughput::Elements(batch as u64));
    let x = random(&[batch, 3, 32, 32], 1);
    let y = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 10).collect(),
        batch,
        &Device::Cpu,
    )
    .unwrap();
    for (kernels, label) in KERNELS {
        let (mut model, vars) = build(&ModelConfig::tiny(), 0, &Device::Cpu).unwrap();
        model.set_kernels(kernels);
        let params = sorted_vars(&vars)
            .into_iter()
            .filter(|(n, _)| !cifar_stream::model::is_running_statistic(n))
            .map(|(name, var)| Param {
                name,
                var,
                group: 0,
            })
            .collect();
        let mut sgd = Sgd::new(params, vec![5e-5], 0.9, true).unwrap();
        let rate = Scalars::new(1, &Device::Cpu).unwrap();
        rate.write(&StepScalars {
            rates: vec![0.01],
            ema_decay: None,
        })
        .unwrap();
        let mut step = 0u64;
        group.bench_function(label, |b| {
            b.iter(|| {
                step += 1;
                let logits = model.forward(&x, Mode::train(step)).unwrap();
                let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
                let grads = loss.backward().unwrap();
                sgd.step(&grads, &rate, None).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_step,
    bench_conv,
    bench_direct_conv,
    bench_batch_norm,
    bench_batch_norm_gelu,
    bench_max_pool
);
criterion_main!(benches);
