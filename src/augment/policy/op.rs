//! The policy operations: each PIL-style op with its level-to-magnitude mapping, applied to one
//! image in place.

use crate::augment::ops::{self, cutout};
use crate::store::Shape;

/// The PIL operation set of AutoAugment and PBA, in PBA's policy order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Rotate by ±`i(30)` degrees.
    Rotate,
    /// Shift along x by ±`i(10)` pixels.
    TranslateX,
    /// Shift along y by ±`i(10)` pixels.
    TranslateY,
    /// Brightness factor `f(1.8)+0.1`.
    Brightness,
    /// Saturation factor `f(1.8)+0.1`.
    Color,
    /// `255 − x`.
    Invert,
    /// Sharpness factor `f(1.8)+0.1`.
    Sharpness,
    /// Keep `4 − i(4)` bits.
    Posterize,
    /// Shear along x by ±`f(0.3)`.
    ShearX,
    /// Invert at or above `256 − i(256)`.
    Solarize,
    /// Shear along y by ±`f(0.3)`.
    ShearY,
    /// Histogram equalisation.
    Equalize,
    /// Per-channel contrast stretch.
    AutoContrast,
    /// A grey square of side `i(20)`.
    Cutout,
    /// Contrast factor `f(1.8)+0.1`.
    Contrast,
    /// Leave the image as it is (RandAugment's op list).
    Identity,
}

impl Op {
    /// The 15 operations in the order PBA's policy vectors list them.
    pub const PBA_ORDER: [Op; 15] = [
        Op::Rotate,
        Op::TranslateX,
        Op::TranslateY,
        Op::Brightness,
        Op::Color,
        Op::Invert,
        Op::Sharpness,
        Op::Posterize,
        Op::ShearX,
        Op::Solarize,
        Op::ShearY,
        Op::Equalize,
        Op::AutoContrast,
        Op::Cutout,
        Op::Contrast,
    ];
}

/// One `(operation, probability, level)` triple of a policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    /// Which operation.
    pub op: Op,
    /// Probability of applying it, 0–1.
    pub prob: f32,
    /// Magnitude level, 0–10.
    pub level: u8,
}

/// Grey used by the policy `Cutout` op, as in the PBA code.
pub const CUTOUT_GREY: [u8; 3] = [125, 122, 113];
/// `PARAMETER_MAX` of the AutoAugment/PBA code: levels run 0..=10.
pub const MAX_LEVEL: f64 = 10.0;

fn float_level(level: u8, max: f64) -> f64 {
    level as f64 * max / MAX_LEVEL
}

fn int_level(level: u8, max: f64) -> f64 {
    (level as f64 * max / MAX_LEVEL).floor()
}

/// Per-thread buffers and colours the ops need besides the image.
pub struct Canvas<'a> {
    /// Image shape.
    pub shape: Shape,
    /// Colour for pixels a geometric op uncovers (the dataset mean).
    pub fill: &'a [u8],
    /// A second image-sized buffer for ops that cannot work in place.
    pub scratch: &'a mut [u8],
}

/// Signature shared by the geometric ops: `(src, dst, shape, magnitude, fill)`.
type GeometricOp = fn(&[u8], &mut [u8], Shape, f64, &[u8]);

/// Applies `op` at `level` to `img` in place, drawing signs and positions from `rng`.
pub fn apply(op: Op, level: u8, rng: &mut fastrand::Rng, img: &mut [u8], canvas: &mut Canvas) {
    // Levels above the scale would underflow Posterize's and Solarize's thresholds.
    let level = level.min(MAX_LEVEL as u8);
    let shape = canvas.shape;
    let mut signed = |v: f64| if rng.f64() > 0.5 { -v } else { v };
    let geometric: Option<(GeometricOp, f64)> = match op {
        Op::Rotate => Some((ops::rotate, signed(int_level(level, 30.0)))),
        Op::ShearX => Some((ops::shear_x, signed(float_level(level, 0.3)))),
        Op::ShearY => Some((ops::shear_y, signed(float_level(level, 0.3)))),
        Op::TranslateX => Some((ops::translate_x, signed(int_level(level, 10.0)))),
        Op::TranslateY => Some((ops::translate_y, signed(int_level(level, 10.0)))),
        _ => None,
    };
    if let Some((f, magnitude)) = geometric {
        f(img, canvas.scratch, shape, magnitude, canvas.fill);
        img.copy_from_slice(canvas.scratch);
        return;
    }
    let factor = (float_level(level, 1.8) + 0.1) as f32;
    match op {
        Op::Brightness => ops::brightness(img, factor),
        Op::Color => ops::color(img, shape, factor),
        Op::Contrast => ops::contrast(img, shape, factor),
        Op::Sharpness => {
            ops::sharpness(img, canvas.scratch, shape, factor);
            img.copy_from_slice(canvas.scratch);
        }
        Op::Invert => ops::invert(img),
        Op::Posterize => ops::posterize(img, 4 - int_level(level, 4.0) as u32),
        Op::Solarize => ops::solarize(img, 256 - int_level(level, 256.0) as u32),
        Op::Equalize => ops::equalize(img, shape),
        Op::AutoContrast => ops::autocontrast(img, shape),
        Op::Cutout => {
            let side = int_level(level, 20.0) as usize;
            if side > 0 {
                let (h, w) = (shape.height as usize, shape.width as usize);
                let rect = cutout::draw_box(rng, h, w, side);
                cutout::fill_u8(img, w, rect, &CUTOUT_GREY[..shape.channels as usize]);
            }
        }
        Op::Identity => {}
        Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateX | Op::TranslateY => unreachable!(),
    }
}
