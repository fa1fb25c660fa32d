//! Dataset sources: everything `prep-dataset` can turn into a store.
//!
//! [`load`] detects what a path holds — the official CIFAR-10 binary version (archive or
//! extracted folder) or an image-folder dataset (folder, `.tar` or `.tar.gz`) — and decodes it
//! into a [`Dataset`] in memory; [`synthetic`] generates the embedded default; [`download`]
//! fetches the official archive.

mod archive;
mod dataset;
pub mod download;
mod error;
pub mod folder;
pub mod official;
pub mod synthetic;

pub use dataset::{Dataset, SplitData, CIFAR10_CLASSES};
pub use error::{Error, Result};

use std::collections::HashMap;
use std::path::Path;

use indicatif::ProgressBar;

/// What a source path was detected to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cifar-10-binary.tar.gz` (or an uncompressed `.tar` of it).
    OfficialArchive,
    /// The extracted `cifar-10-batches-bin/` folder.
    OfficialFolder,
    /// An image-folder dataset in a `.tar` / `.tar.gz`.
    ImageArchive,
    /// An image-folder dataset on disk.
    ImageFolder,
}

/// Detects the kind of source at `path` and decodes it.
pub fn load(path: &Path, progress: &ProgressBar) -> Result<(Kind, Dataset)> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(&shown, e))?;
    if meta.is_dir() {
        return load_dir(path, progress);
    }
    progress.set_length(meta.len());
    progress.set_position(0);
    progress.set_message("reading archive");
    let entries = archive::read_entries(path, |n| progress.inc(n))?;
    let base_name = |e: &archive::Entry| e.path.rsplit('/').next().unwrap_or_default().to_owned();
    let official_names = [official::TRAIN_FILES[0], official::TEST_FILE];
    if entries
        .iter()
        .any(|e| !e.is_dir && official_names.contains(&base_name(e).as_str()))
    {
        let mut by_name: HashMap<String, archive::Entry> = entries
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| (base_name(&e), e))
            .collect();
        let mut take = |name: &str| -> Result<(String, Vec<u8>)> {
            let entry = by_name.remove(name).ok_or_else(|| Error::MissingFile {
                path: shown.clone(),
                name: name.to_owned(),
            })?;
            Ok((format!("{shown}:{}", entry.path), entry.data))
        };
        let files = official::Files {
            train: official::TRAIN_FILES
                .iter()
                .map(|n| take(n))
                .collect::<Result<_>>()?,
            test: take(official::TEST_FILE)?,
            meta: take(official::META_FILE).ok().map(|(_, data)| data),
        };
        return Ok((Kind::OfficialArchive, official::decode(shown, files)?));
    }
    let looks_like_folder = entries.iter().any(|e| {
        let parts: Vec<&str> = e.path.split('/').collect();
        parts.len() >= 2 && parts.iter().any(|p| *p == "train" || *p == "test")
    });
    if !looks_like_folder {
        return Err(Error::Unrecognised {
            path: shown,
            reason: "the archive holds neither data_batch_*.bin nor train/<class>/ folders".into(),
        });
    }
    let dataset = folder::load_entries(path, &entries, progress)?;
    Ok((Kind::ImageArchive, dataset))
}

fn load_dir(path: &Path, progress: &ProgressBar) -> Result<(Kind, Dataset)> {
    let shown = path.display().to_string();
    let official_dir = [path.to_path_buf(), path.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| {
            d.join(official::TRAIN_FILES[0]).is_file() || d.join(official::TEST_FILE).is_file()
        });
    if let Some(dir) = official_dir {
        progress.set_message("reading batch files");
        let read = |name: &str| -> Result<(String, Vec<u8>)> {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(Error::MissingFile {
                    path: dir.display().to_string(),
                    name: name.to_owned(),
                });
            }
            let data = std::fs::read(&p).map_err(|e| Error::io(p.display(), e))?;
            Ok((p.display().to_string(), data))
        };
        let meta_path = dir.join(official::META_FILE);
        let files = official::Files {
            train: official::TRAIN_FILES
                .iter()
                .map(|n| read(n))
                .collect::<Result<_>>()?,
            test: read(official::TEST_FILE)?,
            meta: match meta_path.is_file() {
                true => {
                    Some(std::fs::read(&meta_path).map_err(|e| Error::io(meta_path.display(), e))?)
                }
                false => None,
            },
        };
        return Ok((Kind::OfficialFolder, official::decode(shown, files)?));
    }
    match folder::find_root(path) {
        Some(root) => Ok((Kind::ImageFolder, folder::load_dir(&root, progress)?)),
        None => Err(Error::Unrecognised {
            path: shown,
            reason: "the folder holds neither data_batch_*.bin nor train/ and test/ class folders"
                .into(),
        }),
    }
}
