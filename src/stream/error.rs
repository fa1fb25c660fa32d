//! Why a stream could not deliver a batch.

use super::batch::BatchGuard;

/// Why the stream could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The producer panicked (a bad image, a failing store…); the message says why.
    #[error("data producer failed at epoch {epoch} batch {batch}: {message}")]
    ProducerFailed {
        epoch: usize,
        batch: usize,
        message: String,
    },
    /// The producer ended without a word before the epoch was complete.
    #[error("data producer stopped before epoch {epoch} batch {batch}")]
    ProducerGone { epoch: usize, batch: usize },
    /// The run was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// The images went bad under the stream (a store file truncated while mapped).
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The consumer holds every batch buffer and asks for another: none can ever come.
    #[error(
        "the consumer holds all {held} batch buffers and asks for another; drop a batch \
         before taking the next (at most prefetch + 1 can be held)"
    )]
    BuffersExhausted { held: usize },
}

/// What the channel carries: a batch, or why there is none.
pub(super) type Item = Result<BatchGuard, StreamError>;
