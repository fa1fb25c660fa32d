//! Checkpoints: every variable of the model, its EMA, the optimizer's momentum buffers and the
//! epoch's running loss and accuracy in one safetensors file whose metadata holds where the run
//! stands (epoch, batch, step, history) and a checksum of every tensor.
//!
//! One file is one commit point: it is written to a temporary file, synced, and renamed over the
//! previous checkpoint, which stays whole and loadable until the rename. A damaged file (a flipped
//! byte, a truncation, a stray file) is refused on load with an error naming it.
//!
//! This module knows the file format, the [`State`] and whether a run may resume from it; the
//! tensors' names are their owners' ([`Learner::state`](super::Learner::state),
//! [`EpochSums::state`](super::EpochSums::state)).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::tensor::{SafeTensors, View};
use serde::{Deserialize, Serialize};

use super::finite::first_non_finite;
use super::metrics::EpochMetrics;
use crate::store::Shape;
use crate::train::config::TrainConfig;

/// The `format` metadata value of this layout.
const FORMAT: &str = "cifar-stream checkpoint 2";

/// Errors reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// File-system failure.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// candle could not convert the tensors.
    #[error("{path}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// A tensor holds a NaN or an infinity: a diverged run's, never written by this build.
    #[error("{path}: tensor {tensor} holds NaN or infinity (the run had diverged)")]
    NonFinite { path: PathBuf, tensor: String },
    /// The file is not a whole checkpoint of this format.
    #[error("{path}: damaged or not a checkpoint: {reason}")]
    Corrupt { path: PathBuf, reason: String },
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
    /// Optimizer steps taken (`step` in the file).
    #[serde(rename = "step")]
    pub steps: usize,
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

impl State {
    /// Why a run saved in this state cannot continue with `config` on `world_size` ranks, if it
    /// cannot: the ranks must be as many, and in the middle of an epoch the permutation it
    /// stopped in must be the same one (batch size, seed, batch limit, data).
    pub fn refuses_resume(&self, config: &TrainConfig, world_size: usize) -> Option<String> {
        if self.world_size != world_size {
            return Some(format!(
                "it was saved by {} process(es) and is resumed by {world_size}: resume it with as \
                 many (mpirun -np {}); the position in an epoch is a position in each rank's share",
                self.world_size, self.world_size
            ));
        }
        let was = &self.config;
        if was.optim.muon.is_some() != config.optim.muon.is_some() {
            // The filter banks' momentum buffers are Muon's or SGD's, not interchangeable.
            let name = |on: bool| if on { "Muon" } else { "SGD" };
            return Some(format!(
                "it trained its filter banks with {} and this configuration with {}: resume it \
                 with the same [optim.muon], or start a new run",
                name(was.optim.muon.is_some()),
                name(config.optim.muon.is_some())
            ));
        }
        let same_permutation = was.batch_size == config.batch_size
            && was.seed == config.seed
            && was.limit_train_batches == config.limit_train_batches
            && was.data == config.data;
        if self.batch > 0 && !same_permutation {
            return Some(format!(
                "it stopped in the middle of epoch {}: resuming it needs the same batch_size, \
                 seed, limit_train_batches and data",
                self.next_epoch + 1
            ));
        }
        None
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

/// The checksum the metadata carries: every tensor, by name, with its dtype, shape and bytes
/// (xxh3 of name, a zero byte, the dtype's name, the dims as u64, the data, in name order).
pub fn checksum<'a, V: View + 'a>(tensors: impl IntoIterator<Item = (&'a str, V)>) -> String {
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

/// A checkpoint in memory: named tensors and the run's state.
pub struct Snapshot {
    /// Where the run stands.
    pub state: State,
    tensors: HashMap<String, Tensor>,
    /// The file these came from (for error messages).
    path: PathBuf,
}

impl Snapshot {
    /// `tensors` (shared handles, not copies) with `state`, to be saved.
    pub fn new(state: State, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Snapshot {
        Snapshot {
            state,
            tensors: tensors.into_iter().collect(),
            path: PathBuf::new(),
        }
    }

    /// Writes the checkpoint into `dir`: a temporary file, synced, renamed over the previous one.
    /// `pause` is the crash tests' hook (`TrainConfig::checkpoint_write_delay_ms`): a sleep
    /// half-way through the write and again before the rename; `None` in a real run.
    pub fn save(&self, dir: &Path, pause: Option<std::time::Duration>) -> Result<(), Error> {
        let target = path(dir);
        let io = |source| Error::Io {
            path: target.clone(),
            source,
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: target.clone(),
            reason,
        };
        let tensors = self.tensors.iter().map(|(k, t)| (k.as_str(), t));
        let mut sorted: Vec<(&str, &Tensor)> = tensors.collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let bad = first_non_finite(sorted).map_err(|source| Error::Tensors {
            path: target.clone(),
            source,
        })?;
        if let Some(tensor) = bad {
            return Err(Error::NonFinite {
                path: target,
                tensor,
            });
        }
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
        if let Some(d) = pause {
            std::thread::sleep(d);
        }
        tmp.write_all(second).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        if let Some(d) = pause {
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
        let mut sorted: Vec<(&str, &Tensor)> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let bad = first_non_finite(sorted).map_err(|source| Error::Tensors {
            path: path.clone(),
            source,
        })?;
        if let Some(tensor) = bad {
            return Err(Error::NonFinite { path, tensor });
        }
        Ok(Snapshot {
            state,
            tensors,
            path,
        })
    }

    /// Every tensor by checkpoint name (`model.…`, `ema.…`, `momentum.…`, `epoch_sums.…`).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
