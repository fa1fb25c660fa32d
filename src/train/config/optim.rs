//! The optimizer's settings (`[optim]`, `[optim.muon]`) and lookahead's (`[lookahead]`): what
//! `train::optim` steps with, defined here so that the configuration names no optimizer code.

use serde::{Deserialize, Serialize};

use super::one_f64;

/// Optimizer settings (SGD).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases.
    pub no_decay_bn_bias: bool,
    /// BatchNorm shifts step at this many times the rate, with the weight decay divided by it
    /// (airbench: 64).
    #[serde(default = "one_f64")]
    pub bn_bias_rate_factor: f64,
    /// The whitening layer's bias steps at this many times the rate, with the weight decay
    /// divided by it (airbench94: 1; airbench94_muon: its bias rate over its head's).
    #[serde(default = "one_f64")]
    pub whiten_bias_rate_factor: f64,
    /// The whitening bias's rate falls linearly to zero over its `model.whiten_bias_epochs`
    /// (airbench94_muon) instead of following the run's schedule until it freezes (airbench94).
    #[serde(default)]
    pub whiten_bias_to_zero: bool,
    /// Muon on the convolution filter banks, SGD on the rest (absent: SGD on everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<MuonConfig>,
}

/// Muon's settings (`[optim.muon]`); its rate follows the run's schedule, scaled from
/// `schedule.lr` to `lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuonConfig {
    /// Rate at the schedule's peak (airbench94_muon: 0.24).
    pub lr: f64,
    /// Nesterov momentum (airbench94_muon: 0.6).
    pub momentum: f64,
    /// Newton–Schulz iterations (airbench94_muon: 3).
    pub steps: usize,
}

impl MuonConfig {
    /// airbench94_muon's settings.
    pub fn airbench() -> Self {
        MuonConfig {
            lr: 0.24,
            momentum: 0.6,
            steps: 3,
        }
    }
}

/// Lookahead averaging (airbench's): every few steps a slow copy of the weights moves towards the
/// live ones, and the live ones jump back to it; at the end of the run the live weights become
/// the slow copy. Its weight grows with the cube of the run's progress, so early training runs
/// free and the end is averaged.
/// When and how strongly the slow weights pull the live ones back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookahead {
    /// Steps between two pulls.
    pub every: usize,
    /// The slow copy's weight at the end of the run (airbench: 0.95⁵); at step `t` of `T` it is
    /// `decay · (t/T)³`.
    pub decay: f64,
}

impl Lookahead {
    /// airbench94's: every 5 steps, up to 0.95⁵.
    pub fn airbench() -> Self {
        Lookahead {
            every: 5,
            decay: 0.95f64.powi(5),
        }
    }

    /// The slow copy's weight in the pull after step number `step` (1-based) of a run of
    /// `total` steps, if that step ends with one: `decay · (step/total)³` every `every` steps,
    /// the last step included (airbench pulls there first), else 1 after the last step (the
    /// live weights become the slow copy).
    pub fn decay_after(&self, step: usize, total: usize) -> Option<f64> {
        if step <= total && self.every > 0 && step.is_multiple_of(self.every) {
            Some(self.decay * (step as f64 / total.max(1) as f64).powi(3))
        } else if step >= total {
            Some(1.0)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_every_few_steps_with_a_cubic_weight_and_fully_at_the_end() {
        let l = Lookahead {
            every: 5,
            decay: 0.8,
        };
        assert_eq!(l.decay_after(4, 100), None);
        assert!((l.decay_after(5, 100).unwrap() - 0.8 * 0.05f64.powi(3)).abs() < 1e-15);
        assert!((l.decay_after(50, 100).unwrap() - 0.1).abs() < 1e-12);
        // The last step pulls on its schedule when it falls on one (after which live = slow, as
        // a final pull of weight 1 leaves it), else with weight 1.
        assert!((l.decay_after(100, 100).unwrap() - 0.8).abs() < 1e-15);
        assert_eq!(l.decay_after(98, 98), Some(1.0));
        assert_eq!(l.decay_after(101, 100), Some(1.0));
    }
}
