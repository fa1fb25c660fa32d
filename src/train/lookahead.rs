//! Lookahead averaging (airbench's): every few steps a slow copy of the weights moves towards the
//! live ones, and the live ones jump back to it; at the end of the run the live weights become
//! the slow copy. Its weight grows with the cube of the run's progress, so early training runs
//! free and the end is averaged.

use serde::{Deserialize, Serialize};

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
