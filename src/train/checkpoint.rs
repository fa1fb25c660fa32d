//! Checkpoints: every variable of the model, its EMA and the optimizer's momentum buffers in one
//! safetensors file, plus a JSON file with the position in the run and the metrics so far; both
//! written atomically (temporary file, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::metrics::EpochMetrics;
use crate::config::TrainConfig;

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
    /// Metrics of every completed epoch.
    pub history: Vec<EpochMetrics>,
}

/// Tensor file inside a run folder.
pub fn tensors_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// State file inside a run folder.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

/// Writes tensors (names already prefixed: `model.`, `ema.`, `momentum.`) and state.
pub fn save(dir: &Path, tensors: &BTreeMap<String, Tensor>, state: &State) -> Result<(), Error> {
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
    let map: HashMap<&String, Tensor> = tensors.iter().map(|(k, t)| (k, t.clone())).collect();
    candle_core::safetensors::save(&map, tmp.path()).map_err(|source| Error::Tensors {
        path: final_tensors.clone(),
        source,
    })?;
    tmp.as_file().sync_all().map_err(io(&final_tensors))?;
    tmp.persist(&final_tensors).map_err(|e| Error::Io {
        path: final_tensors.clone(),
        source: e.error,
    })?;
    let json = serde_json::to_vec_pretty(state).map_err(|source| Error::Json {
        path: state_path(dir),
        source,
    })?;
    crate::render::write_atomic(&state_path(dir), &json).map_err(io(&state_path(dir)))
}

/// Reads a run folder's state and tensors.
pub fn load(dir: &Path, device: &Device) -> Result<(State, HashMap<String, Tensor>), Error> {
    let sp = state_path(dir);
    let text = std::fs::read(&sp).map_err(|source| Error::Io {
        path: sp.clone(),
        source,
    })?;
    let state: State =
        serde_json::from_slice(&text).map_err(|source| Error::Json { path: sp, source })?;
    let tp = tensors_path(dir);
    let tensors = candle_core::safetensors::load(&tp, device)
        .map_err(|source| Error::Tensors { path: tp, source })?;
    Ok((state, tensors))
}
