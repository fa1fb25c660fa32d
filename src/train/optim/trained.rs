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
        let buffers = if momentum {
            MomentumBuffers::new(&params)?
        } else {
            MomentumBuffers::none()
        };
        Ok(Trained {
            params,
            buffers,
            frozen: BTreeSet::new(),
        })
    }

    /// `p`'s gradient in `grads` when `p` steps now: not frozen, and with a gradient.
    pub fn gradient<'g>(&self, p: &Param, grads: &'g GradStore) -> Option<&'g Tensor> {
        if self.frozen.contains(&p.name) {
            return None;
        }
        grads.get(&p.var)
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
