//! The lowered convolution: any geometry as im2col + one matrix product per image; the input
//! gradient a product plus a col2im scatter, the weight gradient a product accumulated over the
//! batch in fixed chunks (so the sum is the same on any thread count).

use rayon::prelude::*;

use crate::ops::cpu::gemm::{matmul, Mat};
use crate::ops::cpu::{images_per_chunk, sum_in_order};
use crate::ops::Geometry;

/// A 1×1, stride-1, unpadded convolution reads the image itself as its patch matrix.
fn is_pointwise(g: &Geometry) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0
}

/// Output columns `[lo, hi)` whose input column `ox*stride + kx - pad` lies inside the image.
fn valid(g: &Geometry, kx: usize, wo: usize, w: usize) -> (usize, usize) {
    let s = g.stride;
    let lo = if g.pad > kx {
        (g.pad - kx).div_ceil(s)
    } else {
        0
    };
    let hi = if w + g.pad > kx {
        ((w + g.pad - kx - 1) / s + 1).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Unfolds one image `[c, h, w]` into its patch matrix `[c·kh·kw, ho·wo]`.
fn im2col(g: &Geometry, img: &[f32], cols: &mut [f32]) {
    let (ho, wo, s) = (g.ho(), g.wo(), g.stride);
    let mut row = 0;
    for c in 0..g.c {
        let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let out = &mut cols[row * ho * wo..(row + 1) * ho * wo];
                let (lo, hi) = valid(g, kx, wo, g.w);
                for oy in 0..ho {
                    let line = &mut out[oy * wo..(oy + 1) * wo];
                    let iy = (oy * s + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize || lo >= hi {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    line[..lo].fill(0.0);
                    line[hi..].fill(0.0);
                    let ix0 = lo * s + kx - g.pad;
                    if s == 1 {
                        line[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
                    } else {
                        for (o, v) in line[lo..hi].iter_mut().zip(src[ix0..].iter().step_by(s)) {
                            *o = *v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Folds a patch-matrix gradient back onto one image gradient `[c, h, w]` (adds; `img` starts
/// zeroed).
fn col2im(g: &Geometry, cols: &[f32], img: &mut [f32]) {
    let (ho, wo, s) = (g.ho(), g.wo(), g.stride);
    let mut row = 0;
    for c in 0..g.c {
        let plane = &mut img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &cols[row * ho * wo..(row + 1) * ho * wo];
                let (lo, hi) = valid(g, kx, wo, g.w);
                row += 1;
                if lo >= hi {
                    continue;
                }
                for oy in 0..ho {
                    let iy = (oy * s + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let line = &src[oy * wo + lo..oy * wo + hi];
                    let ix0 = lo * s + kx - g.pad;
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + hi - lo].iter_mut().zip(line) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[ix0..].iter_mut().step_by(s).zip(line) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward as `y[n] = W · im2col(x[n])` for every image, in parallel: any geometry.
pub fn im2col_forward(g: &Geometry, x: &[f32], wt: &[f32]) -> Vec<f32> {
    let (chw, kp, patch) = (g.c * g.h * g.w, g.k * g.pixels(), g.patch());
    let mut y = vec![0.0f32; g.n * kp];
    let weights = Mat::new(wt, g.k, patch);
    y.par_chunks_mut(kp.max(1)).enumerate().for_each_init(
        || {
            vec![
                0.0f32;
                if is_pointwise(g) {
                    0
                } else {
                    patch * g.pixels()
                }
            ]
        },
        |cols, (i, out)| {
            let img = &x[i * chw..(i + 1) * chw];
            let patches = if is_pointwise(g) {
                Mat::new(img, patch, g.pixels())
            } else {
                im2col(g, img, cols);
                Mat::new(cols, patch, g.pixels())
            };
            matmul(out, weights, patches, false);
        },
    );
    y
}

/// Backward as products with the patch matrix and a col2im scatter: any geometry; `dx` is
/// skipped (None) when not wanted.
///
/// Each of the batch's fixed chunks (`images_per_chunk`) sums its weight gradient and the
/// partial sums are added in chunk order, so the result is deterministic for a given thread
/// count.
pub fn im2col_backward(
    g: &Geometry,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (chw, kp, patch, pixels) = (g.c * g.h * g.w, g.k * g.pixels(), g.patch(), g.pixels());
    let per = images_per_chunk(g.n);
    let mut dx = if want_dx {
        vec![0.0f32; g.n * chw]
    } else {
        Vec::new()
    };
    let weights = Mat::new(wt, g.k, patch);
    let work = |first: usize, dx_chunk: Option<&mut [f32]>| -> Vec<f32> {
        let mut dw = vec![0.0f32; g.k * patch];
        let pointwise = is_pointwise(g);
        let mut cols = vec![0.0f32; if pointwise { 0 } else { patch * pixels }];
        let mut dcols = vec![
            0.0f32;
            if want_dx && !pointwise {
                patch * pixels
            } else {
                0
            }
        ];
        let mut dx_chunk = dx_chunk;
        let last = (first + per).min(g.n);
        for i in first..last {
            let img = &x[i * chw..(i + 1) * chw];
            let grad = Mat::new(&dy[i * kp..(i + 1) * kp], g.k, pixels);
            let patches = if pointwise {
                Mat::new(img, patch, pixels)
            } else {
                im2col(g, img, &mut cols);
                Mat::new(&cols, patch, pixels)
            };
            matmul(&mut dw, grad, patches.t(), true);
            if let Some(dxc) = dx_chunk.as_deref_mut() {
                let dimg = &mut dxc[(i - first) * chw..(i - first + 1) * chw];
                if pointwise {
                    matmul(dimg, weights.t(), grad, false);
                } else {
                    matmul(&mut dcols, weights.t(), grad, false);
                    col2im(g, &dcols, dimg);
                }
            }
        }
        dw
    };
    let partials: Vec<Vec<f32>> = if want_dx {
        dx.par_chunks_mut((per * chw).max(1))
            .enumerate()
            .map(|(j, dxc)| work(j * per, Some(dxc)))
            .collect()
    } else {
        (0..g.n.div_ceil(per))
            .into_par_iter()
            .map(|j| work(j * per, None))
            .collect()
    };
    (want_dx.then_some(dx), sum_in_order(&partials, g.k * patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x, c: the defining property of the scatter.
        for (h, w, kh, stride, pad) in [(5, 7, 3, 1, 1), (6, 5, 3, 2, 1), (7, 6, 3, 2, 0)] {
            let g = Geometry {
                n: 1,
                c: 2,
                h,
                w,
                k: 1,
                kh,
                kw: kh,
                stride,
                pad,
            };
            let x: Vec<f32> = (0..g.c * h * w).map(|i| (i as f32 * 0.9).sin()).collect();
            let c: Vec<f32> = (0..g.patch() * g.pixels())
                .map(|i| (i as f32 * 0.4).cos())
                .collect();
            let mut cols = vec![0.0; c.len()];
            im2col(&g, &x, &mut cols);
            let mut back = vec![0.0; x.len()];
            col2im(&g, &c, &mut back);
            let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| (*a * *b) as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a * *b) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-3, "{g:?}: {lhs} vs {rhs}");
        }
    }
}
