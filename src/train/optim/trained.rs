//! What every optimizer holds: its parameters, their momentum buffers, and which of them are
//! frozen for now.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

use super::momentum::MomentumBuffers;
use super::Param;

/// An optimizer's parameters and their state.
pub struct Trained {
    /// The parameters, in name order.
    pub params: Vec<Param>,
    /// Their momentum buffers (none for an optimizer without momentum).
    pub buffers: MomentumBuffers,
    /// Parameters left alone for now (as PyTorch's `requires_grad = False`).
    frozen: BTreeSet<String>,
}

impl Trained {
    /// `params`, with zeroed momentum buffers when `momentum`, none frozen.
    pub fn new(params: Vec<Param>, momentum: bool) -> Result<Trained> {
        let buffers = MomentumBuffers::new(if momentum { &params } else { &[] })?;
        Ok(Trained {
            params,
            buffers,
            frozen: BTreeSet::new(),
        })
    }

    /// The parameters that step now (not frozen, with a gradient in `grads`) with their
    /// gradients, in name order, and the momentum buffers to update.
    pub fn stepping<'a>(
        &'a mut self,
        grads: &'a GradStore,
    ) -> (
        impl Iterator<Item = (&'a Param, &'a Tensor)> + 'a,
        &'a mut MomentumBuffers,
    ) {
        let Trained {
            params,
            buffers,
            frozen,
        } = self;
        let frozen: &BTreeSet<String> = frozen;
        let stepping = params
            .iter()
            .filter(move |p| !frozen.contains(&p.name))
            .filter_map(move |p| grads.get(&p.var).map(|g| (p, g)));
        (stepping, buffers)
    }

    /// The started momentum buffers by parameter name.
    pub fn momentum(&self) -> BTreeMap<String, Tensor> {
        self.buffers.state()
    }

    /// Copies `buffers` into the momentum buffers ([`MomentumBuffers::load`]).
    pub fn set_momentum(&mut self, buffers: BTreeMap<String, Tensor>) -> Result<()> {
        self.buffers.load(&buffers)
    }

    /// From now on, the parameters `names` (and only they) are not updated.
    pub fn set_frozen(&mut self, names: BTreeSet<String>) {
        self.frozen = names;
    }
}
