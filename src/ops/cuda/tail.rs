//! A bottleneck block's tail `relu(x·gate[n, c] + shortcut)` on CUDA: one elementwise kernel
//! forward, one kernel per (image, channel) plane backward that also sums the gate's gradient.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Tensor};

use super::launch::{
    check_len, cuda_of, dispatch, elementwise, function, per_plane, tensor_of, typed, Elem, Held,
};
use crate::ops::host::split_nc;

/// `relu(x·gate[n, c] + shortcut)`, all three of one dtype.
pub fn forward(
    x: &CudaStorage,
    xl: &Layout,
    gate: &CudaStorage,
    gl: &Layout,
    short: &CudaStorage,
    sl: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "block tail")?;
    check_len(n * c * s, "block tail")?;
    if gl.shape().elem_count() != n * c || sl.shape().elem_count() != n * c * s {
        candle_core::bail!(
            "block tail: x {:?}, gate {:?}, shortcut {:?} do not fit",
            xl.dims(),
            gl.dims(),
            sl.dims()
        );
    }
    let (si, total) = (s as i32, (n * c * s) as i64);
    Ok(dispatch!(x, xl, |xv: T| {
        let gv = typed::<T>(gate, gl)?;
        let sv = typed::<T>(short, sl)?;
        // SAFETY: tail_fwd below writes every element: a grid-stride loop over total = n*c*s.
        let mut y = unsafe { dev.alloc::<T>(n * c * s)? };
        let f = function(dev, "tail_fwd", T::SUFFIX)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv)
            .arg(&gv)
            .arg(&sv)
            .arg(&mut y)
            .arg(&si)
            .arg(&total);
        // SAFETY: args match tail_fwd_{f32,bf16}(x, gate, shortcut, y: T*, s: int, total: i64);
        // x, shortcut, y hold n*c*s (< 2^31: check_len) and gate n*c, checked above.
        unsafe { b.launch(elementwise(n * c * s)).w()? };
        CudaStorage::wrap_cuda_slice(y, dev.clone())
    }))
}

/// The backward of [`forward`]: `(dx, dgate, dshortcut)`.
pub fn backward(
    x: &Tensor,
    gate: &Tensor,
    y: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (x, gate, y, dy) = (cuda_of(x)?, cuda_of(gate)?, cuda_of(y)?, cuda_of(dy)?);
    let (n, c, s) = split_nc(x.dims(), "block tail")?;
    let si = s as i32;
    let (xh, gh, yh, dh) = (Held::of(&x), Held::of(&gate), Held::of(&y), Held::of(&dy));
    let ((xs, xl), (gs, gl)) = (xh.cuda()?, gh.cuda()?);
    let ((ys, yl), (ds, dl)) = (yh.cuda()?, dh.cuda()?);
    let dev = &xs.device;
    Ok(dispatch!(xs, xl, |xv: T| {
        let gv = typed::<T>(gs, gl)?;
        let yv = typed::<T>(ys, yl)?;
        let dv = typed::<T>(ds, dl)?;
        // SAFETY: tail_bwd below writes all of dx: one block per plane (per_plane(n*c, s)),
        // whose threads stride over the plane's s elements.
        let mut dx = unsafe { dev.alloc::<T>(n * c * s)? };
        // SAFETY: as `dx`: tail_bwd stores dshortcut[i] beside dx[i] for every element.
        let mut dshort = unsafe { dev.alloc::<T>(n * c * s)? };
        // SAFETY: tail_bwd's thread 0 of block `plane` writes dgate[plane], for all n*c blocks.
        let mut dgate = unsafe { dev.alloc::<T>(n * c)? };
        let f = function(dev, "tail_bwd", T::SUFFIX)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&gv).arg(&yv).arg(&dv);
        b.arg(&mut dx).arg(&mut dshort).arg(&mut dgate).arg(&si);
        // SAFETY: args match tail_bwd_{f32,bf16}(x, gate, y, dy, dx, dshortcut, dgate: T*, s);
        // x, y, dy (y's gradient) are the forward's n*c*s tensors (check_len there), gate
        // its n*c (checked there); the outputs are allocated above to those lengths.
        unsafe { b.launch(per_plane(n * c, s)).w()? };
        (
            tensor_of(dx, dev, x.shape()),
            tensor_of(dgate, dev, gate.shape()),
            tensor_of(dshort, dev, x.shape()),
        )
    }))
}
