//! `stream-train runs`: the runs under a folder, one row each.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use cifar_stream::train::eta::human;
use cifar_stream::train::runs::{self, RunRow, RunState};

use crate::finish::Finish;

/// `runs`: where the table looks and how it prints.
#[derive(Args)]
pub struct RunsArgs {
    /// The folder of runs (what training's `--runs` named).
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs: PathBuf,
    /// One JSON object per run and line, for scripts.
    #[arg(long)]
    json: bool,
}

/// Prints the table (or the JSON lines) of the runs under `--runs`.
pub fn runs(args: RunsArgs) -> Result<Finish> {
    let rows = runs::list(&args.runs)
        .with_context(|| format!("reading the runs in {}", args.runs.display()))?;
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(Finish::Done);
    }
    if rows.is_empty() {
        eprintln!("no runs in {}", args.runs.display());
        return Ok(Finish::Done);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<10} {:>9} {:>7} {:>7} {:>12}  state",
        "name", "preset", "epochs", "final", "best", "wall"
    );
    for row in &rows {
        println!("{}", line(row, width));
    }
    Ok(Finish::Done)
}

/// One run's row of the table.
fn line(row: &RunRow, width: usize) -> String {
    let percent = |a: Option<f64>| a.map_or("-".into(), |a| format!("{:.2}%", a * 100.0));
    let epochs = match row.epochs {
        Some(e) => format!("{}/{e}", row.epochs_done),
        None => format!("{}/?", row.epochs_done),
    };
    let state = match &row.state {
        RunState::Finished => "finished".to_string(),
        RunState::Interrupted => "interrupted".to_string(),
        RunState::Running => "running".to_string(),
        RunState::Diverged(why) => format!("diverged: {why}"),
        RunState::Damaged(why) => format!("damaged: {why}"),
    };
    format!(
        "{:<width$}  {:<10} {:>9} {:>7} {:>7} {:>12}  {state}",
        row.name,
        row.preset.as_deref().unwrap_or("-"),
        epochs,
        percent(row.final_accuracy),
        percent(row.best_accuracy),
        human(Duration::from_secs_f64(row.seconds.max(0.0))),
    )
}
