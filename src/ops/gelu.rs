//! GELU (the exact, erf form: PyTorch's `nn.GELU()` default) as one pass each way on the CPU.
//! Through candle's generic ops its backward is about ten elementwise passes, each allocating.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
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
        let (c, plane) = channels(l1, b.len())?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let shift = b[i % c];
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = gelu_value(v + shift);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bias = b.flatten_all()?.to_vec1::<f32>()?;
        let (c, plane) = channels(x.layout(), bias.len())?;
        // The whitening layer's input is the image through a fixed filter bank: no gradient.
        let want_dx = x.track_op();
        let (dx, sums) = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                let mut dx = vec![0.0f32; if want_dx { xs.len() } else { 0 }];
                // One sum per (image, channel) plane, added in plane order below: the same
                // bias gradient whatever the thread count.
                let plane_sum = |i: usize, xp: &[f32], dp: &[f32], out: Option<&mut [f32]>| {
                    let shift = bias[i % c];
                    let grad = |(&v, &g): (&f32, &f32)| g * gelu_slope(v + shift);
                    match out {
                        Some(o) => o
                            .iter_mut()
                            .zip(xp.iter().zip(dp).map(grad))
                            .map(|(o, d)| {
                                *o = d;
                                d as f64
                            })
                            .sum(),
                        None => xp.iter().zip(dp).map(grad).map(f64::from).sum::<f64>(),
                    }
                };
                let p = plane.max(1);
                let sums: Vec<f64> = if want_dx {
                    dx.par_chunks_mut(p)
                        .zip(xs.par_chunks(p).zip(ds.par_chunks(p)))
                        .enumerate()
                        .map(|(i, (op, (xp, dp)))| plane_sum(i, xp, dp, Some(op)))
                        .collect()
                } else {
                    xs.par_chunks(p)
                        .zip(ds.par_chunks(p))
                        .enumerate()
                        .map(|(i, (xp, dp))| plane_sum(i, xp, dp, None))
                        .collect()
                };
                Ok((dx, sums))
            })
        })?;
        let mut db = vec![0.0f64; c];
        for (i, s) in sums.iter().enumerate() {
            db[i % c] += s;
        }
        let db: Vec<f32> = db.into_iter().map(|v| v as f32).collect();
        let dx = want_dx
            .then(|| Tensor::from_vec(dx, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, Some(Tensor::from_vec(db, b.shape(), b.device())?)))
    }
}
