//! The batch a step reads, in buffers that stay put: allocated for the first batch and
//! afterwards only written (one copy into each, on CUDA on the device's stream), so a captured
//! step reads each new batch where it read the last.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::ops::stage::write_into;
use crate::store::Shape;

/// Fixed input buffers: images `[n, C, H, W]` (f32) and labels `[n]` (u32).
#[derive(Default)]
pub struct Inputs {
    buffers: Option<(Var, Var)>,
}

impl Inputs {
    /// No buffers yet.
    pub fn new() -> Inputs {
        Inputs::default()
    }

    /// Copies a batch (`images`: `n` normalised images of `shape`, `labels`: `n` classes) into
    /// the buffers on `device` and returns them. A batch of another size gets new buffers
    /// (training batches all have one size; the short last one is dropped).
    pub fn stage(
        &mut self,
        images: &[f32],
        labels: &[u32],
        shape: Shape,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let n = labels.len();
        let dims = shape.nchw(n);
        if !self.fits(n) {
            let x = Var::zeros(dims, DType::F32, device)?;
            let y = Var::zeros(n, DType::U32, device)?;
            self.buffers = Some((x, y));
        }
        let (x, y) = self.buffers.as_ref().expect("allocated above");
        write_into(x.as_tensor(), images)?;
        write_into(y.as_tensor(), labels)?;
        // Detached views of the same storage: the step takes no gradient of its inputs.
        Ok((x.as_tensor().detach(), y.as_tensor().detach()))
    }

    fn fits(&self, n: usize) -> bool {
        self.buffers.as_ref().is_some_and(|(_, y)| y.dims() == [n])
    }

    /// The buffers as named tensors (`inputs.images`, `inputs.labels`), once allocated.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        match &self.buffers {
            Some((x, y)) => vec![
                ("inputs.images".into(), x.as_tensor().clone()),
                ("inputs.labels".into(), y.as_tensor().clone()),
            ],
            None => Vec::new(),
        }
    }
}
