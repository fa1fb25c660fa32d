//! Telemetry: a tracing layer that times the pipeline's stage spans into a per-epoch profile
//! table (and JSON), plus subscriber set-up with an optional Chrome/Perfetto trace file.
//!
//! Stage spans (`read`, `augment`, `send`, `wait`, and the trainer's `h2d`, `forward`,
//! `backward`, `allreduce` (data-parallel runs), `optimizer`) are timed whatever `RUST_LOG` says; `RUST_LOG` only filters the log
//! lines printed to stderr. Spans whose `phase` field is `eval` (an evaluation's own stream) are
//! left out, so the profile counts training alone.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Span names that make up the profile table, in pipeline order.
pub const STAGES: [&str; 9] = [
    "read",
    "augment",
    "send",
    "wait",
    "h2d",
    "forward",
    "backward",
    "allreduce",
    "optimizer",
];

/// The `phase` value of spans the profile leaves out.
const EXCLUDED_PHASE: &str = "eval";

/// Collects the durations of stage spans until the next [`Profiler::take`].
#[derive(Clone, Default)]
pub struct Profiler {
    durations: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>,
}

struct Started(Instant);

/// Marks a span of an excluded phase.
struct Excluded;

/// Finds whether a span's `phase` field is the excluded one.
struct PhaseVisitor(bool);

impl tracing::field::Visit for PhaseVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "phase" && value == EXCLUDED_PHASE {
            self.0 = true;
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "phase" && format!("{value:?}").trim_matches('"') == EXCLUDED_PHASE {
            self.0 = true;
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Profiler {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !STAGES.contains(&attrs.metadata().name()) {
            return;
        }
        let mut phase = PhaseVisitor(false);
        attrs.record(&mut phase);
        if let (true, Some(span)) = (phase.0, ctx.span(id)) {
            span.extensions_mut().insert(Excluded);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if STAGES.contains(&span.name()) && ext.get_mut::<Excluded>().is_none() {
                ext.insert(Started(Instant::now()));
            }
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Started(t)) = span.extensions_mut().remove::<Started>() {
                let mut d = self.durations.lock().unwrap();
                d.entry(span.name())
                    .or_default()
                    .push(t.elapsed().as_secs_f64());
            }
        }
    }
}

impl Profiler {
    /// Takes (and clears) the stage durations recorded so far, in seconds.
    pub fn take(&self) -> BTreeMap<&'static str, Vec<f64>> {
        std::mem::take(&mut *self.durations.lock().unwrap())
    }
}

/// Keeps the Chrome trace file open; dropping it flushes and closes the file.
pub struct TraceGuard(#[allow(dead_code)] Option<tracing_chrome::FlushGuard>);

/// Installs the global subscriber: log lines filtered by `RUST_LOG` (default `warn`), the
/// profiler, and a Chrome trace-event JSON file when `trace` is given (created first, so a path
/// that cannot be written is an error here rather than a panic inside the trace writer).
pub fn init(profiler: &Profiler, trace: Option<&Path>) -> std::io::Result<TraceGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (chrome, guard) = match trace {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("--trace {}: {e}", path.display()))
            })?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(std::io::BufWriter::new(file))
                .include_args(true)
                .build();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(profiler.clone())
        .with(chrome)
        .try_init();
    Ok(TraceGuard(guard))
}

/// Timing of one stage over an epoch.
#[derive(Clone, Debug, Serialize)]
pub struct StageProfile {
    /// Span name.
    pub stage: String,
    /// Spans recorded (batches).
    pub count: usize,
    /// Total seconds inside the stage.
    pub seconds: f64,
    /// Images per second of stage time (epoch images / stage seconds).
    pub images_per_second: f64,
    /// Mean milliseconds per span.
    pub mean_ms: f64,
    /// 95th-percentile milliseconds per span.
    pub p95_ms: f64,
    /// Stage seconds / epoch wall seconds.
    pub busy: f64,
}

/// The per-epoch throughput profile: stage table plus queue and stall figures.
#[derive(Clone, Debug, Serialize)]
pub struct EpochProfile {
    /// Epoch number.
    pub epoch: usize,
    /// Images delivered.
    pub images: usize,
    /// Epoch wall seconds.
    pub wall_seconds: f64,
    /// Images per second over the epoch.
    pub images_per_second: f64,
    /// Mean ready batches found in the queue per receive.
    pub mean_queue_depth: f64,
    /// Time the trainer waited for a batch / epoch wall time.
    pub trainer_stall: f64,
    /// Per-stage timings, pipeline order.
    pub stages: Vec<StageProfile>,
}

impl EpochProfile {
    /// Builds the profile from the recorded stage durations and the stream's counters.
    pub fn new(
        epoch: usize,
        images: usize,
        wall_seconds: f64,
        mean_queue_depth: f64,
        trainer_stall: f64,
        mut durations: BTreeMap<&'static str, Vec<f64>>,
    ) -> Self {
        let wall = wall_seconds.max(1e-12);
        let stages = STAGES
            .iter()
            .filter_map(|&name| {
                let mut d = durations.remove(name)?;
                d.sort_by(f64::total_cmp);
                let seconds: f64 = d.iter().sum();
                let p95 = d[((d.len() as f64 * 0.95).ceil() as usize).clamp(1, d.len()) - 1];
                Some(StageProfile {
                    stage: name.to_string(),
                    count: d.len(),
                    seconds,
                    images_per_second: images as f64 / seconds.max(1e-12),
                    mean_ms: seconds / d.len() as f64 * 1e3,
                    p95_ms: p95 * 1e3,
                    busy: seconds / wall,
                })
            })
            .collect();
        EpochProfile {
            epoch,
            images,
            wall_seconds,
            images_per_second: images as f64 / wall,
            mean_queue_depth,
            trainer_stall,
            stages,
        }
    }
}

/// A JSON-lines file that each epoch's profile is appended to (`--profile-json`).
pub struct ProfileLog {
    file: std::fs::File,
    path: PathBuf,
}

impl ProfileLog {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> std::io::Result<ProfileLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(ProfileLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `profile` as one line of JSON.
    pub fn append(&mut self, profile: &EpochProfile) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(profile).map_err(std::io::Error::from)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

impl fmt::Display for EpochProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "epoch {}: {} images in {:.2} s = {:.0} images/s; queue depth {:.2}; trainer stall {:.1}%",
            self.epoch,
            self.images,
            self.wall_seconds,
            self.images_per_second,
            self.mean_queue_depth,
            self.trainer_stall * 100.0
        )?;
        writeln!(
            f,
            "  {:<10} {:>8} {:>12} {:>9} {:>9} {:>7}",
            "stage", "batches", "images/s", "mean ms", "p95 ms", "busy"
        )?;
        for s in &self.stages {
            // A stage that only waits has no throughput of its own.
            let rate = if matches!(s.stage.as_str(), "send" | "wait") {
                "-".to_string()
            } else {
                format!("{:.0}", s.images_per_second)
            };
            writeln!(
                f,
                "  {:<10} {:>8} {:>12} {:>9.3} {:>9.3} {:>6.1}%",
                s.stage,
                s.count,
                rate,
                s.mean_ms,
                s.p95_ms,
                s.busy * 100.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_computes_rates_percentiles_and_busy_fractions() {
        let mut d = BTreeMap::new();
        d.insert(
            "augment",
            (1..=20).map(|i| i as f64 * 0.001).collect::<Vec<_>>(),
        );
        d.insert("wait", vec![0.5]);
        d.insert("unrelated", vec![9.0]);
        let p = EpochProfile::new(3, 2000, 1.0, 2.5, 0.5, d);
        assert_eq!(p.stages.len(), 2);
        let a = &p.stages[0];
        assert_eq!((a.stage.as_str(), a.count), ("augment", 20));
        assert!((a.seconds - 0.21).abs() < 1e-9);
        assert!((a.p95_ms - 19.0).abs() < 1e-9);
        assert!((a.mean_ms - 10.5).abs() < 1e-9);
        assert!((a.busy - 0.21).abs() < 1e-9);
        assert!((a.images_per_second - 2000.0 / 0.21).abs() < 1e-6);
        let table = p.to_string();
        assert!(
            table.contains("trainer stall 50.0%") && table.contains("augment"),
            "{table}"
        );
    }
}
