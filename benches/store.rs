//! Store stage throughput: prep from the official format and from a JPEG folder archive, and
//! shuffled random-access reads of a store (images/s).

use std::hint::black_box;
use std::path::Path;

use cifar_stream::prep;
use cifar_stream::source::{self, synthetic};
use cifar_stream::store::{Reader, Split};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use indicatif::ProgressBar;

/// Official batches of `per_file` records each, packed as `cifar-10-binary.tar.gz`.
fn official_archive(dir: &Path, per_file: usize) -> std::path::PathBuf {
    let bin = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let names = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()]);
    for name in names {
        let mut data = vec![0u8; per_file * 3073];
        for rec in data.chunks_mut(3073) {
            rec[0] = rng.u8(0..10);
            rng.fill(&mut rec[1..]);
        }
        std::fs::write(bin.join(name), data).unwrap();
    }
    let out = dir.join("cifar-10-binary.tar.gz");
    let enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all("cifar-10-batches-bin", &bin).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    out
}

/// Synthetic images re-encoded as quality-75 JPEGs in `train/<class>/`, `test/<class>/`, as .tar.gz.
fn jpeg_archive(dir: &Path, per_class: usize) -> std::path::PathBuf {
    let data = synthetic::generate(per_class, 0, &ProgressBar::hidden());
    let root = dir.join("jpeg");
    for (split, part) in [("train", &data.train), ("test", &data.test)] {
        for (i, (px, &label)) in part.pixels.chunks(3072).zip(&part.labels).enumerate() {
            let class_dir = root.join(split).join(&data.classes[label as usize]);
            std::fs::create_dir_all(&class_dir).unwrap();
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 75)
                .encode(px, 32, 32, image::ExtendedColorType::Rgb8)
                .unwrap();
            std::fs::write(class_dir.join(format!("{i:05}.jpg")), bytes).unwrap();
        }
    }
    let out = dir.join("jpeg.tar.gz");
    let enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all("jpeg", &root).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    out
}

fn prep_once(archive: &Path, out: &Path) {
    let bar = ProgressBar::hidden();
    let (_, dataset) = source::load(archive, &bar).unwrap();
    prep::write_store(&dataset, out, true, &bar).unwrap();
}

fn bench_prep(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("prep");
    group.sample_size(10);

    let per_file = 2_000;
    let official = official_archive(tmp.path(), per_file);
    group.throughput(Throughput::Elements(6 * per_file as u64));
    group.bench_function("official_tar_gz", |b| {
        b.iter(|| prep_once(&official, &tmp.path().join("o")))
    });

    let per_class = 1_000; // 10,000 train + 2,000 test JPEGs
    let jpeg = jpeg_archive(tmp.path(), per_class);
    group.throughput(Throughput::Elements(12 * per_class as u64));
    group.bench_function("jpeg_tar_gz", |b| {
        b.iter(|| prep_once(&jpeg, &tmp.path().join("j")))
    });
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    prep::write_store(
        &synthetic::generate(5_000, 0, &bar),
        tmp.path(),
        false,
        &bar,
    )
    .unwrap();
    let reader = Reader::open(Split::Train.path_in(tmp.path())).unwrap();
    let mut order: Vec<usize> = (0..reader.len()).collect();
    fastrand::Rng::with_seed(3).shuffle(&mut order);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(order.len() as u64));
    // Touch every byte of every image in shuffled order, as the sampler will.
    group.bench_function("random_read_50k", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &i in &order {
                acc +=
                    reader.image(i).iter().map(|&v| v as u64).sum::<u64>() + reader.label(i) as u64;
            }
            black_box(acc)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_prep, bench_read);
criterion_main!(benches);
