//! The optimizer on CUDA as multi-tensor launches (PyTorch's multi-tensor apply): Nesterov SGD
//! with weight decay and the EMA twin's update over up to [`FOREACH_TENSORS`] parameters per
//! launch, and the EMA of tensors without a gradient likewise. Each launch is one
//! `candle_core::foreach` op, which locks its tensors' storages; the chunk of device pointers,
//! lengths and settings goes to the kernel by value. `ops::optim`'s CPU pass is the
//! reference the GPU check compares with.

use candle_core::cuda_backend::cudarc::driver::{
    sys::CUdeviceptr, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{Layout, Result, Storage, Tensor};

use super::launch::{check_len, function, THREADS};
use crate::ops::multi_tensor::{launch_chunks, sgd_operands, SgdRule, SgdTensor};

/// Tensors per launch; kernels.cu's `FOREACH_TENSORS` (the chunk must fit CUDA's 4 KiB of
/// launch parameters).
pub const FOREACH_TENSORS: usize = 48;

/// Blocks per tensor at most: a chunk of large tensors still fills an H100 (132 SMs) many times.
const BLOCKS_PER_TENSOR: usize = 1024;

/// kernels.cu's `SgdChunk`, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdChunk {
    p: [CUdeviceptr; FOREACH_TENSORS],
    grad: [CUdeviceptr; FOREACH_TENSORS],
    buf: [CUdeviceptr; FOREACH_TENSORS],
    ema: [CUdeviceptr; FOREACH_TENSORS],
    len: [i64; FOREACH_TENSORS],
    wd: [f32; FOREACH_TENSORS],
    rate_slot: [i32; FOREACH_TENSORS],
    first: [i32; FOREACH_TENSORS],
    count: i32,
}

/// kernels.cu's `EmaChunk`, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct EmaChunk {
    e: [CUdeviceptr; FOREACH_TENSORS],
    v: [CUdeviceptr; FOREACH_TENSORS],
    len: [i64; FOREACH_TENSORS],
    count: i32,
}

// The sizes nvcc gives the C structs (x86-64 and CUDA agree: 8-byte pointers and int64_t,
// 4-byte float and int, the struct padded to 8).
const _: () = assert!(std::mem::size_of::<SgdChunk>() == 2504);
const _: () = assert!(std::mem::size_of::<EmaChunk>() == 1160);

// SAFETY: plain data (integers, floats, device addresses) laid out as kernels.cu's structs:
// `repr(C)`, the same fields in the same order with the same sizes (checked above).
unsafe impl DeviceRepr for SgdChunk {}
// SAFETY: as for `SgdChunk`.
unsafe impl DeviceRepr for EmaChunk {}

/// `ops::optim::sgd_foreach` on CUDA: one launch per chunk of tensors, the largest
/// together so each launch's grid suits its tensors.
pub fn sgd_multi(tensors: &[SgdTensor], rule: SgdRule, scalars: &Tensor) -> Result<()> {
    let lens: Vec<usize> = tensors.iter().map(|t| t.param.elem_count()).collect();
    for &len in &lens {
        check_len(len, "sgd")?;
    }
    // Each launch checks its own chunk; a tensor written in one and read in another would pass.
    let (written, read, _) = sgd_operands(tensors, rule.momentum, scalars);
    candle_core::foreach::check("sgd_multi", &written, &read)?;
    for chunk in launch_chunks(&lens, FOREACH_TENSORS) {
        let part: Vec<SgdTensor> = chunk.iter().map(|&i| tensors[i]).collect();
        sgd_launch(&part, rule, scalars)?;
    }
    Ok(())
}

/// One launch over at most [`FOREACH_TENSORS`] parameters.
fn sgd_launch(part: &[SgdTensor], rule: SgdRule, scalars: &Tensor) -> Result<()> {
    let n = part.len();
    let (written, read, by_value) = sgd_operands(part, rule.momentum, scalars);
    candle_core::foreach::inplace("sgd_multi", &by_value, &written, &read, |w, r| {
        let stream = stream_of(r[n].0)?;
        let mut syncs = Vec::with_capacity(w.len() + r.len());
        let mut out = Vec::with_capacity(w.len());
        for (s, l) in w.iter_mut() {
            out.push(pointer_mut(s, l, &stream, &mut syncs)?);
        }
        let mut inp = Vec::with_capacity(r.len());
        for (s, l) in r {
            inp.push(pointer(s, l, &stream, &mut syncs)?);
        }
        let mut chunk = SgdChunk {
            p: [0; FOREACH_TENSORS],
            grad: [0; FOREACH_TENSORS],
            buf: [0; FOREACH_TENSORS],
            ema: [0; FOREACH_TENSORS],
            len: [0; FOREACH_TENSORS],
            wd: [0.0; FOREACH_TENSORS],
            rate_slot: [0; FOREACH_TENSORS],
            first: [0; FOREACH_TENSORS],
            count: n as i32,
        };
        // The written pointers run weights, then buffers, then twins, in `part`'s order.
        let (mut next_buf, mut next_ema) = (n, n + part.iter().filter(|t| t.buf.is_some()).count());
        for (i, t) in part.iter().enumerate() {
            chunk.p[i] = out[i];
            chunk.grad[i] = inp[i];
            if t.buf.is_some() {
                chunk.buf[i] = out[next_buf];
                next_buf += 1;
            }
            if t.ema.is_some() {
                chunk.ema[i] = out[next_ema];
                next_ema += 1;
            }
            chunk.len[i] = t.param.elem_count() as i64;
            chunk.wd[i] = t.weight_decay as f32;
            chunk.rate_slot[i] = t.rate_slot as i32;
            chunk.first[i] = t.first as i32;
        }
        let longest = part.iter().map(|t| t.param.elem_count()).max().unwrap_or(1);
        let dev = device_of(r[n].0)?;
        let f = function(dev, "sgd_multi", "")?;
        let (decay_slot, mom) = (rule.decay_slot as i32, rule.momentum as f32);
        let nesterov = rule.nesterov as i32;
        let mut b = stream.launch_builder(&f);
        b.arg(&chunk)
            .arg(&inp[n])
            .arg(&decay_slot)
            .arg(&mom)
            .arg(&nesterov);
        // SAFETY: the chunk holds `n` tensors' live device addresses (locked by `inplace` for
        // the launch's enqueueing, each `len` f32 long, checked by `sgd_foreach`), the scalar
        // buffer holds every slot read (checked), and the kernel touches tensor `t` only below
        // its `len`; everything runs in order on this one stream.
        unsafe { b.launch(grid(n, longest)).w()? };
        drop(syncs);
        Ok(())
    })
}

/// `ops::optim::ema_foreach` on CUDA: one launch per chunk of pairs.
pub fn ema_multi(pairs: &[(&Tensor, &Tensor)], scalars: &Tensor, decay_slot: usize) -> Result<()> {
    let lens: Vec<usize> = pairs.iter().map(|(e, _)| e.elem_count()).collect();
    for &len in &lens {
        check_len(len, "ema")?;
    }
    let written: Vec<&Tensor> = pairs.iter().map(|(e, _)| *e).collect();
    let mut read: Vec<&Tensor> = pairs.iter().map(|(_, v)| *v).collect();
    read.push(scalars);
    candle_core::foreach::check("ema_multi", &written, &read)?;
    for chunk in launch_chunks(&lens, FOREACH_TENSORS) {
        let part: Vec<(&Tensor, &Tensor)> = chunk.iter().map(|&i| pairs[i]).collect();
        ema_launch(&part, scalars, decay_slot)?;
    }
    Ok(())
}

/// One launch over at most [`FOREACH_TENSORS`] pairs.
fn ema_launch(part: &[(&Tensor, &Tensor)], scalars: &Tensor, decay_slot: usize) -> Result<()> {
    let n = part.len();
    let written: Vec<&Tensor> = part.iter().map(|(e, _)| *e).collect();
    let mut read: Vec<&Tensor> = part.iter().map(|(_, v)| *v).collect();
    read.push(scalars);
    candle_core::foreach::inplace("ema_multi", &[], &written, &read, |w, r| {
        let stream = stream_of(r[n].0)?;
        let mut syncs = Vec::with_capacity(w.len() + r.len());
        let mut chunk = EmaChunk {
            e: [0; FOREACH_TENSORS],
            v: [0; FOREACH_TENSORS],
            len: [0; FOREACH_TENSORS],
            count: n as i32,
        };
        for (i, (s, l)) in w.iter_mut().enumerate() {
            chunk.e[i] = pointer_mut(s, l, &stream, &mut syncs)?;
            chunk.len[i] = l.shape().elem_count() as i64;
        }
        for (i, (s, l)) in r[..n].iter().enumerate() {
            chunk.v[i] = pointer(s, l, &stream, &mut syncs)?;
        }
        let (s, l) = &r[n];
        let scalars_ptr = pointer(s, l, &stream, &mut syncs)?;
        let longest = part.iter().map(|(e, _)| e.elem_count()).max().unwrap_or(1);
        let f = function(device_of(r[n].0)?, "ema_multi", "")?;
        let slot = decay_slot as i32;
        let mut b = stream.launch_builder(&f);
        b.arg(&chunk).arg(&scalars_ptr).arg(&slot);
        // SAFETY: as in `sgd_launch`: live, locked, f32 addresses of `len` elements each, the
        // slots inside the scalar buffer (checked by `ema_foreach`), one stream.
        unsafe { b.launch(grid(n, longest)).w()? };
        drop(syncs);
        Ok(())
    })
}

/// `tensors` block rows, each with enough blocks for the longest tensor (capped; the kernels
/// stride over the rest).
fn grid(tensors: usize, longest: usize) -> LaunchConfig {
    let blocks = longest
        .div_ceil(THREADS as usize)
        .clamp(1, BLOCKS_PER_TENSOR);
    LaunchConfig {
        grid_dim: (blocks as u32, tensors as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn device_of(s: &Storage) -> Result<&candle_core::cuda_backend::CudaDevice> {
    match s {
        Storage::Cuda(c) => Ok(&c.device),
        _ => candle_core::bail!("a CUDA multi-tensor op over a tensor on another device"),
    }
}

fn stream_of(s: &Storage) -> Result<std::sync::Arc<CudaStream>> {
    Ok(device_of(s)?.cuda_stream())
}

/// The device address of a written tensor's first element; its stream-order guard goes to
/// `syncs`, to be dropped after the launch.
fn pointer_mut<'a>(
    s: &'a mut Storage,
    l: &Layout,
    stream: &'a CudaStream,
    syncs: &mut Vec<SyncOnDrop<'a>>,
) -> Result<CUdeviceptr> {
    let start = start_of(l)?;
    let Storage::Cuda(c) = s else {
        candle_core::bail!("a CUDA multi-tensor op over a tensor on another device")
    };
    same_device(c, stream)?;
    let (ptr, sync) = c.as_cuda_slice_mut::<f32>()?.device_ptr_mut(stream);
    syncs.push(sync);
    Ok(ptr + (start * std::mem::size_of::<f32>()) as CUdeviceptr)
}

/// The device address of a read tensor's first element (as [`pointer_mut`]).
fn pointer<'a>(
    s: &'a Storage,
    l: &Layout,
    stream: &'a CudaStream,
    syncs: &mut Vec<SyncOnDrop<'a>>,
) -> Result<CUdeviceptr> {
    let start = start_of(l)?;
    let Storage::Cuda(c) = s else {
        candle_core::bail!("a CUDA multi-tensor op over a tensor on another device")
    };
    same_device(c, stream)?;
    let (ptr, sync) = c.as_cuda_slice::<f32>()?.device_ptr(stream);
    syncs.push(sync);
    Ok(ptr + (start * std::mem::size_of::<f32>()) as CUdeviceptr)
}

/// A launch on `stream` reads only memory of its own device.
fn same_device(c: &candle_core::CudaStorage, stream: &CudaStream) -> Result<()> {
    if c.device.cuda_stream().context() != stream.context() {
        candle_core::bail!("a CUDA multi-tensor op over tensors on two GPUs");
    }
    Ok(())
}

fn start_of(l: &Layout) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => candle_core::bail!("a multi-tensor op needs contiguous tensors"),
    }
}
