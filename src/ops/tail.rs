//! The block tail's candle glue: [`BlockTail`], `relu(x · s[n, c] + shortcut)` with `s` the
//! Squeeze-and-Excitation gate, as one op on f32 CPU tensors ([`super::cpu::tail`]) and on CUDA
//! (`cuda/tail.rs`, f32 or bf16). Through candle's generic ops this is a broadcast
//! multiply, an add and a ReLU, each with its own allocation and several passes backward; fused,
//! it is one pass each way.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::tail::{backward, forward};
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
        let y = forward(x, gate, short, s.max(1));
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
                    with_f32(dy, |dys| Ok(backward(xs, gs, ys, dys, plane)))
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
