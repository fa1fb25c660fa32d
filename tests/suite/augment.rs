//! The augmentation stage: determinism across thread counts, the fused crop/flip/normalise path
//! against the individual ops, cutout, collation buffers.

use cifar_stream::augment::ops::{self, cutout, PadFill};
use cifar_stream::augment::{collate, AugmentConfig, Augmenter, Batch, PolicyName};
use cifar_stream::seed;
use cifar_stream::source::synthetic;
use cifar_stream::store::{Memory, Shape};
use indicatif::ProgressBar;

const MEAN: [f64; 3] = [0.49, 0.48, 0.45];
const STD: [f64; 3] = [0.25, 0.24, 0.26];

fn images(per_class: usize) -> Memory {
    let d = synthetic::generate(per_class, 11, &ProgressBar::hidden());
    Memory {
        shape: d.shape,
        pixels: d.train.pixels,
        labels: d.train.labels,
    }
}

fn normalise(hwc: &[u8]) -> Vec<f32> {
    let mut chw = vec![0f32; hwc.len()];
    let plane = hwc.len() / 3;
    for (i, px) in hwc.chunks(3).enumerate() {
        for k in 0..3 {
            chw[k * plane + i] = ((px[k] as f64 / 255.0 - MEAN[k]) / STD[k]) as f32;
        }
    }
    chw
}

fn collate_with_threads(threads: usize, config: &AugmentConfig, epoch: usize) -> Batch {
    let imgs = images(20);
    let aug = Augmenter::new(config, 200, 42, imgs.shape, &MEAN, &STD);
    let indices: Vec<usize> = (0..200).rev().step_by(3).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut batch = Batch::default();
    pool.install(|| collate(&aug, &imgs, &indices, epoch, &mut batch));
    batch
}

#[test]
fn same_seed_gives_identical_batches_on_1_and_2_threads() {
    for policy in [
        PolicyName::Pba,
        PolicyName::Autoaugment,
        PolicyName::Randaugment,
        PolicyName::Basic,
    ] {
        let config = AugmentConfig::with_policy(policy);
        let one = collate_with_threads(1, &config, 150);
        let two = collate_with_threads(2, &config, 150);
        assert_eq!(one.images, two.images, "{policy:?}");
        assert_eq!(one.labels, two.labels);
        let other_epoch = collate_with_threads(2, &config, 151);
        assert_ne!(
            one.images, other_epoch.images,
            "{policy:?}: a new epoch draws anew"
        );
    }
}

#[test]
fn fused_crop_flip_normalise_equals_the_ops_one_by_one() {
    let imgs = images(2);
    let shape = imgs.shape;
    for fill in [PadFill::Zero, PadFill::Reflect] {
        let config = AugmentConfig {
            crop_fill: fill,
            cutout_holes: 0,
            ..AugmentConfig::with_policy(PolicyName::Basic)
        };
        let aug = Augmenter::new(&config, 10, 7, shape, &MEAN, &STD);
        let mut flips = 0;
        for i in 0..20 {
            let src = &imgs.pixels[i * 3072..(i + 1) * 3072];
            let mut got = vec![0f32; 3072];
            aug.augment_into(src, 3, i, &mut got);
            // The documented draw order: dy, dx, then the flip coin.
            let mut rng = seed::rng(7, &[3, i as u64]);
            let (dy, dx) = (rng.usize(0..=8), rng.usize(0..=8));
            let flip = rng.bool();
            let mut want = vec![0u8; 3072];
            ops::pad_crop(src, &mut want, shape, 4, dy, dx, fill, &[0, 0, 0]);
            if flip {
                ops::hflip(&mut want, shape);
                flips += 1;
            }
            assert_eq!(got, normalise(&want), "image {i}, {fill:?}");
        }
        assert!(flips > 3 && flips < 17, "flip is a fair coin ({flips}/20)");
    }
}

#[test]
fn mean_padding_is_exactly_zero_after_normalisation() {
    let imgs = images(1);
    let config = AugmentConfig {
        flip: false,
        cutout_holes: 0,
        ..AugmentConfig::with_policy(PolicyName::Basic)
    };
    let aug = Augmenter::new(&config, 10, 1, imgs.shape, &MEAN, &STD);
    let mut zero_rows = 0;
    for i in 0..10 {
        let mut out = vec![1f32; 3072];
        aug.augment_into(&imgs.pixels[i * 3072..(i + 1) * 3072], 0, i, &mut out);
        // A vertical shift leaves whole rows of padding.
        zero_rows += (0..32)
            .filter(|y| (0..3).all(|k| out[k * 1024 + y * 32..][..32].iter().all(|&v| v == 0.0)))
            .count();
    }
    assert!(zero_rows > 0);
}

#[test]
fn cutout_clears_exactly_the_drawn_squares() {
    let imgs = images(1);
    let config = AugmentConfig {
        crop: false,
        flip: false,
        cutout_holes: 3,
        cutout_length: 4,
        ..AugmentConfig::with_policy(PolicyName::None)
    };
    let aug = Augmenter::new(&config, 10, 5, imgs.shape, &MEAN, &STD);
    for i in 0..10 {
        let src = &imgs.pixels[i * 3072..(i + 1) * 3072];
        let mut got = vec![0f32; 3072];
        aug.augment_into(src, 2, i, &mut got);
        let mut want = normalise(src);
        let mut rng = seed::rng(5, &[2, i as u64]);
        for _ in 0..3 {
            let r = cutout::draw_box(&mut rng, 32, 32, 4);
            assert!(r.y1 - r.y0 <= 4 && r.x1 - r.x0 <= 4);
            cutout::zero_chw(&mut want, 32, 32, r);
        }
        assert_eq!(got, want, "image {i}");
    }
}

#[test]
fn none_policy_is_plain_normalisation() {
    let imgs = images(1);
    let aug = Augmenter::new(
        &AugmentConfig::with_policy(PolicyName::None),
        10,
        5,
        imgs.shape,
        &MEAN,
        &STD,
    );
    let mut out = vec![0f32; 3072];
    aug.augment_into(&imgs.pixels[..3072], 0, 0, &mut out);
    assert_eq!(out, normalise(&imgs.pixels[..3072]));
    let mut back = vec![0u8; 3072];
    aug.to_hwc_u8(&out, &mut back);
    assert_eq!(back, &imgs.pixels[..3072]);
}

#[test]
fn pba_applies_nothing_in_its_first_segment_and_something_later() {
    let imgs = images(5);
    let config = AugmentConfig {
        crop: false,
        flip: false,
        cutout_holes: 0,
        ..AugmentConfig::recipe()
    };
    let aug = Augmenter::new(&config, 200, 3, imgs.shape, &MEAN, &STD);
    let changed = |epoch: usize| {
        (0..50)
            .filter(|&i| {
                let src = &imgs.pixels[i * 3072..(i + 1) * 3072];
                let mut out = vec![0f32; 3072];
                aug.augment_into(src, epoch, i, &mut out);
                out != normalise(src)
            })
            .count()
    };
    assert_eq!(
        changed(0),
        0,
        "the schedule's first policy has all probabilities 0"
    );
    let late = changed(199);
    // 80% of images draw at least one op; the last policy's probabilities are high.
    assert!(late > 25, "{late}/50 changed at epoch 199");
}

#[test]
fn collation_fills_labels_and_reuses_its_buffers() {
    let imgs = images(10);
    let aug = Augmenter::new(&AugmentConfig::recipe(), 200, 1, imgs.shape, &MEAN, &STD);
    let mut batch = Batch::with_capacity(32, aug.output_len());
    let ptr = batch.images.as_ptr();
    for step in 0..3 {
        let indices: Vec<usize> = (step * 32..(step + 1) * 32).collect();
        collate(&aug, &imgs, &indices, 5, &mut batch);
        assert_eq!(batch.len(), 32);
        assert_eq!(batch.images.len(), 32 * 3072);
        assert_eq!(
            batch.labels,
            indices
                .iter()
                .map(|&i| imgs.labels[i] as u32)
                .collect::<Vec<_>>()
        );
        assert_eq!(batch.images.as_ptr(), ptr, "no reallocation once sized");
    }
}

#[test]
fn shapes_other_than_32x32_work() {
    let shape = Shape {
        height: 12,
        width: 20,
        channels: 3,
    };
    let imgs = Memory {
        shape,
        pixels: (0..shape.image_len() * 4)
            .map(|i| (i * 31 % 256) as u8)
            .collect(),
        labels: vec![0, 1, 2, 3],
    };
    let aug = Augmenter::new(&AugmentConfig::recipe(), 200, 1, shape, &MEAN, &STD);
    let mut batch = Batch::default();
    collate(&aug, &imgs, &[3, 1], 150, &mut batch);
    assert_eq!(batch.images.len(), 2 * 720);
    assert!(batch.images.iter().all(|v| v.is_finite()));
}

#[test]
fn alternating_flip_mirrors_each_image_on_exactly_every_other_epoch() {
    let imgs = images(2);
    let config = AugmentConfig {
        crop: false,
        cutout_holes: 0,
        alternating_flip: true,
        ..AugmentConfig::with_policy(PolicyName::Basic)
    };
    let aug = Augmenter::new(&config, 10, 5, imgs.shape, &MEAN, &STD);
    let mut first_flipped = 0;
    for i in 0..20 {
        let src = &imgs.pixels[i * 3072..(i + 1) * 3072];
        let plain = normalise(src);
        let mut mirrored_src = src.to_vec();
        ops::hflip(&mut mirrored_src, imgs.shape);
        let mirrored = normalise(&mirrored_src);
        assert_ne!(
            plain, mirrored,
            "image {i} is its own mirror: a useless probe"
        );
        let flipped_in = |epoch: usize| {
            let mut out = vec![0f32; 3072];
            aug.augment_into(src, epoch, i, &mut out);
            assert!(out == plain || out == mirrored, "image {i}, epoch {epoch}");
            out == mirrored
        };
        let first = flipped_in(0);
        for epoch in 1..6 {
            assert_eq!(
                flipped_in(epoch),
                first ^ (epoch % 2 == 1),
                "image {i}, epoch {epoch}"
            );
        }
        first_flipped += first as usize;
    }
    assert!(
        first_flipped > 3 && first_flipped < 17,
        "the first epoch's flip is a fair coin per image ({first_flipped}/20)"
    );
}
