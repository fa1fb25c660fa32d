//! Who updates which weight, at what rate: the optimizers (SGD, Muon) behind one
//! [`Optimizer`] trait, the parameter groups they step ([`groups`]), and the copy of the weights
//! a run averages ([`Averaging`]: none, an EMA, or lookahead).
//!
//! Every value that changes from step to step (each group's rate, the EMA's decay) is computed
//! once per step into [`StepScalars`] and read from there by every update: no optimizer holds a
//! per-step value of its own, so the step can become one captured graph that reads them from
//! one buffer.

pub mod averaging;
pub mod ema;
pub mod groups;
pub mod muon;
pub mod sgd;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var};

pub use averaging::{Averaging, EmaStep};
pub use ema::Ema;
pub use groups::{Group, Groups, RateRule};
pub use muon::Muon;
pub use sgd::Sgd;

/// One trained variable: its name (a checkpoint's key) and the group whose rate and decay it
/// steps with.
#[derive(Clone, Debug)]
pub struct Param {
    /// The variable's name in the network.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Its index in [`Groups`].
    pub group: usize,
}

/// The values one step reads that change between steps, computed before it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepScalars {
    /// Each group's rate, by group index.
    pub rates: Vec<f64>,
    /// The EMA's decay at this step (`None`: no EMA update this step).
    pub ema_decay: Option<f64>,
}

/// An optimizer over a set of [`Param`]s.
pub trait Optimizer: Send {
    /// Its name, for messages.
    fn name(&self) -> &'static str;

    /// The parameters it updates.
    fn params(&self) -> &[Param];

    /// One update at this step's `scalars`; parameters without a gradient or frozen are left
    /// alone. Given `ema`, an optimizer that can fold the EMA into its own pass (CUDA's fused
    /// kernel) does so and returns the ids of the live variables whose twins it updated; the
    /// caller updates the rest.
    fn step(
        &mut self,
        grads: &GradStore,
        scalars: &StepScalars,
        ema: Option<&EmaStep>,
    ) -> Result<HashSet<TensorId>>;

    /// Its momentum buffers by parameter name (what a checkpoint stores).
    fn momentum(&self) -> &BTreeMap<String, Tensor>;

    /// Restores momentum buffers (from a checkpoint or another rank).
    fn set_momentum(&mut self, buffers: BTreeMap<String, Tensor>);

    /// From now on, the parameters `names` (and only they) are not updated.
    fn set_frozen(&mut self, names: BTreeSet<String>);
}
