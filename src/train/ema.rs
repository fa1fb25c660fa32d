//! Exponential moving average of the weights and BatchNorm statistics.

use candle_core::{Result, Var};

/// Pairs of (EMA variable, live variable); `ema ← d·ema + (1−d)·live` after every step.
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

    /// One update.
    pub fn update(&self) -> Result<()> {
        for (e, l) in &self.pairs {
            let next =
                ((e.as_tensor() * self.decay)? + (l.as_tensor() * (1.0 - self.decay))?)?.detach();
            e.set(&next)?;
        }
        Ok(())
    }
}
