//! Whether a forward pass trains or evaluates, and what that means for BatchNorm.

use std::sync::Arc;

use crate::dist::Collective;
use crate::ops::Statistics;

/// Whether a forward pass trains (batch statistics, dropout) or evaluates (running statistics).
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Training: BatchNorm uses and updates batch statistics; dropout draws its mask from `seed`.
    Train {
        /// Seed of this step's dropout mask.
        dropout_seed: u64,
        /// Synchronised BatchNorm: statistics over every rank of this collective (`None`: each
        /// batch's own, as DDP's default).
        batch_norm_sync: Option<&'a Arc<dyn Collective>>,
    },
    /// Evaluation: running statistics, no dropout.
    Eval,
}

impl Mode<'static> {
    /// Training with each batch's own BatchNorm statistics and dropout drawn from `dropout_seed`.
    pub fn train(dropout_seed: u64) -> Mode<'static> {
        Mode::Train {
            dropout_seed,
            batch_norm_sync: None,
        }
    }
}

impl<'a> Mode<'a> {
    /// The statistics BatchNorm normalises with in this mode.
    pub(super) fn statistics(self) -> Statistics<'a> {
        match self {
            Mode::Train {
                batch_norm_sync, ..
            } => Statistics::Batch {
                sync: batch_norm_sync,
            },
            Mode::Eval => Statistics::Running,
        }
    }
}
