//! The per-image augmentation path: policy ops → pad-and-crop → flip → normalise to CHW `f32`
//! → cutout, every draw from a generator seeded by `(seed, epoch, index)`.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::ops::{cutout, geometric::reflect, PadFill};
use super::policy::{pba, Canvas, PolicyOps};
use crate::seed;
use crate::store::{Header, Shape};

/// The seed stream of each image's first flip under the alternating flip: independent of the
/// epoch, so every other epoch mirrors the same images.
const FLIP_STREAM: u64 = 0x666c_6970;

/// Which policy ops run before crop / flip / cutout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Population Based Augmentation's CIFAR-10 schedule (the recipe's default).
    Pba,
    /// AutoAugment's 25 CIFAR-10 sub-policies.
    Autoaugment,
    /// RandAugment with N ops at level M.
    Randaugment,
    /// Crop and flip only (no policy op, no cutout).
    Basic,
    /// Nothing but normalisation.
    None,
}

/// Everything that defines the training augmentation; serialisable into a run's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Policy ops.
    pub policy: PolicyName,
    /// RandAugment: ops per image.
    pub randaugment_n: usize,
    /// RandAugment: level 0–10.
    pub randaugment_m: u8,
    /// Random pad-and-crop on/off.
    pub crop: bool,
    /// Padding on every side for the crop.
    pub crop_padding: usize,
    /// What fills the padding.
    pub crop_fill: PadFill,
    /// Random horizontal flip (p = 0.5) on/off.
    pub flip: bool,
    /// With `flip`: each image is mirrored on every other epoch instead of by a fresh coin each
    /// epoch (airbench's alternating flip): a coin per image picks whether its first epoch is.
    #[serde(default)]
    pub alternating_flip: bool,
    /// Cutout holes per image (0 = off).
    pub cutout_holes: usize,
    /// Cutout square side in pixels.
    pub cutout_length: usize,
}

impl AugmentConfig {
    /// The recipe: PBA, crop with 4 px of mean-colour padding, flip, cutout 3 holes × 4 px.
    pub fn recipe() -> Self {
        AugmentConfig {
            policy: PolicyName::Pba,
            randaugment_n: 2,
            randaugment_m: 9,
            crop: true,
            crop_padding: 4,
            crop_fill: PadFill::Mean,
            flip: true,
            alternating_flip: false,
            cutout_holes: 3,
            cutout_length: 4,
        }
    }

    /// The recipe with another policy; `basic` drops cutout, `none` drops crop, flip and cutout.
    pub fn with_policy(policy: PolicyName) -> Self {
        let mut c = AugmentConfig {
            policy,
            ..AugmentConfig::recipe()
        };
        if matches!(policy, PolicyName::Basic | PolicyName::None) {
            c.cutout_holes = 0;
        }
        if policy == PolicyName::None {
            c.crop = false;
            c.flip = false;
        }
        c
    }

    /// This configuration moved to `policy`: a new policy starts from its own defaults (so
    /// `basic` drops cutout) but keeps the cutout length; the same policy keeps everything.
    pub fn switched_to(&self, policy: PolicyName) -> Self {
        if policy == self.policy {
            return self.clone();
        }
        AugmentConfig {
            cutout_length: self.cutout_length,
            ..AugmentConfig::with_policy(policy)
        }
    }
}

/// Per-thread working buffers, so the hot path allocates nothing per image.
struct Buffers {
    work: Vec<u8>,
    scratch: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = const { RefCell::new(Buffers { work: Vec::new(), scratch: Vec::new() }) };
}

/// Turns one stored image into one normalised, augmented CHW `f32` training image.
#[derive(Clone, Debug)]
pub struct Augmenter {
    policy: PolicyOps,
    crop: Option<(usize, PadFill)>,
    flip: bool,
    alternating_flip: bool,
    cutout: Option<(usize, usize)>,
    seed: u64,
    shape: Shape,
    /// Mean colour as bytes: what geometric policy ops uncover.
    fill: Vec<u8>,
    /// `lut[c][v] = (v/255 − mean[c]) / std[c]`.
    lut: Vec<[f32; 256]>,
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Augmenter {
    /// Builds the augmenter for a run of `epochs` epochs over images of `shape` whose
    /// per-channel mean/std (0–1 scale) are given.
    pub fn new(
        config: &AugmentConfig,
        epochs: usize,
        seed: u64,
        shape: Shape,
        mean: &[f64],
        std: &[f64],
    ) -> Self {
        assert_eq!(mean.len(), shape.channels as usize);
        assert_eq!(std.len(), shape.channels as usize);
        let policy = match config.policy {
            PolicyName::Pba => PolicyOps::Pba(pba::Schedule::cifar10(epochs.max(1))),
            PolicyName::Autoaugment => PolicyOps::AutoAugment,
            PolicyName::Randaugment => PolicyOps::RandAugment {
                n: config.randaugment_n,
                m: config.randaugment_m,
            },
            PolicyName::Basic | PolicyName::None => PolicyOps::None,
        };
        let lut = mean
            .iter()
            .zip(std)
            .map(|(&m, &s)| std::array::from_fn(|v| ((v as f64 / 255.0 - m) / s.max(1e-12)) as f32))
            .collect();
        Augmenter {
            policy,
            crop: config
                .crop
                .then_some((config.crop_padding, config.crop_fill)),
            flip: config.flip,
            alternating_flip: config.alternating_flip,
            cutout: (config.cutout_holes > 0 && config.cutout_length > 0)
                .then_some((config.cutout_holes, config.cutout_length)),
            seed,
            shape,
            fill: mean
                .iter()
                .map(|&m| (m * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect(),
            lut,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// An augmenter normalising with a store's own shape and per-channel statistics.
    pub fn for_store(config: &AugmentConfig, epochs: usize, seed: u64, header: &Header) -> Self {
        Augmenter::new(
            config,
            epochs,
            seed,
            header.shape,
            &header.mean,
            &header.std,
        )
    }

    /// Normalisation only (evaluation and prediction): no policy, crop, flip or cutout.
    pub fn normalise_only(shape: Shape, mean: &[f64], std: &[f64]) -> Self {
        Augmenter::new(
            &AugmentConfig::with_policy(PolicyName::None),
            1,
            0,
            shape,
            mean,
            std,
        )
    }

    /// The same augmenter drawing from another seed.
    pub fn with_seed(&self, seed: u64) -> Augmenter {
        Augmenter {
            seed,
            ..self.clone()
        }
    }

    /// Image shape this augmenter expects.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Floats per output image (`C·H·W`).
    pub fn output_len(&self) -> usize {
        self.shape.image_len()
    }

    /// Augments `src` (HWC `u8`, image `index`, epoch `epoch`) into `out` (CHW `f32`).
    pub fn augment_into(&self, src: &[u8], epoch: usize, index: usize, out: &mut [f32]) {
        let mut rng = seed::rng(self.seed, &[epoch as u64, index as u64]);
        if matches!(self.policy, PolicyOps::None) {
            self.crop_flip_normalise(src, (epoch, index), &mut rng, out);
        } else {
            BUFFERS.with(|b| {
                let b = &mut *b.borrow_mut();
                let n = self.shape.image_len();
                b.work.resize(n, 0);
                b.scratch.resize(n, 0);
                b.work.copy_from_slice(src);
                let mut canvas = Canvas {
                    shape: self.shape,
                    fill: &self.fill,
                    scratch: &mut b.scratch,
                };
                self.policy.apply(epoch, &mut rng, &mut b.work, &mut canvas);
                self.crop_flip_normalise(&b.work, (epoch, index), &mut rng, out);
            });
        }
        if let Some((holes, length)) = self.cutout {
            let (h, w) = (self.shape.height as usize, self.shape.width as usize);
            for _ in 0..holes {
                let rect = cutout::draw_box(&mut rng, h, w, length);
                cutout::zero_chw(out, h, w, rect);
            }
        }
    }

    /// Whether image `index` is mirrored in epoch `epoch`.
    fn flips(&self, (epoch, index): (usize, usize), rng: &mut fastrand::Rng) -> bool {
        if !self.flip {
            return false;
        }
        if self.alternating_flip {
            let first = seed::rng(self.seed, &[FLIP_STREAM, index as u64]).bool();
            first ^ (epoch % 2 == 1)
        } else {
            rng.bool()
        }
    }

    /// Pad-and-crop, flip and normalisation fused into one pass writing CHW, for image `at` =
    /// `(epoch, index)`.
    fn crop_flip_normalise(
        &self,
        img: &[u8],
        at: (usize, usize),
        rng: &mut fastrand::Rng,
        out: &mut [f32],
    ) {
        let (w, h, c) = (
            self.shape.width as isize,
            self.shape.height as isize,
            self.shape.channels as usize,
        );
        let (pad, mode) = self.crop.unwrap_or((0, PadFill::Zero));
        let (dy, dx) = match self.crop {
            Some((p, _)) => (rng.usize(0..=2 * p) as isize, rng.usize(0..=2 * p) as isize),
            None => (0, 0),
        };
        let flip = self.flips(at, rng);
        let pad = pad as isize;
        let plane = (w * h) as usize;
        for y in 0..h {
            let sy = y + dy - pad;
            for x in 0..w {
                let sx = (if flip { w - 1 - x } else { x }) + dx - pad;
                let o = (y * w + x) as usize;
                let inside = (0..h).contains(&sy) && (0..w).contains(&sx);
                let (ry, rx) = match (inside, mode) {
                    (true, _) => (sy, sx),
                    (false, PadFill::Reflect) => (reflect(sy, h), reflect(sx, w)),
                    (false, PadFill::Zero) => {
                        (0..c).for_each(|k| out[k * plane + o] = self.lut[k][0]);
                        continue;
                    }
                    // The mean colour is exactly zero after normalisation.
                    (false, PadFill::Mean) => {
                        (0..c).for_each(|k| out[k * plane + o] = 0.0);
                        continue;
                    }
                };
                let px = &img[((ry * w + rx) as usize) * c..][..c];
                for (k, &v) in px.iter().enumerate() {
                    out[k * plane + o] = self.lut[k][v as usize];
                }
            }
        }
    }

    /// Undoes the normalisation of a CHW image into HWC bytes (for previews).
    pub fn to_hwc_u8(&self, chw: &[f32], out: &mut [u8]) {
        let c = self.shape.channels as usize;
        let plane = chw.len() / c;
        for (i, px) in out.chunks_exact_mut(c).enumerate() {
            for (k, v) in px.iter_mut().enumerate() {
                let x = (chw[k * plane + i] as f64 * self.std[k] + self.mean[k]) * 255.0;
                *v = x.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}
