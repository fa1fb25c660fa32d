//! 2×2 max-pooling with stride 2 (odd sizes floor, as PyTorch's `MaxPool2d(2)`) as one pass each
//! way on the CPU. candle's own backward upsamples the output to compare it with the input, which
//! assigns the wrong window to rows past the first when a size is odd, and takes six passes.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{contiguous_f32, with_f32};
use super::wide;

/// `b` if it beats `a` under [`window_argmax`]'s rule (greater, or a NaN over a number).
#[inline(always)]
fn later_wins(a: f32, b: f32) -> bool {
    b > a || (b.is_nan() && !a.is_nan())
}

/// The index in `plane` (row length `w`) of the maximum of the 2×2 window at output `(oy, ox)`:
/// the first one in row-major order on ties, a NaN over any number (PyTorch's choice).
#[inline(always)]
fn window_argmax(plane: &[f32], w: usize, oy: usize, ox: usize) -> usize {
    let at = [
        2 * oy * w + 2 * ox,
        2 * oy * w + 2 * ox + 1,
        (2 * oy + 1) * w + 2 * ox,
        (2 * oy + 1) * w + 2 * ox + 1,
    ];
    let mut best = at[0];
    for &i in &at[1..] {
        if later_wins(plane[best], plane[i]) {
            best = i;
        }
    }
    best
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
        let mut y = vec![0.0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                wide::run(
                    #[inline(always)]
                    || {
                        for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                            let (r0, r1) = (
                                &xp[2 * oy * w..][..2 * ow],
                                &xp[(2 * oy + 1) * w..][..2 * ow],
                            );
                            for (ox, o) in out.iter_mut().enumerate() {
                                // The window's values in argmax order; selects, so it vectorises.
                                let mut best = r0[2 * ox];
                                for v in [r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]] {
                                    best = if later_wins(best, v) { v } else { best };
                                }
                                *o = best;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let dx = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                let mut dx = vec![0.0f32; xs.len()];
                dx.par_chunks_mut(h * w)
                    .zip(xs.par_chunks(h * w).zip(ds.par_chunks(oh * ow)))
                    .for_each(|(gp, (xp, dp))| {
                        wide::run(
                            #[inline(always)]
                            || {
                                for oy in 0..oh {
                                    for ox in 0..ow {
                                        gp[window_argmax(xp, w, oy, ox)] = dp[oy * ow + ox];
                                    }
                                }
                            },
                        )
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
