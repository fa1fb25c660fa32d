//! The training stage: a [`Trainer`] runs a [`Learner`] (weights, EMA, Nesterov SGD, Muon) over
//! the stream with the learning-rate schedule, evaluates, writes metrics and checkpoints; a
//! [`SavedRun`] serves a finished one; `bench` and `parity` time and check the step.

pub mod capture;
pub mod checkpoint;
pub mod config;
pub mod curve;
pub mod diag;
mod epoch_sums;
mod error;
pub mod eta;
mod evaluate;
pub mod finite;
mod graph;
mod inputs;
mod learner;
pub mod loss;
pub mod metrics;
mod net;
pub mod optim;
mod outcome;
mod run_dir;
pub mod runs;
mod saved;
pub mod schedule;
mod stores;
mod trainer;
pub mod tta;

pub use checkpoint::Snapshot;
pub use config::{GraphMode, Lookahead, MuonConfig};
pub use epoch_sums::EpochSums;
pub use error::{Error, Result, StateError};
pub use evaluate::{evaluate, Evaluation};
pub use learner::{Learner, Part};
pub use metrics::EpochMetrics;
pub use net::Net;
pub use optim::{Averaging, Ema, Muon, Optimizer, Sgd};
pub use outcome::{
    Headline, Observer, Outcome, Silent, TestEvaluation, TrainedEpoch, LOSS_READ_EVERY,
};
pub use saved::{read_image, Prediction, SavedRun};
pub use schedule::{Schedule, ScheduleKind};
pub use stores::Stores;
pub use trainer::Trainer;
pub use tta::Tta;
