//! Atomic store writer: stream images into a temporary file beside the destination, then
//! fsync and rename, so a store file either is complete and valid or does not exist.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tempfile::NamedTempFile;

use super::error::{Error, Result};
use super::format::{Header, PixelLayout, Shape, HEADER_LEN};

/// Streams images and labels into a new store file.
///
/// Nothing appears at the destination until [`Writer::finish`] and [`Staged::commit`]; dropping
/// the writer (an error, a panic, Ctrl-C unwinding) deletes the temporary file.
pub struct Writer {
    dest: PathBuf,
    overwrite: bool,
    out: BufWriter<NamedTempFile>,
    shape: Shape,
    classes: Vec<String>,
    labels: Vec<u8>,
    hasher: xxhash_rust::xxh3::Xxh3,
    sum: Vec<u64>,
    sum_sq: Vec<u64>,
}

impl Writer {
    /// Starts a store at `dest`; fails at once if it exists and `overwrite` is false.
    pub fn create(
        dest: &Path,
        shape: Shape,
        classes: Vec<String>,
        overwrite: bool,
    ) -> Result<Self> {
        if !overwrite && dest.exists() {
            return Err(Error::Exists {
                path: dest.to_path_buf(),
            });
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = temp_file_in(dir, &format!(".{name}.")).map_err(|e| Error::io(dir, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        // Placeholder header; the real one is written once counts and checksums are known.
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| Error::io(dest, e))?;
        let channels = shape.channels as usize;
        Ok(Writer {
            dest: dest.to_path_buf(),
            overwrite,
            out,
            shape,
            classes,
            labels: Vec::new(),
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            sum: vec![0; channels],
            sum_sq: vec![0; channels],
        })
    }

    /// Appends one image (HWC bytes) and its label.
    pub fn push(&mut self, image: &[u8], label: u8) -> Result<()> {
        self.push_many(image, &[label])
    }

    /// Appends `labels.len()` images stored back to back in `pixels`.
    pub fn push_many(&mut self, pixels: &[u8], labels: &[u8]) -> Result<()> {
        let image_len = self.shape.image_len();
        if pixels.len() != labels.len() * image_len {
            return Err(Error::ImageSize {
                path: self.dest.clone(),
                index: self.labels.len() as u64,
                expected: labels.len() * image_len,
                found: pixels.len(),
            });
        }
        let classes = self.classes.len();
        if let Some((i, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            let index = (self.labels.len() + i) as u64;
            return Err(Error::LabelOutOfRange {
                path: self.dest.clone(),
                index,
                offset: index,
                label,
                classes,
            });
        }
        self.accumulate_stats(pixels);
        self.hasher.update(pixels);
        self.out
            .write_all(pixels)
            .map_err(|e| Error::io(&self.dest, e))?;
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    fn accumulate_stats(&mut self, pixels: &[u8]) {
        let c = self.shape.channels as usize;
        // Chunks of whole pixels so that channel = position % c inside each chunk.
        let chunk = c * 16 * 1024;
        let (sum, sum_sq) = pixels
            .par_chunks(chunk)
            .map(|part| {
                let mut s = vec![0u64; c];
                let mut q = vec![0u64; c];
                for px in part.chunks_exact(c) {
                    for (k, &v) in px.iter().enumerate() {
                        s[k] += v as u64;
                        q[k] += (v as u64) * (v as u64);
                    }
                }
                (s, q)
            })
            .reduce(
                || (vec![0u64; c], vec![0u64; c]),
                |(mut s1, mut q1), (s2, q2)| {
                    s1.iter_mut().zip(s2).for_each(|(a, b)| *a += b);
                    q1.iter_mut().zip(q2).for_each(|(a, b)| *a += b);
                    (s1, q1)
                },
            );
        self.sum.iter_mut().zip(sum).for_each(|(a, b)| *a += b);
        self.sum_sq
            .iter_mut()
            .zip(sum_sq)
            .for_each(|(a, b)| *a += b);
    }

    /// Writes labels and the final header and fsyncs; the file is still hidden until committed.
    pub fn finish(mut self) -> Result<Staged> {
        let count = self.labels.len() as u64;
        let pixels_per_channel =
            (count * (self.shape.height as u64) * (self.shape.width as u64)).max(1) as f64;
        let mean: Vec<f64> = self
            .sum
            .iter()
            .map(|&s| s as f64 / pixels_per_channel / 255.0)
            .collect();
        let std: Vec<f64> = self
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(&q, &m)| {
                ((q as f64 / pixels_per_channel / (255.0 * 255.0)) - m * m)
                    .max(0.0)
                    .sqrt()
            })
            .collect();
        self.hasher.update(&self.labels);
        let header = Header {
            count,
            shape: self.shape,
            layout: PixelLayout::Hwc,
            classes: self.classes,
            mean,
            std,
            checksum: self.hasher.digest(),
        };
        let bytes = header.encode(&self.dest)?;
        let dest = self.dest;
        let io = |e| Error::io(&dest, e);
        self.out.write_all(&self.labels).map_err(io)?;
        let mut tmp = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        let file: &mut File = tmp.as_file_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Staged {
            tmp,
            dest,
            overwrite: self.overwrite,
            header,
        })
    }
}

/// A complete, fsynced store file waiting under a temporary name.
pub struct Staged {
    tmp: NamedTempFile,
    dest: PathBuf,
    overwrite: bool,
    header: Header,
}

impl Staged {
    /// The header that was written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Renames the file into place (refusing to replace an existing one unless overwriting).
    pub fn commit(self) -> Result<Header> {
        let dest = self.dest;
        let persisted = if self.overwrite {
            self.tmp.persist(&dest)
        } else {
            self.tmp.persist_noclobber(&dest)
        };
        persisted.map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists { path: dest.clone() }
            } else {
                Error::io(&dest, e.error)
            }
        })?;
        // Make the rename itself durable.
        if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(dir, e))?;
        }
        Ok(self.header)
    }
}

/// A temporary file in `dir` (named `<prefix>XXXXXX.tmp`) for a write that is renamed into place when
/// complete. It gets the permissions any new file gets under the umask (tempfile alone makes it
/// owner-only, which the renamed store, checkpoint or metrics file would keep).
pub fn temp_file_in(dir: &Path, prefix: &str) -> std::io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}
