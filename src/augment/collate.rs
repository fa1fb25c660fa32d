//! Collation: a list of image indices → one contiguous, augmented, normalised NCHW `f32` batch,
//! built in parallel on the rayon pool into a reusable buffer.

use rayon::prelude::*;

use super::Augmenter;
use crate::store::Images;

/// One training batch in host memory; its buffers are reused from batch to batch.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// `len × C × H × W` floats, image after image.
    pub images: Vec<f32>,
    /// One class index per image.
    pub labels: Vec<u32>,
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    /// Epoch the batch belongs to.
    pub epoch: usize,
    /// Position of the batch within its epoch.
    pub batch: usize,
}

impl Batch {
    /// An empty batch with room for `capacity` images of `image_len` floats.
    pub fn with_capacity(capacity: usize, image_len: usize) -> Self {
        Batch {
            images: Vec::with_capacity(capacity * image_len),
            labels: Vec::with_capacity(capacity),
            indices: Vec::with_capacity(capacity),
            epoch: 0,
            batch: 0,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Fills `batch` with the augmented images `indices` of `images` for `epoch`.
///
/// Reuses the batch's buffers: once they have grown to the batch size, nothing is allocated.
pub fn collate(
    aug: &Augmenter,
    images: &dyn Images,
    indices: &[usize],
    epoch: usize,
    batch: &mut Batch,
) {
    let len = aug.output_len();
    batch.images.resize(indices.len() * len, 0.0);
    batch.labels.clear();
    batch
        .labels
        .extend(indices.iter().map(|&i| images.label(i) as u32));
    batch.indices.clear();
    batch.indices.extend_from_slice(indices);
    batch.epoch = epoch;
    batch
        .images
        .par_chunks_mut(len)
        .zip(indices.par_iter())
        .with_min_len(4)
        .for_each(|(out, &i)| aug.augment_into(images.image(i), epoch, i, out));
}
