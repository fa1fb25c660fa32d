//! BatchNorm's candle glue over `[n, c, …]` fused with an optional activation: training mode
//! (batch statistics, optionally synchronised over ranks: the all-reduces and the per-channel
//! statistics between them are here) and eval mode (a per-channel affine map). On the CPU one
//! pass for the statistics and one to normalise, the closed-form backward in two
//! ([`super::cpu::batch_norm`]); on CUDA the kernels of `cuda/batch_norm.rs`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

pub(super) use super::cpu::batch_norm::Activation;
use super::cpu::batch_norm::{
    affine, affine_backward, channel_centred, channel_sums, gelu_grads, DxCoefficients,
};
use super::host::{contiguous_f32, op_output, split_nc, with_f32};

/// Batch statistics of one training forward pass, per channel.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Mean.
    pub mean: Vec<f32>,
    /// Biased variance (divided by the count), as used to normalise.
    pub var: Vec<f32>,
    /// Values per channel (`n × spatial`).
    pub count: usize,
}

/// Training-mode op on `(x, gamma, beta)`: normalises with batch statistics. On the CPU it leaves
/// them in `stats` for the caller's running averages and for the backward pass; on CUDA the
/// kernels update `running` in place and keep what the backward needs on the device (`saved`).
pub(super) struct TrainOp {
    pub eps: f64,
    /// GELU only on the CPU: the CUDA kernels fuse a ReLU or nothing.
    pub activation: Activation,
    pub stats: Arc<Mutex<Stats>>,
    /// The forward pass's `(scale, shift)` (CPU), which GELU's gradient re-applies to the input.
    pub affine: Mutex<(Vec<f32>, Vec<f32>)>,
    /// Running-statistics momentum (CUDA; the CPU caller blends them itself).
    #[cfg(feature = "cuda")]
    pub momentum: f64,
    /// `(running_mean, running_var)` (CUDA).
    #[cfg(feature = "cuda")]
    pub running: (Tensor, Tensor),
    #[cfg(feature = "cuda")]
    pub saved: Mutex<Option<super::cuda::batch_norm::Saved>>,
    /// Statistics over every rank of this group (synchronised BatchNorm); `None`: this batch's.
    pub sync: Option<Arc<dyn crate::dist::Collective>>,
}

impl TrainOp {
    /// Sums `v` over the ranks of a synchronised BatchNorm (nothing to do without one).
    fn all_reduce(&self, v: &mut [f64]) -> Result<()> {
        match &self.sync {
            Some(world) => world
                .all_reduce_sum_f64(v)
                .map_err(|e| candle_core::Error::Msg(format!("sync batch-norm: {e}"))),
            None => Ok(()),
        }
    }
}

impl CustomOp3 for TrainOp {
    fn name(&self) -> &'static str {
        "cifar-stream-batch-norm-train"
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
        let (n, c, s) = split_nc(l1.dims(), "batch-norm")?;
        let x = contiguous_f32(s1, l1)?;
        let gamma = contiguous_f32(s2, l2)?;
        let beta = contiguous_f32(s3, l3)?;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batch-norm: {c} channels but {} scales, {} shifts",
                gamma.len(),
                beta.len()
            );
        }
        // Synchronised: the count and every sum over all ranks, so each normalises with the
        // statistics of the whole global batch.
        let mut first: Vec<f64> = channel_sums::<false>(x, x, x, None, (n, c, s))
            .iter()
            .map(|p| p.0)
            .collect();
        first.push((n * s) as f64);
        self.all_reduce(&mut first)?;
        let count = first[c] as usize;
        let mean: Vec<f32> = first[..c]
            .iter()
            .map(|sum| (sum / count as f64) as f32)
            .collect();
        // Two passes: Σ(x − μ)² rather than Σx² − Mμ², which cancels badly.
        let mut centred = channel_centred(x, &mean, (n, c, s));
        if self.sync.is_some() {
            let mut flat: Vec<f64> = centred.iter().flat_map(|p| [p.0, p.1]).collect();
            self.all_reduce(&mut flat)?;
            centred = flat.chunks(2).map(|p| (p[0], p[1])).collect();
        }
        let mut stats = Stats {
            mean: Vec::with_capacity(c),
            var: Vec::with_capacity(c),
            count,
        };
        let (mut scale, mut shift) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            // μ̂ is the f32-rounded mean; d is what it misses: Σ(x − μ)² = Σ(x − μ̂)² − M·d².
            let d = centred[ch].0 / count as f64;
            let var = (centred[ch].1 / count as f64 - d * d).max(0.0);
            let mean = mean[ch] as f64 + d;
            let a = gamma[ch] as f64 / (var + self.eps).sqrt();
            stats.mean.push(mean as f32);
            stats.var.push(var as f32);
            scale.push(a as f32);
            shift.push((beta[ch] as f64 - mean * a) as f32);
        }
        let y = affine(x, &scale, &shift, self.activation, c, s);
        *self.stats.lock().expect("batch-norm stats lock") = stats;
        *self.affine.lock().expect("batch-norm affine lock") = (scale, shift);
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
        if self.activation == Activation::Gelu {
            candle_core::bail!("batch-norm + GELU is a CPU op; CUDA runs them as two");
        }
        let set = super::cuda::batch_norm::Settings {
            eps: self.eps,
            momentum: self.momentum,
            relu: self.activation == Activation::Relu,
        };
        let running = (&self.running.0, &self.running.1);
        let (y, saved) =
            super::cuda::batch_norm::train_forward(s1, l1, s2, l2, s3, l3, running, set)?;
        *self.saved.lock().expect("batch-norm saved lock") = Some(saved);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let saved = self.saved.lock().expect("batch-norm saved lock");
            let Some(saved) = saved.as_ref() else {
                candle_core::bail!("batch-norm backward before its CUDA forward");
            };
            let (dx, dgamma, dbeta) = super::cuda::batch_norm::train_backward(
                dy,
                x,
                gamma,
                saved,
                self.activation == Activation::Relu,
            )?;
            return Ok((Some(dx), Some(dgamma), Some(dbeta)));
        }
        let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
        let stats = self.stats.lock().expect("batch-norm stats lock").clone();
        // The batch the statistics came from: every rank's when synchronised.
        let count = stats.count as f64;
        let (dx, dgamma, dbeta) = with_f32(x, |xs| {
            with_f32(gamma, |gs| {
                with_f32(y, |ys| {
                    with_f32(dy, |dys| {
                        let invstd: Vec<f64> = stats
                            .var
                            .iter()
                            .map(|v| 1.0 / (*v as f64 + self.eps).sqrt())
                            .collect();
                        // Σg and Σg·(x − μ) per channel; Σg·x̂ = invstd·Σg·(x − μ).
                        let mean = &stats.mean;
                        // With GELU, also the gradient at its input, which becomes dx in place.
                        let (sums, gelu_input_grads) = match self.activation {
                            Activation::Relu => (
                                channel_sums::<true>(dys, ys, xs, Some(mean), (n, c, s)),
                                None,
                            ),
                            Activation::Identity => (
                                channel_sums::<false>(dys, ys, xs, Some(mean), (n, c, s)),
                                None,
                            ),
                            Activation::Gelu => {
                                let affine = self.affine.lock().expect("batch-norm affine lock");
                                let (g, sums) =
                                    gelu_grads(dys, xs, (&affine.0, &affine.1), mean, (n, c, s));
                                (sums, Some(g))
                            }
                        };
                        // γ and β get this rank's own sums (the ranks' gradients are averaged
                        // later, as any parameter's); dx needs every rank's, since each image
                        // moved the shared statistics.
                        let mut global: Vec<f64> = sums.iter().flat_map(|p| [p.0, p.1]).collect();
                        self.all_reduce(&mut global)?;
                        let mut dgamma = Vec::with_capacity(c);
                        let mut dbeta = Vec::with_capacity(c);
                        // dx = a·g + b·(x − μ) + d per channel, from the closed form
                        // dx = γ·invstd/M · (M·g − Σg − x̂·Σg·x̂).
                        let (mut a, mut b, mut d) =
                            (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
                        for ch in 0..c {
                            let (sg, sgxc) = sums[ch];
                            let is = invstd[ch];
                            dgamma.push((is * sgxc) as f32);
                            dbeta.push(sg as f32);
                            let (sg, sgxh) = (global[2 * ch], is * global[2 * ch + 1]);
                            let k = gs[ch] as f64 * is;
                            a[ch] = k as f32;
                            b[ch] = (-k * is * sgxh / count) as f32;
                            d[ch] = (-k * sg / count) as f32;
                        }
                        let coef = DxCoefficients { a, b, d, mean };
                        let dx = match gelu_input_grads {
                            Some(mut g) => {
                                coef.dx_from_grads(&mut g, xs, c, s);
                                g
                            }
                            None if self.activation == Activation::Relu => {
                                coef.dx::<true>(dys, ys, xs, c, s)
                            }
                            None => coef.dx::<false>(dys, ys, xs, c, s),
                        };
                        Ok((dx, dgamma, dbeta))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(op_output(dx, x.shape(), dev)?),
            Some(op_output(dgamma, c, dev)?),
            Some(op_output(dbeta, c, dev)?),
        ))
    }
}

/// Per-channel affine map (+ activation) on `(x, scale, shift)`: BatchNorm with fixed statistics.
pub(super) struct AffineOp {
    /// GELU only on the CPU, as in [`TrainOp`].
    pub activation: Activation,
}

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "cifar-stream-channel-affine"
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
        let (_, c, s) = split_nc(l1.dims(), "batch-norm")?;
        let x = contiguous_f32(s1, l1)?;
        let scale = contiguous_f32(s2, l2)?;
        let shift = contiguous_f32(s3, l3)?;
        if scale.len() != c || shift.len() != c {
            candle_core::bail!("channel affine: {c} channels but {} scales", scale.len());
        }
        Ok((
            CpuStorage::F32(affine(x, scale, shift, self.activation, c, s)),
            l1.shape().clone(),
        ))
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
        if self.activation == Activation::Gelu {
            candle_core::bail!("channel affine + GELU is a CPU op; CUDA runs them as two");
        }
        let relu = self.activation == Activation::Relu;
        let y = super::cuda::batch_norm::affine(s1, l1, s2, l2, s3, l3, relu)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.device().is_cpu() {
            return affine_backward_any(x, scale, y, dy, self.activation);
        }
        let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
        let (dx, dscale, dshift) = with_f32(x, |xs| {
            with_f32(scale, |sc| {
                with_f32(y, |ys| {
                    with_f32(dy, |dys| {
                        let (sums, dx) = match self.activation {
                            Activation::Relu => affine_backward::<true>(dys, ys, xs, sc, (n, c, s)),
                            Activation::Identity => {
                                affine_backward::<false>(dys, ys, xs, sc, (n, c, s))
                            }
                            Activation::Gelu => with_f32(shift, |sh| {
                                let zeros = vec![0.0f32; c];
                                let (mut g, sums) =
                                    gelu_grads(dys, xs, (sc, sh), &zeros, (n, c, s));
                                for (i, plane) in g.chunks_mut(s.max(1)).enumerate() {
                                    plane.iter_mut().for_each(|v| *v *= sc[i % c]);
                                }
                                Ok((sums, g))
                            })?,
                        };
                        let dscale = sums.iter().map(|p| p.1 as f32).collect::<Vec<_>>();
                        let dshift = sums.iter().map(|p| p.0 as f32).collect::<Vec<_>>();
                        Ok((dx, dscale, dshift))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(op_output(dx, x.shape(), dev)?),
            Some(op_output(dscale, c, dev)?),
            Some(op_output(dshift, c, dev)?),
        ))
    }
}

/// The eval-mode affine map's backward in candle's ops, for any device and dtype (gradients
/// through running statistics are rare: evaluation does not train).
fn affine_backward_any(
    x: &Tensor,
    scale: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    activation: Activation,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
    let g = match activation {
        Activation::Relu => (dy * y.gt(0.0)?.to_dtype(dy.dtype())?)?,
        Activation::Identity => dy.clone(),
        Activation::Gelu => candle_core::bail!("channel affine + GELU is a CPU op"),
    };
    let g32 = g.to_dtype(candle_core::DType::F32)?.reshape((n, c, s))?;
    let x32 = x.to_dtype(candle_core::DType::F32)?.reshape((n, c, s))?;
    let dshift = g32.sum((0, 2))?;
    let dscale = (&g32 * &x32)?.sum((0, 2))?;
    let dx = g
        .reshape((n, c, s))?
        .broadcast_mul(&scale.to_dtype(g.dtype())?.reshape((1, c, 1))?)?
        .reshape(x.shape())?;
    Ok((Some(dx), Some(dscale), Some(dshift)))
}
