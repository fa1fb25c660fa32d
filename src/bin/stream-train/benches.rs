//! Benchmarks a person runs by hand: augmentation alone, the training step alone, and the
//! step's ops one by one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;

use cifar_stream::augment::{self, collate, Augmenter, Batch};
use cifar_stream::device::describe;
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::diag::timing;

use crate::args::{positive, NetArgs, OptimFlags, PrecisionFlag};
use crate::finish::Finish;
use crate::pipeline::open_train;
use crate::stream_args::{AugmentFlags, BatchFlag, GraphFlags, SeedFlag, ThreadsFlag};

/// `augment-bench`.
#[derive(Args)]
pub struct AugmentBenchArgs {
    /// Store folder (holds train.store).
    #[arg(long, default_value = "datasets/cifar10")]
    data: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    batch_size: usize,
    /// Batches to time (after one untimed warm-up batch).
    #[arg(long, default_value_t = 200, value_parser = positive)]
    batches: usize,
    /// Rayon threads [default: all cores].
    #[arg(long, default_value_t = 0)]
    threads: usize,
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
    augment: AugmentFlags,
}

/// `augment-bench`: augmentation + collation in a loop, no channel.
pub fn augment(args: AugmentBenchArgs) -> Result<Finish> {
    let reader = open_train(&args.data)?;
    ensure!(
        reader.len() >= args.batch_size,
        "the store holds fewer than {} images",
        args.batch_size
    );
    let config = args.augment.config();
    let aug = Augmenter::for_store(&config, args.epochs, args.seed, reader.header());
    let mut order: Vec<usize> = (0..reader.len()).collect();
    fastrand::Rng::with_seed(args.seed).shuffle(&mut order);
    let pool = augment::thread_pool(args.threads)?;
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
        config.policy,
        pool.current_num_threads(),
        args.batch_size,
        images,
        seconds
    );
    println!("images/s: {:.0}", images / seconds);
    Ok(Finish::Done)
}

/// `step-bench`: the flags of the model, the step and the optimizer.
#[derive(Args)]
pub struct StepBenchArgs {
    /// Timed steps (after two untimed warm-up steps).
    #[arg(long, default_value_t = 20, value_parser = positive)]
    steps: usize,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    precision: PrecisionFlag,
    #[command(flatten)]
    optim: OptimFlags,
    #[command(flatten)]
    batch: BatchFlag,
    #[command(flatten)]
    seed: SeedFlag,
    #[command(flatten)]
    threads: ThreadsFlag,
    #[command(flatten)]
    graph: GraphFlags,
}

/// Sizes rayon's global pool, which candle's CPU ops run on (0 keeps one thread per core).
fn global_threads(config: &TrainConfig) -> Result<()> {
    if config.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .build_global()?;
    }
    Ok(())
}

/// `step-bench`: training steps on one random batch.
pub fn step(args: StepBenchArgs) -> Result<Finish> {
    let config = args.net.resolve(&[
        &args.precision,
        &args.optim,
        &args.batch,
        &args.seed,
        &args.threads,
        &args.graph,
    ])?;
    global_threads(&config)?;
    let device = args.net.device.select()?;
    let rate = timing::step_rate(&config, &device, args.steps)?;
    println!(
        "candle {} kernels, {} on {}, {} threads, batch {}: images/s: {:.0}",
        rate.kernels,
        rate.precision,
        describe(&device),
        rayon::current_num_threads(),
        config.batch_size,
        rate.images_per_second
    );
    if let Some((used, reserved)) = rate.memory_peak {
        println!("peak memory: {} / {} MiB", used >> 20, reserved >> 20);
    }
    if let Some(graph) = &rate.graph {
        println!("CUDA graph: {graph}");
    }
    println!("ops per step: {}", rate.ops_per_step);
    Ok(Finish::Done)
}

/// `op-bench`: the model's convolution shapes and the ops' settings.
#[derive(Args)]
pub struct OpBenchArgs {
    /// Timed repetitions per op (median reported), after two warm-ups.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    reps: usize,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    batch: BatchFlag,
    #[command(flatten)]
    seed: SeedFlag,
}

/// `op-bench`: candle's conv forward / dgrad / wgrad, the lowered backward and BatchNorm per
/// layer shape, and their shares of a step.
pub fn ops(args: OpBenchArgs) -> Result<Finish> {
    let config = args.net.resolve(&[&args.batch, &args.seed])?;
    let device = args.net.device.select()?;
    let rows = timing::op_times(&config, &device, args.reps)?;
    println!(
        "candle's ops on {}, batch {}, median of {} (ms); total = ms x layers of that shape",
        describe(&device),
        config.batch_size,
        args.reps
    );
    println!(
        "{:<28} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "conv (k cin>cout @out s)",
        "n",
        "fwd",
        "dgrad",
        "wgrad",
        "dgrad-lo",
        "wgrad-lo",
        "bn f+b",
        "conv f+b"
    );
    let mut totals = [0.0f64; 7];
    for r in &rows {
        let times = [
            r.forward,
            r.dgrad,
            r.wgrad,
            r.dgrad_lowered,
            r.wgrad_lowered,
            r.batch_norm,
            r.conv,
        ];
        for (t, v) in totals.iter_mut().zip(times) {
            *t += v * r.layers as f64;
        }
        let s = r.shape;
        let name = format!(
            "{}x{} {}>{} @{} s{}",
            s.kh,
            s.kw,
            s.c,
            s.k,
            s.ho(),
            s.stride
        );
        print!("{name:<28} {:>3}", r.layers);
        for v in times {
            print!(" {v:>9.3}");
        }
        println!();
    }
    // Shares of a step as candle computes it (stock backward).
    let [fwd, dgrad, wgrad, dgrad_lo, wgrad_lo, bn, conv] = totals;
    let pct = |t: f64| 100.0 * t / (fwd + dgrad + wgrad + bn);
    println!(
        "total ms per step: conv fwd {fwd:.1} ({:.0}%), conv dgrad {dgrad:.1} ({:.0}%), conv wgrad {wgrad:.1} ({:.0}%), bn {bn:.1} ({:.0}%)",
        pct(fwd), pct(dgrad), pct(wgrad), pct(bn)
    );
    println!(
        "lowered backward (ops::conv::lowered): dgrad {dgrad_lo:.1} ms, wgrad {wgrad_lo:.1} ms (stock: {dgrad:.1}, {wgrad:.1})"
    );
    let tails = timing::tail_times(&config, &device, args.reps)?;
    println!(
        "{:<28} {:>3} {:>9} {:>9}",
        "block tail (n c h w)", "n", "tail f+b", "sq f+b"
    );
    let (mut tail, mut squeeze) = (0.0, 0.0);
    for t in &tails {
        let [n, c, h, w] = t.shape;
        println!(
            "{:<28} {:>3} {:>9.3} {:>9.3}",
            format!("{n} {c} {h} {w}"),
            t.blocks,
            t.tail,
            t.squeeze
        );
        tail += t.tail * t.blocks as f64;
        squeeze += t.squeeze * t.blocks as f64;
    }
    println!(
        "fast-path ms per step: conv f+b {conv:.1}, bn f+b {bn:.1}, tail f+b {tail:.1}, squeeze f+b {squeeze:.1} ({} kernels)",
        config.kernels.name()
    );
    if cfg!(feature = "cudnn") && config.kernels == cifar_stream::ops::Kernels::Fast {
        println!("cudnn conv: f+b {conv:.1} ms per step with cached plans (candle's: fwd {fwd:.1} + dgrad {dgrad:.1} + wgrad {wgrad:.1})");
    }
    Ok(Finish::Done)
}
