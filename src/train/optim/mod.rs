//! Who updates which weight, at what rate: the optimizers (SGD, Muon) behind one
//! [`Optimizer`] trait, the parameter groups they step ([`groups`]), and the copy of the weights
//! a run averages ([`Averaging`]: none, an EMA, or lookahead).
//!
//! Every value that changes from step to step (each group's rate, the EMA's decay) is computed
//! once per step into [`StepScalars`], written into one device buffer ([`Scalars`]) and read
//! from there by every update; the state that lives across steps (momentum) is allocated once
//! and written in place. So the step can become one captured graph.

pub mod averaging;
pub mod ema;
pub mod groups;
pub mod momentum;
pub mod muon;
pub mod scalars;
pub mod sgd;
pub mod trained;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var};

pub use averaging::{Averaging, EmaStep};
pub use ema::Ema;
pub use groups::{Group, Groups, RateRule};
pub use muon::Muon;
pub use scalars::{Scalars, StepScalars};
pub use sgd::Sgd;
pub use trained::Trained;

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

/// An optimizer over a set of [`Param`]s.
pub trait Optimizer: Send {
    /// Its parameters and their state.
    fn trained(&self) -> &Trained;

    /// Its parameters and their state, to change.
    fn trained_mut(&mut self) -> &mut Trained;

    /// The parameters it updates.
    fn params(&self) -> &[Param] {
        &self.trained().params
    }

    /// One update at the rates in `scalars` (written for this step); parameters without a gradient or frozen are left
    /// alone. Given `ema`, an optimizer that can fold the EMA into its own pass (SGD's
    /// multi-tensor op) does so and returns the ids of the live variables whose twins it updated; the
    /// caller updates the rest.
    fn step(
        &mut self,
        grads: &GradStore,
        scalars: &Scalars,
        ema: Option<&EmaStep>,
    ) -> Result<HashSet<TensorId>>;

    /// Its momentum buffers that hold a value, by parameter name (what a checkpoint stores):
    /// shared handles to buffers that are written in place, not copies.
    fn momentum(&self) -> BTreeMap<String, Tensor> {
        self.trained().momentum()
    }

    /// Copies `buffers` into its momentum buffers (from a checkpoint or another rank); a
    /// parameter not in `buffers` starts its momentum afresh at its next step.
    fn set_momentum(&mut self, buffers: BTreeMap<String, Tensor>) -> Result<()> {
        self.trained_mut().set_momentum(buffers)
    }

    /// From now on, the parameters `names` (and only they) are not updated.
    fn set_frozen(&mut self, names: BTreeSet<String>) {
        self.trained_mut().set_frozen(names)
    }
}

/// What the optimizers' tests build their cases from.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Var};

    use super::{Param, Scalars, StepScalars};

    /// Variable `var` as parameter `name` of group `group`.
    pub fn param(name: &str, var: &Var, group: usize) -> Param {
        Param {
            name: name.into(),
            var: var.clone(),
            group,
        }
    }

    /// A CPU scalar buffer holding `rates` (one group each) and the EMA decay `ema`.
    pub fn scalars(rates: &[f64], ema: Option<f64>) -> Scalars {
        let scalars = Scalars::new(rates.len(), &Device::Cpu).unwrap();
        let step = StepScalars {
            rates: rates.to_vec(),
            ema_decay: ema,
        };
        scalars.write(&step).unwrap();
        scalars
    }
}
