//! The training loop: consumes the stream, steps SGD with the schedule, keeps the EMA,
//! evaluates raw and EMA weights each epoch, writes metrics and checkpoints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::checkpoint::{self, State};
use super::ema::Ema;
use super::metrics::{self, EpochMetrics};
use super::running::Running;
use super::sgd::Sgd;
use super::tta::Tta;
use crate::augment::Augmenter;
use crate::config::TrainConfig;
use crate::model::{self, is_buffer, sorted_vars, Mode, SeResNetD};
use crate::seed;
use crate::store::{Images, Reader, Split};
use crate::stream::{EpochStats, Loader, LoaderConfig, StreamError};

/// Seed-derivation tag of dropout masks.
const DROPOUT_STREAM: u64 = u64::MAX - 1;

/// Steps between reads of the running loss for progress: each read drains the GPU's queue.
pub const LOSS_READ_EVERY: usize = 25;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// candle failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The data stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// A metrics file could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias for training.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Accuracy and loss of one evaluation, with its confusion matrix (`[true][predicted]`).
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// Counts by true class (rows) and predicted class (columns).
    pub confusion: Vec<Vec<u64>>,
}

/// A model plus its variables.
pub struct Net {
    /// The layers.
    pub model: SeResNetD,
    /// The variables (parameters and BatchNorm statistics).
    pub vars: VarMap,
}

impl Net {
    /// A freshly initialised network.
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Net> {
        config.precision.check(device).map_err(Error::Config)?;
        let (mut model, vars) = model::build(&config.model, config.seed, device)?;
        model.set_kernels(config.kernels);
        model.set_precision(config.precision);
        Ok(Net { model, vars })
    }

    /// `(name, var)` in name order.
    pub fn named(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.vars)
    }

    /// SGD over the trainable variables (not the BatchNorm statistics), as `config` says.
    pub fn optimizer(&self, config: &TrainConfig) -> Sgd {
        let params: Vec<(String, Var)> = self
            .named()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n))
            .collect();
        Sgd::new(
            params,
            config.optim.momentum,
            config.optim.nesterov,
            config.optim.weight_decay,
            config.optim.no_decay_bn_bias,
        )
    }

    /// Copies tensors `prefix + name` from a checkpoint into the variables.
    pub fn load(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
        dir: &std::path::Path,
    ) -> Result<()> {
        for (name, var) in self.named() {
            let key = format!("{prefix}{name}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| checkpoint::Error::Missing {
                    path: checkpoint::tensors_path(dir),
                    name: key.clone(),
                })?;
            var.set(t)?;
        }
        Ok(())
    }
}

/// Progress callbacks, so the binary can draw bars without the library knowing about them.
pub trait Observer {
    /// A training epoch starts with `batches` batches.
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    /// One training step was queued; every [`LOSS_READ_EVERY`] steps it carries the epoch's
    /// mean training loss so far (reading it waits for the device, so not every step does).
    fn step(&mut self, _loss: Option<f64>) {}
    /// An epoch finished (metrics computed, files written).
    fn epoch_end(&mut self, _metrics: &EpochMetrics, _stats: &EpochStats) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// How a run ended.
pub struct Outcome {
    /// Metrics of every epoch (including those before a resume).
    pub history: Vec<EpochMetrics>,
    /// True when Ctrl-C stopped it.
    pub interrupted: bool,
}

/// One training step: forward with dropout drawn from `dropout_seed`, cross-entropy, backward,
/// SGD update at rate `lr` on the loss with `label_smoothing`, then EMA update number `step`
/// when given one. Returns `(logits, loss)`; each phase is one tracing span (the EMA belongs to
/// `optimizer`).
#[allow(clippy::too_many_arguments)]
pub fn step_sgd(
    model: &SeResNetD,
    sgd: &mut Sgd,
    ema: Option<&Ema>,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
    lr: f64,
    dropout_seed: u64,
    step: usize,
) -> Result<(Tensor, Tensor)> {
    let (logits, loss) = {
        let _f = tracing::info_span!("forward").entered();
        let logits = model.forward(x, Mode::Train { dropout_seed })?;
        let loss = super::loss::cross_entropy(&logits, y, label_smoothing)?;
        (logits, loss)
    };
    let grads = {
        let _b = tracing::info_span!("backward").entered();
        loss.backward()?
    };
    let _o = tracing::info_span!("optimizer").entered();
    sgd.step(&grads, lr)?;
    if let Some(ema) = ema {
        ema.update(step)?;
    }
    Ok((logits, loss))
}

/// Runs (or resumes) training as `config` says, writing into `config.run_dir()`.
pub fn train(
    config: &TrainConfig,
    device: &Device,
    resume: bool,
    pool: Arc<rayon::ThreadPool>,
    cancel: Arc<AtomicBool>,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    config.validate().map_err(Error::Config)?;
    let dir = config.run_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let train_store = Arc::new(Reader::open(Split::Train.path_in(&config.data))?);
    let test_store = Arc::new(Reader::open(Split::Test.path_in(&config.data))?);
    let header = train_store.header().clone();
    if header.classes.len() != config.model.num_classes {
        return Err(Error::Config(format!(
            "the store has {} classes, the model {}",
            header.classes.len(),
            config.model.num_classes
        )));
    }

    let net = Net::new(config, device)?;
    let ema_net = Net::new(config, device)?;
    let mut sgd = net.optimizer(config);
    let (mut start_epoch, mut step, mut history) = (0, 0, Vec::new());
    let saved = if resume {
        Some(checkpoint::load(&dir, device)?)
    } else {
        None
    };
    if let Some((state, tensors)) = &saved {
        net.load(tensors, "model.", &dir)?;
        let buffers: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("momentum.")
                    .map(|n| (n.to_string(), t.clone()))
            })
            .collect();
        sgd.set_buffers(buffers);
        (start_epoch, step, history) = (state.next_epoch, state.step, state.history.clone());
        history.truncate(start_epoch);
    }
    let vars = |n: &Net| n.named().into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    // Ema::new starts the average from the live weights; a resumed run then restores its own.
    let ema = if config.ema_decay > 0.0 {
        Some(Ema::new(config.ema_decay, vars(&ema_net), vars(&net))?)
    } else {
        None
    };
    if let Some((_, tensors)) = &saved {
        ema_net.load(tensors, "ema.", &dir)?;
    }
    drop(saved);

    let augmenter = Augmenter::for_store(&config.augment, config.epochs, config.seed, &header);
    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        drop_last: true,
        shuffle: true,
        prefetch: config.prefetch,
        seed: config.seed,
        epochs: start_epoch..config.epochs,
        max_batches: config.limit_train_batches,
    };
    let mut loader = Loader::start(
        train_store.clone(),
        Arc::new(augmenter),
        pool.clone(),
        loader_config,
        cancel.clone(),
    );
    let iters_per_epoch = loader.batches_per_epoch();
    if iters_per_epoch == 0 {
        return Err(Error::Config(format!(
            "fewer training images than one batch of {}",
            config.batch_size
        )));
    }
    let eval_aug = Arc::new(Augmenter::normalise_only(
        header.shape,
        &header.mean,
        &header.std,
    ));
    let state_of =
        |next_epoch: usize, partial: bool, step: usize, history: &[EpochMetrics]| State {
            next_epoch,
            partial_epoch: partial,
            step,
            config: config.clone(),
            mean: header.mean.clone(),
            std: header.std.clone(),
            classes: header.classes.clone(),
            history: history.to_vec(),
        };
    let save = |next_epoch: usize,
                partial: bool,
                step: usize,
                history: &[EpochMetrics],
                sgd: &Sgd|
     -> Result<()> {
        let _span = tracing::info_span!("checkpoint").entered();
        let mut tensors = BTreeMap::new();
        for (n, v) in net.named() {
            tensors.insert(format!("model.{n}"), v.as_tensor().clone());
        }
        for (n, v) in ema_net.named() {
            tensors.insert(format!("ema.{n}"), v.as_tensor().clone());
        }
        for (n, t) in sgd.buffers() {
            tensors.insert(format!("momentum.{n}"), t.clone());
        }
        checkpoint::save(
            &dir,
            &tensors,
            &state_of(next_epoch, partial, step, history),
        )?;
        Ok(())
    };

    let shape = header.shape;
    let dims = (
        shape.channels as usize,
        shape.height as usize,
        shape.width as usize,
    );
    let mut interrupted = false;
    while let Some(mut epoch) = loader.epoch() {
        let e = epoch.stats().epoch;
        let started = Instant::now();
        observer.epoch_start(e, iters_per_epoch);
        let mut running = Running::new();
        let mut lr = 0f64;
        let mut k = 0;
        while let Some(batch) = epoch.next_blocking() {
            // Ctrl-C: stop now rather than after the batches already queued.
            if cancel.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let batch = match batch {
                Ok(b) => b,
                Err(StreamError::Interrupted) => {
                    interrupted = true;
                    break;
                }
                Err(other) => return Err(other.into()),
            };
            let n = batch.len();
            let (x, y) = {
                let _h2d = tracing::info_span!("h2d").entered();
                let x = Tensor::from_slice(&batch.images, (n, dims.0, dims.1, dims.2), device)?;
                let y = Tensor::from_slice(&batch.labels, n, device)?;
                (x, y)
            };
            drop(batch);
            lr = config.schedule.lr_at(step, iters_per_epoch);
            let dropout_seed = seed::derive(config.seed, &[DROPOUT_STREAM, e as u64, k as u64]);
            let (logits, loss) = step_sgd(
                &net.model,
                &mut sgd,
                ema.as_ref(),
                &x,
                &y,
                config.label_smoothing,
                lr,
                dropout_seed,
                step,
            )?;
            running.add(&logits, &loss, &y)?;
            step += 1;
            k += 1;
            let progress = if k % LOSS_READ_EVERY == 0 {
                Some(running.read()?.0)
            } else {
                None
            };
            observer.step(progress);
        }
        let stats = epoch.stats().clone();
        if interrupted {
            save(e, true, step, &history, &sgd)?;
            break;
        }
        // The epoch's one wait for the device: its time belongs to training, not evaluation.
        let (train_loss, train_acc) = running.read()?;
        let seen = running.images();
        let train_seconds = started.elapsed().as_secs_f64();
        let eval = |model: &SeResNetD| {
            let _s = tracing::info_span!("eval").entered();
            evaluate(
                model,
                test_store.clone(),
                eval_aug.clone(),
                pool.clone(),
                config.eval_batch_size,
                config.tta,
                device,
            )
        };
        let last = e + 1 == config.epochs;
        let (raw, ema_eval) = if last || (e + 1) % config.eval_every == 0 {
            let raw = eval(&net.model)?;
            let ema_eval = match &ema {
                Some(_) => eval(&ema_net.model)?,
                None => raw.clone(),
            };
            (Some(raw), Some(ema_eval))
        } else {
            (None, None)
        };
        let m = EpochMetrics {
            epoch: e,
            lr,
            train_loss,
            train_acc,
            test_loss: raw.as_ref().map(|r| r.loss),
            test_acc: raw.as_ref().map(|r| r.accuracy),
            ema_test_loss: ema_eval.as_ref().map(|r| r.loss),
            ema_test_acc: ema_eval.as_ref().map(|r| r.accuracy),
            images_per_second: seen as f64 / train_seconds.max(1e-9),
            trainer_stall: stats.wait_seconds / train_seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
        };
        history.push(m.clone());
        metrics::write_all(&dir, &history).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        if last || (config.save_every > 0 && (e + 1) % config.save_every == 0) {
            save(e + 1, false, step, &history, &sgd)?;
        }
        observer.epoch_end(&m, &stats);
        if cancel.load(Ordering::Relaxed) {
            interrupted = true;
            if !last {
                save(e + 1, false, step, &history, &sgd)?;
            }
            break;
        }
    }
    Ok(Outcome {
        history,
        interrupted,
    })
}

/// Evaluates `model` on every image of `images` (running BN statistics; no augmentation but
/// `tta`'s views).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &SeResNetD,
    images: Arc<dyn Images + Send + Sync>,
    augmenter: Arc<Augmenter>,
    pool: Arc<rayon::ThreadPool>,
    batch_size: usize,
    tta: Tta,
    device: &Device,
) -> Result<Evaluation> {
    let classes = model.config().num_classes;
    let shape = images.shape();
    let config = LoaderConfig {
        batch_size,
        drop_last: false,
        shuffle: false,
        prefetch: 2,
        seed: 0,
        epochs: 0..1,
        max_batches: None,
    };
    let mut loader = Loader::start(
        images,
        augmenter,
        pool,
        config,
        Arc::new(AtomicBool::new(false)),
    );
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut n_total) = (0f64, 0usize);
    if let Some(epoch) = loader.epoch() {
        for batch in epoch {
            let batch = batch?;
            let n = batch.len();
            let x = Tensor::from_slice(
                &batch.images,
                (
                    n,
                    shape.channels as usize,
                    shape.height as usize,
                    shape.width as usize,
                ),
                device,
            )?;
            let y = Tensor::from_slice(&batch.labels, n, device)?;
            let logits = tta.logits(model, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let predicted: Vec<u32> = logits.argmax(1)?.to_vec1()?;
            for (&t, &p) in batch.labels.iter().zip(&predicted) {
                confusion[t as usize][p as usize] += 1;
            }
            loss_sum += loss * n as f64;
            n_total += n;
        }
    }
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    Ok(Evaluation {
        loss: loss_sum / n_total.max(1) as f64,
        accuracy: correct as f64 / n_total.max(1) as f64,
        confusion,
    })
}
