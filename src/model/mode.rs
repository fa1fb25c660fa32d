//! Whether a forward pass trains or evaluates, and what that means for BatchNorm.

use std::sync::Arc;

use candle_core::Tensor;

use crate::dist::Collective;
use crate::ops::Statistics;

/// Where a training pass's dropout mask comes from.
#[derive(Clone, Copy)]
pub enum Dropout<'a> {
    /// Drawn on the host from this seed during the forward pass ([`dropout_mask`]).
    Seed(u64),
    /// Already drawn into this tensor (`[batch, features]`, the layer's keep factor or 0):
    /// a buffer the trainer fills before the step, so the step itself uploads nothing.
    Mask(&'a Tensor),
}

/// The inverted-dropout mask of `len` values for rate `p` from `seed`: `1/(1−p)` where a value is
/// kept, 0 where dropped. One definition, so a staged mask and one drawn in the forward pass are
/// the same bits.
pub fn dropout_mask(p: f64, seed: u64, len: usize) -> Vec<f32> {
    let mut rng = crate::seed::rng(seed, &[]);
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..len)
        .map(|_| if rng.f64() < p { 0.0 } else { keep })
        .collect()
}

/// Whether a forward pass trains (batch statistics, dropout) or evaluates (running statistics).
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Training: BatchNorm uses and updates batch statistics; dropout applies its mask.
    Train {
        /// This step's dropout mask.
        dropout: Dropout<'a>,
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
            dropout: Dropout::Seed(dropout_seed),
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
