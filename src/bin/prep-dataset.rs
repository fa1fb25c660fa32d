//! `prep-dataset`: turn CIFAR-10 (official binary, image folder, synthetic, or downloaded) into a
//! memory-mapped store, or inspect an existing one.

/// mimalloc: glibc's allocator churns pages under candle's per-op tensor allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cifar_stream::prep;
use cifar_stream::source::{self, download, synthetic};
use cifar_stream::store::{Split, Summary};

/// Default store folder for real CIFAR-10 (official, folder or downloaded sources).
const DEFAULT_OUT: &str = "datasets/cifar10";
/// Default store folder for the synthetic dataset.
const DEFAULT_SYNTHETIC_OUT: &str = "datasets/synthetic";

#[derive(Parser)]
#[command(
    name = "prep-dataset",
    version,
    about = "Turn CIFAR-10 into a validated, checksummed, memory-mapped store (one file per split).",
    long_about = "Turn CIFAR-10 into a validated, checksummed, memory-mapped store (one file per split).\n\n\
Sources (exactly one):\n  \
--source PATH   cifar-10-binary.tar.gz, the extracted cifar-10-batches-bin/ folder, or an image-folder\n                  \
dataset (train/<class>/*.jpg|png and test/<class>/*) as a folder, .tar or .tar.gz\n  \
--synthetic     the embedded default: a deterministic generated dataset (no download)\n  \
--download      fetch the official archive, check its md5, then prep it\n\n\
Examples:\n  \
prep-dataset --synthetic                       # -> datasets/synthetic/{train,test}.store\n  \
prep-dataset --source cifar-10-binary.tar.gz   # -> datasets/cifar10/\n  \
prep-dataset inspect datasets/cifar10 --verify --grid grid.png",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    prep: PrepArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the summary of an existing store (and optionally verify checksums or draw a grid).
    Inspect(InspectArgs),
}

#[derive(Args)]
struct PrepArgs {
    /// Dataset to convert: official archive/folder, or image folder / .tar / .tar.gz.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["synthetic", "download"])]
    source: Option<PathBuf>,
    /// Generate the embedded synthetic dataset instead of reading one.
    #[arg(long, conflicts_with = "download")]
    synthetic: bool,
    /// Training images per class for --synthetic (test gets one fifth, at least 1).
    #[arg(long, value_name = "N", default_value_t = 500, requires = "synthetic")]
    per_class: usize,
    /// Seed for --synthetic.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "synthetic")]
    seed: u64,
    /// Download the official binary archive, verify its md5, then prep it.
    #[arg(long)]
    download: bool,
    /// URL for --download.
    #[arg(long, value_name = "URL", default_value = download::OFFICIAL_URL, requires = "download")]
    url: String,
    /// Expected md5 for --download.
    #[arg(long, value_name = "HEX", default_value = download::OFFICIAL_MD5, requires = "download")]
    md5: String,
    /// Where --download keeps the archive [default: OUT/../downloads/cifar-10-binary.tar.gz].
    #[arg(long, value_name = "FILE", requires = "download")]
    archive: Option<PathBuf>,
    /// Store folder to write [default: datasets/synthetic for --synthetic, else datasets/cifar10].
    #[arg(long, short, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace an existing store.
    #[arg(long)]
    force: bool,
    /// Re-open the written store and recompute its checksums.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// Store folder (holds train.store and test.store).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Recompute the payload checksums.
    #[arg(long)]
    verify: bool,
    /// Write a PNG grid of the first training images of every class.
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// Images per class in the grid.
    #[arg(long, value_name = "N", default_value_t = 10)]
    grid_per_class: usize,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct OutputArgs {
    /// Print the summary as one JSON object on stdout (progress and messages go to stderr).
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect(args)) => inspect(args),
        None => run_prep(cli.prep),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_prep(args: PrepArgs) -> Result<()> {
    let start = Instant::now();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.synthetic {
            DEFAULT_SYNTHETIC_OUT
        } else {
            DEFAULT_OUT
        })
    });
    // Refuse before spending seconds on decoding.
    prep::check_destination(&out, args.force)?;
    let bar = progress_bar(args.output.quiet);
    let dataset = if args.synthetic {
        synthetic::generate(args.per_class, args.seed, &bar)
    } else if args.download {
        let archive = args
            .archive
            .clone()
            .unwrap_or_else(|| default_archive(&out));
        let path = download::fetch(&args.url, &archive, &args.md5, &bar)?;
        source::load(&path, &bar)?.1
    } else if let Some(path) = &args.source {
        let (kind, dataset) = source::load(path, &bar)?;
        bar.println(format!("source: {} ({kind:?})", path.display()));
        dataset
    } else {
        bail!("nothing to prep: give --source PATH, --synthetic or --download (see --help)");
    };
    let mut summary = prep::write_store(&dataset, &out, args.force, &bar)?;
    drop(dataset);
    if args.verify {
        let verified = Summary::of_dir(&out, true).context("verifying the written store")?;
        summary.verified = verified.verified;
    }
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    report(
        &summary,
        args.output.json,
        &format!("wrote {}", out.display()),
    )
}

fn inspect(args: InspectArgs) -> Result<()> {
    let start = Instant::now();
    let mut summary = Summary::of_dir(&args.dir, args.verify)?;
    if let Some(png) = &args.grid {
        prep::write_grid(&args.dir, Split::Train, args.grid_per_class, png)?;
        eprintln!("grid: {}", png.display());
    }
    summary.seconds = start.elapsed().as_secs_f64();
    report(
        &summary,
        args.output.json,
        &format!("store {}", args.dir.display()),
    )
}

fn report(summary: &Summary, json: bool, title: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!("{title}\n{summary}");
    }
    Ok(())
}

fn default_archive(out: &Path) -> PathBuf {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join("downloads").join("cifar-10-binary.tar.gz")
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>18} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
