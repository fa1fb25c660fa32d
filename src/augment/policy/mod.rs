//! Augmentation policies: which PIL-style operations to apply to an image, with what
//! probability and magnitude.
//!
//! Magnitudes are *levels* 0–10 mapped to strengths as in the AutoAugment authors' code, which PBA
//! reuses (`f(max) = level·max/10`, `i(max) = ⌊level·max/10⌋`): Rotate `i(30)`°, ShearX/Y `f(0.3)`,
//! TranslateX/Y `i(10)` px (signs random), Brightness/Color/Contrast/Sharpness factor
//! `f(1.8)+0.1`, Posterize `4−i(4)` bits, Solarize threshold `256−i(256)`, Cutout side `i(20)`.

pub mod autoaugment;
mod op;
pub mod pba;
pub mod randaugment;

pub use op::{apply, Canvas, Entry, Op, CUTOUT_GREY, MAX_LEVEL};

/// Which policy ops run before crop / flip / cutout.
#[derive(Clone, Debug)]
pub enum PolicyOps {
    /// No policy op.
    None,
    /// The PBA schedule, stretched to the run's epochs.
    Pba(pba::Schedule),
    /// The 25 AutoAugment CIFAR-10 sub-policies.
    AutoAugment,
    /// RandAugment with `n` ops at level `m`.
    RandAugment {
        /// Ops per image.
        n: usize,
        /// Level 0–10.
        m: u8,
    },
}

impl PolicyOps {
    /// Applies the policy to one image; returns how many ops were applied.
    pub fn apply(
        &self,
        epoch: usize,
        rng: &mut fastrand::Rng,
        img: &mut [u8],
        canvas: &mut Canvas,
    ) -> usize {
        match self {
            PolicyOps::None => 0,
            PolicyOps::Pba(schedule) => pba::apply(schedule.policy_at(epoch), rng, img, canvas),
            PolicyOps::AutoAugment => autoaugment::apply(rng, img, canvas),
            PolicyOps::RandAugment { n, m } => randaugment::apply(*n, *m, rng, img, canvas),
        }
    }
}
