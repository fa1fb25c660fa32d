//! Learning-rate schedules, evaluated per iteration: cosine annealing with warm restarts (SGDR)
//! or multi-step decay, with an optional linear warm-up; their settings and what they mean step
//! by step.

use serde::{Deserialize, Serialize};

/// Which schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Cosine annealing with warm restarts.
    Cosine,
    /// Multiply by `gamma` at each milestone epoch.
    MultiStep,
    /// One triangle over the whole run (airbench's): linear from `start_factor · lr` to `lr` at
    /// the fraction `peak_at` of the run, then linear to `end_factor · lr` at its end.
    Triangle,
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
    /// Triangle: the rate at the start, as a fraction of `lr`.
    #[serde(default)]
    pub start_factor: f64,
    /// Triangle: where the rate peaks, as a fraction of the run.
    #[serde(default)]
    pub peak_at: f64,
    /// Triangle: the rate at the end, as a fraction of `lr`.
    #[serde(default)]
    pub end_factor: f64,
}

impl Schedule {
    /// Learning rate at iteration `iter` of a run of `epochs` epochs of `iters_per_epoch`
    /// iterations.
    pub fn lr_at(&self, iter: usize, iters_per_epoch: usize, epochs: usize) -> f64 {
        let epoch = iter as f64 / iters_per_epoch.max(1) as f64;
        let base = match self.kind {
            ScheduleKind::Cosine => {
                // Find the cycle holding `epoch`: lengths T, T·m, T·m², …
                let (mut start, mut len) = (0.0, self.restart_every.max(1e-9));
                while epoch >= start + len {
                    start += len;
                    len *= self.restart_mult.max(1.0);
                }
                let t = (epoch - start) / len;
                self.min_lr
                    + (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            ScheduleKind::MultiStep => {
                let passed = self.milestones.iter().filter(|&&m| epoch >= m).count();
                self.lr * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Triangle => {
                let t = (epoch / epochs.max(1) as f64).min(1.0);
                let p = self.peak_at.clamp(1e-9, 1.0);
                let factor = if t < p {
                    self.start_factor + (1.0 - self.start_factor) * t / p
                } else {
                    1.0 + (self.end_factor - 1.0) * (t - p) / (1.0 - p).max(1e-9)
                };
                self.lr * factor
            }
        };
        if self.warmup_epochs > 0.0 && epoch < self.warmup_epochs {
            base * epoch / self.warmup_epochs
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(every: f64, mult: f64) -> Schedule {
        Schedule {
            kind: ScheduleKind::Cosine,
            lr: 0.01,
            min_lr: 0.0,
            restart_every: every,
            restart_mult: mult,
            milestones: vec![],
            gamma: 0.1,
            warmup_epochs: 0.0,
            start_factor: 0.0,
            peak_at: 0.0,
            end_factor: 0.0,
        }
    }

    #[test]
    fn cosine_restarts_at_known_points() {
        let s = cosine(50.0, 1.0);
        let at = |epoch: f64| s.lr_at((epoch * 100.0) as usize, 100, 200);
        assert!((at(0.0) - 0.01).abs() < 1e-12);
        assert!((at(25.0) - 0.005).abs() < 1e-12, "half way down");
        assert!(at(49.99) < 1e-7);
        assert!((at(50.0) - 0.01).abs() < 1e-12, "restart");
        assert!((at(75.0) - 0.005).abs() < 1e-12);
        let doubling = cosine(10.0, 2.0);
        // Cycles: [0, 10), [10, 30), [30, 70).
        assert!((doubling.lr_at(1000, 100, 70) - 0.01).abs() < 1e-12);
        assert!((doubling.lr_at(2000, 100, 70) - 0.005).abs() < 1e-12);
        assert!((doubling.lr_at(3000, 100, 70) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn multistep_and_warmup_at_known_points() {
        let s = Schedule {
            kind: ScheduleKind::MultiStep,
            milestones: vec![100.0, 150.0],
            warmup_epochs: 5.0,
            ..cosine(50.0, 1.0)
        };
        let at = |epoch: f64| s.lr_at((epoch * 10.0) as usize, 10, 200);
        assert!((at(0.0)).abs() < 1e-12);
        assert!((at(2.5) - 0.005).abs() < 1e-12, "half way through warm-up");
        assert!((at(99.9) - 0.01).abs() < 1e-12);
        assert!((at(100.0) - 0.001).abs() < 1e-12);
        assert!((at(150.0) - 0.0001).abs() < 1e-12);
    }

    #[test]
    fn triangle_rises_to_its_peak_then_falls_to_its_end_over_the_run() {
        let s = Schedule {
            kind: ScheduleKind::Triangle,
            lr: 2.0,
            start_factor: 0.2,
            peak_at: 0.25,
            end_factor: 0.05,
            ..cosine(50.0, 1.0)
        };
        // Ten epochs of 10 iterations: the peak at iteration 25.
        let at = |iter: usize| s.lr_at(iter, 10, 10);
        assert!((at(0) - 0.4).abs() < 1e-12);
        assert!((at(25) - 2.0).abs() < 1e-12);
        assert!(
            (at(50) - (2.0 + (0.1 - 2.0) / 3.0)).abs() < 1e-12,
            "a third of the way down"
        );
        assert!((at(100) - 0.1).abs() < 1e-12);
        // Stretched with the run: at twice the epochs the peak moves to iteration 50.
        assert!((s.lr_at(50, 10, 20) - 2.0).abs() < 1e-12);
    }
}
