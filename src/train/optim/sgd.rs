//! SGD with (Nesterov) momentum and L2 weight decay, exactly as PyTorch's `torch.optim.SGD`
//! (dampening 0): `g ← ∇ + wd·p`, `b ← μ·b + g` (first step `b ← g`),
//! `g ← g + μ·b` with Nesterov else `g ← b`, `p ← p − lr·g`.

use std::collections::{HashMap, HashSet};

use candle_core::{backprop::GradStore, Result, TensorId, Var};

use super::{EmaStep, Optimizer, Param, Scalars, Trained};
use crate::ops::optim::{sgd_foreach, SgdRule, SgdTensor};

/// The optimizer over its parameters.
pub struct Sgd {
    trained: Trained,
    /// Each group's weight decay, by group index.
    decays: Vec<f64>,
    momentum: f64,
    nesterov: bool,
    /// One multi-tensor op per step (the fast kernels) rather than candle's ops per parameter.
    fused: bool,
}

impl Sgd {
    /// An optimizer over `params`, whose groups decay by `decays` (by group index), stepping
    /// through candle's ops until [`Sgd::fused`]. Its momentum buffers are allocated here, once.
    pub fn new(
        params: Vec<Param>,
        decays: Vec<f64>,
        momentum: f64,
        nesterov: bool,
    ) -> Result<Self> {
        assert!(params.iter().all(|p| p.group < decays.len()));
        Ok(Sgd {
            trained: Trained::new(params, momentum != 0.0)?,
            decays,
            momentum,
            nesterov,
            fused: false,
        })
    }

    /// Updates every parameter in one multi-tensor op ([`sgd_foreach`]) on either device.
    pub fn fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// One update in candle's ops: parameters without a gradient or frozen are left alone.
    fn step_unfused(&mut self, grads: &GradStore, scalars: &Scalars) -> Result<()> {
        let (stepping, buffers) = self.trained.stepping(grads);
        for (p, grad) in stepping {
            let (lr, wd) = (scalars.rate(p.group)?, self.decays[p.group]);
            let var = &p.var;
            let mut g = if wd != 0.0 {
                (grad + (var.as_tensor() * wd)?)?
            } else {
                grad.clone()
            };
            if self.momentum != 0.0 {
                let buf = buffers.accumulate(&p.name, &g, self.momentum)?;
                g = if self.nesterov {
                    (&g + (&buf * self.momentum)?)?
                } else {
                    buf
                };
            }
            var.set(&(var.as_tensor() - g.broadcast_mul(&lr)?)?)?;
        }
        Ok(())
    }

    /// With `fused`: one multi-tensor op over every stepping parameter (one pass on the CPU, a
    /// launch per chunk of tensors on CUDA) that updates it, its momentum buffer and its EMA
    /// twin in place; returns the live variables whose twins it updated.
    fn step_foreach(
        &mut self,
        grads: &GradStore,
        scalars: &Scalars,
        ema: Option<&EmaStep>,
    ) -> Result<HashSet<TensorId>> {
        // Each live variable's EMA twin, by tensor id.
        let twins: HashMap<_, &Var> = ema
            .map(|e| e.pairs.iter().map(|(e, l)| (l.id(), e)).collect())
            .unwrap_or_default();
        let mut done = HashSet::new();
        let (mut held, mut names) = (Vec::new(), Vec::new());
        let (stepping, buffers) = self.trained.stepping(grads);
        for (p, grad) in stepping {
            let (buf, first) = match self.momentum != 0.0 {
                true => buffers.in_place(&p.name).map(|(b, f)| (Some(b), f))?,
                false => (None, false),
            };
            let twin = twins.get(&p.var.id()).map(|e| e.as_tensor().clone());
            if twin.is_some() {
                done.insert(p.var.id());
            }
            let grad = grad.contiguous()?;
            held.push((p.var.as_tensor().clone(), grad, buf, twin, first, p.group));
            names.push(&p.name);
        }
        let tensors: Vec<SgdTensor> = held
            .iter()
            .map(|(param, grad, buf, ema, first, group)| SgdTensor {
                param,
                grad,
                buf: buf.as_ref(),
                ema: ema.as_ref(),
                first: *first,
                weight_decay: self.decays[*group],
                rate_slot: scalars.rate_slot(*group),
            })
            .collect();
        let rule = SgdRule {
            momentum: self.momentum,
            nesterov: self.nesterov,
            decay_slot: scalars.decay_slot(),
        };
        sgd_foreach(&tensors, rule, scalars.buffer())?;
        // Only a pass that ran leaves its buffers holding values.
        if self.momentum != 0.0 {
            for name in names {
                buffers.mark_started(name)?;
            }
        }
        Ok(done)
    }
}

impl Optimizer for Sgd {
    fn trained(&self) -> &Trained {
        &self.trained
    }

    fn trained_mut(&mut self) -> &mut Trained {
        &mut self.trained
    }

    fn step(
        &mut self,
        grads: &GradStore,
        scalars: &Scalars,
        ema: Option<&EmaStep>,
    ) -> Result<HashSet<TensorId>> {
        if self.fused {
            return self.step_foreach(grads, scalars, ema);
        }
        self.step_unfused(grads, scalars)?;
        Ok(HashSet::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::testing::{param, scalars};
    use candle_core::{DType, Device, Tensor, Var};

    fn rates(rates: &[f64]) -> Scalars {
        scalars(rates, None)
    }

    /// Three steps of `loss = Σ c·p` (gradient c) against the update written out by hand.
    #[test]
    fn matches_pytorch_sgd_formula_for_three_steps() {
        let dev = Device::Cpu;
        let p = Var::from_vec(vec![1.0f32, -2.0], 2, &dev).unwrap();
        let c = Tensor::new(&[0.5f32, 3.0], &dev).unwrap();
        let (lr, mu, wd) = (0.1, 0.9, 0.01);
        let mut sgd = Sgd::new(vec![param("w", &p, 0)], vec![wd], mu, true).unwrap();
        // Hand computation, element by element, in f64.
        let mut want = [1.0f64, -2.0];
        let mut buf = [0.0f64; 2];
        let cs = [0.5f64, 3.0];
        for step in 0..3 {
            let loss = (p.as_tensor() * &c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            sgd.step(&grads, &rates(&[lr]), None).unwrap();
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
    fn each_group_steps_at_its_rate_and_decay_and_frozen_ones_not_at_all() {
        let dev = Device::Cpu;
        let one = || Var::from_vec(vec![1.0f32], 1, &dev).unwrap();
        let (a, b, c) = (one(), one(), one());
        let params = vec![param("a", &a, 0), param("b", &b, 1), param("c", &c, 0)];
        let mut sgd = Sgd::new(params, vec![0.5, 0.125], 0.0, false).unwrap();
        sgd.set_frozen(["c".to_string()].into());
        let loss = ((a.as_tensor() + b.as_tensor()).unwrap() + c.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        let done = sgd
            .step(&loss.backward().unwrap(), &rates(&[0.1, 0.4]), None)
            .unwrap();
        assert!(done.is_empty(), "candle's ops fold no EMA into the step");
        let v = |x: &Var| x.as_tensor().to_vec1::<f32>().unwrap()[0];
        // a: 1 − 0.1·(1 + 0.5); b: 1 − 0.4·(1 + 0.125); c unchanged.
        assert!((v(&a) - 0.85).abs() < 1e-6, "{}", v(&a));
        assert!((v(&b) - 0.55).abs() < 1e-6, "{}", v(&b));
        assert_eq!(v(&c), 1.0);
    }

    /// The multi-tensor op (with the EMA folded in) against candle's ops, four steps: weights,
    /// momentum and twins bit for bit, with a frozen weight, one without a gradient and an
    /// EMA-only statistic, which `Ema::finish` takes in its one pass.
    #[test]
    fn the_multi_tensor_op_equals_candles_ops_bit_for_bit() {
        use crate::train::optim::{Ema, EmaStep};
        let run = |fused: bool| {
            let dev = Device::Cpu;
            let var = |seed: u64, n: usize| {
                let mut rng = fastrand::Rng::with_seed(seed);
                let v: Vec<f32> = (0..n).map(|_| rng.f32() - 0.5).collect();
                Var::from_vec(v, n, &dev).unwrap()
            };
            let live = [var(1, 300), var(2, 7), var(3, 5), var(4, 9), var(5, 4)];
            let twins: Vec<Var> = live.iter().map(|v| var(9, v.elem_count())).collect();
            let ema = Ema::new(0.9, twins.clone(), live.to_vec()).unwrap();
            // a, b step; c is frozen; d has no gradient; e is a statistic no optimizer owns.
            let names = ["a", "b", "c", "d"];
            let params = (names.iter().zip(&live))
                .enumerate()
                .map(|(i, (n, v))| param(n, v, i % 2))
                .collect();
            let mut sgd = Sgd::new(params, vec![5e-4, 0.0], 0.9, true)
                .unwrap()
                .fused(fused);
            sgd.set_frozen(["c".to_string()].into());
            for step in 0..4u64 {
                let loss = (0..3)
                    .map(|i| (live[i].as_tensor().sqr().unwrap() * (step + 1) as f64).unwrap())
                    .map(|t| t.sum_all().unwrap())
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                let s = scalars(
                    &[0.1 / (step + 1) as f64, 0.05],
                    Some(ema.decay_at(step as usize)),
                );
                let grads = loss.backward().unwrap();
                let update = EmaStep { pairs: ema.pairs() };
                let done = sgd.step(&grads, &s, Some(&update)).unwrap();
                assert_eq!(done.len(), if fused { 2 } else { 0 });
                ema.finish(&s, &done).unwrap();
                live[4].set(&(live[4].as_tensor() * 0.5).unwrap()).unwrap();
            }
            let mut out: Vec<Vec<u32>> = Vec::new();
            let all = live.iter().chain(&twins).map(|v| v.as_tensor().clone());
            for t in all.chain(sgd.momentum().into_values()) {
                out.push(
                    t.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                );
            }
            out
        };
        let (fused, plain) = (run(true), run(false));
        assert_eq!(fused.len(), plain.len());
        for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
            assert!(f == p, "tensor {i} differs");
        }
    }
}
