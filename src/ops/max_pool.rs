//! 2×2 max-pooling's candle glue: [`MaxPool2`], one pass each way on f32 CPU tensors
//! ([`super::cpu::max_pool`]). candle's own backward upsamples the output to compare it with the
//! input, which assigns the wrong window to rows past the first when a size is odd, and takes six
//! passes.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::cpu::max_pool::{backward, forward};
use super::host::{contiguous_f32, op_output, with_f32};

/// The candle op on `x: [n, c, h, w]`, giving `[n, c, h/2, w/2]`.
pub(super) struct MaxPool2;

fn dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [n, c, h, w] if h >= 2 && w >= 2 => Ok((n, c, h, w)),
        ref d => candle_core::bail!("max-pool 2×2 expects [n, c, h ≥ 2, w ≥ 2], got {d:?}"),
    }
}

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "cifar-stream-max-pool-2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims(l)?;
        let x = contiguous_f32(s, l)?;
        let y = forward(x, n * c, h, w);
        Ok((CpuStorage::F32(y), Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let dx = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                if ds.len() * (h * w) != xs.len() * (oh * ow) {
                    candle_core::bail!(
                        "max-pool backward: {} gradients for {} inputs of {h}x{w}",
                        ds.len(),
                        xs.len()
                    );
                }
                Ok(backward(xs, ds, h, w))
            })
        })?;
        Ok(Some(op_output(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::ops::cpu::max_pool::tests::{reference, tied, SIZES};

    #[test]
    fn the_op_floors_odd_maps_and_routes_tied_and_nan_windows_as_the_rule_says() {
        for (h, w) in SIZES {
            op_matches_the_rule(h, w);
        }
    }

    fn op_matches_the_rule(h: usize, w: usize) {
        let xs = tied(2 * h * w);
        let x = Var::from_vec(xs.clone(), (1, 2, h, w), &Device::Cpu).unwrap();
        let y = x.as_tensor().apply_op1(MaxPool2).unwrap();
        let (oh, ow) = (h / 2, w / 2);
        let probe: Vec<f32> = (0..2 * oh * ow).map(|i| i as f32 + 1.0).collect();
        let probe_t = Tensor::from_vec(probe.clone(), (1, 2, oh, ow), &Device::Cpu).unwrap();
        let grads = (&y * &probe_t)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let (dx, y) = (
            dx.to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let mut want_dx = vec![0.0f32; xs.len()];
        for p in 0..2 {
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = |r: usize, c: usize| p * h * w + (2 * oy + r) * w + 2 * ox + c;
                    let idx = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                    let best = idx[reference(idx.map(|i| xs[i]))];
                    let o = (p * oh + oy) * ow + ox;
                    // The value only: the forward takes the window in another order, so of
                    // a tied +0 and -0 it may keep the other.
                    let (got, want) = (y[o], xs[best]);
                    assert!(
                        got == want || (got.is_nan() && want.is_nan()),
                        "output {o} of {h}x{w}: {got} against {want}"
                    );
                    want_dx[best] = probe[o];
                }
            }
        }
        assert_eq!(dx, want_dx, "{h}x{w}");
    }
}
