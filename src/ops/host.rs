//! Borrowing a CPU tensor's f32 data as one contiguous slice, reading its shape, allocating an
//! op's output without zeroing it, and cutting a batch into the fixed chunks that keep a summed
//! gradient deterministic.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Device, Layout, Result, Shape, Storage, Tensor};

/// The contiguous f32 data a storage + layout pair describes.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!(
            "fast ops need contiguous inputs, got strides {:?}",
            l.stride()
        ),
    }
}

/// A CPU op's output, computed in host memory, as a tensor on `device`. Exempt from the capture
/// probe: building its own output is the op's computation, not an upload of the step's data
/// (on CUDA the same op writes device memory).
pub fn op_output(values: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
    candle_core::probe::exempt(|| Tensor::from_vec(values, shape, device))
}

/// Calls `f` with the tensor's data (made contiguous first when it is not).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout)?),
        _ => candle_core::bail!(
            "fast ops run on the CPU; this tensor is on {:?}",
            t.device()
        ),
    }
}

/// `len` values, every one written by `fill` into memory that was not zeroed first.
///
/// Zeroing an output the op then overwrites is a serial memset while the other threads wait:
/// on the fast-cpu step with the whitening bias frozen it cost about an eighth of the time
/// (1175–1198 → 1355–1368 images/s without it, alternated, on a 2-core Sapphire Rapids-class
/// Xeon). In debug builds (the tests) the memory starts as NaN, so an element `fill` misses
/// shows in any comparison with a reference.
///
/// # Safety
/// `fill` must write every one of the `len` elements.
pub unsafe fn written_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if cfg!(debug_assertions) {
        for v in spare.iter_mut() {
            v.write(f32::NAN);
        }
    }
    fill(spare);
    // SAFETY: the caller's contract: `fill` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// The values of `s`, once every one of them is written.
///
/// # Safety
/// Every element of `s` is initialised.
pub unsafe fn assume_written(s: &[MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches for the values.
    unsafe { &*(s as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// `(n, c, spatial)` of an `[n, c, …]` shape, or an error naming the op.
pub fn split_nc(dims: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        candle_core::bail!("{op} expects at least [n, c], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Images per chunk when a gradient is summed over the batch: a fixed number of contiguous
/// chunks from the thread count, not from scheduling, so with the partial sums added in chunk
/// order ([`sum_in_order`]) the result is the same for a given thread count.
pub fn images_per_chunk(n: usize) -> usize {
    let chunks = (rayon::current_num_threads() * 2).clamp(1, n.max(1));
    n.div_ceil(chunks).max(1)
}

/// The chunks' partial sums added in chunk order, into `len` values.
pub fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for p in partials {
        for (a, b) in total.iter_mut().zip(p) {
            *a += *b;
        }
    }
    total
}
