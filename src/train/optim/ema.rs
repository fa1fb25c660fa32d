//! Exponential moving average of the weights and BatchNorm statistics.

use std::collections::HashSet;

use candle_core::{Result, Tensor, TensorId, Var};

use super::Scalars;
use crate::ops::optim::ema_foreach;

/// Pairs of (EMA variable, live variable); `ema ← d·ema + (1−d)·live` after every step, with
/// `d = min(decay, (1 + t) / (10 + t))` at update `t` (TensorFlow's warm-up), so that a short run
/// is not averaged with its random initial weights.
pub struct Ema {
    decay: f64,
    pairs: Vec<(Var, Var)>,
}

impl Ema {
    /// Tracks `live` into `ema` (same names, same order), starting from a copy.
    pub fn new(decay: f64, ema: Vec<Var>, live: Vec<Var>) -> Result<Self> {
        assert_eq!(ema.len(), live.len());
        for (e, l) in ema.iter().zip(&live) {
            e.set(l.as_tensor())?;
        }
        Ok(Ema {
            decay,
            pairs: ema.into_iter().zip(live).collect(),
        })
    }

    /// Starts the average again from the live weights.
    pub fn restart(&self) -> Result<()> {
        for (e, l) in &self.pairs {
            e.set(l.as_tensor())?;
        }
        Ok(())
    }

    /// The decay used at update `t` (0-based).
    pub fn decay_at(&self, t: usize) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// `(EMA variable, live variable)` pairs in name order.
    pub fn pairs(&self) -> &[(Var, Var)] {
        &self.pairs
    }

    /// Finishes this step's update, whose decay `d` and `1 − d` it reads from `scalars`: the
    /// pairs whose live variable is not in `done` (those an optimizer updated in its own pass).
    /// With nothing done, candle's ops on every pair; otherwise (the fused step) the rest in one
    /// multi-tensor op.
    pub fn finish(&self, scalars: &Scalars, done: &HashSet<TensorId>) -> Result<()> {
        if !done.is_empty() {
            return self.finish_rest(scalars, done);
        }
        let (d, keep) = (scalars.ema_decay()?, scalars.ema_keep()?);
        for (e, l) in &self.pairs {
            let next =
                (e.as_tensor().broadcast_mul(&d)? + l.as_tensor().broadcast_mul(&keep)?)?.detach();
            e.set(&next)?;
        }
        Ok(())
    }

    /// The pairs an optimizer did not update, in one multi-tensor op ([`ema_foreach`]).
    fn finish_rest(&self, scalars: &Scalars, done: &HashSet<TensorId>) -> Result<()> {
        let rest: Vec<(&Tensor, &Tensor)> = (self.pairs.iter())
            .filter(|(_, l)| !done.contains(&l.id()))
            .map(|(e, l)| (e.as_tensor(), l.as_tensor()))
            .collect();
        ema_foreach(&rest, scalars.buffer(), scalars.decay_slot())
    }

    /// A lookahead pull: `ema ← ema + (1−d)·(live − ema)` (PyTorch's `lerp_`, exact where the
    /// two agree, so a frozen tensor stays bit for bit), then `live ← ema`.
    pub fn pull(&self, d: f64) -> Result<()> {
        for (e, l) in &self.pairs {
            let (e_t, l_t) = (e.as_tensor(), l.as_tensor());
            let next = (e_t + ((l_t - e_t)? * (1.0 - d))?)?.detach();
            e.set(&next)?;
            l.set(&next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn warm_up_then_the_configured_decay() {
        let live = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let ema = Var::new(&[0.0f32], &Device::Cpu).unwrap();
        let e = Ema::new(0.999, vec![ema.clone()], vec![live.clone()]).unwrap();
        assert_eq!(e.decay_at(0), 0.1);
        assert!((e.decay_at(10) - 11.0 / 20.0).abs() < 1e-12);
        assert_eq!(e.decay_at(1_000_000), 0.999);
        // Starts as a copy of live (1.0); live moves to 3.0; one update at t=0 (d=0.1).
        live.set(&Tensor::new(&[3.0f32], &Device::Cpu).unwrap())
            .unwrap();
        let scalars = crate::train::optim::testing::scalars(&[], Some(e.decay_at(0)));
        e.finish(&scalars, &HashSet::new()).unwrap();
        let v = ema.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v - (0.1 * 1.0 + 0.9 * 3.0)).abs() < 1e-6, "{v}");
    }
}
