//! Checkpoints: every variable of the model, its EMA and the optimizer's momentum buffers in one
//! safetensors file, plus a JSON file with the position in the run and the metrics so far; both
//! written atomically (temporary file, fsync, rename).
//!
//! [`Snapshot`] is the one place that knows the layout: tensor names are the variable names
//! behind a prefix per part ([`Part`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::learner::Learner;
use super::metrics::EpochMetrics;
use super::net::Net;
use crate::config::TrainConfig;
use crate::store::Shape;

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
    /// candle could not (de)serialise the tensors.
    #[error("{path}: {source}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// The JSON state is malformed.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: no tensor {name}")]
    Missing { path: PathBuf, name: String },
}

/// Where the run stands, saved beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Epochs fully completed; a resumed run starts at this epoch.
    pub next_epoch: usize,
    /// True when saved by Ctrl-C in the middle of `next_epoch` (its partial updates are kept).
    pub partial_epoch: bool,
    /// Optimizer steps taken.
    pub step: usize,
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
}

impl Part {
    /// The prefix of this part's tensor names.
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Model => "model.",
            Part::Ema => "ema.",
            Part::Momentum => "momentum.",
        }
    }

    fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// Tensor file inside a run folder.
pub fn tensors_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// State file inside a run folder.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

/// A checkpoint in memory: the learner's tensors by checkpoint name, and the run's state.
pub struct Snapshot {
    /// Where the run stands.
    pub state: State,
    tensors: HashMap<String, Tensor>,
    /// The tensor file these came from (for error messages).
    path: PathBuf,
}

impl Snapshot {
    /// The learner's tensors (shared handles, not copies) with `state`.
    pub fn capture(learner: &Learner, state: State) -> Snapshot {
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
        Snapshot {
            state,
            tensors,
            path: PathBuf::new(),
        }
    }

    /// Writes the tensors, then the state, into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let final_tensors = tensors_path(dir);
        let tmp = tempfile::Builder::new()
            .prefix(".checkpoint.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io(dir))?;
        candle_core::safetensors::save(&self.tensors, tmp.path()).map_err(|source| {
            Error::Tensors {
                path: final_tensors.clone(),
                source,
            }
        })?;
        tmp.as_file().sync_all().map_err(io(&final_tensors))?;
        tmp.persist(&final_tensors).map_err(|e| Error::Io {
            path: final_tensors.clone(),
            source: e.error,
        })?;
        let json = serde_json::to_vec_pretty(&self.state).map_err(|source| Error::Json {
            path: state_path(dir),
            source,
        })?;
        crate::render::write_atomic(&state_path(dir), &json).map_err(io(&state_path(dir)))
    }

    /// Reads a run folder's state and tensors onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Snapshot, Error> {
        let sp = state_path(dir);
        let text = std::fs::read(&sp).map_err(|source| Error::Io {
            path: sp.clone(),
            source,
        })?;
        let state: State =
            serde_json::from_slice(&text).map_err(|source| Error::Json { path: sp, source })?;
        let path = tensors_path(dir);
        let tensors =
            candle_core::safetensors::load(&path, device).map_err(|source| Error::Tensors {
                path: path.clone(),
                source,
            })?;
        Ok(Snapshot {
            state,
            tensors,
            path,
        })
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
}
