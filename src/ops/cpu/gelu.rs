//! GELU (the exact, erf form: PyTorch's `nn.GELU()` default) as one pass each way, alone or
//! after a per-channel bias. Through candle's generic ops its backward is about ten elementwise
//! passes, each allocating.
//!
//! `erf` and `exp` are branch-free approximations here so the passes vectorise: libm's `erff`
//! takes a slower branch (through `exp`) for |x| > 0.84, which real activations mostly are, and
//! on real data that scalar call was 15% of a `fast-cpu` step (2-core Zen 3, perf).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{wide, written_by};

/// Elements per parallel task: large enough that rayon's overhead vanishes.
const CHUNK: usize = 1 << 14;

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `erf(z) ≈ z·P(z²)/Q(z²)` on `[-4, 4]` (±1 to f32 precision outside): a least-squares rational
/// fit on Chebyshev-spaced points, 8e-8 in f64 and 4.3e-7 (about 7 ulp near ±1) as evaluated
/// here in f32.
const ERF_P: [f32; 7] = [
    1.128_378_9,
    0.208_914_76,
    0.051_757_89,
    0.004_077_120_7,
    0.000_150_242_69,
    -1.969_929_8e-6,
    1.933_584e-8,
];
const ERF_Q: [f32; 5] = [
    1.0,
    0.518_475_06,
    0.118_710_75,
    0.015_116_021,
    0.001_045_276_5,
];

/// The error function, branch-free; NaN stays NaN.
#[inline]
fn erf(z: f32) -> f32 {
    let z = z.clamp(-4.0, 4.0);
    let t = z * z;
    let p = ERF_P.iter().rev().fold(0.0f32, |acc, &c| acc * t + c);
    let q = ERF_Q.iter().rev().fold(0.0f32, |acc, &c| acc * t + c);
    (z * p / q).clamp(-1.0, 1.0)
}

/// `e^x` for `x ≤ 0`, branch-free: `x = k·ln 2 + r` with |r| ≤ ln 2 / 2, `e^r` by its degree-7
/// Taylor polynomial (relative error < 3e-7 as f32 rounds it, 2.5 ulp), `2^k` built in the
/// exponent bits. Below -87 (where f32 runs out of normal numbers) it returns e^-87.
#[inline]
fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    // ln 2 in two parts so `k·ln 2` is exact enough for |k| ≤ 126.
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let poly = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ]
    .iter()
    .fold(0.0f32, |acc, &c| acc * r + c);
    let scale = f32::from_bits(
        (shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32 + 127).wrapping_shl(23) as u32,
    );
    poly * scale
}

/// `x · Φ(x)`, Φ the standard normal CDF; NaN stays NaN.
#[inline]
pub fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`.
#[inline]
pub fn gelu_slope(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * FRAC_1_SQRT_2PI * exp_nonpositive(-0.5 * x * x)
}

/// `gelu(x)` for every value, in parallel.
pub fn forward(x: &[f32]) -> Vec<f32> {
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                wide::run(
                    #[inline(always)]
                    || {
                        for (o, &v) in yc.iter_mut().zip(xc) {
                            o.write(gelu_value(v));
                        }
                    },
                )
            })
    };
    // SAFETY: the chunks of `y` and `x` pair up one to one, each value written.
    unsafe { written_by(x.len(), fill) }
}

/// GELU's backward: `dy · gelu'(x)` in one pass; `dy` as long as `x`.
pub fn backward(xs: &[f32], ds: &[f32]) -> Vec<f32> {
    assert_eq!(xs.len(), ds.len(), "a gradient per input");
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(ds.par_chunks(CHUNK)))
            .for_each(|(oc, (xc, dc))| {
                wide::run(
                    #[inline(always)]
                    || {
                        for ((o, &v), &g) in oc.iter_mut().zip(xc).zip(dc) {
                            o.write(g * gelu_slope(v));
                        }
                    },
                )
            })
    };
    // SAFETY: `xs` and `ds` have `dx`'s length (asserted), so every value is written.
    unsafe { written_by(xs.len(), fill) }
}

/// The sum of `values` in eight interleaved f32 partial sums, so the loop vectorises (one running
/// sum is a chain the compiler may not reorder); the partials are then added in order.
#[inline]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `gelu(x + bias[c])` for `x: [n, c, plane]` (`c` the bias's length), one plane per task.
pub fn forward_with_bias(x: &[f32], b: &[f32], plane: usize) -> Vec<f32> {
    let c = b.len();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let shift = b[i % c];
                wide::run(
                    #[inline(always)]
                    || {
                        for (o, &v) in yp.iter_mut().zip(xp) {
                            o.write(gelu_value(v + shift));
                        }
                    },
                )
            })
    };
    // SAFETY: the planes of `y` and `x` pair up one to one, each value written.
    unsafe { written_by(x.len(), fill) }
}

/// The backward of [`forward_with_bias`] from `dy`: `(dx, dbias)`, `dx` empty unless `want_dx`.
/// The bias's gradient is one sum per `(image, channel)` plane, added in plane order: the same
/// whatever the thread count.
pub fn backward_with_bias(
    xs: &[f32],
    ds: &[f32],
    bias: &[f32],
    plane: usize,
    want_dx: bool,
) -> (Vec<f32>, Vec<f32>) {
    let c = bias.len();
    let mut dx = vec![0.0f32; if want_dx { xs.len() } else { 0 }];
    let plane_sum = |i: usize, xp: &[f32], dp: &[f32], out: Option<&mut [f32]>| {
        let shift = bias[i % c];
        // A function, not a closure, so that it is inlined into the AVX2 copy
        // below: a closure called from two places stayed a baseline (SSE2) call.
        #[inline(always)]
        fn grads(o: &mut [f32], xs: &[f32], ds: &[f32], shift: f32) {
            for ((o, &v), &g) in o.iter_mut().zip(xs).zip(ds) {
                *o = g * gelu_slope(v + shift);
            }
        }
        wide::run(
            #[inline(always)]
            || match out {
                Some(o) => {
                    grads(o, xp, dp, shift);
                    lane_sum(o) as f64
                }
                None => {
                    // No gradient to keep: a block at a time through the stack.
                    let mut block = [0.0f32; 256];
                    let mut sum = 0.0f64;
                    for (xs, ds) in xp.chunks(256).zip(dp.chunks(256)) {
                        let o = &mut block[..xs.len()];
                        grads(o, xs, ds, shift);
                        sum += lane_sum(o) as f64;
                    }
                    sum
                }
            },
        )
    };
    let p = plane.max(1);
    let sums: Vec<f64> = if want_dx {
        dx.par_chunks_mut(p)
            .zip(xs.par_chunks(p).zip(ds.par_chunks(p)))
            .enumerate()
            .map(|(i, (op, (xp, dp)))| plane_sum(i, xp, dp, Some(op)))
            .collect()
    } else {
        xs.par_chunks(p)
            .zip(ds.par_chunks(p))
            .enumerate()
            .map(|(i, (xp, dp))| plane_sum(i, xp, dp, None))
            .collect()
    };
    let mut db = vec![0.0f64; c];
    for (i, s) in sums.iter().enumerate() {
        db[i % c] += s;
    }
    (dx, db.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf to 1e-15 by its Taylor series (|z| ≤ 3) or the continued fraction of erfc (beyond).
    fn erf_f64(z: f64) -> f64 {
        let a = z.abs();
        let v = if a <= 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = e^{-a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …)))).
            let mut frac = a;
            for k in (1..60).rev() {
                frac = a + (k as f64 / 2.0) / frac;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / frac
        };
        v.copysign(z)
    }

    #[test]
    fn erf_is_within_half_a_micro_of_the_series_everywhere() {
        let mut worst = 0.0f64;
        for i in -600_000..=600_000 {
            let z = i as f32 * 1e-5;
            worst = worst.max((erf(z) as f64 - erf_f64(z as f64)).abs());
        }
        assert!(worst < 5e-7, "erf: {worst}");
        assert_eq!(erf(50.0), 1.0);
        assert_eq!(erf(-1e30), -1.0);
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn exp_is_within_three_tenths_of_a_micro_relative_down_to_minus_87() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp_nonpositive(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "exp: {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e30) > 0.0 && exp_nonpositive(-1e30) < 2e-38);
    }

    #[test]
    fn gelu_keeps_nan_and_its_limits() {
        assert!(gelu_value(f32::NAN).is_nan());
        assert!(gelu_slope(f32::NAN).is_nan());
        assert_eq!(gelu_value(30.0), 30.0);
        assert_eq!(gelu_value(-30.0), 0.0);
        assert_eq!(gelu_slope(30.0), 1.0);
        assert!(gelu_slope(-30.0).abs() < 1e-30);
    }
}
