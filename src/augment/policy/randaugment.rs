//! RandAugment (Cubuk et al., 2020): `n` ops drawn uniformly from 14, each at level `m`.

use super::op::{apply as apply_op, Canvas, Op};

/// RandAugment's operation list.
pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Rotate,
    Op::Solarize,
    Op::Color,
    Op::Posterize,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// Applies `n` uniformly drawn ops (with replacement) at level `m`; returns `n`.
pub fn apply(
    n: usize,
    m: u8,
    rng: &mut fastrand::Rng,
    img: &mut [u8],
    canvas: &mut Canvas,
) -> usize {
    for _ in 0..n {
        apply_op(OPS[rng.usize(0..OPS.len())], m, rng, img, canvas);
    }
    n
}
