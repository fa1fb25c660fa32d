//! What a store holds, for people (a table) and scripts (JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::error::Result;
use super::format::Shape;
use super::{Reader, Split};

/// Facts about one split of a store.
#[derive(Clone, Debug, Serialize)]
pub struct SplitSummary {
    /// Store file.
    pub path: String,
    /// Number of images.
    pub images: u64,
    /// Images per class, indexed by label.
    pub class_counts: Vec<u64>,
    /// Per-channel mean, 0–1 scale.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation, 0–1 scale.
    pub std: Vec<f64>,
    /// File size in bytes.
    pub bytes: u64,
    /// Image shape.
    pub shape: Shape,
    /// Payload checksum (xxh3-64, hex).
    pub checksum: String,
    /// Seconds spent producing this split (decode + write), or checking it for `inspect`.
    pub seconds: f64,
}

impl SplitSummary {
    /// Summarises an open store; `seconds` is whatever the caller timed.
    pub fn of(reader: &Reader, seconds: f64) -> Self {
        let h = reader.header();
        SplitSummary {
            path: reader.path().display().to_string(),
            images: h.count,
            class_counts: reader.class_counts(),
            mean: h.mean.clone(),
            std: h.std.clone(),
            bytes: reader.file_len(),
            shape: h.shape,
            checksum: format!("{:016x}", h.checksum),
            seconds,
        }
    }
}

/// Facts about a whole store directory.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// `"train"` and `"test"`.
    pub splits: BTreeMap<String, SplitSummary>,
    /// Whether payload checksums were recomputed and matched.
    pub verified: bool,
    /// Wall time of the whole command.
    pub seconds: f64,
}

impl Summary {
    /// Opens both splits of the store in `dir` (and rehashes them when `verify` is set).
    pub fn of_dir(dir: &Path, verify: bool) -> Result<Summary> {
        let start = Instant::now();
        let mut splits = BTreeMap::new();
        let mut classes = Vec::new();
        for split in Split::ALL {
            let t = Instant::now();
            let reader = Reader::open(split.path_in(dir))?;
            if verify {
                reader.verify()?;
            }
            classes = reader.classes().to_vec();
            splits.insert(
                split.name().to_owned(),
                SplitSummary::of(&reader, t.elapsed().as_secs_f64()),
            );
        }
        Ok(Summary {
            classes,
            splits,
            verified: verify,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let splits: Vec<(&String, &SplitSummary)> = Split::ALL
            .iter()
            .filter_map(|s| self.splits.get_key_value(s.name()))
            .collect();
        write!(f, "{:>width$}", "class")?;
        for (name, _) in &splits {
            write!(f, " {name:>9}")?;
        }
        writeln!(f)?;
        for (k, class) in self.classes.iter().enumerate() {
            write!(f, "{class:>width$}")?;
            for (_, s) in &splits {
                write!(f, " {:>9}", s.class_counts.get(k).copied().unwrap_or(0))?;
            }
            writeln!(f)?;
        }
        for (name, s) in &splits {
            let fmt3 = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                f,
                "{name}: {} images of {}, mean [{}], std [{}], {:.1} MiB, checksum {}{}, {:.2} s  ({})",
                s.images,
                s.shape,
                fmt3(&s.mean),
                fmt3(&s.std),
                s.bytes as f64 / (1024.0 * 1024.0),
                s.checksum,
                if self.verified { " verified" } else { "" },
                s.seconds,
                s.path,
            )?;
        }
        write!(f, "total: {:.2} s", self.seconds)
    }
}
