//! Long-run soak (a tool, not a CI test): does a run hold its memory and file descriptors flat?
//!
//! 1. Trains the tiny network for many short epochs on a small synthetic store on disk, with an
//!    evaluation, the metric files and a checkpoint after every epoch, and a mid-epoch
//!    checkpoint every 3 steps; records RSS and open file descriptors after each epoch.
//! 2. Streams many epochs and leaves each one early (`break` after a few batches), checking that
//!    no batch of an abandoned epoch reaches the next; records RSS every 50 epochs.
//!
//! Prints each series and its least-squares slope after a warm-up (KiB or fds per epoch).
//!
//!   cargo bench --bench soak -- [--epochs 150] [--breaks 1000] [--purge]
//!
//! Linux only (reads /proc/self).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use cifar_stream::augment::{AugmentConfig, Augmenter};
use cifar_stream::store::{Reader, Split};
use cifar_stream::stream::{EpochStats, Loader, LoaderConfig};
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::{EpochMetrics, Observer, Trainer};
use indicatif::ProgressBar;

/// Resident set size in KiB.
fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open file descriptors.
fn fds() -> f64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as f64
}

/// Least-squares slope of `ys` against their index.
fn slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in ys.iter().enumerate() {
        let dx = x as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    sxy / sxx.max(1e-12)
}

struct Recorder {
    rss: Vec<f64>,
    fds: Vec<f64>,
}

impl Observer for Recorder {
    fn epoch_end(&mut self, m: &EpochMetrics, _: &EpochStats) {
        self.rss.push(rss_kib());
        self.fds.push(fds());
        if m.epoch % 10 == 9 {
            eprintln!(
                "epoch {:>4}: rss {:>8.0} KiB, fds {:>3}",
                m.epoch + 1,
                self.rss.last().unwrap(),
                self.fds.last().unwrap()
            );
        }
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // As the binaries do, unless asked to let mimalloc return freed memory (to tell memory that
    // is held from memory that is kept in use).
    if !std::env::args().any(|a| a == "--purge") {
        cifar_stream::alloc::keep_freed_memory();
    }
    let (epochs, breaks) = (arg("--epochs", 150), arg("--breaks", 1000));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bar = ProgressBar::hidden();
    let dataset = cifar_stream::source::synthetic::generate(20, 0, &bar);
    cifar_stream::prep::write_store(&dataset, &data, false, &bar).unwrap();

    // 1. Many short epochs of a whole run: train, evaluate, metrics, checkpoints.
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.data = data.clone();
    c.runs = tmp.path().join("runs");
    c.epochs = epochs;
    c.batch_size = 20;
    let m = c.model.se_resnet_d_mut().expect("tiny is an SE-ResNet-D");
    m.widths = vec![4, 8, 16];
    m.stem_width = 8;
    c.ema_decay = 0.99;
    c.save_every_steps = Some(3);
    let mut trainer = Trainer::new(c, Device::Cpu).unwrap();
    let mut rec = Recorder {
        rss: Vec::new(),
        fds: Vec::new(),
    };
    let start = std::time::Instant::now();
    trainer.fit(&mut rec).unwrap();
    // mimalloc keeps what it frees (see cifar_stream::alloc) and its high-water mark settles
    // over the first tens of epochs: the second half is the steady state.
    let warm = (epochs / 2).max(1);
    println!(
        "soak run: {epochs} epochs of 10 steps in {:.1} s; over epochs {warm}-{epochs}: \
         rss {:.0} -> {:.0} KiB, slope {:+.2} KiB/epoch; fds {} -> {}, slope {:+.3}/epoch",
        start.elapsed().as_secs_f64(),
        rec.rss[warm],
        rec.rss.last().unwrap(),
        slope(&rec.rss[warm..]),
        rec.fds[warm],
        rec.fds.last().unwrap(),
        slope(&rec.fds[warm..])
    );

    // 2. Leaving epochs early, over and over.
    let reader = Arc::new(Reader::open(Split::Train.path_in(&data)).unwrap());
    let aug = Augmenter::for_store(&AugmentConfig::recipe(), breaks, 0, reader.header());
    let pool = Arc::new(cifar_stream::augment::thread_pool(2).unwrap());
    let config = LoaderConfig {
        batch_size: 16,
        prefetch: 4,
        shuffle: true,
        epochs: 0..breaks,
        ..LoaderConfig::default()
    };
    let mut loader = Loader::start(
        reader,
        Arc::new(aug),
        pool,
        config,
        Arc::new(AtomicBool::new(false)),
    );
    let mut rng = fastrand::Rng::with_seed(5);
    let (mut rss, mut e, mut batches) = (Vec::new(), 0usize, 0usize);
    while let Some(mut epoch) = loader.epoch() {
        let take = rng.usize(1..8);
        for _ in 0..take {
            let b = epoch.next_blocking().unwrap().unwrap();
            assert_eq!(b.epoch, e, "a batch of epoch {} reached epoch {e}", b.epoch);
            batches += 1;
        }
        drop(epoch);
        if e % 50 == 49 {
            rss.push(rss_kib());
        }
        e += 1;
    }
    if rss.len() < 4 {
        return;
    }
    let warm = (rss.len() / 5).max(1);
    println!(
        "early breaks: {breaks} epochs left after 1-7 of 12 batches ({batches} batches), every \
         batch of its own epoch; rss {:.0} -> {:.0} KiB, slope {:+.2} KiB per 50 epochs",
        rss[warm],
        rss.last().unwrap(),
        slope(&rss[warm..])
    );
}
