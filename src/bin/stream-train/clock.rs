//! The whole run's clock for the person watching: one early line with the run's expected time
//! (and, when that is long on a CPU, what to run instead), the remaining time on the bar, and a
//! plain progress line every few seconds when stderr is no terminal (nohup, Slurm, CI logs),
//! where a bar would show nothing until the epoch ends.

use std::time::{Duration, Instant};

use cifar_stream::train::eta::{human, RunPlan};

/// Steps measured before the run's time is announced (the first ones carry the warm-up).
const ANNOUNCE_AFTER: usize = 30;

/// Beyond this on a CPU, the announcement names faster ways.
const LONG_ON_A_CPU: Duration = Duration::from_secs(2 * 3600);

/// Where the run stands and how fast it goes.
pub struct RunClock {
    plan: RunPlan,
    cpu: bool,
    /// Plain lines every `log_every` instead of a bar.
    plain: bool,
    log_every: Duration,
    epoch: usize,
    /// Steps done in the current epoch (those before a resume included).
    batch: usize,
    epoch_started: Instant,
    /// Training time of this process's finished epochs.
    trained: Duration,
    /// Steps this process took.
    steps: usize,
    train_ended: Option<Instant>,
    /// The last evaluation's time.
    evaluation: Option<Duration>,
    last_line: Instant,
    announced: bool,
    loss: Option<f64>,
}

impl RunClock {
    /// A clock for `plan` on a CPU or not; `plain` when stderr is no terminal, with a line every
    /// `log_every`.
    pub fn new(plan: RunPlan, cpu: bool, plain: bool, log_every: Duration) -> RunClock {
        let now = Instant::now();
        RunClock {
            plan,
            cpu,
            plain,
            log_every,
            epoch: 0,
            batch: 0,
            epoch_started: now,
            trained: Duration::ZERO,
            steps: 0,
            train_ended: None,
            evaluation: None,
            last_line: now,
            announced: false,
            loss: None,
        }
    }

    /// Epoch `epoch` starts with `batches` steps left in it.
    pub fn epoch_start(&mut self, epoch: usize, batches: usize) {
        self.epoch = epoch;
        self.batch = self.plan.batches_per_epoch.saturating_sub(batches);
        self.epoch_started = Instant::now();
    }

    /// One step done (with the epoch's mean loss when it was read); the lines to print now.
    pub fn step(&mut self, loss: Option<f64>) -> Vec<String> {
        self.batch += 1;
        self.steps += 1;
        if loss.is_some() {
            self.loss = loss;
        }
        let mut lines = Vec::new();
        if !self.announced && self.steps >= ANNOUNCE_AFTER.min(self.plan.batches_per_epoch) {
            self.announced = true;
            lines.extend(self.announcement());
        }
        if self.plain && self.last_line.elapsed() >= self.log_every {
            self.last_line = Instant::now();
            lines.push(self.progress_line());
        }
        lines
    }

    /// The epoch's steps are done; evaluation may follow.
    pub fn train_end(&mut self) {
        self.trained += self.epoch_started.elapsed();
        self.train_ended = Some(Instant::now());
    }

    /// The epoch closed, `evaluated` or not.
    pub fn epoch_end(&mut self, evaluated: bool) {
        if let (true, Some(t)) = (evaluated, self.train_ended) {
            self.evaluation = Some(t.elapsed());
        }
        self.train_ended = None;
    }

    /// The bar's message: the loss and the whole run's remaining time.
    pub fn bar_message(&self) -> String {
        let loss = self
            .loss
            .map(|l| format!("loss {l:.3}, "))
            .unwrap_or_default();
        match self.step_time() {
            Some(_) => format!("{loss}run {} left", human(self.remaining())),
            None => loss.trim_end_matches(", ").to_string(),
        }
    }

    /// Mean wall time of this process's steps so far.
    fn step_time(&self) -> Option<Duration> {
        let training = self.trained + self.epoch_started.elapsed();
        (self.steps > 0).then(|| training / self.steps as u32)
    }

    fn remaining(&self) -> Duration {
        let step = self.step_time().unwrap_or_default();
        self.plan
            .remaining(self.epoch, self.batch, step, self.evaluation)
    }

    /// The run's expected time, and faster ways when it is long on a CPU.
    fn announcement(&self) -> Vec<String> {
        let step = self.step_time().unwrap_or_default();
        let left = self.remaining();
        let evaluations = self.plan.evaluations_left(self.epoch);
        let mut lines = vec![format!(
            "estimate: the whole run needs about {} more ({} steps at {:.2} s, {} evaluations)",
            human(left),
            self.plan.steps_left(self.epoch, self.batch),
            step.as_secs_f64(),
            evaluations
        )];
        if self.cpu && left > LONG_ON_A_CPU {
            lines.push(
                "  that is long for a CPU: --preset fast-cpu trains airbench94_muon's recipe to \
                 about 88% in under 10 minutes on two cores, and the seed recipe wants a GPU (a \
                 build with --features cudnn, see the README)"
                    .to_string(),
            );
        }
        lines
    }

    /// A progress line for logs: where the run is, its speed, loss and the time left.
    fn progress_line(&self) -> String {
        let step = self.step_time().unwrap_or_default();
        let per_second = match step.as_secs_f64() {
            s if s > 0.0 => self.plan.batch_size as f64 / s,
            _ => 0.0,
        };
        let epoch_left = step * self.plan.batches_per_epoch.saturating_sub(self.batch) as u32;
        let loss = self
            .loss
            .map(|l| format!("  loss {l:.4}"))
            .unwrap_or_default();
        format!(
            "epoch {}/{} step {}/{}  {per_second:.0} img/s{loss}  epoch {} left, run {} left",
            self.epoch + 1,
            self.plan.epochs,
            self.batch,
            self.plan.batches_per_epoch,
            human(epoch_left),
            human(self.remaining())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(epochs: usize) -> RunPlan {
        RunPlan {
            epochs,
            batches_per_epoch: 40,
            eval_every: 1,
            batch_size: 10,
            eval_images: 100,
        }
    }

    #[test]
    fn announces_once_after_the_first_steps_and_names_alternatives_when_long_on_a_cpu() {
        // At least 1 ms a step over 40 million steps: days.
        let mut clock = RunClock::new(plan(1_000_000), true, false, Duration::from_secs(30));
        clock.epoch_start(0, 40);
        let mut lines = Vec::new();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(1));
            lines.extend(clock.step(Some(2.3)));
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("estimate: the whole run needs about "),
            "{lines:?}"
        );
        assert!(lines[0].contains("39999970 steps"), "{lines:?}");
        assert!(lines[1].contains("--preset fast-cpu"), "{lines:?}");
        // A short run says how long and nothing more; on a GPU never the CPU advice.
        let mut short = RunClock::new(plan(1), true, false, Duration::from_secs(30));
        short.epoch_start(0, 40);
        let lines: Vec<String> = (0..40).flat_map(|_| short.step(None)).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    #[test]
    fn plain_output_prints_progress_lines_on_its_cadence() {
        let mut clock = RunClock::new(plan(3), false, true, Duration::ZERO);
        clock.epoch_start(1, 30); // resumed 10 steps into the second epoch
        let lines = clock.step(Some(1.5));
        let line = lines.last().unwrap();
        assert!(line.starts_with("epoch 2/3 step 11/40 "), "{line}");
        assert!(
            line.contains("loss 1.5000") && line.contains("run "),
            "{line}"
        );
        // A terminal gets no lines, only the bar's message.
        let mut bar = RunClock::new(plan(3), false, false, Duration::ZERO);
        bar.epoch_start(0, 40);
        assert!(bar.step(Some(1.0)).is_empty());
        assert!(
            bar.bar_message().starts_with("loss 1.000, run "),
            "{}",
            bar.bar_message()
        );
    }
}
