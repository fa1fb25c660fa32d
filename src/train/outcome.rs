//! What a run reports: progress callbacks while it trains ([`Observer`]), each epoch's training
//! and evaluation results, and how the run ended ([`Outcome`], its [`Headline`] accuracy).

use std::time::Instant;

use super::evaluate::Evaluation;
use super::metrics::EpochMetrics;
use crate::stream::EpochStats;

/// Steps between reads of the running loss for progress: each read drains the GPU's queue.
pub const LOSS_READ_EVERY: usize = 25;

/// Progress callbacks, so a front end can draw bars without the library knowing about them.
pub trait Observer {
    /// A training epoch starts with `batches` batches.
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    /// One training step was queued; every [`LOSS_READ_EVERY`] steps it carries the epoch's
    /// mean training loss so far (reading it waits for the device, so not every step does).
    fn step(&mut self, _loss: Option<f64>) {}
    /// The epoch's training steps are done (evaluation comes next): the moment to close a
    /// profile of training alone.
    fn train_end(&mut self, _trained: &TrainedEpoch) {}
    /// An epoch finished (metrics computed, files written).
    fn epoch_end(&mut self, _metrics: &EpochMetrics, _stats: &EpochStats) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Metrics of every epoch (including those before a resume).
    pub history: Vec<EpochMetrics>,
    /// True when Ctrl-C (the cancel flag) stopped it.
    pub interrupted: bool,
    /// True when the run keeps an EMA model (the one it delivers).
    pub ema: bool,
}

/// The accuracy a run reports as its result.
#[derive(Clone, Debug, PartialEq)]
pub struct Headline {
    /// The last evaluated epoch (0-based).
    pub epoch: usize,
    /// Whether that is not the last epoch trained (a run stopped early).
    pub stale: bool,
    /// The delivered model's test accuracy: the EMA model's when the run keeps one, else the
    /// raw model's. Chosen before looking: picking the better of the two would select on the
    /// test set.
    pub accuracy: f64,
    /// Raw and EMA accuracies, when the run keeps an EMA.
    pub raw_and_ema: Option<(f64, f64)>,
}

impl Outcome {
    /// The result to report: the delivered model at the last evaluated epoch, if any was.
    pub fn headline(&self) -> Option<Headline> {
        let (i, m) = self
            .history
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.test_acc.is_some())?;
        let raw = m.test_acc?;
        let ema = m.ema_test_acc.unwrap_or(raw);
        Some(Headline {
            epoch: m.epoch,
            stale: i + 1 != self.history.len(),
            accuracy: if self.ema { ema } else { raw },
            raw_and_ema: self.ema.then_some((raw, ema)),
        })
    }
}

/// One epoch's training steps, before evaluation.
#[derive(Clone, Debug)]
pub struct TrainedEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Images trained on.
    pub images: usize,
    /// False when the cancel flag stopped the epoch part-way.
    pub complete: bool,
    /// The stream's counters.
    pub stats: EpochStats,
    /// Seconds of training (the device drained).
    pub seconds: f64,
    /// Every rank's `(training seconds, of which in collectives)`, rank by rank.
    pub rank_seconds: Vec<(f64, f64)>,
    /// When the epoch started (its metrics' wall time counts evaluation too).
    pub started: Instant,
}

/// The test split evaluated with the raw weights and, when the run keeps one, the EMA.
#[derive(Clone, Debug)]
pub struct TestEvaluation {
    /// Raw weights.
    pub raw: Evaluation,
    /// EMA weights (the raw evaluation again when the run keeps no EMA).
    pub ema: Evaluation,
}
