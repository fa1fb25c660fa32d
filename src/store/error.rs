//! Errors raised while writing, opening or verifying a store file.

use std::path::PathBuf;

/// Everything that can go wrong with a store file, with the path and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on `path` failed.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the store magic, so it is not a store at all.
    #[error("{path}: not a cifar-stream store (magic {found:02x?}, expected {expected:02x?})")]
    BadMagic {
        path: PathBuf,
        found: Vec<u8>,
        expected: Vec<u8>,
    },
    /// The file is a store of a format version this build cannot read.
    #[error("{path}: store format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The header is malformed or its own checksum does not match.
    #[error("{path}: corrupt header at byte {offset}: {reason}")]
    CorruptHeader {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A size recorded in the header disagrees with the file or with the other fields.
    #[error("{path}: {what}: expected {expected}, found {found}")]
    SizeMismatch {
        path: PathBuf,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// The payload checksum recomputed from the file differs from the header's.
    #[error("{path}: payload checksum mismatch: header says {expected:016x}, data hashes to {found:016x}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// A label byte is not a valid class index.
    #[error("{path}: label {label} of image {index} (byte {offset}) is not below the class count {classes}")]
    LabelOutOfRange {
        path: PathBuf,
        index: u64,
        offset: u64,
        label: u8,
        classes: usize,
    },
    /// An image handed to the writer has the wrong number of bytes.
    #[error("{path}: image {index} has {found} bytes, the store's shape needs {expected}")]
    ImageSize {
        path: PathBuf,
        index: u64,
        expected: usize,
        found: usize,
    },
    /// The header fields describe something the format cannot hold.
    #[error("{path}: invalid store description: {reason}")]
    InvalidMeta { path: PathBuf, reason: String },
    /// The destination already holds a store and overwriting was not asked for.
    #[error("{path} already exists (pass --force to overwrite it)")]
    Exists { path: PathBuf },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
