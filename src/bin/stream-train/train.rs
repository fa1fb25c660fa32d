//! The main job: resolve the configuration, then train (or show the network, print the
//! configuration, or run only the data path).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use cifar_stream::dist::Collective;
use cifar_stream::telemetry::{self, Profiler};
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::{self, Trainer};

use crate::args::{NetArgs, OptimFlags, PrecisionFlag, ScheduleFlags};
use crate::clock::RunClock;
use crate::finish::Finish;
use crate::reports::{self, Bars};
use crate::stream_args::{
    AugmentFlags, BatchFlag, DataFlags, GraphFlags, RunFlags, SeedFlag, ThreadsFlag,
};
use crate::{pipeline, ranks};

/// The main job's flags: a preset, a TOML file over it, these flags over both.
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Print the layer table, `parameters: N` and `flops: N`, and exit without touching data.
    #[arg(long, conflicts_with_all = ["print_config", "pipeline_only", "device_flag",
        "kernel_flag", "precision_flag", "optim_flags", "schedule_flags", "data_flags",
        "batch_flag", "seed_flag", "threads_flag", "run_flags", "graph_flags", "augment_flags", "trace",
        "profile_json", "quiet"])]
    pub summary: bool,
    /// Print the fully resolved configuration as TOML and exit.
    #[arg(long, conflicts_with_all = ["pipeline_only", "device_flag", "trace", "profile_json",
        "quiet"])]
    pub print_config: bool,
    /// Continue the run saved in DIR from the exact step its checkpoint holds (its config.toml is
    /// used; flags still override; its outputs stay in DIR).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["name", "runs"])]
    pub resume: Option<PathBuf>,
    /// Run only the data path (sampler → store → augmentation → channel) into a null consumer,
    /// print the profile table per epoch and a final `images/s: X` line.
    #[arg(long, conflicts_with_all = ["device_flag", "model_flags", "kernel_flag",
        "precision_flag", "optim_flags", "schedule_flags", "run_flags", "graph_flags"])]
    pub pipeline_only: bool,
    /// Drop each epoch's last short batch (--pipeline-only; training always drops it).
    #[arg(long, requires = "pipeline_only")]
    pub drop_last: bool,
    /// Write a Chrome trace-event JSON file (open in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Append each epoch's profile as one JSON line to FILE (in a job of several ranks, rank N's
    /// to FILE.rank-N).
    #[arg(long, value_name = "FILE")]
    pub profile_json: Option<PathBuf>,
    /// No progress bar, no progress lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// When stderr is no terminal (nohup, Slurm, CI), a progress line every this many seconds
    /// in place of the bar.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = seconds,
        conflicts_with_all = ["summary", "print_config", "pipeline_only"])]
    pub log_every_seconds: f64,
    /// Average gradients with NCCL on the GPUs (CUDA, built with the nccl feature; in a job of
    /// one rank it still runs, to test NCCL on one GPU).
    #[arg(long, conflicts_with_all = ["summary", "print_config", "pipeline_only"])]
    pub nccl: bool,
    #[command(flatten)]
    pub precision: PrecisionFlag,
    #[command(flatten)]
    pub optim: OptimFlags,
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    #[command(flatten)]
    pub data: DataFlags,
    #[command(flatten)]
    pub batch: BatchFlag,
    #[command(flatten)]
    pub seed: SeedFlag,
    #[command(flatten)]
    pub threads: ThreadsFlag,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(flatten)]
    pub graph: GraphFlags,
    #[command(flatten)]
    pub augment: AugmentFlags,
}

impl TrainArgs {
    /// Preset (or the resumed run's config.toml) → TOML → flags.
    fn resolve(&self) -> Result<TrainConfig> {
        self.net.resolve_from(
            self.resume.as_deref(),
            &[
                &self.precision,
                &self.optim,
                &self.schedule,
                &self.data,
                &self.batch,
                &self.seed,
                &self.threads,
                &self.run,
                &self.graph,
                &self.augment,
            ],
        )
    }
}

/// The main command.
pub fn run(args: TrainArgs) -> Result<Finish> {
    let config = args.resolve()?;
    if args.summary {
        print!("{}", config.model.summary(32, 32));
        return Ok(Finish::Done);
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(Finish::Done);
    }
    let profiler = Profiler::default();
    let _trace = telemetry::init(&profiler, args.trace.as_deref())?;
    if args.pipeline_only {
        let drain = pipeline::DrainArgs {
            drop_last: args.drop_last,
            quiet: args.quiet,
            profile_json: args.profile_json.as_deref(),
        };
        return pipeline::drain(drain, &config, &profiler);
    }
    let world = ranks::join()?;
    ranks::or_abort(world.clone().as_ref(), || {
        train(args, config, profiler, world)
    })
}

/// Trains (or resumes) as one rank of `world`.
fn train(
    args: TrainArgs,
    config: TrainConfig,
    profiler: Profiler,
    world: Arc<dyn Collective>,
) -> Result<Finish> {
    let device = ranks::device(&args.net.device, world.as_ref())?;
    let world = ranks::with_nccl(world, &device, args.nccl)?;
    let (main, rank) = (world.is_main(), world.rank());
    eprintln!("device: {}", cifar_stream::device::describe(&device));
    let started = match &args.resume {
        Some(dir) => Trainer::resume_in(dir, config, device, world),
        None => Trainer::new_in(config, device, world),
    };
    let mut trainer = match started {
        Err(train::Error::RunExists { dir }) => bail!(
            "{} already holds a run: pass --resume {} to continue it, or --name to start another",
            dir.display(),
            dir.display()
        ),
        other => other?,
    };
    reports::on_ctrl_c(trainer.cancel_flag())?;
    let config = trainer.config();
    if main {
        eprintln!(
            "run {}: preset {}, {} parameters, {} flops/image, {} epochs, outputs in {}",
            config.name,
            config.preset,
            config.model.parameter_count(),
            2 * config.model.macs(32, 32),
            config.epochs,
            trainer.dir().display()
        );
    }
    let mut observer = Bars {
        quiet: args.quiet || !main,
        main,
        rank_seconds: Vec::new(),
        epochs: config.epochs,
        ema: trainer.learner().ema_model().is_some(),
        bar: indicatif::ProgressBar::hidden(),
        profiler,
        profile_log: reports::profile_log(
            rank_path(args.profile_json.as_deref(), rank).as_deref(),
        )?,
        profile: None,
        clock: RunClock::new(
            trainer.plan(),
            trainer.device().is_cpu(),
            !std::io::stderr().is_terminal(),
            Duration::from_secs_f64(args.log_every_seconds),
        ),
    };
    let outcome = trainer.fit(&mut observer)?;
    if let Some((used, reserved)) = cifar_stream::device::memory_peak(trainer.device())? {
        eprintln!(
            "peak GPU memory: {} MiB used, {} MiB reserved by the pool",
            used >> 20,
            reserved >> 20
        );
    }
    if !main {
        return Ok(if outcome.interrupted {
            Finish::Interrupted
        } else {
            Finish::Done
        });
    }
    if let Some(h) = outcome.headline() {
        if h.stale {
            println!("last evaluated: epoch {}", h.epoch + 1);
        }
        if let Some((raw, ema)) = h.raw_and_ema {
            println!("ema test accuracy: {:.2}%", ema * 100.0);
            println!("raw test accuracy: {:.2}%", raw * 100.0);
        }
        println!("test accuracy: {:.2}%", h.accuracy * 100.0);
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted: checkpoint saved; continue with --resume {}",
            trainer.dir().display()
        );
        return Ok(Finish::Interrupted);
    }
    Ok(Finish::Done)
}

/// A number of seconds: finite and not negative.
fn seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

/// `--profile-json FILE` for rank `rank`: FILE itself for rank 0, `FILE.rank-N` for the others
/// (each rank keeps its own stage profile).
fn rank_path(path: Option<&std::path::Path>, rank: usize) -> Option<PathBuf> {
    path.map(|p| {
        if rank == 0 {
            p.to_path_buf()
        } else {
            let mut name = p.as_os_str().to_owned();
            name.push(format!(".rank-{rank}"));
            PathBuf::from(name)
        }
    })
}
