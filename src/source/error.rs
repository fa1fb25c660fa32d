//! Errors raised while reading a dataset source.

/// What can be wrong with a source, always naming the file (and record) at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source path cannot be read.
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A `.tar`/`.tar.gz` could not be read to the end.
    #[error("{path}: cannot read archive (truncated or corrupt?)")]
    Archive {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Neither an official CIFAR-10 binary layout nor an image-folder layout was found.
    #[error("{path}: not a recognised dataset source: {reason}")]
    Unrecognised { path: String, reason: String },
    /// A file the official layout requires is absent.
    #[error("{path}: missing {name} (the official CIFAR-10 binary layout needs data_batch_1..5.bin and test_batch.bin)")]
    MissingFile { path: String, name: String },
    /// An official `.bin` whose size is not a whole number of records.
    #[error("{path}: {len} bytes is not a multiple of the {record}-byte CIFAR-10 record (1 label + 3072 pixels)")]
    RecordSize { path: String, len: u64, record: u64 },
    /// A label that is not a valid class index.
    #[error("{path}: record {record} (byte {offset}) has label {label}, but there are only {classes} classes")]
    Label {
        path: String,
        record: u64,
        offset: u64,
        label: u8,
        classes: usize,
    },
    /// An image file that does not decode.
    #[error("{path}: cannot decode image")]
    Decode {
        path: String,
        #[source]
        source: image::ImageError,
    },
    /// An image of the wrong size or colour type (nothing is resized or converted silently).
    #[error("{path}: image is {found}, expected {expected}")]
    ImageShape {
        path: String,
        expected: String,
        found: String,
    },
    /// A class folder with no image in it.
    #[error("{path}: class folder holds no .jpg/.jpeg/.png image")]
    EmptyClass { path: String },
    /// One of the two splits is absent.
    #[error("{path}: has no {split}/ split (an image-folder source needs train/<class>/ and test/<class>/)")]
    MissingSplit { path: String, split: &'static str },
    /// Train and test disagree on the class folders.
    #[error("{path}: train classes {train:?} differ from test classes {test:?}")]
    ClassMismatch {
        path: String,
        train: Vec<String>,
        test: Vec<String>,
    },
    /// More classes than a label byte can index.
    #[error("{path}: {found} classes, at most {max} are supported")]
    TooManyClasses {
        path: String,
        found: usize,
        max: usize,
    },
    /// The HTTP download failed.
    #[error("downloading {url}: {reason}")]
    Download { url: String, reason: String },
    /// The downloaded file is not the expected archive.
    #[error("{url}: md5 {found} does not match the expected {expected}; the file was discarded")]
    Md5Mismatch {
        url: String,
        expected: String,
        found: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Result alias for source reading.
pub type Result<T, E = Error> = std::result::Result<T, E>;
