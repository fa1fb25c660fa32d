//! BatchNorm (+ ReLU) on CUDA: training forward (Welford statistics per channel split over
//! blocks, a finish in f64 that also updates the running statistics in place, one elementwise
//! pass), its backward (two per-channel sums, closed-form coefficients, one elementwise pass),
//! and the eval-mode affine map.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Result, Tensor};

use super::launch::{
    check_len, cuda_of, dispatch, elementwise, f32_slice, function, per_channel, splits, tensor_of,
    typed, Elem, Held,
};
use crate::ops::host::split_nc;

/// What a training forward pass leaves for its backward: per channel `(mean, invstd)` and
/// `(scale, shift)`, on the device.
pub struct Saved {
    saved: CudaSlice<f32>,
    coef: CudaSlice<f32>,
}

/// BatchNorm's training settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Added to the variance.
    pub eps: f64,
    /// Running-statistics momentum (PyTorch's: the weight of the new batch).
    pub momentum: f64,
    /// A ReLU after the normalisation.
    pub relu: bool,
}

/// Training-mode BatchNorm (+ ReLU) of `x` with `gamma`, `beta`; updates `running_mean` and
/// `running_var` in place. Returns the output and what the backward pass needs.
#[allow(clippy::too_many_arguments)]
pub fn train_forward(
    x: &CudaStorage,
    xl: &Layout,
    gamma: &CudaStorage,
    gl: &Layout,
    beta: &CudaStorage,
    bl: &Layout,
    running: (&Tensor, &Tensor),
    set: Settings,
) -> Result<(CudaStorage, Saved)> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "batch-norm")?;
    check_len(n * c * s, "batch-norm")?;
    check_channels(c)?;
    let (gamma, beta) = (f32_slice(gamma, gl)?, f32_slice(beta, bl)?);
    if gamma.len() != c || beta.len() != c {
        candle_core::bail!("batch-norm: {c} channels but {} scales", gamma.len());
    }
    let (running_mean, running_var) = (Held::of(running.0), Held::of(running.1));
    let ((rms, rml), (rvs, rvl)) = (running_mean.cuda()?, running_var.cuda()?);
    let (rm, rv) = (f32_slice(rms, rml)?, f32_slice(rvs, rvl)?);
    if rm.len() != c || rv.len() != c {
        candle_core::bail!("batch-norm: running statistics are not of {c} channels");
    }
    let k = splits(c, n * s);
    // SAFETY: bn_stats_partial below writes all c*k*3: per_channel(c, k) is c*k blocks, and
    // thread 0 of block (ch, j) writes partial[(ch*k + j)*3..][..3].
    let mut partial = unsafe { dev.alloc::<f32>(c * k * 3)? };
    // SAFETY: bn_stats_finalize below writes saved[2ch..2ch + 2] for every channel: one thread
    // per channel, and elementwise(c) reaches them all (check_channels above).
    let mut saved = unsafe { dev.alloc::<f32>(2 * c)? };
    // SAFETY: as `saved`: bn_stats_finalize writes coef[2ch..2ch + 2] for each channel.
    let mut coef = unsafe { dev.alloc::<f32>(2 * c)? };
    let (ni, ci, si) = (n as i32, c as i32, s as i32);
    let y = dispatch!(x, xl, |xv: T| {
        let f = function(dev, "bn_stats_partial", T::SUFFIX)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&ni).arg(&ci).arg(&si).arg(&mut partial);
        // SAFETY: args match bn_stats_partial_{f32,bf16}(x, n, c, s, partial) in order and type;
        // x is the n*c*s view (< 2^31: check_len), partial c*k*3 floats for the grid (c, k).
        unsafe { b.launch(per_channel(c, k)).w()? };

        let f = function(dev, "bn_stats_finalize", "")?;
        let (ki, eps, mom) = (k as i32, set.eps, set.momentum);
        let mut b = stream.launch_builder(&f);
        b.arg(&partial).arg(&ci).arg(&ki).arg(&eps).arg(&mom);
        b.arg(&gamma).arg(&beta).arg(&rm).arg(&rv);
        b.arg(&mut saved).arg(&mut coef);
        // SAFETY: args match bn_stats_finalize's 11 (i32, i32, f64, f64, then f32 buffers); gamma,
        // beta, rm, rv hold c (checked above), partial c*k*3, saved and coef 2c. rm and rv are
        // written in place, though only read-locked (`Held`) and passed as read views.
        unsafe { b.launch(elementwise(c)).w()? };

        let (scale, shift) = (coef.slice(0..2 * c), coef.slice(1..2 * c));
        apply::<T>(dev, &xv, (&scale, &shift, 2), (c, s), set.relu)?
    });
    Ok((y, Saved { saved, coef }))
}

/// The training backward of [`train_forward`]: `(dx, dgamma, dbeta)`.
pub fn train_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    saved: &Saved,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dy, x, gamma) = (cuda_of(dy)?, cuda_of(x)?, cuda_of(gamma)?);
    let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
    check_len(n * c * s, "batch-norm")?;
    check_channels(c)?;
    let (ni, ci, si, relu) = (n as i32, c as i32, s as i32, relu as i32);
    let total = (n * c * s) as i64;
    let k = splits(c, n * s);
    let (xh, dh, gh) = (Held::of(&x), Held::of(&dy), Held::of(&gamma));
    let ((xs, xl), (ds, dl), (gs, gl)) = (xh.cuda()?, dh.cuda()?, gh.cuda()?);
    let dev = &xs.device;
    let gamma_view = f32_slice(gs, gl)?;
    // SAFETY: bn_bwd_partial below writes all c*k*2: per_channel(c, k) is c*k blocks, and
    // thread 0 of block (ch, j) writes partial[(ch*k + j)*2..][..2].
    let mut partial = unsafe { dev.alloc::<f32>(c * k * 2)? };
    // SAFETY: bn_bwd_finalize below writes dgamma[ch] for every channel: one thread per
    // channel, and elementwise(c) reaches them all (check_channels above).
    let mut dgamma = unsafe { dev.alloc::<f32>(c)? };
    // SAFETY: as `dgamma`: bn_bwd_finalize writes dbeta[ch] for each channel.
    let mut dbeta = unsafe { dev.alloc::<f32>(c)? };
    // SAFETY: as `dgamma`: bn_bwd_finalize writes coefs[3ch..3ch + 3] for each channel.
    let mut coefs = unsafe { dev.alloc::<f32>(3 * c)? };
    let dx = dispatch!(xs, xl, |xv: T| {
        let dyv = typed::<T>(ds, dl)?;
        let f = function(dev, "bn_bwd_partial", T::SUFFIX)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&dyv).arg(&xv).arg(&saved.saved).arg(&saved.coef);
        b.arg(&relu).arg(&ni).arg(&ci).arg(&si).arg(&mut partial);
        // SAFETY: args match bn_bwd_partial_{f32,bf16}(dy, x, saved, coef, relu, n, c, s, partial);
        // x is n*c*s (check_len) and dy, y's gradient, the same; saved/coef are 2c, from this
        // x's forward (one TrainOp per call); partial c*k*2 for the grid (c, k).
        unsafe { b.launch(per_channel(c, k)).w()? };

        let f = function(dev, "bn_bwd_finalize", "")?;
        let (ki, count) = (k as i32, (n * s) as f64);
        let mut b = stream.launch_builder(&f);
        b.arg(&partial)
            .arg(&ci)
            .arg(&ki)
            .arg(&count)
            .arg(&saved.saved);
        b.arg(&gamma_view)
            .arg(&mut dgamma)
            .arg(&mut dbeta)
            .arg(&mut coefs);
        // SAFETY: args match bn_bwd_finalize(partial, c, splits, count: f64, saved, gamma, dgamma,
        // dbeta, k); partial c*k*2, saved 2c, gamma c (checked by the forward), outputs c, c, 3c.
        unsafe { b.launch(elementwise(c)).w()? };

        // SAFETY: bn_bwd_dx below writes every element: a grid-stride loop over total = n*c*s.
        let mut dx = unsafe { dev.alloc::<T>(n * c * s)? };
        let f = function(dev, "bn_bwd_dx", T::SUFFIX)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dyv)
            .arg(&xv)
            .arg(&saved.saved)
            .arg(&saved.coef)
            .arg(&coefs);
        b.arg(&relu).arg(&ci).arg(&si).arg(&total).arg(&mut dx);
        // SAFETY: args match bn_bwd_dx_{f32,bf16}(dy, x, saved, coef, k, relu, c, s, total: i64,
        // dx); dy, x, dx hold total (< 2^31: check_len), saved/coef 2c, coefs 3c.
        unsafe { b.launch(elementwise(n * c * s)).w()? };
        tensor_of(dx, dev, x.shape())
    });
    Ok((dx, tensor_of(dgamma, dev, c), tensor_of(dbeta, dev, c)))
}

/// Eval-mode BatchNorm: `y = x·scale[c] + shift[c]` (then ReLU), with the per-channel `scale`
/// and `shift` (f32) already folded from the running statistics.
pub fn affine(
    x: &CudaStorage,
    xl: &Layout,
    scale: &CudaStorage,
    sl: &Layout,
    shift: &CudaStorage,
    hl: &Layout,
    relu: bool,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (_, c, s) = split_nc(xl.dims(), "channel affine")?;
    check_len(xl.shape().elem_count(), "channel affine")?;
    let (scale, shift) = (f32_slice(scale, sl)?, f32_slice(shift, hl)?);
    if scale.len() != c || shift.len() != c {
        candle_core::bail!("channel affine: {c} channels but {} scales", scale.len());
    }
    Ok(dispatch!(x, xl, |xv: T| {
        apply::<T>(dev, &xv, (&scale, &shift, 1), (c, s), relu)?
    }))
}

/// `y = x·scale[step·c] + shift[step·c]` (then ReLU) for `x` `[n, c, s]`.
fn apply<T: Elem>(
    dev: &CudaDevice,
    x: &CudaView<T>,
    (scale, shift, step): (&CudaView<f32>, &CudaView<f32>, i32),
    (c, s): (usize, usize),
    relu: bool,
) -> Result<CudaStorage> {
    let len = x.len();
    let (ci, si, total, relu) = (c as i32, s as i32, len as i64, relu as i32);
    // SAFETY: bn_apply below writes every element: a grid-stride loop over total = len.
    let mut y = unsafe { dev.alloc::<T>(len)? };
    let f = function(dev, "bn_apply", T::SUFFIX)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(x).arg(&mut y).arg(scale).arg(shift).arg(&step);
    b.arg(&ci).arg(&si).arg(&total).arg(&relu);
    // SAFETY: args match bn_apply_{f32,bf16}(x, y, scale, shift, step, c, s, total: i64, relu);
    // x, y hold len (< 2^31: the callers' check_len); scale/shift[step*ch], ch < c, lie in
    // c-long arrays (step 1, checked in `affine`) or coef's 2c and 2c - 1 (step 2).
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// The finalize kernels run one thread per channel without a grid-stride loop: refuse more
/// channels than the largest elementwise grid (65,535 blocks of 256 threads) reaches.
fn check_channels(c: usize) -> Result<()> {
    let most = 65_535 * super::launch::THREADS as usize;
    if c > most {
        candle_core::bail!("batch-norm: {c} channels, the CUDA kernels take at most {most}");
    }
    Ok(())
}
