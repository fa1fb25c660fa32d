//! `prep-dataset`'s job as a library call: decoded [`Dataset`] → store directory → [`Summary`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;

use crate::render::{self, Row};
use crate::source::Dataset;
use crate::store::{self, Reader, Split, Summary, Writer};

/// Everything that can stop a prep.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source could not be read or is malformed.
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    /// The store could not be written or read back.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Any other file-system failure, with its path.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for prep.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Images pushed to the writer per progress-bar tick.
const WRITE_CHUNK: usize = 4096;

/// Fails when `out` already holds a store file and `overwrite` is false (call before decoding).
pub fn check_destination(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite {
        if let Some(path) = Split::ALL
            .iter()
            .map(|s| s.path_in(out))
            .find(|p| p.exists())
        {
            return Err(store::Error::Exists { path }.into());
        }
    }
    Ok(())
}

/// Writes both splits of `dataset` into `out` and reads them back into a summary.
///
/// Both files are fully written and fsynced under temporary names before either is renamed, so a
/// failure at any point before the renames leaves `out` as it was.
pub fn write_store(
    dataset: &Dataset,
    out: &Path,
    overwrite: bool,
    progress: &ProgressBar,
) -> Result<Summary> {
    let start = Instant::now();
    check_destination(out, overwrite)?;
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let staged = stage_all(dataset, out, overwrite, progress);
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            if created {
                // Only removes the folder if it is still empty.
                let _ = std::fs::remove_dir(out);
            }
            return Err(e);
        }
    };
    let mut write_seconds = Vec::new();
    for (stage, seconds) in staged {
        stage.commit()?;
        write_seconds.push(seconds);
    }
    let mut summary = Summary::of_dir(out, false)?;
    for ((split, data), seconds) in Split::ALL
        .iter()
        .zip([&dataset.train, &dataset.test])
        .zip(write_seconds)
    {
        if let Some(s) = summary.splits.get_mut(split.name()) {
            s.seconds = data.seconds + seconds;
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn stage_all(
    dataset: &Dataset,
    out: &Path,
    overwrite: bool,
    progress: &ProgressBar,
) -> Result<Vec<(store::Staged, f64)>> {
    progress.set_length((dataset.train.len() + dataset.test.len()) as u64);
    progress.set_position(0);
    progress.set_message("writing store");
    let image_len = dataset.shape.image_len();
    let mut staged = Vec::new();
    for (split, data) in Split::ALL.iter().zip([&dataset.train, &dataset.test]) {
        let t = Instant::now();
        let mut writer = Writer::create(
            &split.path_in(out),
            dataset.shape,
            dataset.classes.clone(),
            overwrite,
        )?;
        for (pixels, labels) in data
            .pixels
            .chunks(WRITE_CHUNK * image_len)
            .zip(data.labels.chunks(WRITE_CHUNK))
        {
            writer.push_many(pixels, labels)?;
            progress.inc(labels.len() as u64);
        }
        staged.push((writer.finish()?, t.elapsed().as_secs_f64()));
    }
    Ok(staged)
}

/// Writes a PNG with one row per class: the first `per_class` images of that class in `split`.
pub fn write_grid(dir: &Path, split: Split, per_class: usize, png: &Path) -> Result<()> {
    let reader = Reader::open(split.path_in(dir))?;
    let mut rows: Vec<Row> = reader
        .classes()
        .iter()
        .map(|c| Row {
            label: c.clone(),
            images: Vec::new(),
        })
        .collect();
    for (i, &label) in reader.labels().iter().enumerate() {
        let row = &mut rows[label as usize];
        if row.images.len() < per_class {
            row.images.push(reader.image(i));
        }
    }
    let img = render::grid(&rows, reader.shape(), 2);
    render::save_png(&img, png).map_err(|source| Error::Io {
        path: png.to_path_buf(),
        source,
    })
}
