//! 2-D convolution on f32 NCHW slices, forward and both gradients. 3×3, stride-1, pad-1
//! layers go to `direct`'s register-tiled kernels; any other geometry runs as im2col + one
//! matrix product per image (`im2col`): the input gradient a product plus a col2im scatter,
//! the weight gradient a product accumulated over the batch. Images are spread over rayon's
//! threads.

mod direct;
mod im2col;

use crate::ops::Geometry;
pub use im2col::{im2col_backward, im2col_forward};

/// Whether [`direct`]'s kernels take `g`: a 3×3, stride-1, pad-1 convolution with nothing empty.
fn is_direct(g: &Geometry) -> bool {
    let same3 = g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1;
    same3 && g.n * g.c * g.k * g.h * g.w > 0
}

/// Whether this CPU can run 3×3 convolutions with bf16 products: AVX512-BF16's `vdpbf16ps`
/// (Zen 4 and later, Cooper Lake and Sapphire Rapids and later Xeons).
pub fn bf16_products_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return direct::bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Forward: 3×3, stride-1, pad-1 convolutions through `direct` (with bf16 products when
/// `bf16`), any other through [`im2col_forward`] (f32 always).
pub fn forward(g: &Geometry, x: &[f32], wt: &[f32], bf16: bool) -> Vec<f32> {
    if is_direct(g) && bf16 {
        direct::bf16::forward(g, x, wt)
    } else if is_direct(g) {
        direct::forward(g, x, wt)
    } else {
        im2col_forward(g, x, wt)
    }
}

/// Backward: `(dx, dw)` from the output gradient `dy` (`dx` None when not wanted), through
/// `direct` where it applies (with bf16 products when `bf16`) and [`im2col_backward`] otherwise.
pub fn backward(
    g: &Geometry,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    want_dx: bool,
    bf16: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    if is_direct(g) && bf16 {
        let dx = want_dx.then(|| direct::bf16::input_grad(g, wt, dy));
        (dx, direct::bf16::weight_grad(g, x, dy))
    } else if is_direct(g) {
        let dx = want_dx.then(|| direct::input_grad(g, wt, dy));
        (dx, direct::weight_grad(g, x, dy))
    } else {
        im2col_backward(g, x, wt, dy, want_dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(dx, dw)`, as the backward passes return them.
    type Gradients = (Option<Vec<f32>>, Vec<f32>);

    /// Every tap of the convolution that lands inside the image, as `(y index, x index,
    /// w index)` of the flat NCHW output, input and weight.
    fn taps(g: &Geometry) -> Vec<(usize, usize, usize)> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut taps = Vec::new();
        for n in 0..g.n {
            for k in 0..g.k {
                for oy in 0..ho {
                    for ox in 0..wo {
                        for c in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    taps.push((
                                        ((n * g.k + k) * ho + oy) * wo + ox,
                                        ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize,
                                        ((k * g.c + c) * g.kh + ky) * g.kw + kx,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        taps
    }

    /// Direct convolution, the definition.
    fn naive(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0; g.n * g.k * g.pixels()];
        for (yi, xi, wi) in taps(g) {
            y[yi] += x[xi] * w[wi];
        }
        y
    }

    #[test]
    fn forward_matches_the_definition_including_odd_sizes() {
        for (h, w, kh, stride, pad) in [
            (5, 7, 3, 1, 1),
            (6, 5, 3, 2, 1),
            (4, 4, 1, 1, 0),
            (5, 5, 1, 2, 0),
            (7, 6, 3, 2, 0),
            (3, 3, 3, 1, 2),
        ] {
            let g = Geometry {
                n: 2,
                c: 3,
                h,
                w,
                k: 4,
                kh,
                kw: kh,
                stride,
                pad,
            };
            let x: Vec<f32> = (0..g.n * g.c * h * w)
                .map(|i| (i as f32 * 0.7).sin())
                .collect();
            let wt: Vec<f32> = (0..g.k * g.patch())
                .map(|i| (i as f32 * 0.3).cos())
                .collect();
            let want = naive(&g, &x, &wt);
            for got in [forward(&g, &x, &wt, false), im2col_forward(&g, &x, &wt)] {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
                }
            }
        }
    }

    /// The gradients by their definition: every tap's contribution, one at a time.
    fn naive_backward(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        for (yi, xi, wi) in taps(g) {
            dx[xi] += dy[yi] * w[wi];
            dw[wi] += dy[yi] * x[xi];
        }
        (dx, dw)
    }

    #[test]
    fn backward_matches_the_definition_on_any_thread_count() {
        // 7 images: the backward pass's chunks (from the thread count) split them unevenly.
        for (h, w, kh, stride, pad) in [(10, 16, 3, 1, 1), (10, 16, 1, 1, 0), (10, 16, 3, 2, 1)] {
            let g = Geometry {
                n: 7,
                c: 3,
                h,
                w,
                k: 5,
                kh,
                kw: kh,
                stride,
                pad,
            };
            let x: Vec<f32> = (0..g.n * g.c * h * w)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let wt: Vec<f32> = (0..g.k * g.patch())
                .map(|i| (i as f32 * 0.23).cos())
                .collect();
            let dy: Vec<f32> = (0..g.n * g.k * g.pixels())
                .map(|i| (i as f32 * 0.11).sin())
                .collect();
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (p - q).abs() < 1e-3 * (1.0 + q.abs()),
                        "{g:?} {what}: {p} vs {q}"
                    );
                }
            };
            let (want_dx, want_dw) = naive_backward(&g, &x, &wt, &dy);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let f32_backward = |g: &Geometry, x: &[f32], w: &[f32], dy: &[f32], dx| {
                        backward(g, x, w, dy, dx, false)
                    };
                    type Backward<'a> =
                        &'a dyn Fn(&Geometry, &[f32], &[f32], &[f32], bool) -> Gradients;
                    let both: [Backward; 2] = [&f32_backward, &im2col_backward];
                    for backward in both {
                        let (dx, dw) = backward(&g, &x, &wt, &dy, true);
                        close(&dx.unwrap(), &want_dx, "dx");
                        close(&dw, &want_dw, "dw");
                        let (none, dw_only) = backward(&g, &x, &wt, &dy, false);
                        assert!(none.is_none());
                        close(&dw_only, &want_dw, "dw alone");
                    }
                });
            }
        }
    }
}
