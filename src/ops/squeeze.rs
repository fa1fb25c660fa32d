//! The Squeeze-and-Excitation squeeze as one op on CUDA (the `cuda` feature): the per-plane
//! mean of `x: [n, c, …]` as f32, summing bf16 activations in f32 without a cast. Elsewhere the
//! squeeze is candle's mean ([`super::squeeze`](fn@super::squeeze)).

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use super::host::{contiguous_f32, split_nc};

/// The SE squeeze on CUDA: the per-plane mean of `x: [n, c, …]` as f32 `[n, c, 1, 1]`.
pub(super) struct Squeeze;

impl candle_core::CustomOp1 for Squeeze {
    fn name(&self) -> &'static str {
        "cifar-stream-squeeze"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, sp) = split_nc(l.dims(), "squeeze")?;
        let x = contiguous_f32(s, l)?;
        let out: Vec<f32> = x
            .chunks(sp.max(1))
            .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / sp.max(1) as f64) as f32)
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((n, c, 1, 1))))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, _) = split_nc(l.dims(), "squeeze")?;
        Ok((
            super::cuda::squeeze::forward(s, l)?,
            Shape::from((n, c, 1, 1)),
        ))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(super::cuda::squeeze::backward(x, dout)?))
    }
}
