//! The memory-mapped dataset store: one validated, checksummed file per split.
//!
//! A store is a directory holding `train.store` and `test.store`. Each file is written once,
//! atomically ([`Writer`] → [`Staged::commit`]), and read zero-copy through `memmap2`
//! ([`Reader`]).
//!
//! # File format, version 1
//!
//! All integers little-endian. The header is one 4096-byte page so that the pixel block starts
//! page-aligned:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `CIFSTORE` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | header length (`4096`) = pixel offset |
//! | 16 | 8 | image count `N` |
//! | 24 | 4×3 | height `H`, width `W`, channels `C` |
//! | 36 | 4 | pixel layout (`1` = HWC, `u8`) |
//! | 40 | 8×4 | pixel offset, pixel length (`N·H·W·C`), label offset, label length (`N`) |
//! | 72 | 8 | payload checksum: xxh3-64 of the pixel block followed by the label block |
//! | 80 | 4 | class count `K` (1–256) |
//! | 84 | 4 | reserved (0) |
//! | 88 | 8·C | per-channel mean of the split's pixels, `f64`, 0–1 scale |
//! | … | 8·C | per-channel standard deviation (population), `f64`, 0–1 scale |
//! | … | … | `K` class names, each a `u32` byte length then UTF-8 |
//! | … | … | zero padding |
//! | 4088 | 8 | header checksum: xxh3-64 of header bytes 0–4087 |
//! | 4096 | N·H·W·C | pixels, image after image, each row-major with channels interleaved |
//! | 4096 + N·H·W·C | N | labels, one byte per image (`label < K`) |
//!
//! The file length must be exactly `4096 + N·H·W·C + N`. Opening validates magic, version,
//! header checksum, sizes and every label; `verify` rehashes the payload.

mod error;
mod format;
mod reader;
mod summary;
mod writer;

pub use error::{Error, Result};
pub use format::{Header, PixelLayout, Shape, HEADER_LEN, MAGIC, VERSION};
pub use reader::Reader;
pub use summary::{SplitSummary, Summary};
pub use writer::{temp_file_in, Staged, Writer};

use std::path::{Path, PathBuf};

/// The two splits a store directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training images.
    Train,
    /// Held-out test images.
    Test,
}

impl Split {
    /// Both splits, train first.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The split's file inside a store directory.
    pub fn path_in(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.store", self.name()))
    }
}

/// Random access to labelled same-shaped images: what the augmentation stage reads.
pub trait Images: Sync {
    /// Shape of every image.
    fn shape(&self) -> Shape;
    /// Number of images.
    fn len(&self) -> usize;
    /// True when there is no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// HWC bytes of image `index`.
    fn image(&self, index: usize) -> &[u8];
    /// Label of image `index`.
    fn label(&self, index: usize) -> u8;
    /// Whether the images can still be read (a mapped file can be truncated under its reader;
    /// reading past the new end would fault).
    fn check_intact(&self) -> Result<()> {
        Ok(())
    }
}

impl Images for Reader {
    fn shape(&self) -> Shape {
        Reader::shape(self)
    }
    fn len(&self) -> usize {
        Reader::len(self)
    }
    fn check_intact(&self) -> Result<()> {
        Reader::check_intact(self)
    }
    fn image(&self, index: usize) -> &[u8] {
        Reader::image(self, index)
    }
    fn label(&self, index: usize) -> u8 {
        Reader::label(self, index)
    }
}

/// Images held in memory (tests, benchmarks, generated data).
pub struct Memory {
    /// Shape of every image.
    pub shape: Shape,
    /// Images back to back, HWC.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Images for Memory {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn image(&self, index: usize) -> &[u8] {
        let n = self.shape.image_len();
        &self.pixels[index * n..(index + 1) * n]
    }
    fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
