//! Checkpoints: every variable of the model, its EMA, the optimizer's momentum buffers and the
//! epoch's running loss and accuracy in one safetensors file whose metadata holds where the run
//! stands (epoch, batch, step, history) and a checksum of every tensor.
//!
//! One file is one commit point: it is written to a temporary file, synced, and renamed over the
//! previous checkpoint, which stays whole and loadable until the rename. A damaged file (a flipped
//! byte, a truncation, a stray file) is refused on load with an error naming it.
//!
//! [`Snapshot`] is the one place that knows the layout: tensor names are the variable names
//! behind a prefix per part ([`Part`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::tensor::{SafeTensors, View};
use serde::{Deserialize, Serialize};

use super::learner::Learner;
use super::metrics::EpochMetrics;
use super::net::Net;
use super::running::Running;
use crate::config::TrainConfig;
use crate::store::Shape;

/// The `format` metadata value of this layout.
const FORMAT: &str = "cifar-stream checkpoint 2";

/// Test hook: milliseconds to pause half-way through writing a checkpoint and again before the
/// rename, so a crash test can kill the process inside the write.
pub const DELAY_ENV: &str = "CIFAR_STREAM_TEST_CHECKPOINT_DELAY_MS";

/// Errors reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// candle could not convert the tensors.
    #[error("{path}: {source}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// The file is not a whole checkpoint of this format.
    #[error("{path}: damaged or not a checkpoint: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A tensor the model needs is not in the file.
    #[error("{path}: no tensor {name}")]
    Missing { path: PathBuf, name: String },
}

/// Where the run stands, saved with the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Processes that trained it (data-parallel ranks); a resume needs as many.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Epochs fully completed; a resumed run continues in this epoch.
    pub next_epoch: usize,
    /// Batches of `next_epoch` already trained (0: saved at an epoch boundary); a resumed run
    /// continues with the next batch of the same permutation.
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Images trained on in `next_epoch` so far (the running sums' count).
    pub epoch_images: usize,
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Training store mean/std (0–1), for `predict`.
    pub mean: Vec<f64>,
    /// See `mean`.
    pub std: Vec<f64>,
    /// Class names.
    pub classes: Vec<String>,
    /// Image shape of the training store (what `predict` must be given).
    #[serde(default = "cifar_shape")]
    pub shape: Shape,
    /// Metrics of every completed epoch.
    pub history: Vec<EpochMetrics>,
}

fn one() -> usize {
    1
}

fn cifar_shape() -> Shape {
    Shape::CIFAR
}

/// The parts of a checkpoint's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The live (raw) weights and BatchNorm statistics.
    Model,
    /// Their exponential moving average.
    Ema,
    /// SGD's momentum buffers.
    Momentum,
    /// The unfinished epoch's summed training loss and correct count.
    Running,
}

impl Part {
    /// The prefix of this part's tensor names.
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Model => "model.",
            Part::Ema => "ema.",
            Part::Momentum => "momentum.",
            Part::Running => "running.",
        }
    }

    fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// The checkpoint file inside a run folder.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Removes what a killed writer left behind in `dir` (its temporary files), before a run starts
/// writing there again.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(".checkpoint.") || name.starts_with(".write.");
        if ours && name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The checksum the metadata carries: every tensor, by name, with its dtype, shape and bytes.
fn checksum<'a, V: View + 'a>(tensors: impl IntoIterator<Item = (&'a str, V)>) -> String {
    let mut sorted: Vec<(&str, V)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, t) in sorted {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(format!("{:?}", t.dtype()).as_bytes());
        for d in t.shape() {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&t.data());
    }
    format!("{:016x}", h.digest())
}

fn delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(DELAY_ENV).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// A checkpoint in memory: the learner's tensors by checkpoint name, and the run's state.
pub struct Snapshot {
    /// Where the run stands.
    pub state: State,
    tensors: HashMap<String, Tensor>,
    /// The file these came from (for error messages).
    path: PathBuf,
}

impl Snapshot {
    /// The learner's tensors (shared handles, not copies) and the unfinished epoch's running
    /// sums, with `state`.
    pub fn capture(learner: &Learner, running: &Running, state: State) -> Snapshot {
        let mut tensors = HashMap::new();
        for (n, v) in learner.net.named() {
            tensors.insert(Part::Model.key(&n), v.as_tensor().clone());
        }
        if let Some((ema, _)) = &learner.ema {
            for (n, v) in ema.named() {
                tensors.insert(Part::Ema.key(&n), v.as_tensor().clone());
            }
        }
        for (n, t) in learner.sgd.buffers() {
            tensors.insert(Part::Momentum.key(n), t.clone());
        }
        if let Some((loss, hits)) = running.sums() {
            tensors.insert(Part::Running.key("loss"), loss.clone());
            tensors.insert(Part::Running.key("hits"), hits.clone());
        }
        Snapshot {
            state,
            tensors,
            path: PathBuf::new(),
        }
    }

    /// Writes the checkpoint into `dir`: a temporary file, synced, renamed over the previous one.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let target = path(dir);
        let io = |source| Error::Io {
            path: target.clone(),
            source,
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: target.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let state = serde_json::to_string(&self.state).map_err(|e| corrupt(e.to_string()))?;
        let sum = checksum(self.tensors.iter().map(|(k, t)| (k.as_str(), t)));
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("state".to_string(), state),
            ("checksum".to_string(), sum),
        ]);
        let bytes = safetensors::serialize(&self.tensors, Some(metadata))
            .map_err(|e| corrupt(e.to_string()))?;
        let mut tmp = crate::store::temp_file_in(dir, ".checkpoint.").map_err(io)?;
        let (first, second) = bytes.split_at(bytes.len() / 2);
        tmp.write_all(first).map_err(io)?;
        if let Some(d) = delay() {
            std::thread::sleep(d);
        }
        tmp.write_all(second).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        if let Some(d) = delay() {
            std::thread::sleep(d);
        }
        tmp.persist(&target).map_err(|e| io(e.error))?;
        // The rename is durable once the folder's entry is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Reads and checks the checkpoint in run folder `dir`, onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Snapshot, Error> {
        let path = path(dir);
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| corrupt(format!("no {key:?} in the metadata")))
        };
        let format = field("format")?;
        if format != FORMAT {
            return Err(corrupt(format!(
                "format {format:?}, this build reads {FORMAT:?}"
            )));
        }
        let state: State =
            serde_json::from_str(field("state")?).map_err(|e| corrupt(format!("state: {e}")))?;
        let views = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let found = checksum(views.tensors().iter().map(|(k, v)| (k.as_str(), v)));
        let expected = field("checksum")?;
        if &found != expected {
            return Err(corrupt(format!(
                "checksum mismatch: metadata says {expected}, the tensors hash to {found}"
            )));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|source| {
            Error::Tensors {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Snapshot {
            state,
            tensors,
            path,
        })
    }

    /// Every tensor by checkpoint name (`model.…`, `ema.…`, `momentum.…`, `running.…`).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Whether the checkpoint holds an EMA copy of the weights.
    pub fn has_ema(&self) -> bool {
        let prefix = Part::Ema.prefix();
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// Copies one part's tensors into `net`'s variables (every variable must be there).
    pub fn load_into(&self, net: &Net, part: Part) -> Result<(), Error> {
        for (name, var) in net.named() {
            let key = part.key(&name);
            let t = self.tensors.get(&key).ok_or_else(|| Error::Missing {
                path: self.path.clone(),
                name: key.clone(),
            })?;
            var.set(t).map_err(|source| Error::Tensors {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Puts the learner back where the checkpoint left it: weights, EMA (restarted from the
    /// weights when the checkpoint has none), momentum buffers and step count.
    pub fn restore(&self, learner: &mut Learner) -> Result<(), Error> {
        self.load_into(&learner.net, Part::Model)?;
        if let Some((ema_net, ema)) = &learner.ema {
            if self.has_ema() {
                self.load_into(ema_net, Part::Ema)?;
            } else {
                ema.restart().map_err(|source| Error::Tensors {
                    path: self.path.clone(),
                    source,
                })?;
            }
        }
        let prefix = Part::Momentum.prefix();
        let buffers = self
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect();
        learner.sgd.set_buffers(buffers);
        learner.set_steps(self.state.step);
        Ok(())
    }

    /// The unfinished epoch's running sums (empty at an epoch boundary).
    pub fn running(&self) -> Running {
        let get = |n: &str| self.tensors.get(&Part::Running.key(n)).cloned();
        match (get("loss"), get("hits")) {
            (Some(loss), Some(hits)) => Running::resume(loss, hits, self.state.epoch_images),
            _ => Running::new(),
        }
    }
}
