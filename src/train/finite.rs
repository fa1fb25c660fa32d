//! Whether tensors hold only finite values: what stops a diverged run before anything of it is
//! saved, and what refuses a checkpoint of one.

use candle_core::{DType, Result, Tensor};

/// The first of `tensors` (in the order given) holding a NaN or an infinity, by name; integer
/// tensors are skipped. One reduction per tensor and one read for all of them: `Σ x·0` is 0 for
/// finite values and NaN otherwise, and unlike a max it cannot skip a NaN or overflow.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<String>> {
    let mut names = Vec::new();
    let mut zeros = Vec::new();
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let z = (t.flatten_all()? * 0.0)?.to_dtype(DType::F32)?.sum_all()?;
        names.push(name);
        zeros.push(z.to_device(&candle_core::Device::Cpu)?);
    }
    if zeros.is_empty() {
        return Ok(None);
    }
    let values = Tensor::stack(&zeros, 0)?.to_vec1::<f32>()?;
    Ok(names
        .into_iter()
        .zip(values)
        .find(|(_, v)| *v != 0.0)
        .map(|(n, _)| n.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_the_first_tensor_with_a_nan_or_an_infinity() {
        let dev = Device::Cpu;
        let fine = Tensor::new(&[1.0f32, -3e38, 0.0], &dev).unwrap();
        let nan = Tensor::new(&[1.0f32, f32::NAN], &dev).unwrap();
        let inf = Tensor::new(&[f32::NEG_INFINITY], &dev).unwrap();
        let count = Tensor::new(&[7u32], &dev).unwrap();
        let all = [("a", &fine), ("n", &count), ("b", &inf), ("c", &nan)];
        assert_eq!(first_non_finite(all).unwrap().as_deref(), Some("b"));
        assert_eq!(
            first_non_finite([("a", &fine), ("c", &nan)])
                .unwrap()
                .as_deref(),
            Some("c")
        );
        assert_eq!(
            first_non_finite([("a", &fine), ("n", &count)]).unwrap(),
            None
        );
    }
}
