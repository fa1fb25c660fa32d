//! The tail of a bottleneck block in one pass: `relu(x · s[n, c] + shortcut)`, where `s` is the
//! Squeeze-and-Excitation gate. Through candle's generic ops this is a broadcast multiply, an add
//! and a ReLU, each with its own allocation and several passes backward; fused, it is one pass
//! each way.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batch_norm_cpu::relu_keep_nan;
use super::host::{contiguous_f32, op_output, split_nc, with_f32};

/// The candle op on `(x, gate, shortcut)`.
pub(super) struct BlockTail;

impl CustomOp3 for BlockTail {
    fn name(&self) -> &'static str {
        "cifar-stream-block-tail"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, s) = split_nc(l1.dims(), "block tail")?;
        let x = contiguous_f32(s1, l1)?;
        let gate = contiguous_f32(s2, l2)?;
        let short = contiguous_f32(s3, l3)?;
        if gate.len() != n * c || short.len() != x.len() {
            candle_core::bail!(
                "block tail: x {:?}, gate {:?}, shortcut {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut y = vec![0.0f32; x.len()];
        let plane = s.max(1);
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane).zip(short.par_chunks(plane)))
            .enumerate()
            .for_each(|(p, (yp, (xp, sp)))| {
                let g = gate[p];
                for ((o, a), b) in yp.iter_mut().zip(xp).zip(sp) {
                    *o = relu_keep_nan(a * g + b);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = super::cuda::tail::forward(s1, l1, s2, l2, s3, l3)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gate: &Tensor,
        short: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dgate, dshort) = super::cuda::tail::backward(x, gate, y, dy)?;
            return Ok((Some(dx), Some(dgate), Some(dshort.reshape(short.shape())?)));
        }
        let (_, _, s) = split_nc(x.dims(), "block tail")?;
        let plane = s.max(1);
        let (dx, dgate, dshort) = with_f32(x, |xs| {
            with_f32(gate, |gs| {
                with_f32(y, |ys| {
                    with_f32(dy, |dys| {
                        let mut dx = vec![0.0f32; xs.len()];
                        let mut dshort = vec![0.0f32; xs.len()];
                        let dgate: Vec<f32> = dx
                            .par_chunks_mut(plane)
                            .zip(dshort.par_chunks_mut(plane))
                            .zip(xs.par_chunks(plane).zip(ys.par_chunks(plane)))
                            .zip(dys.par_chunks(plane))
                            .enumerate()
                            .map(|(p, (((dxp, dsp), (xp, yp)), dyp))| {
                                plane_backward(gs[p], xp, yp, dyp, dxp, dsp)
                            })
                            .collect();
                        Ok((dx, dgate, dshort))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(op_output(dx, x.shape(), dev)?),
            Some(op_output(dgate, gate.shape(), dev)?),
            Some(op_output(dshort, short.shape(), dev)?),
        ))
    }
}

/// One plane of the backward pass: `dx = m·g` and `dshort = m` for the ReLU-masked gradient `m`;
/// returns `Σ m·x`, the gate's gradient. Fixed lanes of eight so the loop vectorises.
fn plane_backward(
    g: f32,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dshort: &mut [f32],
) -> f32 {
    let mut acc = [0.0f32; 8];
    let body = x.len() / 8 * 8;
    let lanes = dx[..body]
        .chunks_exact_mut(8)
        .zip(dshort[..body].chunks_exact_mut(8))
        .zip(x[..body].chunks_exact(8))
        .zip(y[..body].chunks_exact(8).zip(dy[..body].chunks_exact(8)));
    for (((dx8, ds8), x8), (y8, d8)) in lanes {
        for l in 0..8 {
            let m = if y8[l] > 0.0 { d8[l] } else { 0.0 };
            dx8[l] = m * g;
            ds8[l] = m;
            acc[l] += m * x8[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in body..x.len() {
        let m = if y[i] > 0.0 { dy[i] } else { 0.0 };
        dx[i] = m * g;
        dshort[i] = m;
        sum += m * x[i];
    }
    sum
}
