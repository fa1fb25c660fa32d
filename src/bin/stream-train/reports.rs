//! What a person sees while a run or a drain goes on: progress bars, per-epoch lines, the
//! profile table and its JSON lines, and the Ctrl-C handler.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cifar_stream::stream::{DrainObserver, EpochStats};
use cifar_stream::telemetry::{EpochProfile, ProfileLog, Profiler};
use cifar_stream::train::{self, EpochMetrics};

use crate::clock::RunClock;

/// The first Ctrl-C sets `cancel` (the run saves and stops); a second one kills the process.
pub fn on_ctrl_c(cancel: Arc<AtomicBool>) -> Result<()> {
    ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after saving (Ctrl-C again to kill)");
    })
    .context("installing the Ctrl-C handler")
}

/// `--profile-json FILE`, opened for appending.
pub fn profile_log(path: Option<&Path>) -> Result<Option<ProfileLog>> {
    path.map(|p| ProfileLog::open(p).with_context(|| format!("opening {}", p.display())))
        .transpose()
}

/// The epoch's profile: the stage spans recorded since the last call, with the stream's figures.
fn profile(stats: &EpochStats, profiler: &Profiler) -> EpochProfile {
    EpochProfile::new(
        stats.epoch,
        stats.images,
        stats.wall_seconds,
        stats.mean_depth(),
        stats.stall(),
        profiler.take(),
    )
}

/// A bar over one epoch, hidden when `quiet`.
pub fn progress_bar(quiet: bool, epoch: usize, epochs: usize, length: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length as u64), ProgressDrawTarget::stderr());
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

/// Progress bars and per-epoch lines for a training run (rank 0's; other ranks stay silent).
pub struct Bars {
    pub quiet: bool,
    /// Rank 0 (or the only process): the one that prints.
    pub main: bool,
    /// The epoch's `(seconds, of which in collectives)` per rank, when there are several.
    pub rank_seconds: Vec<(f64, f64)>,
    pub epochs: usize,
    /// Whether the run keeps an EMA model (its evaluation is printed beside the raw one's).
    pub ema: bool,
    pub bar: ProgressBar,
    pub profiler: Profiler,
    pub profile_log: Option<ProfileLog>,
    /// The epoch's training profile, closed before evaluation, printed with the epoch's line.
    pub profile: Option<EpochProfile>,
    /// The whole run's time: the early estimate, the bar's tail, the lines off a terminal.
    pub clock: RunClock,
}

impl train::Observer for Bars {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        self.bar = progress_bar(self.quiet, epoch, self.epochs, batches);
        self.clock.epoch_start(epoch, batches);
    }
    fn train_end(&mut self, trained: &train::TrainedEpoch) {
        // Evaluation's time and its own stream stay out of the training profile; what the
        // producer prefetches for the next epoch meanwhile belongs to the next one.
        self.profile = Some(profile(&trained.stats, &self.profiler));
        self.rank_seconds = trained.rank_seconds.clone();
        self.clock.train_end();
    }
    fn step(&mut self, loss: Option<f64>) {
        self.bar.inc(1);
        let lines = self.clock.step(loss);
        if self.quiet {
            return;
        }
        for line in lines {
            // Above a drawn bar, or plainly to a log.
            match self.bar.is_hidden() {
                true => eprintln!("{line}"),
                false => self.bar.println(line),
            }
        }
        self.bar.set_message(self.clock.bar_message());
    }
    fn epoch_end(&mut self, m: &EpochMetrics, stats: &EpochStats) {
        self.bar.finish_and_clear();
        self.clock.epoch_end(m.test_loss.is_some());
        let profile = self
            .profile
            .take()
            .unwrap_or_else(|| profile(stats, &self.profiler));
        // Every rank keeps its own profile when asked for one. The observer cannot fail the
        // run; a profile that cannot be written is reported.
        if let Some(log) = self.profile_log.as_mut() {
            if let Err(e) = log.append(&profile) {
                eprintln!("warning: --profile-json {}: {e}", log.path().display());
            }
        }
        if !self.main {
            return; // other ranks print nothing
        }
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
        let busy = m
            .gpu_busy
            .map_or(String::new(), |b| format!("  GPU busy {:.1}%", b * 100.0));
        println!(
            "epoch {:>3}/{}: lr {:.5}  train loss {:.4} acc {:.2}%  {test}{ema}  {:.0} img/s  stall {:.1}%{busy}  {:.1} s",
            m.epoch + 1,
            self.epochs,
            m.lr,
            m.train_loss,
            m.train_acc * 100.0,
            m.images_per_second,
            m.trainer_stall * 100.0,
            m.seconds
        );
        if self.rank_seconds.len() > 1 {
            let (slowest, (secs, comm)) = self
                .rank_seconds
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                .expect("several ranks");
            let fastest = self
                .rank_seconds
                .iter()
                .map(|r| r.0)
                .fold(f64::MAX, f64::min);
            println!(
                "  {} ranks: slowest rank {slowest} {secs:.1} s ({comm:.1} s in all-reduce), fastest {fastest:.1} s",
                self.rank_seconds.len()
            );
        }
        tracing::info!("{profile}");
    }
}

/// Progress and the profile table per epoch for `--pipeline-only`.
pub struct DrainReport<'a> {
    pub quiet: bool,
    pub epochs: usize,
    pub bar: ProgressBar,
    pub profiler: &'a Profiler,
    pub profile_log: Option<ProfileLog>,
    /// The first error writing the profile log (the drain goes on; the command fails after).
    pub error: Option<std::io::Error>,
}

impl DrainObserver for DrainReport<'_> {
    fn epoch_start(&mut self, epoch: usize, images: usize) {
        self.bar = progress_bar(self.quiet, epoch, self.epochs, images);
    }
    fn batch(&mut self, images: usize) {
        self.bar.inc(images as u64);
    }
    fn epoch_end(&mut self, stats: &EpochStats) {
        self.bar.finish_and_clear();
        let profile = profile(stats, self.profiler);
        print!("{profile}");
        if let Some(log) = self.profile_log.as_mut() {
            if let Err(e) = log.append(&profile) {
                self.error.get_or_insert(e);
            }
        }
    }
}
