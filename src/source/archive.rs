//! Reading every entry of a `.tar` or `.tar.gz` into memory in one pass.
//!
//! CIFAR-sized archives (≤ 200 MB unpacked) fit comfortably in memory, and one sequential pass
//! lets the caller decide what the archive holds before decoding anything.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::error::{Error, Result};

/// Largest file an archive entry may hold. CIFAR-10's biggest is a 30 MB batch file; an entry
/// that declares more is refused before anything is allocated for it.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// Largest total an archive may unpack to (a gzip bomb stops here rather than at the OOM killer).
pub const MAX_TOTAL_BYTES: u64 = 8 << 30;
/// Most bytes reserved up front for one entry: the rest grows as data really arrives, so a
/// header's claim never turns into an allocation by itself.
const RESERVE_BYTES: u64 = 64 << 20;

/// One regular file or directory from an archive.
pub struct Entry {
    /// Path inside the archive, `/`-separated, without a leading `./`.
    pub path: String,
    /// True for directory entries (their `data` is empty).
    pub is_dir: bool,
    /// File contents.
    pub data: Vec<u8>,
}

/// True when the file starts with the gzip magic bytes.
pub fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == [0x1f, 0x8b]),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

/// Reads all entries of a tar archive, gunzipping it first when it is gzip-compressed.
pub fn read_entries(path: &Path, mut on_bytes: impl FnMut(u64)) -> Result<Vec<Entry>> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(&shown, e))?;
    let file = CountingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        on_bytes: &mut on_bytes,
    };
    let reader: Box<dyn Read + '_> = if is_gzip(path)? {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let archive_err = |source| Error::Archive {
        path: shown.clone(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let raw = entry
            .path()
            .map_err(archive_err)?
            .to_string_lossy()
            .into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let mut data = Vec::new();
        if kind.is_file() {
            let size = entry.size();
            total = total.saturating_add(size);
            if size > MAX_ENTRY_BYTES || total > MAX_TOTAL_BYTES {
                return Err(Error::Unrecognised {
                    path: shown,
                    reason: format!(
                        "entry {path} declares {size} bytes ({total} so far); entries of at most \
                         {MAX_ENTRY_BYTES} and archives of at most {MAX_TOTAL_BYTES} bytes are read"
                    ),
                });
            }
            data.reserve(size.min(RESERVE_BYTES) as usize);
            // The entry reader stops at the declared size; `take` makes that bound ours too.
            (&mut entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(archive_err)?;
        }
        out.push(Entry {
            path,
            is_dir: kind.is_dir(),
            data,
        });
    }
    if out.is_empty() {
        return Err(Error::Unrecognised {
            path: shown,
            reason: "the archive holds no file".into(),
        });
    }
    Ok(out)
}

/// Reports how many compressed bytes have been consumed, for a progress bar.
struct CountingReader<'a, R, F: FnMut(u64)> {
    inner: R,
    on_bytes: &'a mut F,
}

impl<R: Read, F: FnMut(u64)> Read for CountingReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}
