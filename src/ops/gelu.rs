//! GELU (the exact, erf form: PyTorch's `nn.GELU()` default) as one pass each way on the CPU.
//! Through candle's generic ops its backward is about ten elementwise passes, each allocating.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{contiguous_f32, with_f32};

/// Elements per parallel task: large enough that rayon's overhead vanishes.
const CHUNK: usize = 1 << 14;

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

fn erf(x: f32) -> f32 {
    candle_core::cpu::erf::erf_f32(x)
}

/// `x · Φ(x)`, Φ the standard normal CDF; NaN stays NaN.
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`.
fn gelu_slope(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// The candle op on `x`.
pub(super) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "cifar-stream-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = gelu_value(v);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gelu_backward(x, dy)?))
    }
}

/// GELU's backward on the CPU: `dy · gelu'(x)` in one pass.
fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = with_f32(x, |xs| {
        with_f32(dy, |ds| {
            let mut dx = vec![0.0f32; xs.len()];
            dx.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(ds.par_chunks(CHUNK)))
                .for_each(|(oc, (xc, dc))| {
                    for ((o, &v), &g) in oc.iter_mut().zip(xc).zip(dc) {
                        *o = g * gelu_slope(v);
                    }
                });
            Ok(dx)
        })
    })?;
    Tensor::from_vec(dx, x.shape(), x.device())
}
