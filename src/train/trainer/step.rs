//! One training step of a run: the rate and dropout seed of its position, the batch's values
//! staged, the step's body run plainly, recorded for the capture check, or as a CUDA graph, and
//! the host's part after it.

use candle_core::Tensor;

use super::Trainer;
use crate::seed;
use crate::train::capture;
use crate::train::error::Result;
use crate::train::graph::GraphKey;

/// Seed-derivation tag of dropout masks.
const DROPOUT_STREAM: u64 = u64::MAX - 1;

impl Trainer {
    /// One training step at the run's position, which it advances: the schedule's rate at the
    /// global step, dropout drawn from (seed, epoch, batch index), the loss and accuracy added
    /// to the epoch's running sums. Only [`Trainer::train_epoch`] calls it, with the batch its
    /// loader gave for that position, staged in the input buffers. With the capture check on,
    /// the step proper (the learner's body and the sums) is recorded and held to the previous
    /// step's.
    pub(super) fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let lr = self.config.schedule.lr_at(
            self.learner.steps(),
            self.batches_per_epoch,
            self.config.epochs,
        );
        // Each rank draws its own masks for its own images (one process: as it always has).
        let mut parts = vec![DROPOUT_STREAM, self.next_epoch as u64, self.batch as u64];
        if self.world.size() > 1 {
            parts.push(self.world.rank() as u64);
        }
        let dropout_seed = seed::derive(self.config.seed, &parts);
        let n = x.dim(0)?;
        self.learner.stage(lr, dropout_seed, n)?;
        let step = self.learner.steps();
        // Only a run with graphs needs the key (a copy of the frozen set, every step).
        let key = self.graphs.is_some().then(|| GraphKey {
            batch: n,
            frozen: self.learner.frozen().clone(),
        });
        // What the step writes, for the steps whose graph replay is held to eager.
        let state = match (&self.graphs, &key) {
            (Some(graphs), Some(key)) if graphs.checks_next(key) => {
                let mut state = self.learner.persistent();
                state.extend(self.sums.tensors());
                state
            }
            _ => Vec::new(),
        };
        let (learner, sums) = (&mut self.learner, &self.sums);
        let mut body = || -> Result<()> {
            let (logits, loss) = learner.body(x, y)?;
            sums.add(&logits, &loss, y)?;
            Ok(())
        };
        let trace = match (&mut self.graphs, key, &self.capture) {
            (Some(graphs), Some(key), _) => {
                graphs.run(&self.device, key, &state, &mut body)?;
                None
            }
            (_, _, Some(check)) if check.records(step) => {
                let (done, trace) = capture::record(body);
                done?;
                Some(trace)
            }
            _ => {
                body()?;
                None
            }
        };
        self.learner.finish_step()?;
        self.sums.count(n);
        if let Some(check) = &mut self.capture {
            let mut persistent = self.learner.persistent();
            persistent.extend(self.sums.tensors());
            persistent.extend(self.inputs.tensors());
            check.after_step(self.next_epoch, step, trace, &persistent)?;
        }
        self.batch += 1;
        Ok(())
    }
}
