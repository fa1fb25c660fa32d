//! 2×2 max-pooling with stride 2 (odd sizes floor, as PyTorch's `MaxPool2d(2)`) as one pass each
//! way on the CPU. candle's own backward upsamples the output to compare it with the input, which
//! assigns the wrong window to rows past the first when a size is odd, and takes six passes.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{contiguous_f32, with_f32, written_by};
use super::wide;

/// `b` if it beats `a` under PyTorch's rule: greater, or a NaN over a number; on ties the
/// first in row-major order keeps the gradient.
#[inline(always)]
fn later_wins(a: f32, b: f32) -> bool {
    b > a || (b.is_nan() && !a.is_nan())
}

/// The larger of `a` and `b`, a NaN over any number. Only the value: which of two equal values
/// it returns does not matter, so the forward pass can take the window in any order.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if later_wins(a, b) {
        b
    } else {
        a
    }
}

/// Which of a window's values `[top-left, top-right, bottom-left, bottom-right]` is its
/// maximum under [`later_wins`], by selects rather than branches (real activations make those
/// branches unpredictable).
#[inline(always)]
fn window_argmax(v: [f32; 4]) -> usize {
    let (mut best, mut at) = (v[0], 0);
    for (i, &x) in v.iter().enumerate().skip(1) {
        let wins = later_wins(best, x);
        best = if wins { x } else { best };
        at = if wins { i } else { at };
    }
    at
}

/// One plane's forward pass: `out[oy][ox]` the maximum of the window below it.
#[inline(always)]
fn pool_plane(xp: &[f32], w: usize, out: &mut [MaybeUninit<f32>], ow: usize) {
    for (oy, line) in out.chunks_exact_mut(ow).enumerate() {
        let (r0, r1) = (
            &xp[2 * oy * w..][..2 * ow],
            &xp[(2 * oy + 1) * w..][..2 * ow],
        );
        for ((o, top), bottom) in line
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            o.write(nan_max(
                nan_max(top[0], bottom[0]),
                nan_max(top[1], bottom[1]),
            ));
        }
    }
}

/// One plane's backward pass: every input position written, the window's gradient at its
/// arg-max and zero elsewhere (also on a floored odd row or column).
#[inline(always)]
fn unpool_plane(
    xp: &[f32],
    dp: &[f32],
    w: usize,
    oh: usize,
    ow: usize,
    gp: &mut [MaybeUninit<f32>],
) {
    for oy in 0..oh {
        let (r0, r1) = (
            &xp[2 * oy * w..][..2 * ow],
            &xp[(2 * oy + 1) * w..][..2 * ow],
        );
        let (g0, g1) = gp[2 * oy * w..][..2 * w].split_at_mut(w);
        for ox in 0..ow {
            let at = window_argmax([r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]]);
            let d = dp[oy * ow + ox];
            let pick = |k: usize| if at == k { d } else { 0.0 };
            g0[2 * ox].write(pick(0));
            g0[2 * ox + 1].write(pick(1));
            g1[2 * ox].write(pick(2));
            g1[2 * ox + 1].write(pick(3));
        }
        if w > 2 * ow {
            g0[w - 1].write(0.0);
            g1[w - 1].write(0.0);
        }
    }
    for g in &mut gp[2 * oh * w..] {
        g.write(0.0);
    }
}

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
        let (oh, ow) = (h / 2, w / 2);
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(yp, xp)| {
                    wide::run(
                        #[inline(always)]
                        || pool_plane(xp, w, yp, ow),
                    )
                })
        };
        // SAFETY: `x` holds `n·c` planes (its layout's dims), so each output plane is paired
        // with one and written whole by `pool_plane`.
        let y = unsafe { written_by(n * c * oh * ow, fill) };
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let dx = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                let mut dx: Vec<f32> = Vec::with_capacity(xs.len());
                dx.spare_capacity_mut()[..xs.len()]
                    .par_chunks_mut(h * w)
                    .zip(xs.par_chunks(h * w).zip(ds.par_chunks(oh * ow)))
                    .for_each(|(gp, (xp, dp))| {
                        wide::run(
                            #[inline(always)]
                            || unpool_plane(xp, dp, w, oh, ow, gp),
                        )
                    });
                // SAFETY: `unpool_plane` wrote every element of every plane.
                unsafe { dx.set_len(xs.len()) };
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// PyTorch's rule by its definition: scan the window in row-major order and keep a value
    /// only if it is greater than the kept one, or a NaN over a number.
    fn reference(v: [f32; 4]) -> usize {
        let mut at = 0;
        for i in 1..4 {
            let (kept, x) = (v[at], v[i]);
            if (!kept.is_nan() && x.is_nan()) || x > kept {
                at = i;
            }
        }
        at
    }

    #[test]
    fn ties_go_to_the_first_and_a_nan_beats_any_number() {
        let values = [0.0f32, 1.0, -1.0, f32::NAN, 1.0];
        for a in values {
            for b in values {
                for c in values {
                    for d in values {
                        let v = [a, b, c, d];
                        assert_eq!(window_argmax(v), reference(v), "{v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_op_floors_odd_maps_and_routes_tied_and_nan_windows_as_the_rule_says() {
        let (h, w) = (5, 7);
        // Few distinct values, so most windows hold ties; some hold NaNs.
        let xs: Vec<f32> = (0..2 * h * w)
            .map(|i| match i % 11 {
                3 => f32::NAN,
                k => (k % 3) as f32,
            })
            .collect();
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
                    assert_eq!(y[o].to_bits(), xs[best].to_bits(), "output {o}");
                    want_dx[best] = probe[o];
                }
            }
        }
        assert_eq!(dx, want_dx);
    }
}
