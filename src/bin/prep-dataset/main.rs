//! `prep-dataset`: turn CIFAR-10 (official binary, image folder, synthetic, or downloaded) into a
//! memory-mapped store, or inspect an existing one.

/// mimalloc: glibc's allocator churns pages under candle's per-op tensor allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cifar_stream::prep;
use cifar_stream::source::{self, download, synthetic};
use cifar_stream::store::{Split, Summary};

use args::{Cli, Command, InspectArgs, PrepArgs};

/// Default store folder for real CIFAR-10 (official, folder or downloaded sources).
const DEFAULT_OUT: &str = "datasets/cifar10";
/// Default store folder for the synthetic dataset.
const DEFAULT_SYNTHETIC_OUT: &str = "datasets/synthetic";

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
