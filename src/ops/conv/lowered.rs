//! Convolution whose backward pass is lowered to a forward convolution and one matrix product,
//! built from candle's tensor ops, so it runs on any device.
//!
//! candle 0.11's own conv2d backward is slow on CUDA without cuDNN: the input gradient is a
//! direct `conv_transpose2d` kernel, and the weight gradient a convolution whose GEMMs have as
//! many columns as the kernel has taps (9) per input channel. Here the input gradient is a
//! stride-1 forward convolution (im2col + cuBLAS GEMM) of the zero-dilated output gradient with
//! the flipped, transposed kernel, and the weight gradient one GEMM `dY · colsᵀ` over the whole
//! batch (`[k, n·oh·ow] × [n·oh·ow, c·kh·kw]`), its columns gathered by strided views of the
//! padded input. The forward pass is candle's convolution.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `conv2d(x, w)` (square stride, zero padding) with the lowered backward pass.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let y = x.detach().conv2d(&w.detach(), pad, stride, 1, 1)?;
    // The op passes `y` through and attaches the gradients of x and w to it.
    x.apply_op3_arc(w, &y, Arc::new(Box::new(Lowered { stride, pad })))
}

/// The input gradient of `y = conv2d(x, w)` for `x` of spatial size `hw`.
pub fn input_grad(
    dy: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    hw: (usize, usize),
) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let (_, _, oh, ow) = dy.dims4()?;
    // Correlating the dilated gradient with the flipped kernel puts kernel tap i of output o at
    // input o·stride + i − pad, as the forward pass did.
    let wt = flip(&flip(w, 2, kh)?, 3, kw)?
        .transpose(0, 1)?
        .contiguous()?;
    let d = dilate(dy, stride)?;
    let (h, wd) = hw;
    let (left_h, left_w) = (kh - 1 - pad, kw - 1 - pad);
    let symmetric = left_h == left_w
        && stride * oh + 2 * left_h == h + kh - 1
        && stride * ow + 2 * left_w == wd + kw - 1;
    if symmetric {
        // The common case (every layer of the CIFAR models): the convolution pads by itself.
        return d.conv2d(&wt, left_h, 1, 1, 1);
    }
    // Padding that makes the stride-1 correlation exactly as large as the input.
    let fit = |d: Tensor, dim: usize, k: usize, len: usize, out: usize| -> Result<Tensor> {
        let left = k - 1 - pad;
        let right = (len + k - 1) as isize - (stride * out + left) as isize;
        let d = d.pad_with_zeros(dim, left, right.max(0) as usize)?;
        if right < 0 {
            let keep = d.dim(dim)? - (-right) as usize;
            d.narrow(dim, 0, keep)
        } else {
            Ok(d)
        }
    };
    let d = fit(d, 2, kh, h, oh)?;
    let d = fit(d, 3, kw, wd, ow)?;
    d.conv2d(&wt, 0, 1, 1, 1)
}

/// The weight gradient `[k, c, kh, kw]` of `y = conv2d(x, w)`.
pub fn weight_grad(
    x: &Tensor,
    dy: &Tensor,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (_, k, oh, ow) = dy.dims4()?;
    let pixels = n * oh * ow;
    let dyt = dy.transpose(0, 1)?.contiguous()?.reshape((k, pixels))?;
    // Channels first, so that each tap's view is already `[c, n, oh, ow]`.
    let xt = x.transpose(0, 1)?.contiguous()?;
    let cols = if kh == 1 && kw == 1 && stride == 1 && pad == 0 {
        xt.reshape((c, pixels))?
    } else {
        // Pad to a multiple of the stride (and far enough for the last tap), then split each
        // spatial axis into (position, phase): tap (i, j) is phase (i % s, j % s) from offset
        // (i / s, j / s), a view.
        let s = stride;
        let padded = |len: usize, out: usize, k: usize| {
            (len + 2 * pad).max(s * (out - 1) + k).div_ceil(s) * s
        };
        let (hs, ws) = (padded(h, oh, kh), padded(wd, ow, kw));
        let xt = xt
            .pad_with_zeros(2, pad, hs - h - pad)?
            .pad_with_zeros(3, pad, ws - wd - pad)?
            .reshape((c, n, hs / s, s, ws / s, s))?;
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                taps.push(
                    xt.narrow(3, i % s, 1)?
                        .narrow(5, j % s, 1)?
                        .squeeze(5)?
                        .squeeze(3)?
                        .narrow(2, i / s, oh)?
                        .narrow(3, j / s, ow)?,
                );
            }
        }
        Tensor::stack(&taps, 1)?.reshape((c * kh * kw, pixels))?
    };
    dyt.matmul(&cols.t()?)?.reshape((k, c, kh, kw))
}

/// `t` reversed along `dim` (of length `len`).
fn flip(t: &Tensor, dim: usize, len: usize) -> Result<Tensor> {
    if len == 1 {
        return Ok(t.clone());
    }
    let rev: Vec<u32> = (0..len as u32).rev().collect();
    t.index_select(&Tensor::new(rev.as_slice(), t.device())?, dim)
}

/// `[n, k, oh, ow]` → `[n, k, s·oh, s·ow]` with the values at multiples of `s`, zeros between.
fn dilate(dy: &Tensor, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(dy.clone());
    }
    let (n, k, oh, ow) = dy.dims4()?;
    let zeros = dy.zeros_like()?;
    let mut cols = vec![dy.clone()];
    cols.extend(std::iter::repeat_n(zeros, s - 1));
    let wide = Tensor::stack(&cols, 4)?.reshape((n, k, oh, ow * s))?;
    let zeros = wide.zeros_like()?;
    let mut rows = vec![wide];
    rows.extend(std::iter::repeat_n(zeros, s - 1));
    Tensor::stack(&rows, 3)?.reshape((n, k, oh * s, ow * s))
}

/// Passes the convolution's output through; its backward is the lowered one.
struct Lowered {
    stride: usize,
    pad: usize,
}

impl CustomOp3 for Lowered {
    fn name(&self) -> &'static str {
        "cifar-stream-lowered-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through(y, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_through(y, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        // The network's input image needs no gradient.
        let dx = if x.track_op() {
            Some(input_grad(dy, w, self.stride, self.pad, (h, wd))?)
        } else {
            None
        };
        let dw = weight_grad(x, dy, (kh, kw), self.stride, self.pad)?;
        Ok((dx, Some(dw), None))
    }
}

/// A copy of the convolution's freshly made (contiguous, offset 0) output.
fn pass_through<S: BackendStorage>(y: &S, l: &Layout) -> Result<(S, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("lowered conv2d: the forward output is not a fresh contiguous tensor");
    }
    Ok((y.try_clone(l)?, l.shape().clone()))
}
