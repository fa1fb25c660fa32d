//! 2-D convolution (NCHW, f32, CPU) with an explicit backward pass. 3×3, stride-1, pad-1 layers
//! go to [`super::direct`]'s register-tiled kernels; any other geometry runs as im2col + one
//! matrix product per image: the input gradient a product plus a col2im scatter, the weight
//! gradient a product accumulated over the batch. Images are spread over rayon's threads.

mod im2col;

use super::direct;
use super::host::{contiguous_f32, op_output, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
pub use im2col::{im2col_backward, im2col_forward};

/// Sizes of one convolution: input `[n, c, h, w]`, weight `[k, c, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub k: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub pad: usize,
}

impl Geometry {
    /// Checks shapes and returns the geometry, or a message saying what disagrees.
    pub fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, w], &[k, c2, kh, kw]) = (x, wt) else {
            candle_core::bail!("conv2d expects 4-d input and weight, got {x:?} and {wt:?}")
        };
        if c != c2 {
            candle_core::bail!("conv2d: input has {c} channels, weight expects {c2}");
        }
        if stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} stride {stride} pad {pad} does not fit {h}x{w}"
            );
        }
        Ok(Geometry {
            n,
            c,
            h,
            w,
            k,
            kh,
            kw,
            stride,
            pad,
        })
    }

    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    /// Rows of the patch matrix: `c × kh × kw`.
    fn patch(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel.
    fn pixels(&self) -> usize {
        self.ho() * self.wo()
    }

    /// A 3×3, stride-1, pad-1 convolution: [`super::direct`]'s, with its sizes.
    fn direct(&self) -> Option<direct::Sizes> {
        let same3 = self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad == 1;
        (same3 && self.n * self.c * self.k * self.h * self.w > 0).then_some(direct::Sizes {
            n: self.n,
            c: self.c,
            k: self.k,
            h: self.h,
            w: self.w,
        })
    }

    /// A 1×1, stride-1, unpadded convolution reads the image itself as its patch matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `[lo, hi)` whose input column `ox*stride + kx - pad` lies inside the image.
    fn valid(&self, kx: usize, wo: usize, w: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.pad > kx {
            (self.pad - kx).div_ceil(s)
        } else {
            0
        };
        let hi = if w + self.pad > kx {
            ((w + self.pad - kx - 1) / s + 1).min(wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Forward: 3×3, stride-1, pad-1 convolutions through [`super::direct`], any other through
/// [`im2col_forward`].
pub fn forward(g: &Geometry, x: &[f32], wt: &[f32]) -> Vec<f32> {
    if let Some(d) = g.direct() {
        direct::forward(d, x, wt)
    } else {
        im2col_forward(g, x, wt)
    }
}

/// Backward: `(dx, dw)` from the output gradient `dy` (`dx` None when not wanted), through
/// [`super::direct`] where it applies and [`im2col_backward`] otherwise.
pub fn backward(
    g: &Geometry,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    if let Some(d) = g.direct() {
        let dx = want_dx.then(|| direct::input_grad(d, wt, dy));
        (dx, direct::weight_grad(d, x, dy))
    } else {
        im2col_backward(g, x, wt, dy, want_dx)
    }
}

/// The candle op: `conv2d(x, w)` with this module's forward and backward.
pub(super) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "cifar-stream-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = contiguous_f32(s1, l1)?;
        let w = contiguous_f32(s2, l2)?;
        let y = forward(&g, x, w);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.k, g.ho(), g.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::new(x.dims(), w.dims(), self.stride, self.pad)?;
        // The network's input image needs no gradient.
        let want_dx = x.track_op();
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(dy, |dys| Ok(backward(&g, xs, ws, dys, want_dx)))
            })
        })?;
        let dx = dx
            .map(|v| op_output(v, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, Some(op_output(dw, w.shape(), w.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            for got in [forward(&g, &x, &wt), im2col_forward(&g, &x, &wt)] {
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
                    for backward in [backward, im2col_backward] {
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
