//! The Squeeze-and-Excitation squeeze's candle glue: the per-plane mean of `x: [n, c, …]` as f32,
//! summing bf16 activations in f32 without a cast, as one op on CUDA (`cuda/squeeze.rs`, the
//! `cuda` feature). Its only own backend is CUDA's: elsewhere the squeeze is candle's mean
//! ([`super::squeeze`](fn@super::squeeze)), so this op refuses CPU tensors.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use super::host::split_nc;

/// The SE squeeze on CUDA: the per-plane mean of `x: [n, c, …]` as f32 `[n, c, 1, 1]`.
pub(super) struct Squeeze;

impl candle_core::CustomOp1 for Squeeze {
    fn name(&self) -> &'static str {
        "cifar-stream-squeeze"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the squeeze op runs on CUDA; the CPU route takes candle's mean")
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
