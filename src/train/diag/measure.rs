//! How far one tensor is from another, and the random inputs the diagnostics feed.

use candle_core::{DType, Device, Tensor};

/// `‖a − b‖ / ‖b‖` over all elements, in f64 (0 when both are zero): a whole tensor's error, for
/// a training step's logits and gradients.
pub fn relative_l2(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let (a, b) = (host_f64(a)?, host_f64(b)?);
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    Ok(if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    })
}

/// `max |a − b| / max |b|` over all elements, in f64 (infinite when the lengths differ): the
/// worst element against the tensor's scale, for one op's outputs and gradients.
pub fn relative_max(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let (a, b) = (host_f64(a)?, host_f64(b)?);
    if a.len() != b.len() {
        return Ok(f64::INFINITY);
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(worst / scale)
}

fn host_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()
}

/// A tensor of `dims` drawn uniformly from [−1, 1) by `rng`, on `device`.
pub fn uniform(
    rng: &mut fastrand::Rng,
    dims: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, dims, device)
}
