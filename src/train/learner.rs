//! What one training step changes: the weights, their EMA and the optimizer's momentum.

use candle_core::{Device, Tensor};

use super::ema::Ema;
use super::error::Result;
use super::net::Net;
use super::sgd::Sgd;
use crate::config::TrainConfig;
use crate::model::{Mode, SeResNetD};

/// The network being trained, its exponential moving average (when the run keeps one) and the
/// SGD state, stepped one batch at a time. It knows nothing of data, schedules or files: the
/// [`Trainer`](super::Trainer) feeds it, `step-bench` times it.
pub struct Learner {
    pub(super) net: Net,
    pub(super) ema: Option<(Net, Ema)>,
    pub(super) sgd: Sgd,
    label_smoothing: f64,
    steps: usize,
    /// The optimizer and EMA run as fused kernels (CUDA with the fast kernels).
    fused: bool,
}

impl Learner {
    /// Fresh weights (seeded by `config.seed`), an EMA copy when `config.ema_decay > 0`, and an
    /// optimizer with empty momentum buffers.
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Learner> {
        crate::ops::set_tf32(config.tf32);
        let net = Net::new(config, device)?;
        let sgd = net.optimizer(config);
        let ema = if config.ema_decay > 0.0 {
            let copy = Net::new(config, device)?;
            let ema = Ema::new(config.ema_decay, copy.vars(), net.vars())?;
            Some((copy, ema))
        } else {
            None
        };
        Ok(Learner {
            net,
            ema,
            sgd,
            label_smoothing: config.label_smoothing,
            steps: 0,
            fused: config.kernels == crate::ops::Kernels::Fast,
        })
    }

    /// One training step: forward with dropout drawn from `dropout_seed`, cross-entropy (with
    /// the run's label smoothing), backward, SGD update at rate `lr`, then the EMA update
    /// numbered by the steps taken so far. Returns `(logits, loss)`; each phase is one tracing
    /// span (the EMA belongs to `optimizer`).
    pub fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<(Tensor, Tensor)> {
        let (logits, loss) = {
            let _f = tracing::info_span!("forward").entered();
            let logits = self.net.model.forward(x, Mode::Train { dropout_seed })?;
            let loss = super::loss::cross_entropy(&logits, y, self.label_smoothing)?;
            (logits, loss)
        };
        let grads = {
            let _b = tracing::info_span!("backward").entered();
            loss.backward()?
        };
        let _o = tracing::info_span!("optimizer").entered();
        let ema = self.ema.as_ref().map(|(_, ema)| (ema, self.steps));
        self.sgd.step_with_ema(&grads, lr, ema, self.fused)?;
        self.steps += 1;
        Ok((logits, loss))
    }

    /// Optimizer steps taken (including those before a resume).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Sets the step count (a resumed run continues its count).
    pub(super) fn set_steps(&mut self, steps: usize) {
        self.steps = steps;
    }

    /// The live (raw) network.
    pub fn model(&self) -> &SeResNetD {
        &self.net.model
    }

    /// The EMA network, when the run keeps one.
    pub fn ema_model(&self) -> Option<&SeResNetD> {
        self.ema.as_ref().map(|(net, _)| &net.model)
    }
}
