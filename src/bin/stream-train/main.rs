//! `stream-train`: trains SE-ResNet-D on a prepped store through the streaming pipeline, and
//! offers `eval`, `predict`, augmentation views, benchmarks and a device check beside it.
//!
//! This file is dispatch and exit codes; each command lives in its own module, and every rule
//! a second front end would need lives in the library.

/// mimalloc: glibc's allocator churns pages under candle's per-op tensor allocations (see
/// `cifar_stream::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Copies each `Some` flag into its config field (flag groups in `args` and `stream_args`).
macro_rules! set {
    ($self:ident, $c:ident: $($flag:ident => $($field:ident).+),* $(,)?) => {
        $(if let Some(v) = $self.$flag.clone() { $c.$($field).+ = v; })*
    };
}

mod args;
mod benches;
mod checks;
mod clock;
mod eval;
mod finish;
mod pipeline;
mod ranks;
mod reports;
mod runs;
mod stream_args;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use finish::Finish;

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
    run: train::TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a PNG grid of N training images × K augmented versions: what the model sees.
    AugmentPreview(pipeline::PreviewArgs),
    /// Time augmentation + collation called directly in a loop (no channel): prints `images/s: X`.
    AugmentBench(benches::AugmentBenchArgs),
    /// Time training steps (forward, backward, SGD) on random images, with no data pipeline:
    /// prints `images/s`, comparable with `tools/torch_reference.py speed`, and the storage ops
    /// one step dispatches (each a kernel launch on CUDA).
    StepBench(Box<benches::StepBenchArgs>),
    /// One whole training step's logits and gradients on --device against the CPU (same weights
    /// and batch) and f64: prints the worst relative errors and fails above --tolerance.
    #[command(alias = "device-check")]
    CheckStep(Box<checks::CheckStepArgs>),
    /// Every training op's forward pass and gradients on --device (the CUDA kernels) against the
    /// CPU's, in f32 and bf16: what the GPU check runs first.
    #[command(alias = "gpu-test")]
    CheckOps(checks::CheckOpsArgs),
    /// Time candle's own convolution (forward, input gradient, weight gradient) and BatchNorm at
    /// every layer shape of the model on --device: where a GPU step's time goes, per op.
    OpBench(Box<benches::OpBenchArgs>),
    /// Accuracy, loss and confusion matrix of a saved run on a store split.
    Eval(eval::EvalArgs),
    /// Classify image files (of the run's image size, PNG/JPEG) with a saved run.
    Predict(eval::PredictArgs),
    /// A table of the runs under --runs: preset, epochs done/planned, final and best test
    /// accuracy, wall time, and state (finished, interrupted, diverged, running, damaged).
    Runs(runs::RunsArgs),
}

fn main() -> ExitCode {
    cifar_stream::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::AugmentPreview(args)) => pipeline::preview(args),
        Some(Command::AugmentBench(args)) => benches::augment(args),
        Some(Command::StepBench(args)) => benches::step(*args),
        Some(Command::CheckStep(args)) => checks::step(*args),
        Some(Command::OpBench(args)) => benches::ops(*args),
        Some(Command::CheckOps(args)) => checks::ops(args),
        Some(Command::Eval(args)) => eval::eval(args),
        Some(Command::Predict(args)) => eval::predict(args),
        Some(Command::Runs(args)) => runs::runs(args),
        None => train::run(cli.run),
    };
    match result {
        Ok(Finish::Done) => ExitCode::SUCCESS,
        Ok(Finish::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
