//! Convolution's candle glue: `Conv2dOp`, whose forward pass and both gradients run this
//! crate's CPU kernels ([`super::cpu::conv`]) on f32 CPU tensors and cuDNN with cached plans
//! (`cuda/conv.rs`, the `cudnn` feature) on CUDA; and [`lowered`], the convolution whose
//! backward pass is built from candle's own ops (CUDA without cuDNN, and `op-bench`).

pub mod lowered;

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::conv::{backward, forward};
use super::host::{contiguous_f32, op_output, with_f32};
use super::{Geometry, Options};

/// `conv2d(x, w)` as one [`Conv2dOp`] on contiguous operands, with `ops`' numeric switches: f32
/// on CUDA may use TF32 tensor cores (cuDNN's math type is set per call, so the setting is this
/// call's), 3×3 convolutions on the CPU may multiply in bf16.
pub(super) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    ops: Options,
) -> Result<Tensor> {
    let op = Conv2dOp {
        stride,
        pad,
        tf32: ops.tf32,
        bf16: ops.bf16_products,
    };
    x.contiguous()?
        .apply_op2_arc(&w.contiguous()?, Arc::new(Box::new(op)))
}

/// The candle op: `conv2d(x, w)` with an explicit backward pass on either backend.
struct Conv2dOp {
    stride: usize,
    pad: usize,
    /// TF32 allowed for f32 on CUDA (nothing on the CPU).
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    tf32: bool,
    /// 3×3 convolutions on the CPU multiply bf16-rounded operands (nothing on CUDA).
    bf16: bool,
}

impl Conv2dOp {
    fn geometry(&self, x: &[usize], w: &[usize]) -> Result<Geometry> {
        Geometry::new(x, w, self.stride, self.pad)
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "cifar-stream-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1.dims(), l2.dims())?;
        let x = contiguous_f32(s1, l1)?;
        let w = contiguous_f32(s2, l2)?;
        let y = forward(&g, x, w, self.bf16);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.k, g.ho(), g.wo()))))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.geometry(l1.dims(), l2.dims())?;
        let y = super::cuda::conv::forward(s1, l1, s2, l2, g, self.tf32)?;
        Ok((y, Shape::from((g.n, g.k, g.ho(), g.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.dims(), w.dims())?;
        // The network's input image needs no gradient.
        let want_dx = x.track_op();
        #[cfg(feature = "cudnn")]
        if x.device().is_cuda() {
            return super::cuda::conv::backward(x, w, dy, g, self.tf32, want_dx);
        }
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(dy, |dys| Ok(backward(&g, xs, ws, dys, want_dx, self.bf16)))
            })
        })?;
        let dx = dx
            .map(|v| op_output(v, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, Some(op_output(dw, w.shape(), w.device())?)))
    }
}
