//! A model with its variables: what a learner trains and a saved run loads, and its variables
//! as named tensors (a checkpoint's `model.` or `ema.` part).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::error::{Error, Result, StateError};
use candle_core::DType;

use crate::model::{self, sorted_vars, Network};
use crate::train::config::TrainConfig;

/// A model plus its variables.
pub struct Net {
    /// The layers.
    pub model: Network,
    /// The variables (parameters and BatchNorm statistics).
    pub vars: VarMap,
}

impl Net {
    /// A freshly initialised network, computing with `config`'s kernels and precision.
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Net> {
        config
            .precision
            .check(device, config.kernels)
            .map_err(Error::Unsupported)?;
        let (mut model, vars) =
            model::build_network(&config.model, config.seed, device, DType::F32)?;
        let compute = model.compute_mut();
        compute.set_kernels(config.kernels);
        compute.set_precision(config.precision, device);
        compute.set_tf32(config.tf32);
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

    /// Every variable as `(prefix + name, tensor)`: shared handles, not copies.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.named()
            .into_iter()
            .map(|(n, v)| (format!("{prefix}{n}"), v.as_tensor().clone()))
            .collect()
    }

    /// Sets every variable from `tensors[prefix + name]`; each must be there and fit.
    pub fn load_state(
        &self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
    ) -> std::result::Result<(), StateError> {
        for (name, var) in self.named() {
            let key = format!("{prefix}{name}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| StateError::Missing(key.clone()))?;
            var.set(t)
                .map_err(|source| StateError::Mismatch { name: key, source })?;
        }
        Ok(())
    }
}
