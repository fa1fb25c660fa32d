//! A training run: the [`Learner`] fed by the stream, the position in the schedule, and the
//! cadence of evaluation, metrics and checkpoints. [`Trainer::fit`] is the whole loop; its parts
//! are methods ([`Trainer::train_epoch`], [`Trainer::evaluate`], [`Trainer::finish_epoch`],
//! [`Trainer::save`]), so another front end (a test, a distributed runner) can drive a run epoch
//! by epoch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rayon::ThreadPool;

use super::capture::CaptureCheck;
use super::checkpoint;
use super::checkpoint::{Snapshot, State};
use super::epoch_sums::EpochSums;
use super::error::{Error, Result};
use super::evaluate::evaluate;
use super::graph::StepGraphs;
use super::inputs::Inputs;
use super::learner::Learner;
use super::metrics::EpochMetrics;
use super::outcome::{Observer, Outcome, TestEvaluation, TrainedEpoch, LOSS_READ_EVERY};
use super::run_dir::RunDir;
use super::stores::Stores;
use crate::augment::Augmenter;
use crate::dist::Collective;
use crate::model::Network;
use crate::stream::{Loader, LoaderConfig, Shard, StreamError};
use crate::tensorboard::EventWriter;
use crate::train::config::TrainConfig;

mod board;
mod open;
mod step;

/// A training run in its folder.
pub struct Trainer {
    config: TrainConfig,
    device: Device,
    dir: PathBuf,
    /// The folder, taken for writing by the rank that writes (rank 0); `None` on the others.
    run_dir: Option<RunDir>,
    learner: Learner,
    stores: Stores,
    eval_augmenter: Arc<Augmenter>,
    pool: Arc<ThreadPool>,
    cancel: Arc<AtomicBool>,
    loader: Option<Loader>,
    batches_per_epoch: usize,
    /// The epoch to train next (the one in progress while `train_epoch` runs).
    next_epoch: usize,
    /// Batches of `next_epoch` already trained: the index of the next step within its epoch.
    batch: usize,
    /// Training loss and accuracy of `next_epoch`'s steps so far.
    sums: EpochSums,
    /// The buffers each batch is staged into.
    inputs: Inputs,
    /// Whether each step is one a graph can capture (debug builds and tests; off in release).
    capture: Option<CaptureCheck>,
    /// The step as a CUDA graph (`--cuda-graph`).
    graphs: Option<StepGraphs>,
    history: Vec<EpochMetrics>,
    /// The run's TensorBoard file (rank 0, unless `--no-tensorboard`).
    board: Option<EventWriter>,
    /// The ranks of a data-parallel run ([`Local`](crate::dist::Local) alone).
    world: Arc<dyn Collective>,
}

impl Trainer {
    /// Runs the augmentation on `pool` instead of the one built from `config.threads`.
    pub fn with_pool(mut self, pool: Arc<ThreadPool>) -> Trainer {
        self.pool = pool;
        self
    }

    /// The flag that stops the run (Ctrl-C): the current step finishes, a checkpoint is saved.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// The resolved configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The device it trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weights, EMA and optimizer.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// Metrics of every finished epoch.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// The epoch trained next.
    pub fn next_epoch(&self) -> usize {
        self.next_epoch
    }

    /// Training batches (steps) per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }

    /// True once every epoch of the configuration is trained.
    pub fn finished(&self) -> bool {
        self.next_epoch >= self.config.epochs
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Whether to stop now: the cancel flag, agreed between the ranks.
    fn stop_agreed(&self) -> Result<bool> {
        let mine = self.cancelled();
        if self.world.size() == 1 {
            return Ok(mine);
        }
        Ok(self.world.any(mine)?)
    }

    /// The whole run: every remaining epoch, each trained, evaluated when due, recorded and
    /// saved when due; a cancel saves and stops.
    pub fn fit(&mut self, observer: &mut dyn Observer) -> Result<Outcome> {
        let result = self.fit_epochs(observer);
        if let (Err(e @ Error::Diverged { .. }), Some(dir)) = (&result, &self.run_dir) {
            // The error stops the run whatever; a note that cannot be written is only said.
            if let Err(note) = dir.note_diverged(&e.to_string()) {
                eprintln!("warning: {note}");
            }
        }
        result
    }

    fn fit_epochs(&mut self, observer: &mut dyn Observer) -> Result<Outcome> {
        while let Some(trained) = self.train_epoch(observer)? {
            observer.train_end(&trained);
            if !trained.complete {
                self.save()?;
                return Ok(self.outcome(true));
            }
            let e = trained.epoch;
            let evaluation = if self.evaluation_due(e) {
                Some(self.evaluate()?)
            } else {
                None
            };
            let metrics = self.finish_epoch(&trained, evaluation.as_ref())?;
            let saved = self.save_due(e);
            if saved {
                self.save()?;
            }
            observer.epoch_end(&metrics, &trained.stats);
            if self.stop_agreed()? {
                if !saved {
                    self.save()?;
                }
                return Ok(self.outcome(true));
            }
        }
        Ok(self.outcome(false))
    }

    fn outcome(&self, interrupted: bool) -> Outcome {
        Outcome {
            history: self.history.clone(),
            interrupted,
            ema: self.learner.has_ema(),
        }
    }

    /// Trains the next epoch's steps (`None` when every epoch is trained), from where the run
    /// stands in it. A cancel stops it after the current step, with `complete: false`; every
    /// `save_every_steps` steps it saves a checkpoint of the exact position.
    pub fn train_epoch(&mut self, observer: &mut dyn Observer) -> Result<Option<TrainedEpoch>> {
        if self.finished() {
            return Ok(None);
        }
        // Out of `self` while the epoch borrows it, so the steps can use `self`; an error drops
        // it, and the next call starts a new one at the position reached.
        let mut loader = match self.loader.take() {
            Some(loader) => loader,
            None => self.start_loader(),
        };
        let Some(mut epoch) = loader.epoch() else {
            return Ok(None);
        };
        let e = epoch.stats().epoch;
        debug_assert_eq!(e, self.next_epoch);
        self.learner.freeze_for_epoch(e);
        let started = Instant::now();
        observer.epoch_start(e, self.batches_per_epoch - self.batch);
        let mut complete = true;
        while let Some(batch) = epoch.next_blocking() {
            // Ctrl-C: stop now rather than after the batches already queued; every rank at the
            // same step (a signal reaches them at different moments).
            if self.stop_agreed()? {
                complete = false;
                break;
            }
            let batch = match batch {
                Ok(b) => b,
                Err(StreamError::Interrupted) => {
                    complete = false;
                    break;
                }
                Err(other) => return Err(other.into()),
            };
            self.log_preview(&batch.images)?;
            let (x, y) = {
                let _h2d = tracing::info_span!("h2d").entered();
                let shape = self.stores.header.shape;
                self.inputs
                    .stage(&batch.images, &batch.labels, shape, &self.device)?
            };
            drop(batch);
            self.step(&x, &y)?;
            let progress = if self.batch.is_multiple_of(LOSS_READ_EVERY) {
                let (loss, accuracy) = self.sums.read()?;
                if !loss.is_finite() {
                    return Err(self.diverged(format!("the training loss is {loss}")));
                }
                let epoch_seconds = started.elapsed().as_secs_f64();
                self.log_step(loss, accuracy, epoch_seconds, epoch.stats())?;
                Some(loss)
            } else {
                None
            };
            observer.step(progress);
            let save_now = self
                .config
                .save_every_steps
                .is_some_and(|n| self.learner.steps().is_multiple_of(n));
            if save_now && self.batch < self.batches_per_epoch {
                self.save()?;
            }
        }
        let stats = epoch.stats().clone();
        drop(epoch);
        self.loader = Some(loader);
        // The epoch's one wait for the device: its time belongs to training, not evaluation.
        let (mut loss, mut accuracy, mut images) = (0.0, 0.0, self.sums.images());
        if complete {
            // Evaluation and the ranks' fingerprint read BatchNorm's statistics: rank 0's.
            self.learner.sync_statistics()?;
            let (loss_sum, hits) = self.sums.read_sums()?;
            let mut totals = [loss_sum, hits, images as f64];
            self.world.all_reduce_sum_f64(&mut totals)?;
            let n = totals[2].max(1.0);
            (loss, accuracy, images) = (totals[0] / n, totals[1] / n, totals[2] as usize);
            if !loss.is_finite() {
                return Err(self.diverged(format!("the training loss is {loss}")));
            }
            // A ReLU or max can turn NaN into a number: the loss alone does not prove the
            // weights finite. Checked where the sums are read, so a GPU waits no more often.
            if let Some(tensor) = self.learner.first_non_finite()? {
                return Err(self.diverged(format!("tensor {tensor} holds NaN or infinity")));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let comm = self.learner.take_comm_seconds();
        let ranks = self.world.all_gather(&[seconds, comm])?;
        Ok(Some(TrainedEpoch {
            epoch: e,
            lr: self.last_lr(),
            loss,
            accuracy,
            images,
            complete,
            stats,
            seconds,
            rank_seconds: ranks.chunks(2).map(|r| (r[0], r[1])).collect(),
            started,
        }))
    }

    /// The error that stops a diverged run, where it stands.
    fn diverged(&self, what: String) -> Error {
        Error::Diverged {
            what,
            epoch: self.next_epoch + 1,
            step: self.learner.steps(),
            lr: self.last_lr(),
        }
    }

    /// The rate of the last step taken (0 before any).
    fn last_lr(&self) -> f64 {
        match self.learner.steps() {
            0 => 0.0,
            steps => {
                self.config
                    .schedule
                    .lr_at(steps - 1, self.batches_per_epoch, self.config.epochs)
            }
        }
    }

    fn start_loader(&self) -> Loader {
        let augmenter = Augmenter::for_store(
            &self.config.augment,
            self.config.epochs,
            self.config.seed,
            &self.stores.header,
        );
        let loader_config = train_loader_config(
            &self.config,
            self.world.as_ref(),
            self.next_epoch,
            self.batch,
        );
        Loader::start(
            self.stores.train.clone(),
            Arc::new(augmenter),
            self.pool.clone(),
            loader_config,
            self.cancel.clone(),
        )
    }

    /// The run's length as the trainer walks it, for the whole run's time estimate.
    pub fn plan(&self) -> super::eta::RunPlan {
        let models = if self.learner.has_ema() { 2 } else { 1 };
        super::eta::RunPlan {
            epochs: self.config.epochs,
            batches_per_epoch: self.batches_per_epoch,
            eval_every: self.config.eval_every,
            batch_size: self.config.batch_size,
            eval_images: self.stores.test.len() * self.config.tta.views() * models,
        }
    }

    /// Whether the test split is evaluated after `epoch`: every `eval_every` epochs and after
    /// the last.
    pub fn evaluation_due(&self, epoch: usize) -> bool {
        epoch + 1 == self.config.epochs || (epoch + 1).is_multiple_of(self.config.eval_every)
    }

    /// Whether a checkpoint is saved after `epoch`: every `save_every` epochs and after the last.
    pub fn save_due(&self, epoch: usize) -> bool {
        epoch + 1 == self.config.epochs
            || (self.config.save_every > 0 && (epoch + 1).is_multiple_of(self.config.save_every))
    }

    /// Evaluates the raw weights and the EMA on the test split (with the run's TTA); a
    /// non-finite test loss is a diverged run ([`Error::Diverged`]).
    pub fn evaluate(&self) -> Result<TestEvaluation> {
        let eval = |model: &Network| {
            let _s = tracing::info_span!("eval").entered();
            evaluate(
                model,
                self.stores.test.clone(),
                self.eval_augmenter.clone(),
                self.pool.clone(),
                self.config.eval_batch_size,
                self.config.tta,
                self.world.as_ref(),
            )
        };
        let raw = eval(self.learner.model())?;
        let ema = match self.learner.ema_model() {
            Some(model) => eval(model)?,
            None => raw.clone(),
        };
        for (which, e) in [("raw", &raw), ("EMA", &ema)] {
            if !e.loss.is_finite() {
                let what = format!("the test loss of the {which} weights is {}", e.loss);
                return Err(self.diverged(what));
            }
        }
        Ok(TestEvaluation { raw, ema })
    }

    /// Closes a trained epoch and moves the run to the next: the epoch's metrics (with
    /// `evaluation`, if it was evaluated) join the history, the metric files are rewritten, and
    /// the ranks' weights are checked to be identical. Call it once per complete
    /// [`Trainer::train_epoch`], before the next.
    pub fn finish_epoch(
        &mut self,
        trained: &TrainedEpoch,
        evaluation: Option<&TestEvaluation>,
    ) -> Result<EpochMetrics> {
        let train_seconds = trained.seconds.max(1e-9);
        let gpu_seconds = match &mut self.graphs {
            Some(graphs) => graphs.take_busy_seconds()?,
            None => None,
        };
        let m = EpochMetrics {
            epoch: trained.epoch,
            lr: trained.lr,
            train_loss: trained.loss,
            train_acc: trained.accuracy,
            test_loss: evaluation.map(|e| e.raw.loss),
            test_acc: evaluation.map(|e| e.raw.accuracy),
            ema_test_loss: evaluation.map(|e| e.ema.loss),
            ema_test_acc: evaluation.map(|e| e.ema.accuracy),
            images_per_second: trained.images as f64 / train_seconds,
            trainer_stall: trained.stats.wait_seconds / train_seconds,
            gpu_busy: gpu_seconds.map(|s| s / train_seconds),
            seconds: trained.started.elapsed().as_secs_f64(),
        };
        self.history.push(m.clone());
        if let Some(dir) = &self.run_dir {
            dir.write_metrics(&self.history, self.learner.has_ema())?;
        }
        self.log_epoch(&m, evaluation)?;
        self.learner
            .check_ranks_identical(&format!("weights after epoch {}", trained.epoch + 1))?;
        self.next_epoch = trained.epoch + 1;
        self.batch = 0;
        self.sums.reset()?;
        Ok(m)
    }

    /// Writes a checkpoint of where the run stands, to the batch.
    pub fn save(&self) -> Result<()> {
        let Some(dir) = &self.run_dir else {
            return Ok(());
        };
        let _span = tracing::info_span!("checkpoint").entered();
        let state = State {
            world_size: self.world.size(),
            next_epoch: self.next_epoch,
            batch: self.batch,
            steps: self.learner.steps(),
            epoch_images: self.sums.images(),
            config: self.config.clone(),
            mean: self.stores.header.mean.clone(),
            std: self.stores.header.std.clone(),
            classes: self.stores.header.classes.clone(),
            shape: self.stores.header.shape,
            history: self.history.clone(),
        };
        let tensors = self.learner.state().into_iter().chain(self.sums.state());
        let pause = self
            .config
            .checkpoint_write_delay_ms
            .map(std::time::Duration::from_millis);
        match dir.save(&Snapshot::new(state, tensors), pause) {
            Err(Error::Checkpoint(checkpoint::Error::NonFinite { tensor, .. })) => {
                Err(self.diverged(format!("tensor {tensor} holds NaN or infinity")))
            }
            other => other,
        }
    }
}

/// The training loader's configuration from epoch `epoch`, batch `batch` on: the one place its
/// sampler (and so the steps per epoch the schedule counts) is defined.
fn train_loader_config(
    config: &TrainConfig,
    world: &dyn Collective,
    epoch: usize,
    batch: usize,
) -> LoaderConfig {
    LoaderConfig {
        max_batches: config.limit_train_batches,
        start_batch: batch,
        shard: shard_of(world),
        ..LoaderConfig::training(
            config.batch_size,
            config.prefetch,
            config.seed,
            epoch..config.epochs,
        )
    }
}

/// This rank's share of the training epochs (`None` alone).
fn shard_of(world: &dyn Collective) -> Option<Shard> {
    (world.size() > 1).then_some(Shard {
        rank: world.rank(),
        world: world.size(),
        even: true,
    })
}
