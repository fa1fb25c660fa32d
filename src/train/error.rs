//! Everything that can stop a run, with the file or setting it concerns.

use std::path::PathBuf;

use super::checkpoint;
use crate::stream::StreamError;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// candle failed.
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
    /// The data stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// A collective failed or the ranks diverged.
    #[error(transparent)]
    Dist(#[from] crate::dist::Error),
    /// The step cannot be captured as one graph (the capture check of debug builds and tests).
    #[error(transparent)]
    Capture(#[from] crate::train::capture::CaptureError),
    /// The configuration is malformed or out of range.
    #[error(transparent)]
    Config(#[from] crate::train::config::Error),
    /// A file (metrics, config, image) could not be written or read.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is valid, but not with this data or device.
    #[error("cannot run: {0}")]
    Unsupported(String),
    /// A loss, weight or statistic stopped being finite: the run diverged. Nothing after the
    /// last checkpoint before it was saved.
    #[error(
        "the run diverged in epoch {epoch} at step {step} (learning rate {lr:.4e}): {what}; \
         nothing of it was saved, the run folder keeps its last checkpoint from before (a \
         lower --lr or a longer --warmup-epochs may help)"
    )]
    Diverged {
        /// What stopped being finite.
        what: String,
        /// The epoch (1-based).
        epoch: usize,
        /// Optimizer steps taken.
        step: usize,
        /// The learning rate of the last step.
        lr: f64,
    },
    /// Another process is training in the run folder.
    #[error("{} is in use by another training process", dir.display())]
    Busy {
        /// The run folder.
        dir: PathBuf,
    },
    /// A new run would overwrite a saved one.
    #[error("{} already holds a run", dir.display())]
    RunExists {
        /// The run folder.
        dir: PathBuf,
    },
    /// A saved state does not fit the network it is loaded into.
    #[error("{}", path.display())]
    State {
        /// The checkpoint it came from.
        path: PathBuf,
        /// What does not fit.
        #[source]
        source: Box<StateError>,
    },
    /// An image to classify could not be used.
    #[error("{}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// A saved state that does not fit the network it is loaded into.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A tensor the network needs is not there.
    #[error("no tensor {0}")]
    Missing(String),
    /// A tensor is there but of another shape or dtype.
    #[error("tensor {name} does not fit")]
    Mismatch {
        /// Its name in the state.
        name: String,
        /// candle's refusal.
        #[source]
        source: candle_core::Error,
    },
}

/// Result alias for training.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Error::Io` for `path`, as a `map_err` argument.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
