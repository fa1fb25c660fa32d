//! Learning-rate schedule settings: which schedule and its parameters. What the rate is at a
//! given step is the trainer's business (`train::schedule`).

use serde::{Deserialize, Serialize};

/// Which schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Cosine annealing with warm restarts.
    Cosine,
    /// Multiply by `gamma` at each milestone epoch.
    MultiStep,
}

/// A learning-rate schedule over iterations: cosine annealing with warm restarts (SGDR) or
/// multi-step decay, with an optional linear warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Which schedule.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Cosine: floor of the learning rate.
    pub min_lr: f64,
    /// Cosine: epochs of the first cycle.
    pub restart_every: f64,
    /// Cosine: each cycle is this many times longer than the previous.
    pub restart_mult: f64,
    /// Multi-step: epochs at which the rate is multiplied by `gamma`.
    pub milestones: Vec<f64>,
    /// Multi-step: decay factor.
    pub gamma: f64,
    /// Linear warm-up from 0 over this many epochs (0 = none).
    pub warmup_epochs: f64,
}
