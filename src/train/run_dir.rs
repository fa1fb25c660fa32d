//! A run's folder as rank 0 holds it: locked against a second trainer, cleared of what a killed
//! writer left, holding the resolved `config.toml`, the metric files and the checkpoint.

use std::path::{Path, PathBuf};

use super::checkpoint::{self, Snapshot};
use super::curve;
use super::error::{io, Error, Result};
use super::metrics::{self, EpochMetrics};
use super::runs::{DIVERGED_FILE, LOCK_FILE, METRICS_FILE};
use crate::train::config::{TrainConfig, CONFIG_FILE};

/// The run folder, taken for writing: only the process that writes (rank 0) holds one.
pub struct RunDir {
    path: PathBuf,
    /// Held while the run lives: an advisory lock on `.lock`, released however the process ends.
    _lock: std::fs::File,
}

impl RunDir {
    /// Refuses `dir` for a new run when it already holds a saved one.
    pub fn refuse_saved(dir: &Path) -> Result<()> {
        if checkpoint::path(dir).exists() {
            return Err(Error::RunExists {
                dir: dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Creates and locks `dir` (refusing one another trainer holds) and removes the temporary
    /// files a killed writer left there.
    pub fn take(dir: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy {
                    dir: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
        }
        checkpoint::remove_stale_temporaries(dir).map_err(io(dir))?;
        // Taken again, the run trains again: an old divergence note no longer describes it.
        let note = dir.join(DIVERGED_FILE);
        match std::fs::remove_file(&note) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(note)(e)),
            _ => {}
        }
        Ok(RunDir {
            path: dir.to_path_buf(),
            _lock: file,
        })
    }

    /// Writes the resolved configuration as `config.toml`, atomically.
    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        let path = self.path.join(CONFIG_FILE);
        crate::render::write_atomic(&path, config.to_toml().as_bytes()).map_err(io(path))
    }

    /// Rewrites `metrics.jsonl`, `metrics.csv`, `curve.png` and `curve.svg` from the whole
    /// history; `ema` says whether the run keeps an EMA (the curve draws its lines only then).
    pub fn write_metrics(&self, history: &[EpochMetrics], ema: bool) -> Result<()> {
        let (jsonl, csv) = metrics::encode(history).map_err(io(&self.path))?;
        let file = |name: &str| self.path.join(name);
        let write = |name: &str, bytes: &[u8]| {
            crate::render::write_atomic(&file(name), bytes).map_err(io(file(name)))
        };
        write(METRICS_FILE, jsonl.as_bytes())?;
        write("metrics.csv", csv.as_bytes())?;
        crate::render::save_png(&curve::png(history, ema), &file("curve.png"))
            .map_err(io(file("curve.png")))?;
        write("curve.svg", curve::svg(history, ema).as_bytes())
    }

    /// Leaves the note `stream-train runs` reads: the run stopped because it diverged, `why`.
    pub fn note_diverged(&self, why: &str) -> Result<()> {
        let path = self.path.join(DIVERGED_FILE);
        crate::render::write_atomic(&path, format!("{why}\n").as_bytes()).map_err(io(path))
    }

    /// Commits `snapshot` as the run's checkpoint (`pause`: the crash tests' hook, see
    /// [`Snapshot::save`]).
    pub fn save(&self, snapshot: &Snapshot, pause: Option<std::time::Duration>) -> Result<()> {
        Ok(snapshot.save(&self.path, pause)?)
    }
}

/// `dir` as (folder of runs, run name), so that `runs/name` is `dir` again.
pub fn split_run_dir(dir: &Path) -> Result<(PathBuf, String)> {
    let named = |d: &Path| {
        let name = d.file_name()?.to_str()?.to_string();
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        Some((parent.unwrap_or(Path::new(".")).to_path_buf(), name))
    };
    if let Some(split) = named(dir) {
        return Ok(split);
    }
    // `.`, `..` and the like: the absolute path names the folder.
    let absolute = dir.canonicalize().map_err(io(dir))?;
    named(&absolute)
        .ok_or_else(|| Error::Unsupported(format!("{} is not a run folder", dir.display())))
}
