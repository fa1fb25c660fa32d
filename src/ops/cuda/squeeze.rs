//! The Squeeze-and-Excitation squeeze on CUDA: the mean of each `[n, c]` plane, summed in f32
//! whatever the activation's dtype, and its backward.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Tensor};

use super::launch::{
    check_len, cuda_of, dispatch, elementwise, f32_slice, function, per_plane, tensor_of, Elem,
    Held,
};
use crate::ops::host::split_nc;

/// The mean of each `[n, c]` plane of `x` (f32 or bf16), as f32 `[n, c]`.
pub fn forward(x: &CudaStorage, xl: &Layout) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "squeeze")?;
    check_len(n * c * s, "squeeze")?;
    let si = s as i32;
    // SAFETY: squeeze_fwd below writes all n*c: per_plane(n*c, s) is one block per plane, and
    // its thread 0 stores out[plane].
    let mut out = unsafe { dev.alloc::<f32>(n * c)? };
    dispatch!(x, xl, |xv: T| {
        let f = function(dev, "squeeze_fwd", T::SUFFIX)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&mut out).arg(&si);
        // SAFETY: args match squeeze_fwd_{f32,bf16}(x: T*, out: float*, s: int); x is the n*c*s
        // view (< 2^31: check_len), out n*c; the block size is a multiple of 32 (block_sum).
        unsafe { b.launch(per_plane(n * c, s)).w()? };
    });
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// The backward of [`forward`]: `dout / s` spread over each plane, in `x`'s dtype.
pub fn backward(x: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let dout = cuda_of(&dout.to_dtype(DType::F32)?)?;
    let held = Held::of(&dout);
    let (os, ol) = held.cuda()?;
    match x.dtype() {
        DType::F32 => spread::<f32>(&os.device, &f32_slice(os, ol)?, x),
        DType::BF16 => spread::<half::bf16>(&os.device, &f32_slice(os, ol)?, x),
        other => candle_core::bail!("squeeze: dtype {other:?}"),
    }
}

/// `dout[plane] / s` into every element of its plane, as `T`, shaped like `x`.
fn spread<T: Elem>(
    dev: &CudaDevice,
    dout: &candle_core::cuda_backend::cudarc::driver::CudaView<f32>,
    x: &Tensor,
) -> Result<Tensor> {
    let (n, c, s) = split_nc(x.dims(), "squeeze")?;
    let (si, total) = (s as i32, (n * c * s) as i64);
    // SAFETY: squeeze_bwd below writes every element: a grid-stride loop over total = n*c*s.
    let mut dx = unsafe { dev.alloc::<T>(n * c * s)? };
    let f = function(dev, "squeeze_bwd", T::SUFFIX)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(dout).arg(&mut dx).arg(&si).arg(&total);
    // SAFETY: args match squeeze_bwd_{f32,bf16}(dout: float*, dx: T*, s, total: i64); dout is
    // the [n, c] output's f32 gradient (read at i/s < n*c), dx total; x passed check_len.
    unsafe { b.launch(elementwise(n * c * s)).w()? };
    Ok(tensor_of(dx, dev, x.shape()))
}
