//! A model with its variables: what a checkpoint's `model.` or `ema.` tensors fill.

use candle_core::{Device, Var};
use candle_nn::VarMap;

use super::error::{Error, Result};
use super::sgd::Sgd;
use crate::config::TrainConfig;
use crate::model::{self, is_buffer, sorted_vars, SeResNetD};

/// A model plus its variables.
pub struct Net {
    /// The layers.
    pub model: SeResNetD,
    /// The variables (parameters and BatchNorm statistics).
    pub vars: VarMap,
}

impl Net {
    /// A freshly initialised network, computing with `config`'s kernels and precision.
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Net> {
        config.precision.check(device).map_err(Error::Unsupported)?;
        let (mut model, vars) = model::build(&config.model, config.seed, device)?;
        model.set_kernels(config.kernels);
        model.set_precision(config.precision);
        Ok(Net { model, vars })
    }

    /// `(name, var)` in name order.
    pub fn named(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.vars)
    }

    /// The variables in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.named().into_iter().map(|(_, v)| v).collect()
    }

    /// SGD over the trainable variables (not the BatchNorm statistics), as `config` says.
    pub fn optimizer(&self, config: &TrainConfig) -> Sgd {
        let params: Vec<(String, Var)> = self
            .named()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n))
            .collect();
        Sgd::new(
            params,
            config.optim.momentum,
            config.optim.nesterov,
            config.optim.weight_decay,
            config.optim.no_decay_bn_bias,
        )
    }
}
