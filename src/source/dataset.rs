//! A decoded dataset in memory: what every source produces and a store is written from.

use crate::store::Shape;

/// CIFAR-10's class names in label order (also the alphabetical order of the folder names).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The images and labels of one split, decoded to HWC bytes.
pub struct SplitData {
    /// Images back to back, HWC `u8`.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Seconds spent decoding this split.
    pub seconds: f64,
}

impl SplitData {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A whole decoded dataset, ready to be written as a store.
pub struct Dataset {
    /// Where it came from, for messages.
    pub origin: String,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Shape of every image.
    pub shape: Shape,
    /// Training split.
    pub train: SplitData,
    /// Test split.
    pub test: SplitData,
}
