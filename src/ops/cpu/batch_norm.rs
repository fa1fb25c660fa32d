//! BatchNorm's passes over host f32 data `[n, c, s]`: per-channel sums for the statistics and
//! their gradients (eight-lane partial sums, so they vectorise), the affine map, and `dx`; the
//! ops in `ops/batch_norm.rs` call them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gelu::{gelu_slope, gelu_value};
use super::wide;
use super::{assume_written, written_by};

/// The activation fused after BatchNorm's affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None: the affine map's output.
    Identity,
    /// `max(z, 0)`; its gradient reads the output.
    Relu,
    /// Exact GELU; its gradient recomputes the pre-activation `z = x·scale + shift` from the
    /// input, so `z` is never stored.
    Gelu,
}

/// `max(v, 0)` that keeps a NaN, as PyTorch's ReLU does (`f32::max` would turn it into 0 and
/// hide a diverged run).
#[inline(always)]
pub fn relu_keep_nan(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// `a`, or with `RELU` the gradient through a ReLU whose output was `y`: `a` where `y > 0`.
#[inline(always)]
fn through_relu<const RELU: bool>(a: f32, y: f32) -> f32 {
    if RELU && y <= 0.0 {
        0.0
    } else {
        a
    }
}

/// `(Σ g, Σ g·(b − off))` for `g = through_relu(a, y)`, in f32 with eight independent partial
/// sums, so it vectorises (a single running sum is a dependency chain the compiler may not
/// reorder). Masking here rather than in a copy of `a` saves a pass over the activation.
#[inline(always)]
fn sum_and_dot<const RELU: bool>(a: &[f32], y: &[f32], b: &[f32], off: f32) -> (f32, f32) {
    let (mut s, mut d) = ([0.0f32; 8], [0.0f32; 8]);
    let body = a.len() / 8 * 8;
    let lanes = a[..body]
        .chunks_exact(8)
        .zip(y[..body].chunks_exact(8))
        .zip(b[..body].chunks_exact(8));
    for ((a8, y8), b8) in lanes {
        for l in 0..8 {
            let g = through_relu::<RELU>(a8[l], y8[l]);
            s[l] += g;
            d[l] += g * (b8[l] - off);
        }
    }
    let (mut s1, mut d1) = (s.iter().sum::<f32>(), d.iter().sum::<f32>());
    for i in body..a.len() {
        let g = through_relu::<RELU>(a[i], y[i]);
        s1 += g;
        d1 += g * (b[i] - off);
    }
    (s1, d1)
}

/// `(Σ(x − m), Σ(x − m)²)` in f32 with eight partial sums (see [`sum_and_dot`]).
#[inline(always)]
fn centred_sums(x: &[f32], m: f32) -> (f32, f32) {
    let (mut s, mut q) = ([0.0f32; 8], [0.0f32; 8]);
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for v in chunks {
        for l in 0..8 {
            let d = v[l] - m;
            s[l] += d;
            q[l] += d * d;
        }
    }
    let (mut s1, mut q1) = (s.iter().sum::<f32>(), q.iter().sum::<f32>());
    for v in rest {
        s1 += v - m;
        q1 += (v - m) * (v - m);
    }
    (s1, q1)
}

/// Per-channel `(Σ g, Σ g·(b − b_off[c]))` over `[n, c, s]` data for `g = through_relu(a, y)`,
/// parallel over channels.
///
/// Each plane is summed in f32 (it vectorises) and planes are added in f64. Centring `b` first
/// (rather than expanding `Σ g·b − b_off·Σ g`) keeps variances accurate when means are large.
pub fn channel_sums<const RELU: bool>(
    a: &[f32],
    y: &[f32],
    b: &[f32],
    b_off: Option<&[f32]>,
    (n, c, s): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let off = b_off.map_or(0.0, |o| o[ch]);
            let (mut sa, mut sab) = (0.0f64, 0.0f64);
            for i in 0..n {
                let r = (i * c + ch) * s..(i * c + ch + 1) * s;
                let (p, q) = wide::run(
                    #[inline(always)]
                    || sum_and_dot::<RELU>(&a[r.clone()], &y[r.clone()], &b[r], off),
                );
                sa += p as f64;
                sab += q as f64;
            }
            (sa, sab)
        })
        .collect()
}

/// Per-channel `(Σ(x − m[c]), Σ(x − m[c])²)`, parallel over channels.
pub fn channel_centred(x: &[f32], m: &[f32], (n, c, s): (usize, usize, usize)) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for i in 0..n {
                let plane = &x[(i * c + ch) * s..(i * c + ch + 1) * s];
                let (p, q) = wide::run(
                    #[inline(always)]
                    || centred_sums(plane, m[ch]),
                );
                s1 += p as f64;
                s2 += q as f64;
            }
            (s1, s2)
        })
        .collect()
}

/// `y = act(x·scale[c] + shift[c])`, parallel over images.
pub fn affine(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: Activation,
    c: usize,
    s: usize,
) -> Vec<f32> {
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut((c * s).max(1))
            .zip(x.par_chunks((c * s).max(1)))
            .for_each(|(yi, xi)| {
                wide::run(
                    #[inline(always)]
                    || {
                        for ch in 0..c {
                            let (a, b) = (scale[ch], shift[ch]);
                            let out = &mut yi[ch * s..(ch + 1) * s];
                            let inp = &xi[ch * s..(ch + 1) * s];
                            match act {
                                Activation::Identity => {
                                    for (o, v) in out.iter_mut().zip(inp) {
                                        o.write(v * a + b);
                                    }
                                }
                                Activation::Relu => {
                                    for (o, v) in out.iter_mut().zip(inp) {
                                        o.write(relu_keep_nan(v * a + b));
                                    }
                                }
                                Activation::Gelu => {
                                    for (o, v) in out.iter_mut().zip(inp) {
                                        o.write(gelu_value(v * a + b));
                                    }
                                }
                            }
                        }
                    },
                )
            });
    };
    // SAFETY: every image's `c` planes of `s` values are written above.
    unsafe { written_by(x.len(), fill) }
}

/// The gradient at GELU's input `g = dy · gelu'(x·scale[c] + shift[c])` over `[n, c, s]` data,
/// with per-channel `(Σ g, Σ g·(x − off[c]))`, parallel over images.
///
/// Each plane is summed in f32 lanes and the planes are added in image order in f64: the same
/// sums whatever the thread count.
pub fn gelu_grads(
    dy: &[f32],
    x: &[f32],
    (scale, shift): (&[f32], &[f32]),
    off: &[f32],
    (n, c, s): (usize, usize, usize),
) -> (Vec<f32>, Vec<(f64, f64)>) {
    // Every output written (the SAFETY below) needs each input to cover every image.
    assert!(
        dy.len() == n * c * s && x.len() == dy.len(),
        "gelu grads: [{n}, {c}, {s}]"
    );
    let image = (c * s).max(1);
    let mut planes = vec![(0.0f64, 0.0f64); n * c];
    let fill = |g: &mut [MaybeUninit<f32>]| {
        g.par_chunks_mut(image)
            .zip(dy.par_chunks(image).zip(x.par_chunks(image)))
            .zip(planes.par_chunks_mut(c.max(1)))
            .for_each(|((gi, (di, xi)), sums)| {
                wide::run(
                    #[inline(always)]
                    || {
                        for (ch, sum) in sums.iter_mut().enumerate() {
                            let r = ch * s..(ch + 1) * s;
                            let (a, b) = (scale[ch], shift[ch]);
                            for ((o, &d), &v) in gi[r.clone()]
                                .iter_mut()
                                .zip(&di[r.clone()])
                                .zip(&xi[r.clone()])
                            {
                                o.write(d * gelu_slope(v * a + b));
                            }
                            // SAFETY: the loop just wrote every value of the plane.
                            let gp = unsafe { assume_written(&gi[r.clone()]) };
                            let (p, q) = sum_and_dot::<false>(gp, gp, &xi[r], off[ch]);
                            *sum = (p as f64, q as f64);
                        }
                    },
                )
            });
    };
    // SAFETY: every plane of every image is written above.
    let g = unsafe { written_by(dy.len(), fill) };
    let mut total = vec![(0.0f64, 0.0f64); c];
    for image in planes.chunks(c.max(1)) {
        for (t, p) in total.iter_mut().zip(image) {
            t.0 += p.0;
            t.1 += p.1;
        }
    }
    (g, total)
}

/// Per-channel coefficients of the training-mode input gradient `dx = a·g + b·(x − μ) + d`.
pub struct DxCoefficients<'a> {
    /// `a` per channel: the factor of the output gradient.
    pub a: Vec<f32>,
    /// `b` per channel: the factor of the centred input.
    pub b: Vec<f32>,
    /// `d` per channel: the constant.
    pub d: Vec<f32>,
    /// `μ` per channel.
    pub mean: &'a [f32],
}

impl DxCoefficients<'_> {
    /// `dx` for `g = through_relu(dy, y)`, parallel over images.
    pub fn dx<const RELU: bool>(
        &self,
        dy: &[f32],
        y: &[f32],
        x: &[f32],
        c: usize,
        s: usize,
    ) -> Vec<f32> {
        // Every output written (the SAFETY below) needs `dy` and `y` as long as `x`.
        assert!(
            dy.len() == x.len() && y.len() == x.len(),
            "batch-norm dx lengths"
        );
        let image = (c * s).max(1);
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            dx.par_chunks_mut(image)
                .zip(dy.par_chunks(image).zip(y.par_chunks(image)))
                .zip(x.par_chunks(image))
                .for_each(|((di, (gi, yi)), xi)| {
                    wide::run(
                        #[inline(always)]
                        || {
                            for ch in 0..c {
                                let r = ch * s..(ch + 1) * s;
                                let (aa, bb, dd, mu) =
                                    (self.a[ch], self.b[ch], self.d[ch], self.mean[ch]);
                                let planes = di[r.clone()]
                                    .iter_mut()
                                    .zip(&gi[r.clone()])
                                    .zip(yi[r.clone()].iter().zip(&xi[r]));
                                for ((o, gv), (yv, xv)) in planes {
                                    o.write(
                                        aa * through_relu::<RELU>(*gv, *yv) + bb * (xv - mu) + dd,
                                    );
                                }
                            }
                        },
                    )
                });
        };
        // SAFETY: every plane of every image is written above.
        unsafe { written_by(x.len(), fill) }
    }

    /// `dx` in place over `g`, the gradient at the activation's input (from [`gelu_grads`]),
    /// parallel over images.
    pub fn dx_from_grads(&self, g: &mut [f32], x: &[f32], c: usize, s: usize) {
        let image = (c * s).max(1);
        g.par_chunks_mut(image)
            .zip(x.par_chunks(image))
            .for_each(|(gi, xi)| {
                wide::run(
                    #[inline(always)]
                    || {
                        for ch in 0..c {
                            let r = ch * s..(ch + 1) * s;
                            let (aa, bb, dd, mu) =
                                (self.a[ch], self.b[ch], self.d[ch], self.mean[ch]);
                            for (o, xv) in gi[r.clone()].iter_mut().zip(&xi[r]) {
                                *o = aa * *o + bb * (xv - mu) + dd;
                            }
                        }
                    },
                )
            });
    }
}

/// Backward of the eval-mode affine map: per-channel `(Σ g, Σ g·x)` and `dx = g·scale[c]` for
/// `g = through_relu(dy, y)`.
pub fn affine_backward<const RELU: bool>(
    dy: &[f32],
    y: &[f32],
    x: &[f32],
    scale: &[f32],
    (n, c, s): (usize, usize, usize),
) -> (Vec<(f64, f64)>, Vec<f32>) {
    let sums = channel_sums::<RELU>(dy, y, x, None, (n, c, s));
    // Every channel's plane is written below only if every channel has a scale.
    assert!(scale.len() >= c, "{} scales for {c} channels", scale.len());
    let image = (c * s).max(1);
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(image)
            .zip(dy.par_chunks(image).zip(y.par_chunks(image)))
            .for_each(|(di, (gi, yi))| {
                wide::run(
                    #[inline(always)]
                    || {
                        for (ch, &k) in scale.iter().enumerate().take(c) {
                            let r = ch * s..(ch + 1) * s;
                            for (o, (gv, yv)) in di[r.clone()]
                                .iter_mut()
                                .zip(gi[r.clone()].iter().zip(&yi[r]))
                            {
                                o.write(k * through_relu::<RELU>(*gv, *yv));
                            }
                        }
                    },
                )
            });
    };
    // SAFETY: every plane of every image is written above.
    (sums, unsafe { written_by(x.len(), fill) })
}
