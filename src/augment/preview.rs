//! `augment-preview`: a PNG grid of images × augmented versions, so a person can see what the
//! model sees.

use image::RgbImage;

use super::Augmenter;
use crate::render::{self, Row};
use crate::seed;
use crate::store::Images;

/// Rows: the given images; columns: the original, then `versions` augmentations at `epoch`
/// (version `j` draws from seed `derive(seed, j)`, so the grid is reproducible).
pub fn grid(
    aug: &Augmenter,
    images: &dyn Images,
    classes: &[String],
    indices: &[usize],
    versions: usize,
    epoch: usize,
    seed: u64,
) -> RgbImage {
    let shape = images.shape();
    let mut chw = vec![0f32; shape.image_len()];
    let augmented: Vec<Vec<Vec<u8>>> = indices
        .iter()
        .map(|&i| {
            (0..versions)
                .map(|j| {
                    let mut hwc = vec![0u8; shape.image_len()];
                    aug.with_seed(seed::derive(seed, &[j as u64])).augment_into(
                        images.image(i),
                        epoch,
                        i,
                        &mut chw,
                    );
                    aug.to_hwc_u8(&chw, &mut hwc);
                    hwc
                })
                .collect()
        })
        .collect();
    let rows: Vec<Row> = indices
        .iter()
        .zip(&augmented)
        .map(|(&i, versions)| {
            let class = classes
                .get(images.label(i) as usize)
                .map_or("?", String::as_str);
            let mut cells: Vec<&[u8]> = vec![images.image(i)];
            cells.extend(versions.iter().map(Vec::as_slice));
            Row {
                label: format!("{i} {class}"),
                images: cells,
            }
        })
        .collect();
    render::grid(&rows, shape, 3)
}
