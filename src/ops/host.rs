//! What the ops' glue shares between candle and the CPU maths: a CPU tensor's f32 data as one
//! contiguous slice, the `[n, c, …]` split of a shape, and a slice of values as an op's output
//! tensor.

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

/// `(n, c, spatial)` of an `[n, c, …]` shape, or an error naming the op.
pub fn split_nc(dims: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        candle_core::bail!("{op} expects at least [n, c], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}
