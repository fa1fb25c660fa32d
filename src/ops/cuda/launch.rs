//! What every CUDA op of this crate shares: the PTX module and its kernels looked up once per
//! thread, launch shapes, typed views of candle's storages, and read access to a tensor's
//! storage without nesting closures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Result, Shape, Storage, StorageRef, Tensor};

/// The kernels, as PTX for the compute capability `build.rs` was given (`CUDA_COMPUTE_CAP`).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cifar_stream_kernels.ptx"));

/// Threads per block of the elementwise and reduction kernels.
pub const THREADS: u32 = 256;

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
    static MODULES: RefCell<HashMap<DeviceId, Arc<CudaModule>>> = RefCell::new(HashMap::new());
}

/// Kernel `base` (with `_suffix` when not empty) of this crate's module on `dev`; the module is
/// loaded once per device (candle caches it by name).
pub fn function(
    dev: &CudaDevice,
    base: &'static str,
    suffix: &'static str,
) -> Result<CudaFunction> {
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

/// The fast CUDA ops index with 32-bit integers (see kernels.cu): refuse anything larger.
pub fn check_len(len: usize, op: &str) -> Result<()> {
    if len > i32::MAX as usize {
        candle_core::bail!("{op}: {len} elements, the CUDA fast ops take at most 2^31 - 1");
    }
    Ok(())
}

/// A grid-stride launch over `len` elements: enough blocks to fill the device several times
/// over, never more than the elements need.
pub fn elementwise(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads for a one-block-per-plane kernel over planes of `s` values: a power of two from 32
/// to 256, so small planes do not leave most of a block idle.
pub fn plane_threads(s: usize) -> u32 {
    (s.next_power_of_two() as u32).clamp(32, THREADS)
}

/// One block per plane of `s` values, `planes` of them.
pub fn per_plane(planes: usize, s: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (planes as u32, 1, 1),
        block_dim: (plane_threads(s), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The per-channel reductions' grid: `c` channels × `k` splits of [`THREADS`] threads.
pub fn per_channel(c: usize, k: usize) -> LaunchConfig {
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
pub fn view<'a, T: Elem>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => candle_core::bail!("CUDA fast ops need contiguous inputs, got {:?}", l.stride()),
    }
}

/// The f32 data of a storage (BatchNorm parameters, gradients, weights).
pub fn f32_slice<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    view(s.as_cuda_slice::<f32>()?, l)
}

/// The typed view of an activation's storage, for the element type `T` a kernel was chosen for.
pub fn typed<'a, T: Elem>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    view::<T>(T::as_cuda_slice(s)?, l)
}

/// Runs `$body` with `$x` bound to the activation's typed view and `$t` to a value of its
/// element type (for inference); f32 and bf16 only.
macro_rules! dispatch {
    ($storage:expr, $layout:expr, |$x:ident: $t:ident| $body:expr) => {
        match &$storage.slice {
            candle_core::cuda_backend::CudaStorageSlice::F32(s) => {
                let $x = $crate::ops::cuda::launch::view::<f32>(s, $layout)?;
                type $t = f32;
                $body
            }
            candle_core::cuda_backend::CudaStorageSlice::BF16(s) => {
                let $x = $crate::ops::cuda::launch::view::<half::bf16>(s, $layout)?;
                type $t = half::bf16;
                $body
            }
            _ => candle_core::bail!(
                "CUDA fast ops take f32 or bf16 activations, got {:?}",
                candle_core::backend::BackendStorage::dtype($storage)
            ),
        }
    };
}
pub(crate) use dispatch;

/// The CUDA storage of a tensor (made contiguous), for the backward passes that receive tensors.
pub fn cuda_of(t: &Tensor) -> Result<Tensor> {
    if !t.device().is_cuda() {
        candle_core::bail!("expected a CUDA tensor, got one on {:?}", t.device());
    }
    t.contiguous()
}

/// A fresh tensor (no autograd history) holding `slice`.
pub fn tensor_of<T: Elem>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// A tensor's storage, read-locked for as long as this lives, with its layout: several tensors
/// held side by side instead of closures nested one per tensor.
pub struct Held<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    /// Read-locks `t`'s storage.
    pub fn of(t: &'a Tensor) -> Held<'a> {
        let (storage, layout) = t.storage_and_layout();
        Held { storage, layout }
    }

    /// The CUDA storage and its layout, or an error for a tensor elsewhere.
    pub fn cuda(&self) -> Result<(&CudaStorage, &Layout)> {
        match &*self.storage {
            Storage::Cuda(s) => Ok((s, self.layout)),
            other => candle_core::bail!("expected a CUDA tensor, got one on {:?}", other.device()),
        }
    }
}
