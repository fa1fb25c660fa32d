//! `prep-dataset`'s flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cifar_stream::source::download;

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
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub prep: PrepArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the summary of an existing store (and optionally verify checksums or draw a grid).
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct PrepArgs {
    /// Dataset to convert: official archive/folder, or image folder / .tar / .tar.gz.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["synthetic", "download"])]
    pub source: Option<PathBuf>,
    /// Generate the embedded synthetic dataset instead of reading one.
    #[arg(long, conflicts_with = "download")]
    pub synthetic: bool,
    /// Training images per class for --synthetic (test gets one fifth, at least 1).
    #[arg(long, value_name = "N", default_value_t = 500, requires = "synthetic")]
    pub per_class: usize,
    /// Seed for --synthetic.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "synthetic")]
    pub seed: u64,
    /// Download the official binary archive, verify its md5, then prep it.
    #[arg(long)]
    pub download: bool,
    /// URL for --download.
    #[arg(long, value_name = "URL", default_value = download::OFFICIAL_URL, requires = "download")]
    pub url: String,
    /// Expected md5 for --download.
    #[arg(long, value_name = "HEX", default_value = download::OFFICIAL_MD5, requires = "download")]
    pub md5: String,
    /// Where --download keeps the archive [default: OUT/../downloads/cifar-10-binary.tar.gz].
    #[arg(long, value_name = "FILE", requires = "download")]
    pub archive: Option<PathBuf>,
    /// Store folder to write [default: datasets/synthetic for --synthetic, else datasets/cifar10].
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace an existing store.
    #[arg(long)]
    pub force: bool,
    /// Re-open the written store and recompute its checksums.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Store folder (holds train.store and test.store).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Recompute the payload checksums.
    #[arg(long)]
    pub verify: bool,
    /// Write a PNG grid of the first training images of every class.
    #[arg(long, value_name = "PNG")]
    pub grid: Option<PathBuf>,
    /// Images per class in the grid.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub grid_per_class: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args)]
pub struct OutputArgs {
    /// Print the summary as one JSON object on stdout (progress and messages go to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}
