//! A training run: the [`Learner`] fed by the stream, the schedule position, evaluation cadence,
//! metrics and checkpoints in the run folder. [`Trainer::fit`] is the whole loop; its parts are
//! methods, so another front end (a distributed runner, a test) can drive a run step by step.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::ThreadPool;

use super::checkpoint::{self, Snapshot, State};
use super::error::{io, Error, Result};
use super::evaluate::{evaluate, Evaluation};
use super::learner::Learner;
use super::metrics::{self, EpochMetrics};
use super::running::Running;
use crate::augment::{self, Augmenter};
use crate::config::{TrainConfig, CONFIG_FILE};
use crate::dist::{Collective, Local};
use crate::model::SeResNetD;
use crate::ops::Kernels;
use crate::seed;
use crate::store::{Header, Reader, Split};
use crate::stream::{EpochStats, Loader, LoaderConfig, Phase, Shard, StreamError};

/// Seed-derivation tag of dropout masks.
const DROPOUT_STREAM: u64 = u64::MAX - 1;

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
    started: Instant,
}

/// The test split evaluated with the raw weights and, when the run keeps one, the EMA.
#[derive(Clone, Debug)]
pub struct TestEvaluation {
    /// Raw weights.
    pub raw: Evaluation,
    /// EMA weights (the raw evaluation again when the run keeps no EMA).
    pub ema: Evaluation,
}

/// A training run in its folder.
pub struct Trainer {
    config: TrainConfig,
    device: Device,
    dir: PathBuf,
    learner: Learner,
    train_store: Arc<Reader>,
    test_store: Arc<Reader>,
    header: Header,
    eval_augmenter: Arc<Augmenter>,
    pool: Arc<ThreadPool>,
    cancel: Arc<AtomicBool>,
    loader: Option<Loader>,
    iters_per_epoch: usize,
    /// The epoch to train next (the one in progress while `train_epoch` runs).
    next_epoch: usize,
    /// Batches of `next_epoch` already trained: the index of the next step within its epoch.
    batch: usize,
    /// Training loss and accuracy of `next_epoch`'s steps so far.
    running: Running,
    history: Vec<EpochMetrics>,
    /// Held while the trainer lives: a second process cannot write the same run folder (rank 0's).
    _lock: Option<std::fs::File>,
    /// The ranks of a data-parallel run ([`Local`] alone).
    world: Arc<dyn Collective>,
}

impl Trainer {
    /// Starts a new run in `config.run_dir()`: refuses a folder that already holds one, writes
    /// the resolved `config.toml` there, opens the store and builds fresh weights.
    pub fn new(config: TrainConfig, device: Device) -> Result<Trainer> {
        Trainer::new_in(config, device, Arc::new(Local))
    }

    /// [`Trainer::new`] as one rank of `world` (data-parallel): every rank trains on its share
    /// of each epoch with the gradients averaged; rank 0 alone writes the run folder.
    pub fn new_in(
        config: TrainConfig,
        device: Device,
        world: Arc<dyn Collective>,
    ) -> Result<Trainer> {
        let dir = config.run_dir();
        // Every rank looks, so that all refuse together.
        if checkpoint::path(&dir).exists() {
            return Err(Error::RunExists { dir });
        }
        let mut trainer = Trainer::open(config, device, world)?;
        trainer.learner.broadcast_from_main()?;
        trainer.write_config()?;
        Ok(trainer)
    }

    /// Continues the run saved in `dir` exactly where its checkpoint left it: at the next batch
    /// of the same epoch, with the same weights, optimizer, EMA and running sums. `config` may
    /// change what does not move that position (more epochs, another cadence); its `runs` and
    /// `name` become `dir`'s, wherever the run was first started.
    pub fn resume(dir: &Path, config: TrainConfig, device: Device) -> Result<Trainer> {
        Trainer::resume_in(dir, config, device, Arc::new(Local))
    }

    /// [`Trainer::resume`] as one rank of `world`; the run must have been saved by as many
    /// ranks (each reads the checkpoint; the folder must be shared between the machines).
    pub fn resume_in(
        dir: &Path,
        mut config: TrainConfig,
        device: Device,
        world: Arc<dyn Collective>,
    ) -> Result<Trainer> {
        let (runs, name) = split_run_dir(dir)?;
        (config.runs, config.name) = (runs, name);
        let mut trainer = Trainer::open(config, device, world)?;
        let snapshot = Snapshot::load(&trainer.dir, &trainer.device)?;
        let state = &snapshot.state;
        if state.world_size != trainer.world.size() {
            return Err(Error::Unsupported(format!(
                "{} was saved by {} process(es) and is resumed by {}: resume it with as many \
                 (mpirun -np {}); the position in an epoch is a position in each rank's share",
                trainer.dir.display(),
                state.world_size,
                trainer.world.size(),
                state.world_size
            )));
        }
        if state.batch > 0 {
            // The position is a batch of a permutation: the permutation must be the same one.
            let (was, now) = (&state.config, &trainer.config);
            let same = was.batch_size == now.batch_size
                && was.seed == now.seed
                && was.limit_train_batches == now.limit_train_batches
                && was.data == now.data;
            if !same {
                return Err(Error::Unsupported(format!(
                    "{} stopped in the middle of epoch {}: resuming it needs the same batch_size, \
                     seed, limit_train_batches and data",
                    trainer.dir.display(),
                    state.next_epoch + 1
                )));
            }
        }
        snapshot.restore(&mut trainer.learner)?;
        trainer.learner.broadcast_from_main()?;
        trainer.running = snapshot.running();
        let state = snapshot.state;
        trainer.next_epoch = state.next_epoch;
        trainer.batch = state.batch;
        trainer.history = state.history;
        trainer.history.truncate(trainer.next_epoch);
        trainer.write_config()?;
        Ok(trainer)
    }

    fn open(config: TrainConfig, device: Device, world: Arc<dyn Collective>) -> Result<Trainer> {
        config.validate()?;
        if config.sync_bn
            && world.size() > 1
            && (!device.is_cpu() || config.kernels != Kernels::Fast)
        {
            return Err(Error::Unsupported(
                "sync_bn runs with the CPU fast kernels only (the CUDA BatchNorm has no \
                 all-reduce yet)"
                    .into(),
            ));
        }
        let dir = config.run_dir();
        let train_store = Arc::new(Reader::open(Split::Train.path_in(&config.data))?);
        let test_store = Arc::new(Reader::open(Split::Test.path_in(&config.data))?);
        let header = train_store.header().clone();
        if header.classes.len() != config.model.num_classes {
            return Err(Error::Unsupported(format!(
                "the store has {} classes, the model {}",
                header.classes.len(),
                config.model.num_classes
            )));
        }
        if header.shape.channels as usize != config.model.in_channels {
            return Err(Error::Unsupported(format!(
                "the store's images have {} channels, the model takes {}",
                header.shape.channels, config.model.in_channels
            )));
        }
        if test_store.shape() != header.shape || test_store.classes() != header.classes {
            return Err(Error::Unsupported(format!(
                "{} and {} hold different image shapes or classes",
                train_store.path().display(),
                test_store.path().display()
            )));
        }
        let iters_per_epoch = train_loader_config(&config, world.as_ref(), 0, 0)
            .sampler(train_store.len())
            .batches_per_epoch();
        if iters_per_epoch == 0 {
            return Err(Error::Unsupported(format!(
                "fewer training images than one batch of {} per rank ({} ranks)",
                config.batch_size,
                world.size()
            )));
        }
        let pool = Arc::new(
            augment::thread_pool(config.threads)
                .map_err(|e| Error::Unsupported(format!("starting the augmentation pool: {e}")))?,
        );
        let mut learner = Learner::new(&config, &device)?;
        learner.set_world(world.clone());
        let sync = (config.sync_bn && world.size() > 1).then(|| world.clone());
        crate::ops::set_batch_norm_sync(sync);
        // Only now, with the data and the model in hand, does the run folder get touched; by
        // rank 0 alone.
        let lock = if world.is_main() {
            let lock = lock_run_dir(&dir)?;
            checkpoint::remove_stale_temporaries(&dir).map_err(io(&dir))?;
            Some(lock)
        } else {
            None
        };
        let eval_augmenter = Arc::new(Augmenter::normalise_only(
            header.shape,
            &header.mean,
            &header.std,
        ));
        Ok(Trainer {
            config,
            device,
            dir,
            learner,
            train_store,
            test_store,
            header,
            eval_augmenter,
            pool,
            cancel: Arc::new(AtomicBool::new(false)),
            loader: None,
            iters_per_epoch,
            next_epoch: 0,
            batch: 0,
            running: Running::new(),
            history: Vec::new(),
            _lock: lock,
            world,
        })
    }

    fn write_config(&self) -> Result<()> {
        if !self.world.is_main() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(CONFIG_FILE);
        crate::render::write_atomic(&path, self.config.to_toml().as_bytes()).map_err(io(path))
    }

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

    /// Training steps per epoch.
    pub fn iters_per_epoch(&self) -> usize {
        self.iters_per_epoch
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
            let metrics = self.record(&trained, evaluation.as_ref())?;
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
            ema: self.learner.ema.is_some(),
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
        let started = Instant::now();
        observer.epoch_start(e, self.iters_per_epoch - self.batch);
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
            let n = batch.len();
            let (x, y) = {
                let _h2d = tracing::info_span!("h2d").entered();
                let x = Tensor::from_slice(&batch.images, self.header.shape.nchw(n), &self.device)?;
                let y = Tensor::from_slice(&batch.labels, n, &self.device)?;
                (x, y)
            };
            drop(batch);
            self.step(&x, &y)?;
            let progress = if self.batch.is_multiple_of(LOSS_READ_EVERY) {
                Some(self.running.read()?.0)
            } else {
                None
            };
            observer.step(progress);
            let save_now = self
                .config
                .save_every_steps
                .is_some_and(|n| self.learner.steps().is_multiple_of(n));
            if save_now && self.batch < self.iters_per_epoch {
                self.save()?;
            }
        }
        let stats = epoch.stats().clone();
        drop(epoch);
        self.loader = Some(loader);
        // The epoch's one wait for the device: its time belongs to training, not evaluation.
        let (mut loss, mut accuracy, mut images) = (0.0, 0.0, self.running.images());
        if complete {
            // Evaluation and the ranks' fingerprint read BatchNorm's statistics: rank 0's.
            self.learner.sync_statistics()?;
            let (loss_sum, hits) = self.running.read_sums()?;
            let mut totals = [loss_sum, hits, images as f64];
            self.world.all_reduce_sum_f64(&mut totals)?;
            let n = totals[2].max(1.0);
            (loss, accuracy, images) = (totals[0] / n, totals[1] / n, totals[2] as usize);
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

    /// The rate of the last step taken (0 before any).
    fn last_lr(&self) -> f64 {
        match self.learner.steps() {
            0 => 0.0,
            steps => self.config.schedule.lr_at(steps - 1, self.iters_per_epoch),
        }
    }

    /// One training step at the run's position, which it advances: the schedule's rate at the
    /// global step, dropout drawn from (seed, epoch, batch index), the loss and accuracy added
    /// to the epoch's running sums. Returns `(logits, loss)`.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let lr = self
            .config
            .schedule
            .lr_at(self.learner.steps(), self.iters_per_epoch);
        // Each rank draws its own masks for its own images (one process: as it always has).
        let mut parts = vec![DROPOUT_STREAM, self.next_epoch as u64, self.batch as u64];
        if self.world.size() > 1 {
            parts.push(self.world.rank() as u64);
        }
        let dropout_seed = seed::derive(self.config.seed, &parts);
        let (logits, loss) = self.learner.step(x, y, lr, dropout_seed)?;
        self.running.add(&logits, &loss, y)?;
        self.batch += 1;
        Ok((logits, loss))
    }

    fn start_loader(&self) -> Loader {
        let augmenter = Augmenter::for_store(
            &self.config.augment,
            self.config.epochs,
            self.config.seed,
            &self.header,
        );
        let loader_config = train_loader_config(
            &self.config,
            self.world.as_ref(),
            self.next_epoch,
            self.batch,
        );
        Loader::start(
            self.train_store.clone(),
            Arc::new(augmenter),
            self.pool.clone(),
            loader_config,
            self.cancel.clone(),
        )
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

    /// Evaluates the raw weights and the EMA on the test split (with the run's TTA).
    pub fn evaluate(&self) -> Result<TestEvaluation> {
        let eval = |model: &SeResNetD| {
            let _s = tracing::info_span!("eval").entered();
            evaluate(
                model,
                self.test_store.clone(),
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
        Ok(TestEvaluation { raw, ema })
    }

    /// Finishes a trained epoch: its metrics join the history, the metric files are rewritten,
    /// and the run moves to the next epoch.
    pub fn record(
        &mut self,
        trained: &TrainedEpoch,
        evaluation: Option<&TestEvaluation>,
    ) -> Result<EpochMetrics> {
        let train_seconds = trained.seconds.max(1e-9);
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
            seconds: trained.started.elapsed().as_secs_f64(),
        };
        self.history.push(m.clone());
        if self.world.is_main() {
            metrics::write_all(&self.dir, &self.history).map_err(io(&self.dir))?;
        }
        // The ranks must hold the same weights after every epoch; a difference stops the run.
        if self.world.size() > 1 {
            let what = format!("weights after epoch {}", trained.epoch + 1);
            crate::dist::check_identical(self.world.as_ref(), self.learner.fingerprint()?, &what)?;
        }
        self.next_epoch = trained.epoch + 1;
        self.batch = 0;
        self.running = Running::new();
        Ok(m)
    }

    /// Writes a checkpoint of where the run stands, to the batch.
    pub fn save(&self) -> Result<()> {
        if !self.world.is_main() {
            return Ok(());
        }
        let _span = tracing::info_span!("checkpoint").entered();
        let state = State {
            world_size: self.world.size(),
            next_epoch: self.next_epoch,
            batch: self.batch,
            step: self.learner.steps(),
            epoch_images: self.running.images(),
            config: self.config.clone(),
            mean: self.header.mean.clone(),
            std: self.header.std.clone(),
            classes: self.header.classes.clone(),
            shape: self.header.shape,
            history: self.history.clone(),
        };
        Snapshot::capture(&self.learner, &self.running, state).save(&self.dir)?;
        Ok(())
    }
}

/// `dir` as (folder of runs, run name), so that `runs/name` is `dir` again.
fn split_run_dir(dir: &Path) -> Result<(PathBuf, String)> {
    let named = |d: &Path| {
        let name = d.file_name()?.to_str()?.to_string();
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        Some((parent.unwrap_or(Path::new(".")).to_path_buf(), name))
    };
    if let Some(split) = named(dir) {
        return Ok(split);
    }
    // `.`, `..` and the like: the absolute path names the folder.
    let absolute = dir.canonicalize().map_err(io(dir))?;
    named(&absolute)
        .ok_or_else(|| Error::Unsupported(format!("{} is not a run folder", dir.display())))
}

/// Creates `dir` and takes an exclusive advisory lock on its `.lock` file (released when the
/// process ends, however it ends), refusing a folder another trainer holds.
fn lock_run_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(".lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(path)(e)),
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
        batch_size: config.batch_size,
        drop_last: true,
        shuffle: true,
        prefetch: config.prefetch,
        seed: config.seed,
        epochs: epoch..config.epochs,
        max_batches: config.limit_train_batches,
        start_batch: batch,
        phase: Phase::Train,
        shard: shard_of(world),
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
