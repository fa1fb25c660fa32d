//! AutoAugment's 25 CIFAR-10 sub-policies (Cubuk et al., 2019, as listed by torchvision), with
//! the level → strength mapping of the authors' code. Ops without a magnitude carry level 0.

use super::op::{apply as apply_op, Canvas, Op};

use Op::*;

/// `((op, probability, level), (op, probability, level))` for each sub-policy.
pub const CIFAR10: [[(Op, f32, u8); 2]; 25] = [
    [(Invert, 0.1, 0), (Contrast, 0.2, 6)],
    [(Rotate, 0.7, 2), (TranslateX, 0.3, 9)],
    [(Sharpness, 0.8, 1), (Sharpness, 0.9, 3)],
    [(ShearY, 0.5, 8), (TranslateY, 0.7, 9)],
    [(AutoContrast, 0.5, 0), (Equalize, 0.9, 0)],
    [(ShearY, 0.2, 7), (Posterize, 0.3, 7)],
    [(Color, 0.4, 3), (Brightness, 0.6, 7)],
    [(Sharpness, 0.3, 9), (Brightness, 0.7, 9)],
    [(Equalize, 0.6, 0), (Equalize, 0.5, 0)],
    [(Contrast, 0.6, 7), (Sharpness, 0.6, 5)],
    [(Color, 0.7, 7), (TranslateX, 0.5, 8)],
    [(Equalize, 0.3, 0), (AutoContrast, 0.4, 0)],
    [(TranslateY, 0.4, 3), (Sharpness, 0.2, 6)],
    [(Brightness, 0.9, 6), (Color, 0.2, 8)],
    [(Solarize, 0.5, 2), (Invert, 0.0, 0)],
    [(Equalize, 0.2, 0), (AutoContrast, 0.6, 0)],
    [(Equalize, 0.2, 0), (Equalize, 0.6, 0)],
    [(Color, 0.9, 9), (Equalize, 0.6, 0)],
    [(AutoContrast, 0.8, 0), (Solarize, 0.2, 8)],
    [(Brightness, 0.1, 3), (Color, 0.7, 0)],
    [(Solarize, 0.4, 5), (AutoContrast, 0.9, 0)],
    [(TranslateY, 0.9, 9), (TranslateY, 0.7, 9)],
    [(AutoContrast, 0.9, 0), (Solarize, 0.2, 3)],
    [(Equalize, 0.8, 0), (Invert, 0.1, 0)],
    [(TranslateY, 0.7, 9), (AutoContrast, 0.9, 0)],
];

/// Picks one sub-policy uniformly and applies each of its two ops with its probability.
pub fn apply(rng: &mut fastrand::Rng, img: &mut [u8], canvas: &mut Canvas) -> usize {
    let sub = &CIFAR10[rng.usize(0..CIFAR10.len())];
    let mut applied = 0;
    for &(op, prob, level) in sub {
        if rng.f32() < prob {
            apply_op(op, level, rng, img, canvas);
            applied += 1;
        }
    }
    applied
}
