//! The whole run's remaining time: the training steps left at the step time measured so far,
//! plus the evaluations still due at the time one took (or, before the first, an estimate from
//! the step time: a forward pass is about a third of a training step).

use std::time::Duration;

/// The run's length, as the trainer walks it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPlan {
    /// Epochs in the run.
    pub epochs: usize,
    /// Training steps per epoch.
    pub batches_per_epoch: usize,
    /// The test split is evaluated every this many epochs, and after the last.
    pub eval_every: usize,
    /// Images per training step.
    pub batch_size: usize,
    /// Images one evaluation runs through the model (the test split, twice with flip TTA, twice
    /// again with an EMA).
    pub eval_images: usize,
}

impl RunPlan {
    /// Training steps left when `batch` steps of epoch `epoch` are done.
    pub fn steps_left(&self, epoch: usize, batch: usize) -> usize {
        let epochs_after = self.epochs.saturating_sub(epoch + 1);
        epochs_after * self.batches_per_epoch + self.batches_per_epoch.saturating_sub(batch)
    }

    /// Evaluations still due after the epochs from `epoch` on (that one included).
    pub fn evaluations_left(&self, epoch: usize) -> usize {
        (epoch..self.epochs)
            .filter(|e| e + 1 == self.epochs || (e + 1).is_multiple_of(self.eval_every.max(1)))
            .count()
    }

    /// Seconds left when `batch` steps of epoch `epoch` are done, at `step` per training step
    /// and `evaluation` per evaluation (`None`: not measured yet, estimated from `step`).
    pub fn remaining(
        &self,
        epoch: usize,
        batch: usize,
        step: Duration,
        evaluation: Option<Duration>,
    ) -> Duration {
        let evaluation = evaluation.unwrap_or_else(|| {
            // A forward pass over an image costs about a third of a training step's share.
            let per_image = step.as_secs_f64() / self.batch_size.max(1) as f64 / 3.0;
            Duration::from_secs_f64(per_image * self.eval_images as f64)
        });
        let steps = self.steps_left(epoch, batch) as f64;
        let evaluations = self.evaluations_left(epoch) as f64;
        Duration::from_secs_f64(step.as_secs_f64() * steps + evaluation.as_secs_f64() * evaluations)
    }
}

/// A duration as a person reads it: `45 s`, `12 min`, `3 h 05 min`, `19 days`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=99 => format!("{s} s"),
        100..=5_999 => format!("{} min", (s + 30) / 60),
        6_000..=172_799 => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} days", (s + 43_200) / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RunPlan {
        RunPlan {
            epochs: 10,
            batches_per_epoch: 100,
            eval_every: 3,
            batch_size: 50,
            eval_images: 3_000,
        }
    }

    #[test]
    fn steps_and_evaluations_left_follow_the_trainers_cadence() {
        let p = plan();
        assert_eq!(p.steps_left(0, 0), 1_000);
        assert_eq!(p.steps_left(0, 40), 960);
        assert_eq!(p.steps_left(9, 100), 0);
        // Evaluated after epochs 3, 6, 9 and 10 (1-based).
        assert_eq!(p.evaluations_left(0), 4);
        assert_eq!(p.evaluations_left(3), 3);
        assert_eq!(p.evaluations_left(9), 1);
        assert_eq!(p.evaluations_left(10), 0);
    }

    #[test]
    fn remaining_is_steps_at_the_step_time_plus_evaluations() {
        let p = plan();
        let step = Duration::from_millis(300);
        // Measured evaluations: 960 steps × 0.3 s + 4 × 20 s.
        let measured = p.remaining(0, 40, step, Some(Duration::from_secs(20)));
        assert_eq!(measured, Duration::from_secs(288 + 80));
        // Estimated: 3,000 images at a third of 0.3 s / 50 per image = 6 s each.
        let estimated = p.remaining(0, 40, step, None);
        assert!(
            (estimated.as_secs_f64() - (288.0 + 24.0)).abs() < 1e-6,
            "{estimated:?}"
        );
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        let h = |s: u64| human(Duration::from_secs(s));
        assert_eq!(h(42), "42 s");
        assert_eq!(h(720), "12 min");
        assert_eq!(h(3 * 3600 + 5 * 60 + 10), "3 h 05 min");
        assert_eq!(h(460 * 3600), "19 days");
    }
}
