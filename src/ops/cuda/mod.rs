//! The fast ops on CUDA: the kernels of `kernels.cu` (compiled to PTX by `build.rs`, loaded the
//! way candle loads its own) behind the same custom ops as the CPU code, plus the memory-pool
//! settings of a training process.
//!
//! Every function here takes contiguous f32 or bf16 activations and keeps statistics in f32/f64.
//! The CPU ops of the parent module are the reference: `stream-train gpu-test` runs both on the
//! same inputs and compares.
//!
//! Writes into tensors the ops do not own (the running statistics, the optimizer's weights,
//! momentum and EMA) go through device pointers taken under candle's read locks. That is sound
//! here because every kernel runs on the device's one stream, in order, and nothing else touches
//! those buffers while a step runs; it is the in-place update candle's own `Var::set` performs.

#[cfg(feature = "cudnn")]
pub mod conv;

use candle_core::backend::BackendStorage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorageSlice, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

use super::host::split_nc;

/// The kernels, as PTX for the compute capability `build.rs` was given (`CUDA_COMPUTE_CAP`).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cifar_stream_kernels.ptx"));

/// Threads per block of the elementwise and reduction kernels.
const THREADS: u32 = 256;

/// An activation element type the kernels take: f32 or bf16.
pub trait Elem: DeviceRepr + CudaDType + Copy + 'static {
    /// The kernel-name suffix.
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

thread_local! {
    /// Loaded kernels by (device, name, dtype suffix): one driver lookup per kernel and thread,
    /// not one per launch (the trainer launches ~500 per step).
    static FUNCTIONS: RefCell<HashMap<(DeviceId, &'static str, &'static str), CudaFunction>> =
        RefCell::new(HashMap::new());
}

/// Kernel `base` (with `_suffix` when not empty) of this crate's module on `dev`; the module is
/// loaded once per device (candle caches it by name).
fn function(dev: &CudaDevice, base: &'static str, suffix: &'static str) -> Result<CudaFunction> {
    let key = (dev.id(), base, suffix);
    if let Some(f) = FUNCTIONS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(f);
    }
    let name = if suffix.is_empty() {
        base.to_string()
    } else {
        format!("{base}_{suffix}")
    };
    let module = MODULES.with(|m| -> Result<Arc<CudaModule>> {
        let mut m = m.borrow_mut();
        if let Some(module) = m.get(&dev.id()) {
            return Ok(module.clone());
        }
        let module = dev.cuda_stream().context().load_module(PTX.into()).w()?;
        m.insert(dev.id(), module.clone());
        Ok(module)
    })?;
    let f = module.load_function(&name).w()?;
    FUNCTIONS.with(|m| m.borrow_mut().insert(key, f.clone()));
    Ok(f)
}

thread_local! {
    static MODULES: RefCell<HashMap<DeviceId, Arc<CudaModule>>> = RefCell::new(HashMap::new());
}

/// The fast CUDA ops index with 32-bit integers (see kernels.cu): refuse anything larger.
fn check_len(len: usize, op: &str) -> Result<()> {
    if len > i32::MAX as usize {
        candle_core::bail!("{op}: {len} elements, the CUDA fast ops take at most 2^31 - 1");
    }
    Ok(())
}

/// A grid-stride launch over `len` elements: enough blocks to fill the device several times
/// over, never more than the elements need.
fn elementwise(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads for a one-block-per-plane kernel over planes of `s` values: a power of two from 32
/// to 256, so small planes do not leave most of a block idle.
fn plane_threads(s: usize) -> u32 {
    (s.next_power_of_two() as u32).clamp(32, THREADS)
}

/// One block per plane of `s` values, `planes` of them.
fn per_plane(planes: usize, s: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (planes as u32, 1, 1),
        block_dim: (plane_threads(s), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The per-channel reductions' grid: `c` channels × `k` splits of [`THREADS`] threads.
fn per_channel(c: usize, k: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, k as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks per channel for the per-channel reductions: enough channels × splits to occupy the
/// GPU (~1,024 blocks), each block folding at least 4,096 values.
pub fn splits(c: usize, per_channel: usize) -> usize {
    let want = 1024usize.div_ceil(c.max(1));
    let most = per_channel.div_ceil(4096).max(1);
    want.clamp(1, most)
}

/// The contiguous view of a storage's `len` elements from the layout's offset.
fn view<'a, T: Elem>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => candle_core::bail!("CUDA fast ops need contiguous inputs, got {:?}", l.stride()),
    }
}

/// The f32 data of a storage (BatchNorm parameters, gradients, weights).
fn f32_slice<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    view(s.as_cuda_slice::<f32>()?, l)
}

/// Runs `$body` with `$x` bound to the activation's typed view and `$t` to a value of its
/// element type (for inference); f32 and bf16 only.
macro_rules! dispatch {
    ($storage:expr, $layout:expr, |$x:ident: $t:ident| $body:expr) => {
        match &$storage.slice {
            CudaStorageSlice::F32(s) => {
                let $x = view::<f32>(s, $layout)?;
                type $t = f32;
                $body
            }
            CudaStorageSlice::BF16(s) => {
                let $x = view::<half::bf16>(s, $layout)?;
                type $t = half::bf16;
                $body
            }
            _ => candle_core::bail!(
                "CUDA fast ops take f32 or bf16 activations, got {:?}",
                $storage.dtype()
            ),
        }
    };
}

/// The CUDA storage of a tensor (made contiguous), for the backward passes that receive tensors.
fn cuda_of(t: &Tensor) -> Result<Tensor> {
    if !t.device().is_cuda() {
        candle_core::bail!("expected a CUDA tensor, got one on {:?}", t.device());
    }
    t.contiguous()
}

/// A fresh tensor (no autograd history) holding `slice`.
fn tensor_of<T: Elem>(slice: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Reads a tensor's CUDA storage under its lock and calls `f` with it and its layout.
fn with_storage<R>(t: &Tensor, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => f(s, layout),
        _ => candle_core::bail!("expected a CUDA tensor, got one on {:?}", t.device()),
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// What a training forward pass leaves for its backward: per channel `(mean, invstd)` and
/// `(scale, shift)`, on the device.
pub struct BnSaved {
    saved: CudaSlice<f32>,
    coef: CudaSlice<f32>,
}

/// BatchNorm's training settings.
#[derive(Clone, Copy, Debug)]
pub struct BnSettings {
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
pub fn bn_train_fwd(
    x: &CudaStorage,
    xl: &Layout,
    gamma: &CudaStorage,
    gl: &Layout,
    beta: &CudaStorage,
    bl: &Layout,
    running: (&Tensor, &Tensor),
    set: BnSettings,
) -> Result<(CudaStorage, BnSaved)> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "batch-norm")?;
    check_len(n * c * s, "batch-norm")?;
    let (gamma, beta) = (f32_slice(gamma, gl)?, f32_slice(beta, bl)?);
    if gamma.len() != c || beta.len() != c {
        candle_core::bail!("batch-norm: {c} channels but {} scales", gamma.len());
    }
    let k = splits(c, n * s);
    let mut partial = unsafe { dev.alloc::<f32>(c * k * 3)? };
    let mut saved = unsafe { dev.alloc::<f32>(2 * c)? };
    let mut coef = unsafe { dev.alloc::<f32>(2 * c)? };
    let (ni, ci, si) = (n as i32, c as i32, s as i32);
    let y = dispatch!(x, xl, |xv: T| {
        let f = function(dev, "bn_stats_partial", T::SUFFIX)?;
        let cfg = per_channel(c, k);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&ni).arg(&ci).arg(&si).arg(&mut partial);
        unsafe { b.launch(cfg).w()? };

        with_storage(running.0, |rm, rml| {
            with_storage(running.1, |rv, rvl| {
                let (rm, rv) = (f32_slice(rm, rml)?, f32_slice(rv, rvl)?);
                if rm.len() != c || rv.len() != c {
                    candle_core::bail!("batch-norm: running statistics are not of {c} channels");
                }
                let f = function(dev, "bn_stats_finalize", "")?;
                let (ki, eps, mom) = (k as i32, set.eps, set.momentum);
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&partial).arg(&ci).arg(&ki).arg(&eps).arg(&mom);
                b.arg(&gamma).arg(&beta).arg(&rm).arg(&rv);
                b.arg(&mut saved).arg(&mut coef);
                unsafe { b.launch(elementwise(c)).w() }
            })
        })?;

        let (scale, shift) = (coef.slice(0..2 * c), coef.slice(1..2 * c));
        apply::<T>(dev, &xv, (&scale, &shift, 2), (c, s), set.relu)?
    });
    Ok((y, BnSaved { saved, coef }))
}

/// The training backward of [`bn_train_fwd`]: `(dx, dgamma, dbeta)`.
pub fn bn_train_bwd(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dy, x, gamma) = (cuda_of(dy)?, cuda_of(x)?, cuda_of(gamma)?);
    let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
    check_len(n * c * s, "batch-norm")?;
    let (ni, ci, si, relu) = (n as i32, c as i32, s as i32, relu as i32);
    let total = (n * c * s) as i64;
    let k = splits(c, n * s);
    with_storage(&x, |xs, xl| {
        with_storage(&dy, |ds, dl| {
            with_storage(&gamma, |gs, gl| {
                let dev = &xs.device;
                let gamma = f32_slice(gs, gl)?;
                let mut partial = unsafe { dev.alloc::<f32>(c * k * 2)? };
                let mut dgamma = unsafe { dev.alloc::<f32>(c)? };
                let mut dbeta = unsafe { dev.alloc::<f32>(c)? };
                let mut coefs = unsafe { dev.alloc::<f32>(3 * c)? };
                let dx = dispatch!(xs, xl, |xv: T| {
                    let dyv = view::<T>(T::as_cuda_slice(ds)?, dl)?;
                    let f = function(dev, "bn_bwd_partial", T::SUFFIX)?;
                    let cfg = per_channel(c, k);
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&dyv)
                        .arg(&xv)
                        .arg(&saved.saved)
                        .arg(&saved.coef)
                        .arg(&relu);
                    b.arg(&ni).arg(&ci).arg(&si).arg(&mut partial);
                    unsafe { b.launch(cfg).w()? };

                    let f = function(dev, "bn_bwd_finalize", "")?;
                    let (ki, count) = (k as i32, (n * s) as f64);
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&partial)
                        .arg(&ci)
                        .arg(&ki)
                        .arg(&count)
                        .arg(&saved.saved);
                    b.arg(&gamma)
                        .arg(&mut dgamma)
                        .arg(&mut dbeta)
                        .arg(&mut coefs);
                    unsafe { b.launch(elementwise(c)).w()? };

                    let mut dx = unsafe { dev.alloc::<T>(n * c * s)? };
                    let f = function(dev, "bn_bwd_dx", T::SUFFIX)?;
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&dyv)
                        .arg(&xv)
                        .arg(&saved.saved)
                        .arg(&saved.coef)
                        .arg(&coefs);
                    b.arg(&relu).arg(&ci).arg(&si).arg(&total).arg(&mut dx);
                    unsafe { b.launch(elementwise(n * c * s)).w()? };
                    tensor_of(dx, dev, x.shape())
                });
                Ok((dx, tensor_of(dgamma, dev, c), tensor_of(dbeta, dev, c)))
            })
        })
    })
}

/// Eval-mode BatchNorm: `y = x·scale[c] + shift[c]` (then ReLU), with the per-channel `scale`
/// and `shift` (f32) already folded from the running statistics.
pub fn channel_affine(
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
    let mut y = unsafe { dev.alloc::<T>(len)? };
    let f = function(dev, "bn_apply", T::SUFFIX)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(x).arg(&mut y).arg(scale).arg(shift).arg(&step);
    b.arg(&ci).arg(&si).arg(&total).arg(&relu);
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

// ---------------------------------------------------------------------------------------------
// The block tail and the squeeze

/// `relu(x·gate[n, c] + shortcut)`, all three of one dtype.
pub fn tail_fwd(
    x: &CudaStorage,
    xl: &Layout,
    gate: &CudaStorage,
    gl: &Layout,
    short: &CudaStorage,
    sl: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "scale-add-relu")?;
    check_len(n * c * s, "scale-add-relu")?;
    if gl.shape().elem_count() != n * c || sl.shape().elem_count() != n * c * s {
        candle_core::bail!(
            "scale-add-relu: x {:?}, gate {:?}, shortcut {:?} do not fit",
            xl.dims(),
            gl.dims(),
            sl.dims()
        );
    }
    let (si, total) = (s as i32, (n * c * s) as i64);
    Ok(dispatch!(x, xl, |xv: T| {
        let gv = view::<T>(T::as_cuda_slice(gate)?, gl)?;
        let sv = view::<T>(T::as_cuda_slice(short)?, sl)?;
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
        unsafe { b.launch(elementwise(n * c * s)).w()? };
        CudaStorage::wrap_cuda_slice(y, dev.clone())
    }))
}

/// The backward of [`tail_fwd`]: `(dx, dgate, dshortcut)`.
pub fn tail_bwd(
    x: &Tensor,
    gate: &Tensor,
    y: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (x, gate, y, dy) = (cuda_of(x)?, cuda_of(gate)?, cuda_of(y)?, cuda_of(dy)?);
    let (n, c, s) = split_nc(x.dims(), "scale-add-relu")?;
    let si = s as i32;
    with_storage(&x, |xs, xl| {
        with_storage(&gate, |gs, gl| {
            with_storage(&y, |ys, yl| {
                with_storage(&dy, |ds, dl| {
                    let dev = &xs.device;
                    Ok(dispatch!(xs, xl, |xv: T| {
                        let gv = view::<T>(T::as_cuda_slice(gs)?, gl)?;
                        let yv = view::<T>(T::as_cuda_slice(ys)?, yl)?;
                        let dv = view::<T>(T::as_cuda_slice(ds)?, dl)?;
                        let mut dx = unsafe { dev.alloc::<T>(n * c * s)? };
                        let mut dshort = unsafe { dev.alloc::<T>(n * c * s)? };
                        let mut dgate = unsafe { dev.alloc::<T>(n * c)? };
                        let f = function(dev, "tail_bwd", T::SUFFIX)?;
                        let cfg = per_plane(n * c, s);
                        let stream = dev.cuda_stream();
                        let mut b = stream.launch_builder(&f);
                        b.arg(&xv).arg(&gv).arg(&yv).arg(&dv);
                        b.arg(&mut dx).arg(&mut dshort).arg(&mut dgate).arg(&si);
                        unsafe { b.launch(cfg).w()? };
                        (
                            tensor_of(dx, dev, x.shape()),
                            tensor_of(dgate, dev, gate.shape()),
                            tensor_of(dshort, dev, x.shape()),
                        )
                    }))
                })
            })
        })
    })
}

/// The mean of each `[n, c]` plane of `x` (f32 or bf16), as f32 `[n, c]`.
pub fn squeeze_fwd(x: &CudaStorage, xl: &Layout) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = split_nc(xl.dims(), "squeeze")?;
    check_len(n * c * s, "squeeze")?;
    let si = s as i32;
    let mut out = unsafe { dev.alloc::<f32>(n * c)? };
    dispatch!(x, xl, |xv: T| {
        let f = function(dev, "squeeze_fwd", T::SUFFIX)?;
        let cfg = per_plane(n * c, s);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&mut out).arg(&si);
        unsafe { b.launch(cfg).w()? };
    });
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// The backward of [`squeeze_fwd`]: `dout / s` spread over each plane, in `x`'s dtype.
pub fn squeeze_bwd(x: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let dout = cuda_of(&dout.to_dtype(DType::F32)?)?;
    let (n, c, s) = split_nc(x.dims(), "squeeze")?;
    let (si, total) = (s as i32, (n * c * s) as i64);
    with_storage(&dout, |os, ol| {
        let dev = &os.device;
        let dv = f32_slice(os, ol)?;
        Ok(match x.dtype() {
            DType::F32 => {
                let mut dx = unsafe { dev.alloc::<f32>(n * c * s)? };
                let f = function(dev, "squeeze_bwd", "f32")?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&dv).arg(&mut dx).arg(&si).arg(&total);
                unsafe { b.launch(elementwise(n * c * s)).w()? };
                tensor_of(dx, dev, x.shape())
            }
            DType::BF16 => {
                let mut dx = unsafe { dev.alloc::<half::bf16>(n * c * s)? };
                let f = function(dev, "squeeze_bwd", "bf16")?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&dv).arg(&mut dx).arg(&si).arg(&total);
                unsafe { b.launch(elementwise(n * c * s)).w()? };
                tensor_of(dx, dev, x.shape())
            }
            other => candle_core::bail!("squeeze: dtype {other:?}"),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The optimizer

/// One parameter's update settings.
#[derive(Clone, Copy, Debug)]
pub struct SgdSettings {
    /// Learning rate.
    pub lr: f64,
    /// L2 weight decay of this parameter.
    pub weight_decay: f64,
    /// Momentum (0: none; the buffer is then untouched).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The buffer holds nothing yet: it becomes the gradient.
    pub first: bool,
}

/// Nesterov SGD on `p` in place (its momentum buffer `buf` too; `None` only with momentum 0),
/// then, with `ema = Some((e, d))`, `e ← d·e + (1 − d)·p`: one launch. All f32, one length.
pub fn sgd_ema_step(
    p: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    ema: Option<(&Tensor, f64)>,
    set: SgdSettings,
) -> Result<()> {
    let grad = cuda_of(grad)?;
    let len = p.elem_count();
    check_len(len, "sgd")?;
    let lengths = [Some(&grad), buf, ema.map(|e| e.0)];
    if lengths.iter().flatten().any(|t| t.elem_count() != len) {
        candle_core::bail!("sgd: the weight, its gradient, buffer and EMA twin differ in length");
    }
    if set.momentum != 0.0 && buf.is_none() {
        candle_core::bail!("sgd: momentum without a buffer");
    }
    let decay = ema.map_or(0.0, |(_, d)| d as f32);
    let (lr, wd, mom) = (set.lr as f32, set.weight_decay as f32, set.momentum as f32);
    let (nesterov, first, len_i) = (set.nesterov as i32, set.first as i32, len as i64);
    with_storage(p, |ps, pl| {
        with_storage(&grad, |gs, gl| {
            with_optional_storage(buf, |bs| {
                with_optional_storage(ema.map(|e| e.0), |es| {
                    let dev = &ps.device;
                    let (pv, gv) = (f32_slice(ps, pl)?, f32_slice(gs, gl)?);
                    let bv = bs.map(|(s, l)| f32_slice(s, l)).transpose()?;
                    let ev = es.map(|(s, l)| f32_slice(s, l)).transpose()?;
                    // A null pointer where there is no buffer or twin: the kernel skips it.
                    let null: u64 = 0;
                    let f = function(dev, "sgd_ema_step", "")?;
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&pv).arg(&gv);
                    match &bv {
                        Some(v) => b.arg(v),
                        None => b.arg(&null),
                    };
                    match &ev {
                        Some(v) => b.arg(v),
                        None => b.arg(&null),
                    };
                    b.arg(&len_i).arg(&lr).arg(&wd).arg(&mom);
                    b.arg(&nesterov).arg(&first).arg(&decay);
                    unsafe { b.launch(elementwise(len)).w()? };
                    Ok(())
                })
            })
        })
    })
}

/// [`with_storage`] for a tensor that may be absent.
fn with_optional_storage<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<(&CudaStorage, &Layout)>) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => with_storage(t, |s, l| f(Some((s, l)))),
        None => f(None),
    }
}

/// `e ← d·e + (1 − d)·v` in place (f32, one length): the EMA of tensors with no gradient.
pub fn ema_update(e: &Tensor, v: &Tensor, decay: f64) -> Result<()> {
    let len = e.elem_count();
    check_len(len, "ema")?;
    if v.elem_count() != len {
        candle_core::bail!("ema: lengths differ");
    }
    let (len_i, d) = (len as i64, decay as f32);
    with_storage(e, |es, el| {
        with_storage(v, |vs, vl| {
            let dev = &es.device;
            let (ev, vv) = (f32_slice(es, el)?, f32_slice(vs, vl)?);
            let f = function(dev, "ema_update", "")?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&ev).arg(&vv).arg(&len_i).arg(&d);
            unsafe { b.launch(elementwise(len)).w()? };
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fill_the_device_without_tiny_blocks() {
        // 256 channels of 128·32·32: four blocks each; 2,048 channels: one.
        assert_eq!(splits(256, 128 * 1024), 4);
        assert_eq!(splits(2048, 128 * 16), 1);
        // Few values per channel: never a block with less than 4,096 to fold.
        assert_eq!(splits(16, 8 * 16), 1);
        assert_eq!(plane_threads(16), 32);
        assert_eq!(plane_threads(1024), 256);
    }
}
