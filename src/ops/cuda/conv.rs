//! Convolution's CUDA launches: forward and both gradients through cuDNN (the `cudnn` feature),
//! for the op in `ops/conv/`.
//!
//! candle 0.11 runs only the forward pass through cuDNN, and rebuilds its descriptors, asks the
//! heuristic for an algorithm and allocates a zeroed workspace on every call; its backward pass
//! never reaches cuDNN (the input gradient is a direct `conv_transpose2d` kernel, the weight
//! gradient a convolution of non-contiguous views). Here each geometry and dtype gets one
//! [`CudnnPlan`] — descriptors and the heuristic's algorithm for forward, backward-data and
//! backward-filter, chosen once — and every call shares one workspace that only grows.
//!
//! f32 convolutions may use TF32 tensor cores when the caller's [`Options`](crate::ops::Options)
//! allow it (PyTorch's default for cuDNN convolutions); bf16 ones compute in f32 (cuDNN's
//! pseudo-bf16 configuration).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, DeviceId};
use candle_core::{CudaStorage, Layout, Result, Tensor, WithDType};

use super::launch::{tensor_of, view, Elem, Held};
use crate::ops::Geometry;

/// What a plan is made for: the geometry, and whether f32 may use TF32 (cuDNN's math type is
/// part of the convolution descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    geometry: Geometry,
    tf32: bool,
}

/// Descriptors and algorithms of one geometry, in one dtype.
struct CudnnPlan<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    fwd: sys::cudnnConvolutionFwdAlgo_t,
    bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    workspace: usize,
}

/// Plans by geometry, one table per dtype.
#[derive(Default)]
struct CudnnPlans {
    f32: HashMap<PlanKey, CudnnPlan<f32>>,
    bf16: HashMap<PlanKey, CudnnPlan<half::bf16>>,
}

/// The per-thread cuDNN state (cuDNN handles are neither `Send` nor `Sync`; a training run's
/// steps all run on one thread).
struct State {
    device: DeviceId,
    cudnn: Arc<Cudnn>,
    plans: CudnnPlans,
    workspace: Option<CudaSlice<u8>>,
    /// Workspaces outgrown: kept, not freed, because a captured CUDA graph may have recorded
    /// their address (a handful per run: the workspace grows only to the largest geometry).
    retired: Vec<CudaSlice<u8>>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// An element type cuDNN convolves.
trait ConvElem: Elem + CudnnDataType + WithDType {
    /// This dtype's table of plans.
    fn table(plans: &mut CudnnPlans) -> &mut HashMap<PlanKey, CudnnPlan<Self>>;
    /// The cuDNN math mode for this dtype.
    fn math(tf32: bool) -> sys::cudnnMathType_t;
}

impl ConvElem for f32 {
    fn table(plans: &mut CudnnPlans) -> &mut HashMap<PlanKey, CudnnPlan<Self>> {
        &mut plans.f32
    }
    fn math(tf32: bool) -> sys::cudnnMathType_t {
        if tf32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        }
    }
}

impl ConvElem for half::bf16 {
    fn table(plans: &mut CudnnPlans) -> &mut HashMap<PlanKey, CudnnPlan<Self>> {
        &mut plans.bf16
    }
    fn math(_: bool) -> sys::cudnnMathType_t {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    }
}

fn cudnn_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {e:?}"))
}

/// Runs `f` with the plan of `key` (made on first use) and the shared workspace, on this
/// thread's cuDNN state for `dev`.
fn with_plan<T: ConvElem, R>(
    dev: &CudaDevice,
    key: PlanKey,
    f: impl FnOnce(&CudnnPlan<T>, &mut CudaSlice<u8>) -> Result<R>,
) -> Result<R> {
    STATE.with(|cell| {
        let mut guard = cell.borrow_mut();
        if guard.as_ref().is_none_or(|s| s.device != dev.id()) {
            *guard = Some(State {
                device: dev.id(),
                cudnn: Cudnn::new(dev.cuda_stream()).map_err(cudnn_err)?,
                plans: CudnnPlans::default(),
                workspace: None,
                retired: Vec::new(),
            });
        }
        let State {
            cudnn,
            plans,
            workspace,
            retired,
            ..
        } = guard.as_mut().expect("set above");
        let table = T::table(plans);
        if let std::collections::hash_map::Entry::Vacant(slot) = table.entry(key) {
            slot.insert(make_plan::<T>(cudnn, key)?);
        }
        let plan = &table[&key];
        let need = plan.workspace.max(1);
        if workspace.as_ref().is_none_or(|w| w.len() < need) {
            // Grown to the largest geometry seen: a handful of allocations for a whole run.
            // SAFETY: cuDNN only writes the workspace (scratch space); it is never read
            // before being written, so its uninitialised contents are not observed.
            let grown = unsafe { dev.alloc::<u8>(need)? };
            retired.extend(workspace.replace(grown));
        }
        f(plan, workspace.as_mut().expect("allocated above"))
    })
}

/// Descriptors for `key` and the cuDNN heuristic's first choice for each direction.
fn make_plan<T: ConvElem>(cudnn: &Arc<Cudnn>, key: PlanKey) -> Result<CudnnPlan<T>> {
    let g = key.geometry;
    let (n, cin, h, w, cout, kh, kw) = (g.n, g.c, g.h, g.w, g.k, g.kh, g.kw);
    let (stride, pad) = (g.stride, g.pad);
    let i = |v: usize| v as i32;
    let mut conv = cudnn
        .create_conv2d::<f32>(
            [i(pad), i(pad)],
            [i(stride), i(stride)],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(cudnn_err)?;
    conv.set_math_type(T::math(key.tf32)).map_err(cudnn_err)?;
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let (oh, ow) = (g.ho(), g.wo());
    let x = cudnn
        .create_4d_tensor::<T>(nchw, [i(n), i(cin), i(h), i(w)])
        .map_err(cudnn_err)?;
    let wd = cudnn
        .create_4d_filter::<T>(nchw, [i(cout), i(cin), i(kh), i(kw)])
        .map_err(cudnn_err)?;
    let y = cudnn
        .create_4d_tensor::<T>(nchw, [i(n), i(cout), i(oh), i(ow)])
        .map_err(cudnn_err)?;
    let forward = ConvForward {
        conv: &conv,
        x: &x,
        w: &wd,
        y: &y,
    };
    let fwd = forward.pick_algorithm().map_err(cudnn_err)?;
    let ws_fwd = forward.get_workspace_size(fwd).map_err(cudnn_err)?;
    let data = ConvBackwardData {
        conv: &conv,
        dx: &x,
        w: &wd,
        dy: &y,
    };
    let bwd_data = data.pick_algorithm().map_err(cudnn_err)?;
    let ws_data = data.get_workspace_size(bwd_data).map_err(cudnn_err)?;
    let filter = ConvBackwardFilter {
        conv: &conv,
        x: &x,
        dw: &wd,
        dy: &y,
    };
    let bwd_filter = filter.pick_algorithm().map_err(cudnn_err)?;
    let ws_filter = filter.get_workspace_size(bwd_filter).map_err(cudnn_err)?;
    Ok(CudnnPlan {
        conv,
        x,
        w: wd,
        y,
        fwd,
        bwd_data,
        bwd_filter,
        workspace: ws_fwd.max(ws_data).max(ws_filter),
    })
}

fn one<T: WithDType>() -> T {
    T::from_f64(1.0)
}

fn zero<T: WithDType>() -> T {
    T::from_f64(0.0)
}

fn forward_in<T: ConvElem>(
    dev: &CudaDevice,
    key: PlanKey,
    len: usize,
    x: &candle_core::cuda_backend::cudarc::driver::CudaView<T>,
    w: &candle_core::cuda_backend::cudarc::driver::CudaView<T>,
) -> Result<CudaSlice<T>> {
    // SAFETY: the forward below (beta = 0) writes all of y and reads none of it: len is
    // n·k·ho·wo of key's geometry, the plan's y descriptor.
    let mut y = unsafe { dev.alloc::<T>(len)? };
    with_plan::<T, _>(dev, key, |plan, ws| {
        let op = ConvForward {
            conv: &plan.conv,
            x: &plan.x,
            w: &plan.w,
            y: &plan.y,
        };
        // SAFETY: x, w, y are contiguous T buffers matching the plan's NCHW descriptors (built
        // from these dims, in T's table); ws holds >= plan.workspace bytes (with_plan); the
        // cuDNN handle runs on dev's stream, the one stream every tensor here is ordered on.
        unsafe { op.launch(plan.fwd, Some(ws), (one::<T>(), zero::<T>()), x, w, &mut y) }
            .map_err(cudnn_err)
    })?;
    Ok(y)
}

/// `y = conv2d(x, w)` through cuDNN with the cached plan of `g` (f32 on TF32 tensor cores when
/// `tf32`); `x` and `w` both f32 or both bf16, contiguous.
pub fn forward(
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    g: Geometry,
    tf32: bool,
) -> Result<CudaStorage> {
    let key = PlanKey { geometry: g, tf32 };
    let len = g.n * g.k * g.ho() * g.wo();
    let dev = &x.device;
    Ok(match (&x.slice, &w.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(ws)) => {
            let y = forward_in::<f32>(dev, key, len, &view(xs, xl)?, &view(ws, wl)?)?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws)) => {
            let y = forward_in::<half::bf16>(dev, key, len, &view(xs, xl)?, &view(ws, wl)?)?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        }
        _ => candle_core::bail!(
            "cuDNN conv2d: x {:?} and w {:?} must both be f32 or both bf16",
            x.dtype(),
            w.dtype()
        ),
    })
}

/// `(dx, dw)` of `y = conv2d(x, w)` from `dy` through cuDNN with the cached plan of `g` (`dx`
/// only when `want_dx`).
pub fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: Geometry,
    tf32: bool,
    want_dx: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let key = PlanKey { geometry: g, tf32 };
    let (xh, wh, dh) = (Held::of(x), Held::of(w), Held::of(&dy));
    let ((xs, xl), (ws, wl), (ds, dl)) = (xh.cuda()?, wh.cuda()?, dh.cuda()?);
    match (&xs.slice, &ws.slice, &ds.slice) {
        (CudaStorageSlice::F32(xv), CudaStorageSlice::F32(wv), CudaStorageSlice::F32(dv)) => {
            backward_in::<f32>(
                &xs.device,
                key,
                (&view(xv, xl)?, &view(wv, wl)?, &view(dv, dl)?),
                (x, w),
                want_dx,
            )
        }
        (CudaStorageSlice::BF16(xv), CudaStorageSlice::BF16(wv), CudaStorageSlice::BF16(dv)) => {
            backward_in::<half::bf16>(
                &xs.device,
                key,
                (&view(xv, xl)?, &view(wv, wl)?, &view(dv, dl)?),
                (x, w),
                want_dx,
            )
        }
        _ => candle_core::bail!("cuDNN conv2d backward: mixed dtypes"),
    }
}

type View<'a, T> = candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>;

/// `(dx, dw)`: backward-data (when `want_dx`) and backward-filter with the plan's algorithms.
fn backward_in<T: ConvElem>(
    dev: &CudaDevice,
    key: PlanKey,
    (x, w, dy): (&View<T>, &View<T>, &View<T>),
    (xt, wt): (&Tensor, &Tensor),
    want_dx: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    // SAFETY: backward-filter below (beta = 0) writes all w.len() elements of dw (the plan's
    // filter descriptor) and reads none.
    let mut dw = unsafe { dev.alloc::<T>(w.len())? };
    let mut dx = if want_dx {
        // SAFETY: backward-data below (beta = 0) writes all x.len() elements of dx (the plan's x
        // descriptor) and reads none.
        Some(unsafe { dev.alloc::<T>(x.len())? })
    } else {
        None
    };
    with_plan::<T, _>(dev, key, |plan, ws| {
        if let Some(dx) = dx.as_mut() {
            let op = ConvBackwardData {
                conv: &plan.conv,
                dx: &plan.x,
                w: &plan.w,
                dy: &plan.y,
            };
            // SAFETY: dx, w, dy: contiguous T buffers of the plan's descriptors (key from x, w;
            // dy is y's gradient, so y's shape); ws >= plan.workspace bytes; dev's one stream.
            unsafe { op.launch(plan.bwd_data, Some(&mut *ws), (one(), zero()), dx, w, dy) }
                .map_err(cudnn_err)?;
        }
        let op = ConvBackwardFilter {
            conv: &plan.conv,
            x: &plan.x,
            dw: &plan.w,
            dy: &plan.y,
        };
        // SAFETY: as backward-data: x, dw, dy match the plan's descriptors in dtype and shape,
        // ws >= plan.workspace bytes, all on dev's one stream (after the dx call).
        unsafe { op.launch(plan.bwd_filter, Some(ws), (one(), zero()), x, &mut dw, dy) }
            .map_err(cudnn_err)
    })?;
    Ok((
        dx.map(|dx| tensor_of(dx, dev, xt.shape())),
        Some(tensor_of(dw, dev, wt.shape())),
    ))
}
