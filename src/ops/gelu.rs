//! GELU's candle glue: [`Gelu`] on `x` and [`GeluBias`] on `(x, bias)`, one pass each way on
//! f32 CPU tensors ([`super::cpu::gelu`]); other routes take candle's `gelu_erf`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::gelu::{backward, backward_with_bias, forward, forward_with_bias};
use super::host::{contiguous_f32, op_output, with_f32};

/// The candle op on `x`.
pub(super) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "cifar-stream-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        Ok((CpuStorage::F32(forward(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                if ds.len() != xs.len() {
                    candle_core::bail!(
                        "gelu backward: {} gradients for {} inputs",
                        ds.len(),
                        xs.len()
                    );
                }
                Ok(backward(xs, ds))
            })
        })?;
        Ok(Some(op_output(dx, x.shape(), x.device())?))
    }
}

/// The candle op on `(x, bias)`: `gelu(x + bias[c])` for `x: [n, c, …]`, so a layer's bias
/// costs no pass of its own and its gradient (a per-channel sum) is taken in parallel in the
/// same pass as GELU's.
pub(super) struct GeluBias;

/// `(channels, plane)` of a contiguous `[n, c, …]` layout against a bias of `c` values.
fn channels(l: &Layout, bias: usize) -> Result<(usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 || dims[1] != bias {
        candle_core::bail!("gelu with bias: {dims:?} against a bias of {bias} channels");
    }
    Ok((dims[1], dims[2..].iter().product()))
}

impl CustomOp2 for GeluBias {
    fn name(&self) -> &'static str {
        "cifar-stream-gelu-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (_, plane) = channels(l1, b.len())?;
        let y = forward_with_bias(x, b, plane);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The CPU op reading its own input, not the step reading back (exempt from the probe).
        let bias = candle_core::probe::exempt(|| b.flatten_all()?.to_vec1::<f32>())?;
        let (_, plane) = channels(x.layout(), bias.len())?;
        // The whitening layer's input is the image through a fixed filter bank: no gradient.
        let want_dx = x.track_op();
        let (dx, db) = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                Ok(backward_with_bias(xs, ds, &bias, plane, want_dx))
            })
        })?;
        let dx = want_dx
            .then(|| op_output(dx, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, Some(op_output(db, b.shape(), b.device())?)))
    }
}
