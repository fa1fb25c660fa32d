//! `stream-train`: the streaming trainer. So far it offers `augment-preview`; the training
//! pipeline itself is being built stage by stage (see the README's status).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};

use cifar_stream::augment::ops::PadFill;
use cifar_stream::augment::{collate, preview, AugmentConfig, Augmenter, Batch, PolicyName};
use cifar_stream::render;
use cifar_stream::store::{Reader, Split};
use cifar_stream::stream::{Loader, LoaderConfig, StreamError};
use cifar_stream::telemetry::{self, EpochProfile, Profiler};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "stream-train",
    version,
    about = "Streaming CIFAR-10 trainer: mmap store -> rayon augmentation -> bounded channels -> candle."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// The main job's flags.
#[derive(Args)]
struct RunArgs {
    /// Store folder (holds train.store and test.store).
    #[arg(long, default_value = "datasets/cifar10")]
    data: PathBuf,
    /// Epochs to run.
    #[arg(long, default_value_t = 230)]
    epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Drop each epoch's last short batch.
    #[arg(long)]
    drop_last: bool,
    /// Batches ready in the channel ahead of the consumer.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Rayon threads for augmentation [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the shuffle and the augmentation draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only the data path (sampler → store → augmentation → channel) into a null consumer,
    /// print the profile table per epoch and a final `images/s: X` line.
    #[arg(long)]
    pipeline_only: bool,
    /// Write a Chrome trace-event JSON file (open in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Append each epoch's profile as one JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    profile_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    augment: AugmentArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a PNG grid of N training images × K augmented versions: what the model sees.
    AugmentPreview(PreviewArgs),
    /// Time augmentation + collation called directly in a loop (no channel): prints `images/s: X`.
    AugmentBench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Store folder (holds train.store).
    #[arg(long, default_value = "datasets/cifar10")]
    data: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Batches to time (after one untimed warm-up batch).
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Rayon threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Epoch to augment as (matters for PBA's schedule).
    #[arg(long, default_value_t = 200)]
    epoch: usize,
    /// Seed of the augmentation draws and the shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epoch count of the run (PBA stretches its schedule to it).
    #[arg(long, default_value_t = 230)]
    epochs: usize,
    #[command(flatten)]
    augment: AugmentArgs,
}

/// Augmentation flags shared by every command that augments.
#[derive(Args, Clone)]
struct AugmentArgs {
    /// Policy ops: pba (recipe), autoaugment, randaugment, basic (crop + flip only), none.
    #[arg(long, value_enum, default_value_t = PolicyName::Pba)]
    augment: PolicyName,
    /// RandAugment: ops per image.
    #[arg(long, default_value_t = 2)]
    randaugment_n: usize,
    /// RandAugment: level 0–10.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u8).range(0..=10))]
    randaugment_m: u8,
    /// Disable the random pad-and-crop.
    #[arg(long)]
    no_crop: bool,
    /// Crop padding on every side.
    #[arg(long, default_value_t = 4)]
    crop_padding: usize,
    /// What fills the crop padding.
    #[arg(long, value_enum, default_value_t = PadFill::Mean)]
    crop_fill: PadFill,
    /// Disable the random horizontal flip.
    #[arg(long)]
    no_flip: bool,
    /// Cutout holes per image (0 disables; basic/none default to 0).
    #[arg(long)]
    cutout_holes: Option<usize>,
    /// Cutout square side in pixels.
    #[arg(long, default_value_t = 4)]
    cutout_length: usize,
}

impl AugmentArgs {
    fn config(&self) -> AugmentConfig {
        let base = AugmentConfig::with_policy(self.augment);
        AugmentConfig {
            randaugment_n: self.randaugment_n,
            randaugment_m: self.randaugment_m,
            crop: base.crop && !self.no_crop,
            crop_padding: self.crop_padding,
            crop_fill: self.crop_fill,
            flip: base.flip && !self.no_flip,
            cutout_holes: self.cutout_holes.unwrap_or(base.cutout_holes),
            cutout_length: self.cutout_length,
            ..base
        }
    }
}

#[derive(Args)]
struct PreviewArgs {
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
    #[arg(long, short = 'n', default_value_t = 8)]
    images: usize,
    /// Augmented versions per image (columns after the original).
    #[arg(long, short = 'k', default_value_t = 8)]
    versions: usize,
    /// Epoch count of the run (PBA stretches its schedule to it).
    #[arg(long, default_value_t = 230)]
    epochs: usize,
    #[command(flatten)]
    augment: AugmentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::AugmentPreview(args)) => augment_preview(args).map(|()| ExitCode::SUCCESS),
        Some(Command::AugmentBench(args)) => augment_bench(args).map(|()| ExitCode::SUCCESS),
        None => run(cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn augment_preview(args: PreviewArgs) -> Result<()> {
    let reader = Reader::open(Split::Train.path_in(&args.data)).with_context(|| {
        format!(
            "opening the store in {} (run prep-dataset first)",
            args.data.display()
        )
    })?;
    ensure!(
        !reader.is_empty(),
        "{} holds no image",
        reader.path().display()
    );
    let h = reader.header();
    let aug = Augmenter::new(
        &args.augment.config(),
        args.epochs,
        args.seed,
        h.shape,
        &h.mean,
        &h.std,
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
    Ok(())
}

fn augment_bench(args: BenchArgs) -> Result<()> {
    let reader = Reader::open(Split::Train.path_in(&args.data)).with_context(|| {
        format!(
            "opening the store in {} (run prep-dataset first)",
            args.data.display()
        )
    })?;
    ensure!(
        reader.len() >= args.batch_size,
        "the store holds fewer than {} images",
        args.batch_size
    );
    let h = reader.header();
    let aug = Augmenter::new(
        &args.augment.config(),
        args.epochs,
        args.seed,
        h.shape,
        &h.mean,
        &h.std,
    );
    let mut order: Vec<usize> = (0..reader.len()).collect();
    fastrand::Rng::with_seed(args.seed).shuffle(&mut order);
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        pool = pool.num_threads(t);
    }
    let pool = pool.build()?;
    let per_epoch = reader.len() / args.batch_size;
    let mut batch = Batch::with_capacity(args.batch_size, aug.output_len());
    let mut run = |step: usize| {
        let k = step % per_epoch;
        let indices = &order[k * args.batch_size..(k + 1) * args.batch_size];
        pool.install(|| collate(&aug, &reader, indices, args.epoch, &mut batch));
    };
    run(0);
    let start = Instant::now();
    for step in 1..=args.batches {
        run(step);
    }
    let seconds = start.elapsed().as_secs_f64();
    let images = (args.batches * args.batch_size) as f64;
    println!(
        "augment {:?}, {} threads, batch {}: {} images in {:.3} s",
        args.augment.augment,
        pool.current_num_threads(),
        args.batch_size,
        images,
        seconds
    );
    println!("images/s: {:.0}", images / seconds);
    Ok(())
}

fn run(args: RunArgs) -> Result<ExitCode> {
    ensure!(
        args.pipeline_only,
        "training is not implemented yet; `--pipeline-only` runs the whole data path into a null consumer"
    );
    let profiler = Profiler::default();
    let _trace = telemetry::init(&profiler, args.trace.as_deref());
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // A second Ctrl-C kills the process the usual way.
        ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let reader = Reader::open(Split::Train.path_in(&args.data)).with_context(|| {
        format!(
            "opening the store in {} (run prep-dataset first)",
            args.data.display()
        )
    })?;
    let h = reader.header().clone();
    let augmenter = Augmenter::new(
        &args.augment.config(),
        args.epochs,
        args.seed,
        h.shape,
        &h.mean,
        &h.std,
    );
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("augment-{i}"));
    if let Some(t) = args.threads {
        pool = pool.num_threads(t);
    }
    let pool = Arc::new(pool.build()?);
    let threads = pool.current_num_threads();
    let config = LoaderConfig {
        batch_size: args.batch_size,
        drop_last: args.drop_last,
        shuffle: true,
        prefetch: args.prefetch,
        seed: args.seed,
        epochs: 0..args.epochs,
    };
    let mut loader = Loader::start(Arc::new(reader), Arc::new(augmenter), pool, config, cancel);
    let mut profile_json = match &args.profile_json {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    eprintln!(
        "pipeline only: {} epochs of {} batches of {}, augment {:?}, {} threads, prefetch {}",
        args.epochs,
        loader.batches_per_epoch(),
        args.batch_size,
        args.augment.augment,
        threads,
        args.prefetch
    );
    let per_epoch = loader.images_per_epoch() as u64;
    let (mut images, mut seconds) = (0usize, 0f64);
    let mut interrupted = false;
    while let Some(mut epoch) = loader.epoch() {
        let bar = progress_bar(args.quiet, epoch.stats().epoch, args.epochs);
        bar.set_length(per_epoch);
        while let Some(item) = epoch.next_blocking() {
            match item {
                Ok(batch) => bar.inc(batch.len() as u64),
                Err(StreamError::Interrupted) => {
                    interrupted = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        bar.finish_and_clear();
        let stats = epoch.stats().clone();
        images += stats.images;
        seconds += stats.wall_seconds;
        let profile = EpochProfile::new(
            stats.epoch,
            stats.images,
            stats.wall_seconds,
            stats.mean_depth(),
            stats.stall(),
            profiler.take(),
        );
        print!("{profile}");
        if let Some(f) = profile_json.as_mut() {
            serde_json::to_writer(&mut *f, &profile)?;
            writeln!(f)?;
        }
        if interrupted {
            eprintln!("interrupted after {images} images");
            break;
        }
    }
    println!("images/s: {:.0}", images as f64 / seconds.max(1e-12));
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn progress_bar(quiet: bool, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {msg} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{}/{}", epoch + 1, epochs));
    bar
}
