//! Momentum buffers that stay put: allocated with the optimizer, written in place every step, so
//! a captured step keeps writing the memory that checkpoints and the next step read.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};

use super::Param;

/// A momentum buffer after gradient `g`: `μ·b + g`, or `g` itself first (PyTorch's buffer
/// starts at zero). Detached: a buffer must not drag the autograd graph of every past step along.
pub fn accumulate(previous: Option<&Tensor>, g: &Tensor, mu: f64) -> Result<Tensor> {
    Ok(match previous {
        Some(b) => ((b * mu)? + g)?.detach(),
        None => g.detach(),
    })
}

/// One parameter's buffer, and whether it holds a value yet (PyTorch's first step copies the
/// gradient rather than decaying a zero buffer).
struct Buffer {
    value: Var,
    started: bool,
}

/// The momentum buffers of an optimizer's parameters, by parameter name.
pub struct MomentumBuffers {
    buffers: BTreeMap<String, Buffer>,
}

impl MomentumBuffers {
    /// Zeroed buffers shaped as `params`, none started.
    pub fn new(params: &[Param]) -> Result<MomentumBuffers> {
        let mut buffers = BTreeMap::new();
        for p in params {
            let value = Var::zeros(p.var.shape(), p.var.dtype(), p.var.device())?;
            buffers.insert(
                p.name.clone(),
                Buffer {
                    value,
                    started: false,
                },
            );
        }
        Ok(MomentumBuffers { buffers })
    }

    fn buffer(&mut self, name: &str) -> Result<&mut Buffer> {
        match self.buffers.get_mut(name) {
            Some(b) => Ok(b),
            None => candle_core::bail!("no momentum buffer for {name}"),
        }
    }

    /// `b ← μ·b + g` ([`accumulate`]) for parameter `name`, written into its buffer; returns
    /// the new value.
    pub fn accumulate(&mut self, name: &str, g: &Tensor, mu: f64) -> Result<Tensor> {
        let buffer = self.buffer(name)?;
        let previous = buffer.started.then(|| buffer.value.as_tensor());
        let next = accumulate(previous, g, mu)?;
        buffer.value.set(&next)?;
        buffer.started = true;
        Ok(next)
    }

    /// Parameter `name`'s buffer and whether it holds nothing yet (for a pass that updates it
    /// in place and then calls [`MomentumBuffers::mark_started`]).
    pub fn in_place(&mut self, name: &str) -> Result<(Tensor, bool)> {
        let buffer = self.buffer(name)?;
        Ok((buffer.value.as_tensor().clone(), !buffer.started))
    }

    /// Parameter `name`'s buffer holds a value (a pass wrote it).
    pub fn mark_started(&mut self, name: &str) -> Result<()> {
        self.buffer(name)?.started = true;
        Ok(())
    }

    /// The started buffers by parameter name: shared handles, not copies.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.buffers
            .iter()
            .filter(|(_, b)| b.started)
            .map(|(n, b)| (n.clone(), b.value.as_tensor().clone()))
            .collect()
    }

    /// Copies `values` into the buffers of the same names, which become started; the others
    /// start afresh. A name with no buffer here, or a shape that differs, is an error.
    pub fn load(&mut self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        if let Some(name) = values.keys().find(|n| !self.buffers.contains_key(*n)) {
            candle_core::bail!("a momentum buffer for {name}, which this optimizer does not train");
        }
        for (name, buffer) in &mut self.buffers {
            buffer.started = match values.get(name) {
                Some(v) => {
                    buffer.value.set(v)?;
                    true
                }
                None => false,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn buffers_keep_their_storage_start_from_the_gradient_and_load_by_name() {
        let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let params = [Param {
            name: "w".into(),
            var,
            group: 0,
        }];
        let mut m = MomentumBuffers::new(&params).unwrap();
        assert!(m.state().is_empty());
        let g = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        m.accumulate("w", &g, 0.5).unwrap();
        let id = m.state()["w"].id();
        let b = m.accumulate("w", &g, 0.5).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1.5, -1.5]);
        assert_eq!(m.state()["w"].id(), id, "written in place");
        assert_eq!(m.state()["w"].to_vec1::<f32>().unwrap(), [1.5, -1.5]);
        let mut none = BTreeMap::new();
        m.load(&none).unwrap();
        assert!(m.state().is_empty(), "not in the state: starts afresh");
        none.insert("x".to_string(), g.clone());
        assert!(m.load(&none).is_err());
    }
}
