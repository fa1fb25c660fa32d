//! The data path on its own: `--pipeline-only` (a drain with the profile table) and
//! `augment-preview` (what the model sees, as a PNG grid).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use clap::Args;

use cifar_stream::augment::{self, preview, Augmenter};
use cifar_stream::render;
use cifar_stream::store::{Reader, Split};
use cifar_stream::stream::{self, Loader, LoaderConfig};
use cifar_stream::telemetry::Profiler;
use cifar_stream::train::config::TrainConfig;

use crate::args::positive;
use crate::finish::Finish;
use crate::reports::{self, DrainReport};
use crate::stream_args::AugmentFlags;

/// What `--pipeline-only` reads besides the configuration.
pub struct DrainArgs<'a> {
    /// Drop each epoch's last short batch.
    pub drop_last: bool,
    /// No per-epoch profile table.
    pub quiet: bool,
    /// Append each epoch's profile to this JSON-lines file.
    pub profile_json: Option<&'a Path>,
}

/// `--pipeline-only`: the training stream into a null consumer.
pub fn drain(args: DrainArgs, config: &TrainConfig, profiler: &Profiler) -> Result<Finish> {
    let reader = open_train(&config.data)?;
    let augmenter =
        Augmenter::for_store(&config.augment, config.epochs, config.seed, reader.header());
    let pool = Arc::new(augment::thread_pool(config.threads)?);
    let threads = pool.current_num_threads();
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    reports::on_ctrl_c(cancel.clone())?;
    let loader_config = LoaderConfig {
        drop_last: args.drop_last,
        max_batches: config.limit_train_batches,
        ..LoaderConfig::training(
            config.batch_size,
            config.prefetch,
            config.seed,
            0..config.epochs,
        )
    };
    let mut loader = Loader::start(
        Arc::new(reader),
        Arc::new(augmenter),
        pool,
        loader_config,
        cancel,
    );
    eprintln!(
        "pipeline only: {} epochs of {} batches of {}, augment {:?}, {} threads, prefetch {}",
        config.epochs,
        loader.batches_per_epoch(),
        config.batch_size,
        config.augment.policy,
        threads,
        config.prefetch
    );
    let mut report = DrainReport {
        quiet: args.quiet,
        epochs: config.epochs,
        bar: indicatif::ProgressBar::hidden(),
        profiler,
        profile_log: reports::profile_log(args.profile_json)?,
        error: None,
    };
    let drained = stream::drain(&mut loader, &mut report)?;
    if let Some(e) = report.error {
        return Err(e).context("writing --profile-json");
    }
    if drained.interrupted {
        eprintln!("interrupted after {} images", drained.images);
    }
    println!("images/s: {:.0}", drained.images_per_second());
    Ok(if drained.interrupted {
        Finish::Interrupted
    } else {
        Finish::Done
    })
}

/// `augment-preview`.
#[derive(Args)]
pub struct PreviewArgs {
    /// Store folder (holds train.store).
    #[arg(long, default_value = "datasets/cifar10")]
    data: PathBuf,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the augmentation draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epoch whose augmentation to show (matters for PBA's schedule).
    #[arg(long, default_value_t = 0)]
    epoch: usize,
    /// Images (rows), spread evenly over the split.
    #[arg(long, short = 'n', default_value_t = 8, value_parser = positive)]
    images: usize,
    /// Augmented versions per image (columns after the original).
    #[arg(long, short = 'k', default_value_t = 8)]
    versions: usize,
    /// Epoch count of the run (PBA stretches its schedule to it).
    #[arg(long, default_value_t = 230)]
    epochs: usize,
    #[command(flatten)]
    augment: AugmentFlags,
}

/// `augment-preview`: N training images × K augmented versions as a PNG grid.
pub fn preview(args: PreviewArgs) -> Result<Finish> {
    let reader = open_train(&args.data)?;
    ensure!(
        !reader.is_empty(),
        "{} holds no image",
        reader.path().display()
    );
    let aug = Augmenter::for_store(
        &args.augment.config(),
        args.epochs,
        args.seed,
        reader.header(),
    );
    let n = args.images.clamp(1, reader.len());
    let indices: Vec<usize> = (0..n).map(|k| k * reader.len() / n).collect();
    let img = preview::grid(
        &aug,
        &reader,
        reader.classes(),
        &indices,
        args.versions,
        args.epoch,
        args.seed,
    );
    render::save_png(&img, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} images × {} versions, epoch {})",
        args.out.display(),
        n,
        args.versions,
        args.epoch
    );
    Ok(Finish::Done)
}

/// Opens the training split of the store in `data`, saying what to do when there is none.
pub fn open_train(data: &Path) -> Result<Reader> {
    Reader::open(Split::Train.path_in(data)).with_context(|| {
        format!(
            "opening the store in {} (run prep-dataset first)",
            data.display()
        )
    })
}
