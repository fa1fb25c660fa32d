//! The on-disk header of a store file (format v1) and the constants that define the layout.

use std::path::Path;

use super::error::{Error, Result};

/// First eight bytes of every store file.
pub const MAGIC: [u8; 8] = *b"CIFSTORE";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header size; also the pixel block's offset, so the pixels start on a page boundary.
pub const HEADER_LEN: usize = 4096;
/// Byte offset of the header's own checksum (the header's last eight bytes).
const HEADER_CHECKSUM_AT: usize = HEADER_LEN - 8;
/// Byte offset where the variable part (mean, std, class names) starts.
const VARIABLE_AT: usize = 88;

/// Largest image side a store may declare (far above CIFAR's 32, and small enough that no
/// product of header fields can overflow).
pub const MAX_SIDE: u32 = 1 << 15;
/// Most channels per pixel a store may declare (gray, gray + alpha, RGB, RGBA).
pub const MAX_CHANNELS: u32 = 4;
/// Most images a store may declare.
pub const MAX_COUNT: u64 = 1 << 40;

/// Height, width and channel count of every image in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Rows per image.
    pub height: u32,
    /// Columns per image.
    pub width: u32,
    /// Interleaved channels per pixel (3 for RGB).
    pub channels: u32,
}

impl Shape {
    /// CIFAR-10's 32×32 RGB.
    pub const CIFAR: Shape = Shape {
        height: 32,
        width: 32,
        channels: 3,
    };

    /// Bytes per image (`height × width × channels`).
    pub fn image_len(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// The NCHW dimensions of `n` images of this shape (what the model takes).
    pub fn nchw(&self, n: usize) -> (usize, usize, usize, usize) {
        (
            n,
            self.channels as usize,
            self.height as usize,
            self.width as usize,
        )
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.height, self.width, self.channels)
    }
}

/// How pixel bytes are ordered inside one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelLayout {
    /// Row-major, channels interleaved (`y, x, c`): what crops and flips want.
    Hwc = 1,
}

/// Everything a reader needs to interpret a store file.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Number of images (and labels).
    pub count: u64,
    /// Shape shared by every image.
    pub shape: Shape,
    /// Byte order inside one image.
    pub layout: PixelLayout,
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
    /// Per-channel pixel mean of the split, on the 0–1 scale.
    pub mean: Vec<f64>,
    /// Per-channel pixel standard deviation of the split, on the 0–1 scale.
    pub std: Vec<f64>,
    /// xxh3-64 of the pixel block followed by the label block.
    pub checksum: u64,
}

impl Header {
    /// Offset of the pixel block (page-aligned).
    pub fn pixel_offset(&self) -> u64 {
        HEADER_LEN as u64
    }

    /// Length of the pixel block in bytes (the bounds [`Header::decode`] and
    /// [`Header::encode`] enforce keep this below 2^80; it saturates rather than wraps).
    pub fn pixel_len(&self) -> u64 {
        self.count.saturating_mul(self.shape.image_len() as u64)
    }

    /// Offset of the label block (right after the pixels).
    pub fn label_offset(&self) -> u64 {
        self.pixel_offset().saturating_add(self.pixel_len())
    }

    /// Length of the label block: one byte per image.
    pub fn label_len(&self) -> u64 {
        self.count
    }

    /// Total size of a valid file with this header (saturating: a header that would need more
    /// than `u64::MAX` bytes never matches a real file's length).
    pub fn file_len(&self) -> u64 {
        self.label_offset().saturating_add(self.label_len())
    }

    /// Checks the header's sizes are ones the format can hold, naming what is out of range.
    fn check_bounds(shape: Shape, count: u64) -> std::result::Result<(), String> {
        let sides = 1..=MAX_SIDE;
        if !sides.contains(&shape.height) || !sides.contains(&shape.width) {
            return Err(format!(
                "image shape {shape}: sides must be 1 to {MAX_SIDE}"
            ));
        }
        if !(1..=MAX_CHANNELS).contains(&shape.channels) {
            return Err(format!("image shape {shape}: 1 to {MAX_CHANNELS} channels"));
        }
        if count > MAX_COUNT {
            return Err(format!("{count} images: at most {MAX_COUNT}"));
        }
        Ok(())
    }

    /// Serialises the header into exactly [`HEADER_LEN`] bytes.
    pub fn encode(&self, path: &Path) -> Result<Vec<u8>> {
        let invalid = |reason: String| Error::InvalidMeta {
            path: path.to_path_buf(),
            reason,
        };
        let channels = self.shape.channels as usize;
        Header::check_bounds(self.shape, self.count).map_err(invalid)?;
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(invalid(format!(
                "{} channels but {} means and {} stds",
                channels,
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.classes.is_empty() || self.classes.len() > 256 {
            return Err(invalid(format!(
                "{} classes (labels are bytes: 1 to 256 classes)",
                self.classes.len()
            )));
        }
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b.extend_from_slice(&self.count.to_le_bytes());
        for v in [self.shape.height, self.shape.width, self.shape.channels] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.layout as u32).to_le_bytes());
        for v in [
            self.pixel_offset(),
            self.pixel_len(),
            self.label_offset(),
            self.label_len(),
            self.checksum,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.classes.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(b.len(), VARIABLE_AT);
        for v in self.mean.iter().chain(&self.std) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for name in &self.classes {
            b.extend_from_slice(&(name.len() as u32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > HEADER_CHECKSUM_AT {
            return Err(invalid(format!(
                "class names need {} header bytes, at most {} fit",
                b.len(),
                HEADER_CHECKSUM_AT
            )));
        }
        b.resize(HEADER_CHECKSUM_AT, 0);
        let sum = xxhash_rust::xxh3::xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        Ok(b)
    }

    /// Parses and validates a header from the first bytes of a file.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Header> {
        let corrupt = |offset: usize, reason: String| Error::CorruptHeader {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                found: bytes[..bytes.len().min(MAGIC.len())].to_vec(),
                expected: MAGIC.to_vec(),
            });
        }
        let mut r = Cursor {
            bytes,
            at: MAGIC.len(),
        };
        let version = r
            .u32()
            .ok_or_else(|| corrupt(8, "file ends inside the header".into()))?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::SizeMismatch {
                path: path.to_path_buf(),
                what: "file shorter than its header",
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        let stored_sum =
            u64::from_le_bytes(bytes[HEADER_CHECKSUM_AT..HEADER_LEN].try_into().unwrap());
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER_CHECKSUM_AT]);
        if sum != stored_sum {
            return Err(corrupt(
                HEADER_CHECKSUM_AT,
                format!("header checksum {stored_sum:016x} does not match its bytes ({sum:016x})"),
            ));
        }
        // The header checksum matched, so every fixed field below is present.
        let header_len = r.u32().unwrap();
        if header_len as usize != HEADER_LEN {
            return Err(corrupt(
                12,
                format!("header length {header_len}, expected {HEADER_LEN}"),
            ));
        }
        let count = r.u64().unwrap();
        let shape = Shape {
            height: r.u32().unwrap(),
            width: r.u32().unwrap(),
            channels: r.u32().unwrap(),
        };
        let layout = match r.u32().unwrap() {
            1 => PixelLayout::Hwc,
            other => return Err(corrupt(36, format!("unknown pixel layout {other}"))),
        };
        let offsets = [
            r.u64().unwrap(),
            r.u64().unwrap(),
            r.u64().unwrap(),
            r.u64().unwrap(),
        ];
        let checksum = r.u64().unwrap();
        let num_classes = r.u32().unwrap() as usize;
        let _reserved = r.u32().unwrap();
        // Bounded before any size is computed from them: no product below can overflow.
        Header::check_bounds(shape, count).map_err(|reason| corrupt(16, reason))?;
        if num_classes == 0 || num_classes > 256 {
            return Err(corrupt(
                80,
                format!("{num_classes} classes (must be 1 to 256)"),
            ));
        }
        let mut stat = |n: usize| -> Result<Vec<f64>> {
            (0..n)
                .map(|_| {
                    r.f64()
                        .ok_or_else(|| corrupt(r.at, "statistics run past the header".into()))
                })
                .collect()
        };
        let mean = stat(shape.channels as usize)?;
        let std = stat(shape.channels as usize)?;
        let mut classes = Vec::with_capacity(num_classes);
        for i in 0..num_classes {
            let at = r.at;
            let len = r
                .u32()
                .ok_or_else(|| corrupt(at, format!("class name {i} runs past the header")))?
                as usize;
            let name = r.take(len).ok_or_else(|| {
                corrupt(
                    at,
                    format!("class name {i} ({len} bytes) runs past the header"),
                )
            })?;
            let name = std::str::from_utf8(name)
                .map_err(|e| corrupt(at, format!("class name {i} is not UTF-8: {e}")))?;
            classes.push(name.to_owned());
        }
        let header = Header {
            count,
            shape,
            layout,
            classes,
            mean,
            std,
            checksum,
        };
        let derived = [
            ("pixel offset", header.pixel_offset()),
            ("pixel block length", header.pixel_len()),
            ("label offset", header.label_offset()),
            ("label block length", header.label_len()),
        ];
        for ((what, expected), found) in derived.into_iter().zip(offsets) {
            if expected != found {
                return Err(Error::SizeMismatch {
                    path: path.to_path_buf(),
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(header)
    }
}

/// A bounds-checked little-endian reader over the header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        // Nothing variable may spill into the header checksum.
        if end > HEADER_CHECKSUM_AT.min(self.bytes.len()) {
            return None;
        }
        let s = &self.bytes[self.at..end];
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
    }
    fn f64(&mut self) -> Option<f64> {
        self.take(8)
            .map(|s| f64::from_le_bytes(s.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            count: 3,
            shape: Shape::CIFAR,
            layout: PixelLayout::Hwc,
            classes: vec!["a".into(), "bé".into()],
            mean: vec![0.1, 0.2, 0.3],
            std: vec![0.4, 0.5, 0.6],
            checksum: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips() {
        let p = Path::new("x");
        let bytes = header().encode(p).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(Header::decode(p, &bytes).unwrap(), header());
    }

    #[test]
    fn flipped_header_byte_is_detected() {
        let p = Path::new("x");
        let mut bytes = header().encode(p).unwrap();
        bytes[100] ^= 1;
        assert!(matches!(
            Header::decode(p, &bytes),
            Err(Error::CorruptHeader { .. })
        ));
    }

    #[test]
    fn too_many_class_bytes_is_refused() {
        let mut h = header();
        h.classes = vec!["x".repeat(200); 30];
        assert!(matches!(
            h.encode(Path::new("x")),
            Err(Error::InvalidMeta { .. })
        ));
    }
}
