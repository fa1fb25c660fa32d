//! The run's configuration: a preset (or a saved run's `config.toml`), overridden by a TOML
//! file, overridden by flags ([`TrainConfig::layered`]); the resolved result is written next to
//! the run's outputs.
//!
//! A [`TrainConfig`] composes each stage's own settings (`model::ModelConfig`,
//! `augment::AugmentConfig`, the ops' kernels and precision) with the trainer's (optimizer,
//! [`Schedule`], [`Tta`], cadence); each setting is defined where it behaves.
//!
//! The enums that are both TOML values and command-line values (`Kernels`, `Precision`, `Tta`,
//! `ScheduleKind`, `PolicyName`, `PadFill`) derive `clap::ValueEnum` beside serde: one type names
//! its choices for both, so `--kernels stock` and `kernels = "stock"` cannot drift apart, and a
//! second front end gets `--help` listings for free. Mapping them in the binary instead would
//! duplicate six enums and their spellings; `tests/suite/cli_flags.rs` checks that clap's and
//! serde's names agree.

mod graph_mode;
mod optim;
mod presets;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::model::{Architecture, Precision};
use crate::ops::Kernels;
use crate::train::schedule::Schedule;
use crate::train::tta::Tta;

pub use graph_mode::GraphMode;
pub use optim::{Lookahead, MuonConfig, OptimConfig};
pub use presets::PRESETS;

/// Why a configuration could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--preset` names no preset.
    #[error("unknown preset {name:?} (choose one of {})", PRESETS.join(", "))]
    UnknownPreset {
        /// The name given.
        name: String,
    },
    /// A configuration file could not be read.
    #[error("{path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TOML document is malformed, has an unknown key, or a value of the wrong type.
    #[error("{origin}: {message}")]
    Toml {
        /// The file, or `TOML` for text given directly.
        origin: String,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {key}: {message}")]
    Invalid {
        /// The key (dotted for nested tables, as in `config.toml`).
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Where a configuration starts before a TOML file and flags are laid over it.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A preset by name (see [`PRESETS`]).
    Preset(&'a str),
    /// A saved run's folder: its `config.toml`.
    Run(&'a Path),
}

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Preset this configuration started from.
    pub preset: String,
    /// Store folder.
    pub data: PathBuf,
    /// Output folder root; the run writes to `<runs>/<name>/`.
    pub runs: PathBuf,
    /// Run name.
    pub name: String,
    /// Epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Batches prefetched ahead of the trainer.
    pub prefetch: usize,
    /// Augmentation threads (0 = all cores).
    pub threads: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Save a checkpoint every this many epochs (and at the end, and on Ctrl-C).
    pub save_every: usize,
    /// Also save every this many optimizer steps, in the middle of epochs (absent: only at the
    /// epoch ends `save_every` picks); a resume continues from the exact step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_every_steps: Option<usize>,
    /// Evaluate on the test split every this many epochs (and after the last).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// EMA decay per step (0 disables the EMA).
    pub ema_decay: f64,
    /// Lookahead averaging instead of an EMA (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookahead: Option<Lookahead>,
    /// Label smoothing of the training loss (0 = plain cross-entropy).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Convolution/BatchNorm implementation (fast: this crate's ops on CPU; stock: candle-nn's).
    #[serde(default)]
    pub kernels: Kernels,
    /// Test-time augmentation of every evaluation.
    #[serde(default)]
    pub tta: Tta,
    /// Compute precision (f32, or bf16 with f32 master weights).
    #[serde(default)]
    pub precision: Precision,
    /// In data-parallel training, BatchNorm statistics over the whole global batch (all-reduced
    /// every layer, forward and backward) instead of each rank's own (as DDP's default).
    #[serde(default)]
    pub sync_bn: bool,
    /// Write TensorBoard event files into the run folder (`tensorboard --logdir runs`).
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// On CUDA, each training step as one captured CUDA graph, replayed per batch (after an
    /// eager warm-up step per batch size and set of frozen parameters, the first replay held to
    /// an eager step): `auto` (a lone process on CUDA), `on` (required) or `off`.
    #[serde(default)]
    pub cuda_graph: GraphMode,
    /// A negative control for the GPU check, wrong on purpose: graph replays read the rates and
    /// EMA decay of the captured step (`tools/gpu-check.sh` stage 1a must catch it). Never saved.
    #[serde(skip)]
    pub freeze_graph_rates: bool,
    /// The crash tests' hook: milliseconds to pause half-way through writing each checkpoint
    /// and again before its rename, so that a kill lands inside the write. Never saved, so a
    /// resumed run pauses only when asked again.
    #[serde(skip)]
    pub checkpoint_write_delay_ms: Option<u64>,
    /// On CUDA, whether f32 convolutions and matrix products may use TF32 tensor cores
    /// (PyTorch's default for cuDNN convolutions); no effect on the CPU.
    #[serde(default = "yes")]
    pub tf32: bool,
    /// Training batches per epoch at most (absent: all), for quick runs and profiles; the
    /// schedule counts the epoch as this many steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train_batches: Option<usize>,
    /// Architecture (`arch` names it; absent: SE-ResNet-D).
    pub model: Architecture,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Training augmentation.
    pub augment: AugmentConfig,
}

/// The file a run folder keeps its resolved configuration in.
pub const CONFIG_FILE: &str = "config.toml";

impl TrainConfig {
    /// Resolves a configuration: `origin`, then the keys of the TOML file `file` over it, then
    /// `flags` over both; the result is validated.
    pub fn layered(
        origin: Origin,
        file: Option<&Path>,
        flags: impl FnOnce(&mut TrainConfig),
    ) -> Result<TrainConfig, Error> {
        let mut c = match origin {
            Origin::Preset(name) => TrainConfig::preset(name)?,
            Origin::Run(dir) => TrainConfig::read(&dir.join(CONFIG_FILE))?,
        };
        if let Some(path) = file {
            c = c.merge_file(path)?;
        }
        flags(&mut c);
        c.validate()?;
        Ok(c)
    }

    /// Reads a whole configuration (a run's `config.toml`).
    pub fn read(path: &Path) -> Result<TrainConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Toml {
            origin: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Applies the keys of a TOML document over this configuration (unknown keys are errors).
    pub fn merge_toml(&self, text: &str) -> Result<TrainConfig, Error> {
        self.merge_toml_from(text, "TOML")
    }

    /// Reads `path` and merges it (see [`TrainConfig::merge_toml`]).
    pub fn merge_file(&self, path: &Path) -> Result<TrainConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.merge_toml_from(&text, &path.display().to_string())
    }

    fn merge_toml_from(&self, text: &str, origin: &str) -> Result<TrainConfig, Error> {
        let toml_error = |message: String| Error::Toml {
            origin: origin.to_string(),
            message,
        };
        let patch: toml::Table = toml::from_str(text).map_err(|e| toml_error(e.to_string()))?;
        let mut base = toml::Table::try_from(self).map_err(|e| toml_error(e.to_string()))?;
        merge(&mut base, patch);
        base.try_into()
            .map_err(|e: toml::de::Error| toml_error(e.to_string()))
    }

    /// The run's output folder.
    pub fn run_dir(&self) -> PathBuf {
        self.runs.join(&self.name)
    }

    /// The configuration as TOML (what the run writes as `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

fn one() -> usize {
    1
}

fn one_f64() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn merge(base: &mut toml::Table, patch: toml::Table) {
    for (k, v) in patch {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(p)) => merge(b, p),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_nested_fields_and_round_trips() {
        let s = TrainConfig::preset("tiny").unwrap();
        let merged = s
            .merge_toml("epochs = 7\n[model]\nblocks = [2, 1, 1]\n[schedule]\nlr = 0.2\n")
            .unwrap();
        assert_eq!(merged.epochs, 7);
        assert_eq!(merged.model.se_resnet_d().unwrap().blocks, vec![2, 1, 1]);
        assert_eq!(merged.schedule.lr, 0.2);
        assert_eq!(
            merged.model.se_resnet_d().unwrap().widths,
            s.model.se_resnet_d().unwrap().widths
        );
        assert_eq!(
            TrainConfig::preset("seed").unwrap().merge_toml("").unwrap(),
            TrainConfig::preset("seed").unwrap()
        );
        let back: TrainConfig = toml::from_str(&merged.to_toml()).unwrap();
        assert_eq!(back, merged);
        assert!(
            s.merge_toml("epochz = 3").is_err(),
            "unknown keys are refused"
        );
        assert!(s
            .merge_toml("label_smoothing = 1.0")
            .unwrap()
            .validate()
            .is_err());
        assert!(s
            .merge_toml("label_smoothing = 0.2")
            .unwrap()
            .validate()
            .is_ok());
    }

    #[test]
    fn layers_apply_in_order_preset_or_run_then_file_then_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("over.toml");
        std::fs::write(&file, "epochs = 7\nbatch_size = 32\n").unwrap();
        let c =
            TrainConfig::layered(Origin::Preset("tiny"), Some(&file), |c| c.epochs = 9).unwrap();
        assert_eq!((c.epochs, c.batch_size, c.preset.as_str()), (9, 32, "tiny"));
        // A saved run's config.toml is a starting point like a preset.
        std::fs::write(tmp.path().join(CONFIG_FILE), c.to_toml()).unwrap();
        let again = TrainConfig::layered(Origin::Run(tmp.path()), None, |_| {}).unwrap();
        assert_eq!(again, c);
        // Errors name what is wrong: the preset, the file and key, the key out of range.
        let e = TrainConfig::layered(Origin::Preset("tiney"), None, |_| {}).unwrap_err();
        assert!(matches!(e, Error::UnknownPreset { .. }), "{e}");
        std::fs::write(&file, "epochz = 3\n").unwrap();
        let e = TrainConfig::layered(Origin::Preset("tiny"), Some(&file), |_| {}).unwrap_err();
        assert!(
            e.to_string().contains("over.toml") && e.to_string().contains("epochz"),
            "{e}"
        );
        let e =
            TrainConfig::layered(Origin::Preset("tiny"), None, |c| c.eval_every = 0).unwrap_err();
        assert!(e.to_string().contains("eval_every"), "{e}");
        let e = TrainConfig::layered(Origin::Run(&tmp.path().join("nowhere")), None, |_| {});
        assert!(matches!(e, Err(Error::Read { .. })));
    }
}
