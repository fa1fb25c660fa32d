//! The runs under a folder as a table reads them (`stream-train runs`): each run's preset,
//! epochs, accuracies, wall time and state, from its `config.toml`, `metrics.jsonl`, lock and
//! divergence note, without loading weights. A damaged run folder is a row that says why.

use std::path::Path;

use serde::Serialize;

use super::config::CONFIG_FILE;
use super::metrics::EpochMetrics;

/// The note a run that diverged leaves in its folder (removed when it is taken again).
pub const DIVERGED_FILE: &str = "diverged.txt";

/// The file a trainer holds an advisory lock on while it writes the run folder.
pub const LOCK_FILE: &str = ".lock";

/// The run's metrics, one JSON object per epoch.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum RunState {
    /// Every planned epoch is done.
    Finished,
    /// Stopped before its last epoch (Ctrl-C, a kill, a crash); `--resume` continues it.
    Interrupted,
    /// Stopped by the divergence guard, with its message.
    Diverged(String),
    /// A trainer holds its lock now.
    Running,
    /// Its files cannot be read, and why.
    Damaged(String),
}

/// One run's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRow {
    /// The folder's name.
    pub name: String,
    /// The preset it started from.
    pub preset: Option<String>,
    /// Epochs finished.
    pub epochs_done: usize,
    /// Epochs planned.
    pub epochs: Option<usize>,
    /// The delivered model's test accuracy at the last evaluation (the EMA's when the run keeps
    /// one).
    pub final_accuracy: Option<f64>,
    /// The best of the delivered model's test accuracies.
    pub best_accuracy: Option<f64>,
    /// Wall seconds of its finished epochs (training and evaluation).
    pub seconds: f64,
    /// Its state.
    #[serde(flatten)]
    pub state: RunState,
}

/// The rows of every run folder under `root` (a folder holding a `config.toml`, a
/// `metrics.jsonl` or a lock), by name.
pub fn list(root: &Path) -> std::io::Result<Vec<RunRow>> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let dir = entry?.path();
        let is_run = [CONFIG_FILE, METRICS_FILE, LOCK_FILE]
            .iter()
            .any(|f| dir.join(f).exists());
        if dir.is_dir() && is_run {
            rows.push(row(&dir));
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Run folder `dir`'s row; what cannot be read makes it [`RunState::Damaged`].
pub fn row(dir: &Path) -> RunRow {
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut row = RunRow {
        name,
        preset: None,
        epochs_done: 0,
        epochs: None,
        final_accuracy: None,
        best_accuracy: None,
        seconds: 0.0,
        state: RunState::Interrupted,
    };
    let read = (|| -> Result<(), String> {
        let (preset, epochs) = planned(dir)?;
        (row.preset, row.epochs) = (preset, Some(epochs));
        let history = history(dir)?;
        let delivered = || history.iter().filter_map(|m| m.ema_test_acc);
        row.epochs_done = history.len();
        row.final_accuracy = delivered().next_back();
        row.best_accuracy = delivered().reduce(f64::max);
        row.seconds = history.iter().map(|m| m.seconds).sum();
        Ok(())
    })();
    row.state = match (read, locked(dir), diverged(dir)) {
        (_, true, _) => RunState::Running,
        (Err(why), ..) => RunState::Damaged(why),
        (Ok(()), _, Some(why)) => RunState::Diverged(why),
        _ if row.epochs.is_some_and(|e| row.epochs_done >= e) => RunState::Finished,
        _ => RunState::Interrupted,
    };
    row
}

/// The preset and the epochs planned, from `config.toml` (read as a table: a run written by
/// another version still shows).
fn planned(dir: &Path) -> Result<(Option<String>, usize), String> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    let preset = table
        .get("preset")
        .and_then(|v| v.as_str())
        .map(String::from);
    let epochs = table.get("epochs").and_then(|v| v.as_integer());
    match epochs {
        Some(e) if e > 0 => Ok((preset, e as usize)),
        _ => Err(format!("{CONFIG_FILE}: no positive `epochs`")),
    }
}

/// `metrics.jsonl`'s epochs (none before the first epoch ends).
fn history(dir: &Path) -> Result<Vec<EpochMetrics>, String> {
    let path = dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{METRICS_FILE}: {e}")),
    };
    (text.lines().enumerate())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{METRICS_FILE} line {}: {e}", i + 1))
        })
        .collect()
}

/// Whether a trainer holds the run's lock (a shared lock cannot be taken beside its exclusive
/// one; taken, it is let go at once).
fn locked(dir: &Path) -> bool {
    match std::fs::File::open(dir.join(LOCK_FILE)) {
        Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// The divergence note, if the run left one.
fn diverged(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(DIVERGED_FILE)).ok()?;
    Some(text.trim().to_string())
}
