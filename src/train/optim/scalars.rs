//! The values a step reads that change from one step to the next, in one small buffer on the
//! step's device, written once before each step. Every update reads its rate and the EMA's decay
//! from a slot of it, never as a by-value argument, so a captured step (a CUDA graph) replays
//! with the new values instead of the ones it was captured with.

use candle_core::{DType, Device, Result, Tensor, Var};

/// One step's values on the host, as the f64 formulas give them (rounded to f32 when written).
#[derive(Clone, Debug, PartialEq)]
pub struct StepScalars {
    /// Each group's rate, by group index.
    pub rates: Vec<f64>,
    /// The EMA's decay at this step (`None`: no EMA).
    pub ema_decay: Option<f64>,
}

/// The device buffer: slot `g` holds group `g`'s rate, then the EMA's decay `d`, then `1 − d`
/// (computed in f64 before rounding, as the by-value scalars were).
pub struct Scalars {
    buffer: Var,
    groups: usize,
}

impl Scalars {
    /// The buffer for `groups` rates on `device`, allocated once.
    pub fn new(groups: usize, device: &Device) -> Result<Scalars> {
        let buffer = Var::zeros(groups + 2, DType::F32, device)?;
        Ok(Scalars { buffer, groups })
    }

    /// Writes this step's values into the buffer (in place: its storage stays the same).
    pub fn write(&self, step: &StepScalars) -> Result<()> {
        if step.rates.len() != self.groups {
            candle_core::bail!(
                "{} rates for a buffer of {} groups",
                step.rates.len(),
                self.groups
            );
        }
        let d = step.ema_decay.unwrap_or(0.0);
        let mut values: Vec<f32> = step.rates.iter().map(|&r| r as f32).collect();
        values.extend([d as f32, (1.0 - d) as f32]);
        let host = Tensor::from_vec(values, self.groups + 2, self.buffer.device())?;
        self.buffer.set(&host)
    }

    /// Group `group`'s rate, as a one-element view of the buffer.
    pub fn rate(&self, group: usize) -> Result<Tensor> {
        assert!(group < self.groups, "group {group} of {}", self.groups);
        self.buffer.as_tensor().narrow(0, group, 1)
    }

    /// The EMA's decay `d`, as a one-element view.
    pub fn ema_decay(&self) -> Result<Tensor> {
        self.buffer.as_tensor().narrow(0, self.groups, 1)
    }

    /// `1 − d`, as a one-element view.
    pub fn ema_keep(&self) -> Result<Tensor> {
        self.buffer.as_tensor().narrow(0, self.groups + 1, 1)
    }

    /// Where group `group`'s rate lives in [`Scalars::buffer`] (for kernels that read it).
    pub fn rate_slot(&self, group: usize) -> usize {
        group
    }

    /// Where the EMA's decay lives in [`Scalars::buffer`].
    pub fn decay_slot(&self) -> usize {
        self.groups
    }

    /// The whole buffer.
    pub fn buffer(&self) -> &Tensor {
        self.buffer.as_tensor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_lands_in_the_same_storage_and_each_slot_reads_its_value() {
        let s = Scalars::new(2, &Device::Cpu).unwrap();
        let before = s.buffer().id();
        let step = StepScalars {
            rates: vec![0.1, 6.4],
            ema_decay: Some(0.999),
        };
        s.write(&step).unwrap();
        assert_eq!(s.buffer().id(), before);
        let one = |t: Tensor| t.to_vec1::<f32>().unwrap()[0];
        assert_eq!(one(s.rate(0).unwrap()), 0.1f32);
        assert_eq!(one(s.rate(1).unwrap()), 6.4f32);
        assert_eq!(one(s.ema_decay().unwrap()), 0.999f32);
        assert_eq!(one(s.ema_keep().unwrap()), (1.0f64 - 0.999) as f32);
        let wrong = StepScalars {
            rates: vec![0.1],
            ema_decay: None,
        };
        assert!(s.write(&wrong).is_err());
    }
}
