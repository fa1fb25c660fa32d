//! SGD with (Nesterov) momentum and L2 weight decay, exactly as PyTorch's `torch.optim.SGD`
//! (dampening 0): `g ← ∇ + wd·p`, `b ← μ·b + g` (first step `b ← g`),
//! `g ← g + μ·b` with Nesterov else `g ← b`, `p ← p − lr·g`.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{backprop::GradStore, Result, Tensor, Var};

use super::ema::Ema;

/// A momentum buffer after gradient `g`: `μ·b + g`, or `g` itself first (PyTorch's buffer
/// starts at zero). Detached: a buffer must not drag the autograd graph of every past step along.
pub fn accumulate(previous: Option<&Tensor>, g: &Tensor, mu: f64) -> Result<Tensor> {
    Ok(match previous {
        Some(b) => ((b * mu)? + g)?.detach(),
        None => g.detach(),
    })
}

/// The optimizer and its momentum buffers, keyed by parameter name.
pub struct Sgd {
    params: Vec<(String, Var)>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    no_decay_bn_bias: bool,
    buffers: BTreeMap<String, Tensor>,
    /// Parameters whose rate is multiplied, and weight decay divided, by a factor (airbench's
    /// BatchNorm shifts at 64× the rate with the same product of rate and decay).
    scaled: BTreeMap<String, f64>,
    /// Parameters left alone for now (as PyTorch's `requires_grad = False`).
    frozen: BTreeSet<String>,
    /// This step's extra factor on some parameters' rates (their own schedule).
    this_step: BTreeMap<String, f64>,
}

impl Sgd {
    /// An optimizer over named parameters.
    pub fn new(
        params: Vec<(String, Var)>,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        no_decay_bn_bias: bool,
    ) -> Self {
        Sgd {
            params,
            momentum,
            nesterov,
            weight_decay,
            no_decay_bn_bias,
            buffers: BTreeMap::new(),
            scaled: BTreeMap::new(),
            frozen: BTreeSet::new(),
            this_step: BTreeMap::new(),
        }
    }

    /// The parameters `names` step at `factor` times the rate, with the weight decay divided by
    /// it (a later call wins for a name given twice).
    pub fn with_rate_factor(mut self, names: BTreeSet<String>, factor: f64) -> Self {
        self.scaled.extend(names.into_iter().map(|n| (n, factor)));
        self
    }

    /// From now on, the parameters `names` (and only they) are not updated.
    pub fn set_frozen(&mut self, names: BTreeSet<String>) {
        self.frozen = names;
    }

    /// Until changed, parameter `name` steps at `factor` times its rate (its decay per step
    /// scaled alike, as PyTorch's per-group `lr`).
    pub fn set_step_factor(&mut self, name: &str, factor: f64) {
        self.this_step.insert(name.to_string(), factor);
    }

    /// `(rate, weight decay)` of the parameter `name` of `rank` dimensions at base rate `lr`.
    fn rates(&self, name: &str, rank: usize, lr: f64) -> (f64, f64) {
        // BatchNorm scales/shifts and biases are the one-dimensional parameters.
        let wd = if self.no_decay_bn_bias && rank <= 1 {
            0.0
        } else {
            self.weight_decay
        };
        let lr = lr * self.this_step.get(name).copied().unwrap_or(1.0);
        match self.scaled.get(name) {
            Some(factor) => (lr * factor, wd / factor),
            None => (lr, wd),
        }
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var) else { continue };
            if self.frozen.contains(name) {
                continue;
            }
            let (lr, wd) = self.rates(name, var.rank(), lr);
            let mut g = if wd != 0.0 {
                (grad + (var.as_tensor() * wd)?)?
            } else {
                grad.clone()
            };
            if self.momentum != 0.0 {
                let buf = accumulate(self.buffers.get(name), &g, self.momentum)?;
                g = if self.nesterov {
                    (&g + (&buf * self.momentum)?)?
                } else {
                    buf.clone()
                };
                self.buffers.insert(name.clone(), buf);
            }
            var.set(&(var.as_tensor() - (g * lr)?)?)?;
        }
        Ok(())
    }

    /// One update, then EMA update number `t` when given `ema`. With `fused` on CUDA (the fast
    /// kernels) each parameter is one launch that updates it, its momentum buffer and its EMA
    /// twin in place, and each tensor without a gradient (BatchNorm statistics) one EMA launch;
    /// elsewhere it is [`Sgd::step`] then [`Ema::update`], in candle's ops.
    pub fn step_with_ema(
        &mut self,
        grads: &GradStore,
        lr: f64,
        ema: Option<(&Ema, usize)>,
        fused: bool,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        if fused
            && self
                .params
                .first()
                .is_some_and(|(_, v)| v.device().is_cuda())
        {
            return self.step_fused(grads, lr, ema);
        }
        let _ = fused;
        self.step(grads, lr)?;
        match ema {
            Some((ema, t)) => ema.update(t),
            None => Ok(()),
        }
    }

    #[cfg(feature = "cuda")]
    fn step_fused(&mut self, grads: &GradStore, lr: f64, ema: Option<(&Ema, usize)>) -> Result<()> {
        use crate::ops::cuda::optim::{ema_update, sgd_ema_step, SgdSettings};
        use std::collections::HashMap;
        // Each live variable's EMA twin, by tensor id.
        let twins: HashMap<_, &Var> = ema
            .map(|(e, _)| e.pairs().iter().map(|(e, l)| (l.id(), e)).collect())
            .unwrap_or_default();
        let decay = ema.map(|(e, t)| e.decay_at(t));
        let mut done = std::collections::HashSet::new();
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var) else { continue };
            if self.frozen.contains(name) {
                continue;
            }
            let (lr, weight_decay) = self.rates(name, var.rank(), lr);
            let first = self.momentum != 0.0 && !self.buffers.contains_key(name);
            if first {
                self.buffers
                    .insert(name.clone(), var.as_tensor().zeros_like()?);
            }
            let buf = self.buffers.get(name);
            let twin = twins
                .get(&var.id())
                .zip(decay)
                .map(|(e, d)| (e.as_tensor(), d));
            let set = SgdSettings {
                lr,
                weight_decay,
                momentum: self.momentum,
                nesterov: self.nesterov,
                first,
            };
            sgd_ema_step(var.as_tensor(), grad, buf, twin, set)?;
            done.insert(var.id());
        }
        if let (Some((ema, _)), Some(d)) = (ema, decay) {
            for (e, l) in ema.pairs() {
                if !done.contains(&l.id()) {
                    ema_update(e.as_tensor(), l.as_tensor(), d)?;
                }
            }
        }
        Ok(())
    }

    /// The parameters it updates, by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Each parameter's momentum (PyTorch's `momentum_buffer`), by parameter name.
    pub fn momentum_tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers from a checkpoint.
    pub fn set_momentum_tensors(&mut self, buffers: BTreeMap<String, Tensor>) {
        self.buffers = buffers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Three steps of `loss = Σ c·p` (gradient c) against the update written out by hand.
    #[test]
    fn matches_pytorch_sgd_formula_for_three_steps() {
        let dev = Device::Cpu;
        let p = Var::from_vec(vec![1.0f32, -2.0], 2, &dev).unwrap();
        let c = Tensor::new(&[0.5f32, 3.0], &dev).unwrap();
        let (lr, mu, wd) = (0.1, 0.9, 0.01);
        let mut sgd = Sgd::new(vec![("w".into(), p.clone())], mu, true, wd, false);
        // Hand computation, element by element, in f64.
        let mut want = [1.0f64, -2.0];
        let mut buf = [0.0f64; 2];
        let cs = [0.5f64, 3.0];
        for step in 0..3 {
            let loss = (p.as_tensor() * &c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            sgd.step(&grads, lr).unwrap();
            for i in 0..2 {
                let g = cs[i] + wd * want[i];
                buf[i] = if step == 0 { g } else { mu * buf[i] + g };
                let d = g + mu * buf[i];
                want[i] -= lr * d;
            }
            let got: Vec<f32> = p
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - want[i]).abs() < 1e-6,
                    "step {step}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn no_decay_skips_one_dimensional_parameters() {
        let dev = Device::Cpu;
        let bias = Var::from_vec(vec![1.0f32], 1, &dev).unwrap();
        let mut sgd = Sgd::new(vec![("b".into(), bias.clone())], 0.0, false, 0.5, true);
        let loss = (bias.as_tensor() * 0.0).unwrap().sum_all().unwrap();
        sgd.step(&loss.backward().unwrap(), 1.0).unwrap();
        assert_eq!(bias.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
    }

    #[test]
    fn scaled_parameters_step_faster_with_less_decay_and_frozen_ones_not_at_all() {
        let dev = Device::Cpu;
        let (a, b, c) = (
            Var::from_vec(vec![1.0f32], 1, &dev).unwrap(),
            Var::from_vec(vec![1.0f32], 1, &dev).unwrap(),
            Var::from_vec(vec![1.0f32], 1, &dev).unwrap(),
        );
        let params = vec![
            ("a".to_string(), a.clone()),
            ("b".to_string(), b.clone()),
            ("c".to_string(), c.clone()),
        ];
        let mut sgd = Sgd::new(params, 0.0, false, 0.5, false)
            .with_rate_factor(["b".to_string()].into(), 4.0);
        sgd.set_frozen(["c".to_string()].into());
        let loss = ((a.as_tensor() + b.as_tensor()).unwrap() + c.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        let v = |x: &Var| x.as_tensor().to_vec1::<f32>().unwrap()[0];
        // a: 1 − 0.1·(1 + 0.5); b: 1 − 0.4·(1 + 0.125); c unchanged.
        assert!((v(&a) - 0.85).abs() < 1e-6, "{}", v(&a));
        assert!((v(&b) - 0.55).abs() < 1e-6, "{}", v(&b));
        assert_eq!(v(&c), 1.0);
    }
}
