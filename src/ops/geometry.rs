//! A convolution's shape, the one name for it across the ops' glue, the CPU and CUDA backends,
//! the model's layer table and the benchmarks.

use candle_core::Result;

/// Sizes of one convolution: input `[n, c, h, w]`, weight `[k, c, kh, kw]`, square stride and
/// zero padding. The model's per-layer shapes ([`conv_shapes`](crate::model::conv_shapes)) are
/// per image, `n` = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    pub fn patch(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel.
    pub fn pixels(&self) -> usize {
        self.ho() * self.wo()
    }
}
