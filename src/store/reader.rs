//! Memory-mapped, validated, zero-copy store reader.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{Error, Result};
use super::format::{Header, Shape, HEADER_LEN};

/// An open store file: the header plus zero-copy views into the mapped pixels and labels.
///
/// Opening checks the header (magic, version, its own checksum, sizes against the file length)
/// and every label; [`Reader::verify`] additionally rehashes the whole payload.
pub struct Reader {
    path: PathBuf,
    /// Kept open to look at the file's length while it is mapped ([`Reader::check_intact`]).
    file: File,
    map: Mmap,
    header: Header,
    image_len: usize,
}

impl Reader {
    /// Maps and validates the store file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and stores are immutable once renamed into place (the
        // writer never modifies a committed file, so replacing a store leaves this mapping on
        // the old inode). Another program truncating the file would make reads past the new
        // end fault (SIGBUS), as with any mmap reader (LMDB, numpy.memmap); the stream calls
        // `check_intact` before each batch so that this surfaces as an error naming the file.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = Header::decode(path, &map[..map.len().min(HEADER_LEN)])?;
        if map.len() as u64 != header.file_len() {
            return Err(Error::SizeMismatch {
                path: path.to_path_buf(),
                what: "file length",
                expected: header.file_len(),
                found: map.len() as u64,
            });
        }
        let reader = Reader {
            path: path.to_path_buf(),
            file,
            image_len: header.shape.image_len(),
            map,
            header,
        };
        let classes = reader.header.classes.len();
        if let Some((i, &label)) = reader
            .labels()
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::LabelOutOfRange {
                path: path.to_path_buf(),
                index: i as u64,
                offset: reader.header.label_offset() + i as u64,
                label,
                classes,
            });
        }
        Ok(reader)
    }

    /// The file this reader maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Image shape.
    pub fn shape(&self) -> Shape {
        self.header.shape
    }

    /// Class names, indexed by label.
    pub fn classes(&self) -> &[String] {
        &self.header.classes
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    /// True when the store holds no image.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The HWC bytes of image `index`, borrowed straight from the map. Panics when out of range.
    #[inline]
    pub fn image(&self, index: usize) -> &[u8] {
        assert!(
            index < self.len(),
            "image {index} out of range ({} images)",
            self.len()
        );
        let start = HEADER_LEN + index * self.image_len;
        &self.map[start..start + self.image_len]
    }

    /// Label of image `index`. Panics when out of range.
    #[inline]
    pub fn label(&self, index: usize) -> u8 {
        self.labels()[index]
    }

    /// Every image, back to back.
    pub fn pixels_all(&self) -> &[u8] {
        let start = self.header.pixel_offset() as usize;
        &self.map[start..start + self.header.pixel_len() as usize]
    }

    /// Every label, in image order.
    pub fn labels(&self) -> &[u8] {
        let start = self.header.label_offset() as usize;
        &self.map[start..start + self.header.label_len() as usize]
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.header.classes.len()];
        for &l in self.labels() {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file still has the length it was mapped with (one `fstat`): a file cut
    /// short under the map is an error here rather than a fault on the next read.
    pub fn check_intact(&self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        if len != self.map.len() as u64 {
            return Err(Error::SizeMismatch {
                path: self.path.clone(),
                what: "file length while mapped (changed under the reader)",
                expected: self.map.len() as u64,
                found: len,
            });
        }
        Ok(())
    }

    /// Rehashes pixels and labels and compares with the header's checksum.
    pub fn verify(&self) -> Result<()> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.pixels_all());
        h.update(self.labels());
        let found = h.digest();
        if found != self.header.checksum {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                expected: self.header.checksum,
                found,
            });
        }
        Ok(())
    }
}
