//! `stream-train`: trains SE-ResNet-D on a prepped store through the streaming pipeline, and
//! offers `eval`, `predict`, `augment-preview` and `augment-bench` beside it.

/// mimalloc: glibc's allocator churns pages under candle's per-op tensor allocations (see
/// `cifar_stream::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};

use candle_core::Tensor;
use cifar_stream::augment::ops::PadFill;
use cifar_stream::augment::{collate, preview, AugmentConfig, Augmenter, Batch, PolicyName};
use cifar_stream::config::TrainConfig;
use cifar_stream::device;
use cifar_stream::model::Precision;
use cifar_stream::ops::{lowered, Kernels};
use cifar_stream::render;
use cifar_stream::store::{Reader, Split};
use cifar_stream::stream::{EpochStats, Loader, LoaderConfig, StreamError};
use cifar_stream::telemetry::{self, EpochProfile, Profiler};
use cifar_stream::train::{self, checkpoint, ScheduleKind, Tta};
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

/// The main job's flags: a preset, a TOML file over it, these flags over both.
#[derive(Args)]
struct RunArgs {
    /// Starting point: seed (the report's best row), seed-a, seed-b, tiny (small CPU model).
    #[arg(long, default_value = "seed")]
    preset: String,
    /// TOML file whose keys override the preset (same names as the run's config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the layer table, `parameters: N` and `flops: N`, and exit without touching data.
    #[arg(long)]
    summary: bool,
    /// Print the fully resolved configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Continue the run saved in DIR (its config.toml is used; flags still override).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: cuda when built with it and a GPU is present, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Convolution/BatchNorm implementation: fast (this crate's ops with explicit backward
    /// passes, CPU f32) or stock (candle-nn's) [default: fast; GPUs use candle's either way].
    #[arg(long, value_enum)]
    kernels: Option<Kernels>,
    /// Evaluate on the test split every N epochs (and after the last) [default: 1].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Stop each training epoch after N batches (a quick run, or a profile of N steps); the
    /// learning-rate schedule counts the shorter epoch [default: every batch].
    #[arg(long, value_name = "N")]
    limit_train_batches: Option<usize>,
    /// Compute precision: f32, or bf16 (bf16 convolutions and activations; f32 master weights,
    /// BatchNorm, loss and optimizer) [default: f32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Test-time augmentation of every evaluation: none, or flip (average the logits of each test
    /// image and its mirror; twice the evaluation time) [default: none].
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    /// Store folder (holds train.store and test.store) [preset: datasets/cifar10; tiny: datasets/synthetic].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run name; outputs go to RUNS/NAME/ [preset: its name].
    #[arg(long)]
    name: Option<String>,
    /// Folder of runs [default: runs].
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Epochs [seed: 230].
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch [seed: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [seed: 0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// L2 weight decay [seed: 5e-5].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// SGD momentum [seed: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Plain (not Nesterov) momentum.
    #[arg(long)]
    no_nesterov: bool,
    /// No weight decay on BatchNorm parameters and biases.
    #[arg(long)]
    no_decay_bn_bias: bool,
    /// Learning-rate schedule [seed: cosine with warm restarts].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Cosine: epochs of the first cycle [seed: 50].
    #[arg(long)]
    restart_every: Option<f64>,
    /// Cosine: cycle length multiplier [seed: 1].
    #[arg(long)]
    restart_mult: Option<f64>,
    /// Cosine: learning-rate floor [seed: 0].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Multi-step: epochs at which the rate drops, comma-separated [seed: 115,172].
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<f64>>,
    /// Multi-step: factor at each milestone [seed: 0.1].
    #[arg(long)]
    gamma: Option<f64>,
    /// Linear warm-up epochs [seed: 0].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// EMA decay per step, 0 disables [seed: 0.999].
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Label smoothing of the training loss (0 = plain cross-entropy) [default: 0].
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Stem width [seed: 128].
    #[arg(long)]
    stem_width: Option<usize>,
    /// SE hidden size / block output, 0 disables [seed: 0.25].
    #[arg(long)]
    se_ratio: Option<f64>,
    /// Dropout before the classifier [seed: 0.25].
    #[arg(long)]
    dropout: Option<f64>,
    /// Blocks per stage, comma-separated [seed: 3,4,6,3].
    #[arg(long, value_delimiter = ',')]
    blocks: Option<Vec<usize>>,
    /// Bottleneck width per stage, comma-separated [seed: 64,128,256,512].
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Zero-initialise each block's last BatchNorm scale.
    #[arg(long)]
    zero_init_last_bn: bool,
    /// Save a checkpoint every N epochs [seed: 10].
    #[arg(long)]
    save_every: Option<usize>,
    /// Batches ready in the channel ahead of the trainer [default: 4].
    #[arg(long)]
    prefetch: Option<usize>,
    /// Rayon threads for augmentation [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of everything random [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Run only the data path (sampler → store → augmentation → channel) into a null consumer,
    /// print the profile table per epoch and a final `images/s: X` line.
    #[arg(long)]
    pipeline_only: bool,
    /// Drop each epoch's last short batch (--pipeline-only; training always drops it).
    #[arg(long)]
    drop_last: bool,
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

impl RunArgs {
    /// Preset → TOML → flags.
    fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.resume {
            Some(dir) => {
                let text = std::fs::read_to_string(dir.join("config.toml"))
                    .with_context(|| format!("reading {}", dir.join("config.toml").display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing {}", dir.join("config.toml").display()))?
            }
            None => TrainConfig::preset(&self.preset).map_err(anyhow::Error::msg)?,
        };
        if let Some(path) = &self.config {
            c = c.merge_file(path).map_err(anyhow::Error::msg)?;
        }
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(v) = self.$flag.clone() { c.$($field).+ = v; })*
            };
        }
        set!(data => data, name => name, runs => runs, epochs => epochs, batch_size => batch_size,
            lr => schedule.lr, weight_decay => optim.weight_decay, momentum => optim.momentum,
            schedule => schedule.kind, restart_every => schedule.restart_every,
            restart_mult => schedule.restart_mult, min_lr => schedule.min_lr,
            milestones => schedule.milestones, gamma => schedule.gamma,
            warmup_epochs => schedule.warmup_epochs, ema_decay => ema_decay,
            label_smoothing => label_smoothing,
            stem_width => model.stem_width, se_ratio => model.se_ratio, dropout => model.dropout,
            blocks => model.blocks, widths => model.widths, save_every => save_every,
            prefetch => prefetch, threads => threads, seed => seed, kernels => kernels,
            tta => tta, precision => precision, eval_every => eval_every);
        if let Some(n) = self.limit_train_batches {
            c.limit_train_batches = Some(n);
        }
        c.optim.nesterov &= !self.no_nesterov;
        c.optim.no_decay_bn_bias |= self.no_decay_bn_bias;
        c.model.zero_init_last_bn |= self.zero_init_last_bn;
        c.augment = self.augment.apply(&c.augment);
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a PNG grid of N training images × K augmented versions: what the model sees.
    AugmentPreview(PreviewArgs),
    /// Time augmentation + collation called directly in a loop (no channel): prints `images/s: X`.
    AugmentBench(BenchArgs),
    /// Time training steps (forward, backward, SGD) on random images, with no data pipeline:
    /// prints `images/s`, comparable with `tools/torch_reference.py speed`.
    StepBench(Box<StepBenchArgs>),
    /// One training step's logits and gradients on --device against the CPU (same weights and
    /// batch): prints the worst relative errors and fails above --tolerance.
    DeviceCheck(Box<DeviceCheckArgs>),
    /// Time candle's own convolution (forward, input gradient, weight gradient) and BatchNorm at
    /// every layer shape of the model on --device: where a GPU step's time goes, per op.
    OpBench(Box<OpBenchArgs>),
    /// Accuracy, loss and confusion matrix of a saved run on a store split.
    Eval(EvalArgs),
    /// Classify image files (32×32 RGB PNG/JPEG) with a saved run.
    Predict(PredictArgs),
}

#[derive(Args)]
struct StepBenchArgs {
    /// Timed steps (after two untimed warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct DeviceCheckArgs {
    /// Images in the batch.
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Largest accepted ‖device − cpu‖ / ‖cpu‖ for any tensor.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// A tensor also passes when the device is at most this many times further from the f64
    /// reference than the CPU's f32 is (deep f32 gradients are ill-conditioned on any device).
    #[arg(long, default_value_t = 4.0)]
    f64_factor: f64,
    /// Kernels on the CPU side (the reference).
    #[arg(long, value_enum, default_value = "fast")]
    cpu_kernels: Kernels,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct OpBenchArgs {
    /// Timed repetitions per op (median reported), after two warm-ups.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Run folder holding checkpoint.json and checkpoint.safetensors.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Store folder [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    train_split: bool,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    raw: bool,
    /// Test-time augmentation: none or flip [default: the run's].
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
struct PredictArgs {
    /// Run folder holding checkpoint.json and checkpoint.safetensors.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    raw: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
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

/// Augmentation flags shared by every command that augments; unset flags keep the preset's value.
#[derive(Args, Clone)]
struct AugmentArgs {
    /// Policy ops: pba (recipe), autoaugment, randaugment, basic (crop + flip only), none.
    #[arg(long, value_enum)]
    augment: Option<PolicyName>,
    /// RandAugment: ops per image [preset: 2].
    #[arg(long)]
    randaugment_n: Option<usize>,
    /// RandAugment: level 0–10 [preset: 9].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=10))]
    randaugment_m: Option<u8>,
    /// Disable the random pad-and-crop.
    #[arg(long)]
    no_crop: bool,
    /// Crop padding on every side [preset: 4].
    #[arg(long)]
    crop_padding: Option<usize>,
    /// What fills the crop padding [preset: mean].
    #[arg(long, value_enum)]
    crop_fill: Option<PadFill>,
    /// Disable the random horizontal flip.
    #[arg(long)]
    no_flip: bool,
    /// Cutout holes per image, 0 disables [preset: 3; basic/none: 0].
    #[arg(long)]
    cutout_holes: Option<usize>,
    /// Cutout square side in pixels [preset: 4].
    #[arg(long)]
    cutout_length: Option<usize>,
}

impl AugmentArgs {
    /// `base` with these flags applied; choosing a policy starts from that policy's defaults.
    fn apply(&self, base: &AugmentConfig) -> AugmentConfig {
        let mut c = match self.augment {
            Some(p) if p != base.policy => AugmentConfig {
                cutout_length: base.cutout_length,
                ..AugmentConfig::with_policy(p)
            },
            _ => base.clone(),
        };
        if let Some(n) = self.randaugment_n {
            c.randaugment_n = n;
        }
        if let Some(m) = self.randaugment_m {
            c.randaugment_m = m;
        }
        c.crop &= !self.no_crop;
        c.flip &= !self.no_flip;
        if let Some(p) = self.crop_padding {
            c.crop_padding = p;
        }
        if let Some(f) = self.crop_fill {
            c.crop_fill = f;
        }
        if let Some(h) = self.cutout_holes {
            c.cutout_holes = h;
        }
        if let Some(l) = self.cutout_length {
            c.cutout_length = l;
        }
        c
    }

    fn config(&self) -> AugmentConfig {
        self.apply(&AugmentConfig::recipe())
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
    cifar_stream::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::AugmentPreview(args)) => augment_preview(args).map(|()| ExitCode::SUCCESS),
        Some(Command::AugmentBench(args)) => augment_bench(args).map(|()| ExitCode::SUCCESS),
        Some(Command::StepBench(args)) => step_bench(args).map(|()| ExitCode::SUCCESS),
        Some(Command::DeviceCheck(args)) => device_check(args),
        Some(Command::OpBench(args)) => op_bench(args).map(|()| ExitCode::SUCCESS),
        Some(Command::Eval(args)) => eval(args).map(|()| ExitCode::SUCCESS),
        Some(Command::Predict(args)) => predict(args).map(|()| ExitCode::SUCCESS),
        None => run(cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn augment_preview(args: PreviewArgs) -> Result<()> {
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
    Ok(())
}

fn augment_bench(args: BenchArgs) -> Result<()> {
    let reader = open_train(&args.data)?;
    ensure!(
        reader.len() >= args.batch_size,
        "the store holds fewer than {} images",
        args.batch_size
    );
    let aug = Augmenter::for_store(
        &args.augment.config(),
        args.epochs,
        args.seed,
        reader.header(),
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
        args.augment.config().policy,
        pool.current_num_threads(),
        args.batch_size,
        images,
        seconds
    );
    println!("images/s: {:.0}", images / seconds);
    Ok(())
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let config = args.resolve()?;
    if args.summary {
        print_summary(&config);
        return Ok(ExitCode::SUCCESS);
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let profiler = Profiler::default();
    let _trace = telemetry::init(&profiler, args.trace.as_deref());
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // The first Ctrl-C stops cleanly (the trainer saves a checkpoint); a second one kills.
        ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping after saving (Ctrl-C again to kill)");
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("augment-{i}"));
    if config.threads > 0 {
        pool = pool.num_threads(config.threads);
    }
    let pool = Arc::new(pool.build()?);
    if args.pipeline_only {
        return pipeline_only(&args, &config, pool, cancel, &profiler);
    }
    let device = device::select(args.device.as_deref())?;
    eprintln!("device: {}", device::describe(&device));
    let dir = config.run_dir();
    if args.resume.is_none() && checkpoint::state_path(&dir).exists() {
        anyhow::bail!(
            "{} already holds a run: pass --resume {} to continue it, or --name to start another",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    render::write_atomic(&dir.join("config.toml"), config.to_toml().as_bytes())?;
    eprintln!(
        "run {}: preset {}, {} parameters, {} flops/image, {} epochs, outputs in {}",
        config.name,
        config.preset,
        config.model.parameter_count(),
        2 * config.model.macs(32, 32),
        config.epochs,
        dir.display()
    );
    let ema = config.ema_decay > 0.0;
    let profile_json = open_profile_json(args.profile_json.as_deref())?;
    let mut observer = Bars::new(args.quiet, config.epochs, ema, profiler, profile_json);
    let outcome = train::train(
        &config,
        &device,
        args.resume.is_some(),
        pool,
        cancel,
        &mut observer,
    )?;
    // The final epoch is always evaluated; a run stopped early reports its last evaluation.
    let evaluated = outcome.history.iter().rev().find(|m| m.test_acc.is_some());
    if let Some(m) = evaluated {
        if Some(m) != outcome.history.last() {
            println!("last evaluated: epoch {}", m.epoch + 1);
        }
        let pct = |v: Option<f64>| v.unwrap_or(f64::NAN) * 100.0;
        // The model the run says it delivers, chosen before looking: picking the better of the
        // two would select on the test set.
        let delivered = if ema {
            println!("ema test accuracy: {:.2}%", pct(m.ema_test_acc));
            println!("raw test accuracy: {:.2}%", pct(m.test_acc));
            m.ema_test_acc
        } else {
            m.test_acc
        };
        println!("test accuracy: {:.2}%", pct(delivered));
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted: checkpoint saved; continue with --resume {}",
            dir.display()
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(config: &TrainConfig) {
    println!(
        "{:<24} {:>8} {:>6} {:>6} {:>9} {:>12} {:>14}",
        "layer", "kind", "in", "out", "output", "params", "macs"
    );
    for l in config.model.layers(32, 32) {
        println!(
            "{:<24} {:>8} {:>6} {:>6} {:>9} {:>12} {:>14}",
            l.name,
            l.kind,
            l.cin,
            l.cout,
            format!("{}x{}", l.out_hw.0, l.out_hw.1),
            l.params,
            l.macs
        );
    }
    println!("parameters: {}", config.model.parameter_count());
    println!("macs: {}", config.model.macs(32, 32));
    println!("flops: {}", 2 * config.model.macs(32, 32));
}

/// `--profile-json`: the file each epoch's profile is appended to as one JSON line.
fn open_profile_json(path: Option<&Path>) -> Result<Option<std::fs::File>> {
    path.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))
    })
    .transpose()
}

/// Progress bars and per-epoch lines for a training run.
struct Bars {
    quiet: bool,
    epochs: usize,
    /// Whether the run keeps an EMA model (its evaluation is printed beside the raw one's).
    ema: bool,
    bar: ProgressBar,
    profiler: Profiler,
    profile_json: Option<std::fs::File>,
}

impl Bars {
    fn new(
        quiet: bool,
        epochs: usize,
        ema: bool,
        profiler: Profiler,
        profile_json: Option<std::fs::File>,
    ) -> Self {
        Bars {
            quiet,
            epochs,
            ema,
            bar: ProgressBar::hidden(),
            profiler,
            profile_json,
        }
    }
}

impl train::Observer for Bars {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        self.profiler.take();
        self.bar = progress_bar(self.quiet, epoch, self.epochs);
        self.bar.set_length(batches as u64);
    }
    fn step(&mut self, loss: Option<f64>) {
        self.bar.inc(1);
        if let Some(loss) = loss {
            self.bar.set_message(format!("loss {loss:.3}"));
        }
    }
    fn epoch_end(&mut self, m: &train::EpochMetrics, stats: &EpochStats) {
        self.bar.finish_and_clear();
        let test = match (m.test_loss, m.test_acc) {
            (Some(loss), Some(acc)) => format!("test loss {loss:.4} acc {:.2}%", acc * 100.0),
            _ => "test (not evaluated)".to_string(),
        };
        let ema = match (self.ema, m.ema_test_loss, m.ema_test_acc) {
            (true, Some(loss), Some(acc)) => {
                format!("  ema loss {loss:.4} acc {:.2}%", acc * 100.0)
            }
            _ => String::new(),
        };
        println!(
            "epoch {:>3}/{}: lr {:.5}  train loss {:.4} acc {:.2}%  {test}{ema}  {:.0} img/s  stall {:.1}%  {:.1} s",
            m.epoch + 1,
            self.epochs,
            m.lr,
            m.train_loss,
            m.train_acc * 100.0,
            m.images_per_second,
            m.trainer_stall * 100.0,
            m.seconds
        );
        let profile = EpochProfile::new(
            m.epoch,
            stats.images,
            stats.wall_seconds,
            stats.mean_depth(),
            stats.stall(),
            self.profiler.take(),
        );
        tracing::info!("{profile}");
        if let Some(f) = self.profile_json.as_mut() {
            // The observer cannot fail the run; a profile that cannot be written is reported.
            let written = serde_json::to_writer(&mut *f, &profile).map_err(std::io::Error::from);
            if let Err(e) = written.and_then(|()| writeln!(f)) {
                eprintln!("warning: --profile-json: {e}");
            }
        }
    }
}

fn pipeline_only(
    args: &RunArgs,
    config: &TrainConfig,
    pool: Arc<rayon::ThreadPool>,
    cancel: Arc<AtomicBool>,
    profiler: &Profiler,
) -> Result<ExitCode> {
    let reader = open_train(&config.data)?;
    let augmenter =
        Augmenter::for_store(&config.augment, config.epochs, config.seed, reader.header());
    let threads = pool.current_num_threads();
    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        drop_last: args.drop_last,
        shuffle: true,
        prefetch: config.prefetch,
        seed: config.seed,
        epochs: 0..config.epochs,
        max_batches: config.limit_train_batches,
    };
    let mut loader = Loader::start(
        Arc::new(reader),
        Arc::new(augmenter),
        pool,
        loader_config,
        cancel,
    );
    let mut profile_json = open_profile_json(args.profile_json.as_deref())?;
    eprintln!(
        "pipeline only: {} epochs of {} batches of {}, augment {:?}, {} threads, prefetch {}",
        config.epochs,
        loader.batches_per_epoch(),
        config.batch_size,
        config.augment.policy,
        threads,
        config.prefetch
    );
    let per_epoch = loader.images_per_epoch() as u64;
    let (mut images, mut seconds) = (0usize, 0f64);
    let mut interrupted = false;
    while let Some(mut epoch) = loader.epoch() {
        let bar = progress_bar(args.quiet, epoch.stats().epoch, config.epochs);
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
            "epoch {prefix} [{bar:40}] {human_pos}/{human_len} {msg} ({per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

/// Loads a saved run: its state and a network holding the EMA (or raw) weights.
fn load_run(
    dir: &Path,
    raw: bool,
    device: &candle_core::Device,
) -> Result<(checkpoint::State, train::Net)> {
    let (state, tensors) = checkpoint::load(dir, device)?;
    let mut config = state.config.clone();
    if config.precision == Precision::Bf16 && device.is_cpu() {
        eprintln!("note: this run trained in bf16; the CPU evaluates it in f32 (no bf16 matmul)");
        config.precision = Precision::F32;
    }
    let net = train::Net::new(&config, device)?;
    let prefix = if raw || state.config.ema_decay <= 0.0 {
        "model."
    } else {
        "ema."
    };
    net.load(&tensors, prefix, dir)?;
    eprintln!(
        "{}: {} weights after {} epochs{}",
        dir.display(),
        if prefix == "ema." { "EMA" } else { "raw" },
        state.next_epoch,
        if state.partial_epoch {
            " (+ a partial epoch)"
        } else {
            ""
        }
    );
    Ok((state, net))
}

fn step_bench(args: Box<StepBenchArgs>) -> Result<()> {
    let config = args.run.resolve()?;
    if config.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .build_global()?;
    }
    let device = device::select(args.run.device.as_deref())?;
    let net = train::Net::new(&config, &device)?;
    let mut sgd = net.optimizer(&config);
    let (b, shape) = (config.batch_size, cifar_stream::store::Shape::CIFAR);
    let mut rng = cifar_stream::seed::rng(config.seed, &[]);
    let pixels: Vec<f32> = (0..b * shape.image_len())
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect();
    let dims = (
        shape.channels as usize,
        shape.height as usize,
        shape.width as usize,
    );
    let x = Tensor::from_vec(pixels, (b, dims.0, dims.1, dims.2), &device)?;
    let labels: Vec<u32> = (0..b)
        .map(|_| rng.u32(0..config.model.num_classes as u32))
        .collect();
    let y = Tensor::from_vec(labels, b, &device)?;
    let mut start = Instant::now();
    for step in 0..args.steps + 2 {
        if step == 2 {
            device.synchronize()?;
            start = Instant::now();
        }
        let lr = config.schedule.lr;
        let smoothing = config.label_smoothing;
        train::step_sgd(
            &net.model,
            &mut sgd,
            None,
            &x,
            &y,
            smoothing,
            lr,
            step as u64,
            step,
        )?;
    }
    device.synchronize()?;
    let rate = (args.steps * b) as f64 / start.elapsed().as_secs_f64();
    println!(
        "candle {} kernels, {} on {}, {} threads, batch {b}: images/s: {rate:.0}",
        net.model.kernels().name(),
        net.model.precision().name(),
        device::describe(&device),
        rayon::current_num_threads(),
    );
    Ok(())
}

fn device_check(args: Box<DeviceCheckArgs>) -> Result<ExitCode> {
    let config = args.run.resolve()?;
    let device = device::select(args.run.device.as_deref())?;
    let side = train::parity::Side {
        device: &device,
        kernels: config.kernels,
        dtype: candle_core::DType::F32,
        precision: config.precision,
    };
    let rows = train::parity::compare(&config, args.images, side, args.cpu_kernels)?;
    println!(
        "{} ({} kernels, {}) vs cpu ({} kernels, f32), preset {}, {} images, {} tensors",
        device::describe(&device),
        config.kernels.name(),
        config.precision.name(),
        args.cpu_kernels.name(),
        config.preset,
        args.images,
        rows.len()
    );
    // A tensor passes when the device is within tolerance of the CPU, or no further from the
    // f64 reference than --f64-factor times the CPU's own f32 rounding.
    let passes = |r: &train::parity::Row| {
        r.vs_cpu <= args.tolerance
            || r.device_vs_exact <= (args.f64_factor * r.cpu_vs_exact).max(args.tolerance)
    };
    println!(
        "  {:>10} {:>10} {:>10}  tensor",
        "vs cpu", "dev vs f64", "cpu vs f64"
    );
    for r in rows.iter().take(5) {
        println!(
            "  {:>10.3e} {:>10.3e} {:>10.3e}  {}{}",
            r.vs_cpu,
            r.device_vs_exact,
            r.cpu_vs_exact,
            r.name,
            if passes(r) { "" } else { "  <- FAIL" }
        );
    }
    let worst = rows.first().map_or(0.0, |r| r.vs_cpu);
    let failed = rows
        .iter()
        .filter(|r| !passes(r) || !r.vs_cpu.is_finite())
        .count();
    let logits = rows
        .iter()
        .find(|r| r.name == "logits")
        .map_or(f64::NAN, |r| r.vs_cpu);
    println!(
        "parity: logits {logits:.3e}, worst tensor {worst:.3e} vs cpu (tolerance {:.0e}); {failed} of {} tensors fail: {}",
        args.tolerance,
        rows.len(),
        if failed == 0 { "ok" } else { "FAIL" }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn op_bench(args: Box<OpBenchArgs>) -> Result<()> {
    use std::collections::BTreeMap;
    let config = args.run.resolve()?;
    let device = device::select(args.run.device.as_deref())?;
    let b = config.batch_size;
    // Distinct convolution shapes (SE's 1×1 maps and the classifier excluded) with their counts.
    // The stride-2 convs are the 3×3 of each later stage's first block (ResNet-D).
    let mut shapes: BTreeMap<(usize, usize, usize, usize, usize), usize> = BTreeMap::new();
    for l in config.model.layers(32, 32) {
        let k = match l.kind {
            "conv3x3" => 3,
            "conv1x1" if l.out_hw != (1, 1) => 1,
            _ => continue,
        };
        let stride = if l.name.ends_with(".0.conv2") && !l.name.starts_with("stage0") {
            2
        } else {
            1
        };
        *shapes
            .entry((k, l.cin, l.cout, l.out_hw.0, stride))
            .or_default() += 1;
    }
    let mut rng = cifar_stream::seed::rng(config.seed, &[0x6f70]);
    let mut random = |dims: &[usize]| -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect();
        Ok(Tensor::from_vec(v, dims, &device)?)
    };
    let time = |f: &mut dyn FnMut() -> Result<Tensor>| -> Result<f64> {
        let mut times = Vec::with_capacity(args.reps);
        for i in 0..args.reps + 2 {
            device.synchronize()?;
            let t = Instant::now();
            let out = f()?;
            device.synchronize()?;
            drop(out);
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    println!(
        "candle's ops on {}, batch {b}, median of {} (ms); total = ms x layers of that shape",
        device::describe(&device),
        args.reps
    );
    println!(
        "{:<28} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "conv (k cin>cout @out s)", "n", "fwd", "dgrad", "wgrad", "dgrad-lo", "wgrad-lo", "bn f+b"
    );
    let mut totals = [0.0f64; 6];
    for ((k, cin, cout, out, stride), n) in shapes {
        let (hin, pad) = (out * stride, k / 2);
        let x = random(&[b, cin, hin, hin])?;
        let w = random(&[cout, cin, k, k])?;
        let dy = random(&[b, cout, out, out])?;
        let fwd = time(&mut || Ok(x.conv2d(&w, pad, stride, 1, 1)?))?;
        // As candle's backprop computes them (candle-core 0.11 backprop.rs, Op::Conv2D).
        let out_pad = hin - ((out - 1) * stride + k - 2 * pad);
        let dgrad = time(&mut || Ok(dy.conv_transpose2d(&w, pad, out_pad, stride, 1)?))?;
        let wgrad = time(&mut || {
            Ok(x.transpose(0, 1)?
                .conv2d(&dy.transpose(0, 1)?, pad, 1, stride, 1)?
                .transpose(0, 1)?)
        })?;
        // The same two gradients as `--kernels fast` computes them off the CPU (ops::lowered).
        let dgrad_lo = time(&mut || Ok(lowered::input_grad(&dy, &w, stride, pad, (hin, hin))?))?;
        let wgrad_lo = time(&mut || Ok(lowered::weight_grad(&x, &dy, (k, k), stride, pad)?))?;
        let vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &device);
        let bn = cifar_stream::ops::BatchNorm::new(cout, 1e-5, vb)?;
        let y = candle_core::Var::from_tensor(&dy)?;
        let bnt = time(&mut || {
            let o = bn.forward(y.as_tensor(), true, false, config.kernels)?;
            o.sum_all()?.backward()?;
            Ok(o)
        })?;
        let row = [fwd, dgrad, wgrad, dgrad_lo, wgrad_lo, bnt];
        for (t, r) in totals.iter_mut().zip(row) {
            *t += r * n as f64;
        }
        println!(
            "{:<28} {n:>3} {fwd:>9.3} {dgrad:>9.3} {wgrad:>9.3} {dgrad_lo:>9.3} {wgrad_lo:>9.3} {bnt:>9.3}",
            format!("{k}x{k} {cin}>{cout} @{out} s{stride}")
        );
    }
    // Shares of a step as candle computes it (stock backward).
    let sum = totals[0] + totals[1] + totals[2] + totals[5];
    let pct = |t: f64| 100.0 * t / sum;
    println!(
        "total ms per step: conv fwd {:.1} ({:.0}%), conv dgrad {:.1} ({:.0}%), conv wgrad {:.1} ({:.0}%), bn {:.1} ({:.0}%)",
        totals[0], pct(totals[0]), totals[1], pct(totals[1]),
        totals[2], pct(totals[2]), totals[5], pct(totals[5])
    );
    println!(
        "lowered backward (ops::lowered, --kernels fast off the CPU): dgrad {:.1} ms, wgrad {:.1} ms (stock: {:.1}, {:.1})",
        totals[3], totals[4], totals[1], totals[2]
    );
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let device = device::select(args.device.as_deref())?;
    let (state, net) = load_run(&args.checkpoint, args.raw, &device)?;
    let data = args.data.unwrap_or_else(|| state.config.data.clone());
    let split = if args.train_split {
        Split::Train
    } else {
        Split::Test
    };
    let reader = Reader::open(split.path_in(&data))
        .with_context(|| format!("opening {}", split.path_in(&data).display()))?;
    let shape = reader.shape();
    let aug = Augmenter::normalise_only(shape, &state.mean, &state.std);
    let pool = Arc::new(rayon::ThreadPoolBuilder::new().build()?);
    let e = train::evaluate(
        &net.model,
        Arc::new(reader),
        Arc::new(aug),
        pool,
        state.config.eval_batch_size,
        args.tta.unwrap_or(state.config.tta),
        &device,
    )?;
    let classes = &state.classes;
    let w = classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    print!("{:>w$}", "true\\pred");
    for k in 0..classes.len() {
        print!(" {:>6}", &classes[k][..classes[k].len().min(6)]);
    }
    println!(" {:>7}", "recall");
    for (k, row) in e.confusion.iter().enumerate() {
        print!("{:>w$}", classes[k]);
        for v in row {
            print!(" {v:>6}");
        }
        let n: u64 = row.iter().sum();
        println!(" {:>6.1}%", 100.0 * row[k] as f64 / n.max(1) as f64);
    }
    println!("loss: {:.4}", e.loss);
    println!("{} accuracy: {:.2}%", split.name(), e.accuracy * 100.0);
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    let device = device::select(args.device.as_deref())?;
    let (state, net) = load_run(&args.checkpoint, args.raw, &device)?;
    let shape = cifar_stream::store::Shape::CIFAR;
    let aug = Augmenter::normalise_only(shape, &state.mean, &state.std);
    let mut pixels = Vec::with_capacity(args.images.len() * shape.image_len());
    for path in &args.images {
        let img = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            img.width() == shape.width && img.height() == shape.height,
            "{}: image is {}x{}, the model takes {}x{} (resize it first)",
            path.display(),
            img.width(),
            img.height(),
            shape.width,
            shape.height
        );
        pixels.extend_from_slice(img.to_rgb8().as_raw());
    }
    let mut x = vec![0f32; pixels.len()];
    for (src, out) in pixels
        .chunks(shape.image_len())
        .zip(x.chunks_mut(shape.image_len()))
    {
        aug.augment_into(src, 0, 0, out);
    }
    let n = args.images.len();
    let x = Tensor::from_vec(x, (n, 3, 32, 32), &device)?;
    let probs =
        candle_nn::ops::softmax(&net.model.forward(&x, cifar_stream::model::Mode::Eval)?, 1)?;
    let probs: Vec<Vec<f32>> = probs.to_vec2()?;
    for (path, p) in args.images.iter().zip(probs) {
        let (k, best) =
            p.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        println!(
            "{}: {} ({:.1}%)",
            path.display(),
            state.classes[k],
            best * 100.0
        );
    }
    Ok(())
}

/// Opens the training split of the store in `data`, saying what to do when there is none.
fn open_train(data: &Path) -> Result<Reader> {
    Reader::open(Split::Train.path_in(data)).with_context(|| {
        format!(
            "opening the store in {} (run prep-dataset first)",
            data.display()
        )
    })
}
