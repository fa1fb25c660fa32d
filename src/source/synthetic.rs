//! The embedded default dataset: deterministic, CIFAR-shaped, 10 learnable classes.
//!
//! Each class is a shape or a texture (disk, square, triangle, plus, ring, horizontal / vertical /
//! diagonal stripes, checkerboard, X) drawn with random colours, position, size and phase, plus
//! per-pixel noise, so that colour alone says nothing and a small CNN has to look at structure.
//! Image `i` of a split is drawn from a generator seeded by `(seed, split, i)`, so the output is
//! identical whatever the thread count.

use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;

use super::dataset::{Dataset, SplitData};
use crate::seed;
use crate::store::Shape;

/// Class names of the synthetic dataset, in label order.
pub const CLASSES: [&str; 10] = [
    "disk", "square", "triangle", "plus", "ring", "hstripes", "vstripes", "dstripes", "checker",
    "cross",
];

/// Test images per class for a given number of training images per class (one fifth, at least 1).
pub fn test_per_class(train_per_class: usize) -> usize {
    train_per_class.div_ceil(5).max(1)
}

/// Generates the dataset: `per_class` training and [`test_per_class`] test images per class.
pub fn generate(per_class: usize, seed: u64, progress: &ProgressBar) -> Dataset {
    let test_per_class = test_per_class(per_class);
    progress.set_length(((per_class + test_per_class) * CLASSES.len()) as u64);
    progress.set_position(0);
    progress.set_message("generating images");
    let train = generate_split(per_class, seed, 0, progress);
    let test = generate_split(test_per_class, seed, 1, progress);
    Dataset {
        origin: format!("synthetic (seed {seed}, {per_class} train images per class)"),
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        shape: Shape::CIFAR,
        train,
        test,
    }
}

fn generate_split(per_class: usize, seed: u64, split: u64, progress: &ProgressBar) -> SplitData {
    let start = Instant::now();
    let len = Shape::CIFAR.image_len();
    let count = per_class * CLASSES.len();
    let mut pixels = vec![0u8; count * len];
    pixels.par_chunks_mut(len).enumerate().for_each(|(i, out)| {
        let mut rng = seed::rng(seed, &[split, i as u64]);
        draw(i / per_class, &mut rng, out);
        progress.inc(1);
    });
    SplitData {
        pixels,
        labels: (0..count).map(|i| (i / per_class) as u8).collect(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Draws one 32×32 RGB image of `class` into `out` (HWC).
fn draw(class: usize, rng: &mut fastrand::Rng, out: &mut [u8]) {
    let fg = random_colour(rng);
    let bg = loop {
        let c = random_colour(rng);
        // Keep the shape visible: at least this much colour difference in total.
        if fg
            .iter()
            .zip(&c)
            .map(|(a, b)| a.abs_diff(*b) as u32)
            .sum::<u32>()
            >= 160
        {
            break c;
        }
    };
    let cx = 15.5 + rng.i32(-4..=4) as f32;
    let cy = 15.5 + rng.i32(-4..=4) as f32;
    let s = 7.0 + rng.f32() * 6.0; // shape radius, 7..13 px
    let period = rng.i32(3..=5);
    let phase = rng.i32(0..16);
    for y in 0..32i32 {
        for x in 0..32i32 {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let r = (dx * dx + dy * dy).sqrt();
            let band = |v: i32| (v + phase).div_euclid(period) % 2 == 0;
            let inside = match class {
                0 => r < s,
                1 => dx.abs().max(dy.abs()) < s * 0.8,
                2 => dy < s * 0.7 && dy > -s * 0.9 && dx.abs() < (dy + s * 0.9) * 0.55,
                3 => (dx.abs() < s * 0.28 && dy.abs() < s) || (dy.abs() < s * 0.28 && dx.abs() < s),
                4 => r < s && r > s * 0.55,
                5 => band(y),
                6 => band(x),
                7 => band(x + y),
                8 => band(x) ^ band(y),
                _ => (dx.abs() - dy.abs()).abs() < s * 0.25 && r < s,
            };
            let base = if inside { fg } else { bg };
            let px = &mut out[(y * 32 + x) as usize * 3..][..3];
            for (o, b) in px.iter_mut().zip(base) {
                *o = (b as i32 + rng.i32(-24..=24)).clamp(0, 255) as u8;
            }
        }
    }
}

fn random_colour(rng: &mut fastrand::Rng) -> [u8; 3] {
    [rng.u8(..), rng.u8(..), rng.u8(..)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_pixels_other_seed_other_pixels() {
        let p = ProgressBar::hidden();
        let a = generate(3, 1, &p);
        let b = generate(3, 1, &p);
        let c = generate(3, 2, &p);
        assert_eq!(a.train.pixels, b.train.pixels);
        assert_eq!(a.test.pixels, b.test.pixels);
        assert_ne!(a.train.pixels, c.train.pixels);
        assert_eq!(a.train.labels.len(), 30);
        assert_eq!(a.test.labels.len(), 10);
    }
}
