//! Data-parallel training under `mpirun` (the `mpi` feature; Open MPI's launcher on PATH):
//! two ranks stay identical and learn; with `--sync-bn` two ranks at batch b match one process at
//! batch 2b; a killed rank ends the job with an error and leaves a loadable checkpoint; a run is
//! resumed by as many ranks as saved it.
#![cfg(feature = "mpi")]

use crate::common;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use cifar_stream::train::Snapshot;

/// `mpirun -np ranks stream-train <small tiny run> extra…` (one process without mpirun when
/// `ranks` is 0), in `dir`.
fn train(dir: &Path, ranks: usize, data: &Path, extra: &[&str]) -> Command {
    let bin = assert_cmd::cargo::cargo_bin("stream-train");
    let mut c = if ranks == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
            .arg(ranks.to_string())
            .arg(bin);
        c
    };
    c.current_dir(dir)
        .args([
            "--preset",
            "tiny",
            "--widths",
            "4,8,16",
            "--stem-width",
            "8",
            "-q",
        ])
        .arg("--data")
        .arg(data)
        .args(extra);
    c
}

fn output(mut c: Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn accuracy(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("test accuracy: "))
        .and_then(|v| v.trim_end_matches('%').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout}"))
}

/// Every weight of the run's checkpoint (the raw model), by name.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let s = Snapshot::load(dir, &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = s
        .tensors()
        .iter()
        .filter(|(n, _)| n.starts_with("model."))
        .map(|(n, t)| {
            let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            (n.clone(), v.to_vec1().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn two_ranks_stay_identical_and_learn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_store(tmp.path(), 24);
    let (ok, stdout, stderr) = output(train(
        tmp.path(),
        2,
        &data,
        &[
            "--batch-size",
            "8",
            "--epochs",
            "6",
            "--augment",
            "none",
            "--lr",
            "0.05",
            "--warmup-epochs",
            "0",
            "--ema-decay",
            "0.9",
            "--name",
            "two",
        ],
    ));
    // The ranks compare their weights (the EMA's and its BatchNorm statistics too: the recipe
    // keeps an EMA) after every epoch; a difference is an error.
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("rank 1 of 2 (mpi)"), "{stderr}");
    assert!(stdout.contains("2 ranks: slowest rank"), "{stdout}");
    let acc = accuracy(&stdout);
    assert!(acc > 30.0, "test accuracy {acc}% (chance is 10%): {stdout}");
    // Rank 0 alone writes: one checkpoint, one set of metrics.
    let run = tmp.path().join("runs/two");
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        7
    );
    assert_eq!(
        Snapshot::load(&run, &Device::Cpu).unwrap().state.world_size,
        2
    );
}

#[test]
fn with_sync_bn_two_ranks_at_batch_b_match_one_process_at_batch_2b() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_store(tmp.path(), 16);
    let common = [
        "--epochs",
        "1",
        "--limit-train-batches",
        "4",
        "--ema-decay",
        "0",
    ];
    let mut two = common.to_vec();
    two.extend(["--batch-size", "10", "--sync-bn", "--name", "two"]);
    let (ok, stdout2, stderr) = output(train(tmp.path(), 2, &data, &two));
    assert!(ok, "{stdout2}\n{stderr}");
    let mut one = common.to_vec();
    one.extend(["--batch-size", "20", "--name", "one"]);
    let (ok, stdout1, stderr) = output(train(tmp.path(), 0, &data, &one));
    assert!(ok, "{stdout1}\n{stderr}");
    let (a, b) = (
        weights(&tmp.path().join("runs/two")),
        weights(&tmp.path().join("runs/one")),
    );
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64;
        worst = worst.max(diff / scale);
        assert!(diff / scale < 1e-4, "{name}: {}", diff / scale);
    }
    eprintln!("sync-bn, 2 ranks vs 1 process, after 4 steps: worst weight error {worst:.2e}");
    // Without sync-bn the ranks normalise with their own half batch: the weights differ more.
    let mut own = common.to_vec();
    own.extend(["--batch-size", "10", "--name", "own"]);
    assert!(output(train(tmp.path(), 2, &data, &own)).0);
    let c = weights(&tmp.path().join("runs/own"));
    let apart = c
        .iter()
        .zip(&b)
        .map(|((_, x), (_, y))| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())))
        .fold(0f32, f32::max);
    assert!(apart as f64 > 100.0 * worst.max(1e-7), "{apart} vs {worst}");
}

#[test]
fn a_killed_rank_ends_the_job_with_an_error_and_the_last_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_store(tmp.path(), 16);
    let mut c = train(
        tmp.path(),
        2,
        &data,
        &["--batch-size", "10", "--epochs", "200", "--name", "killed"],
    );
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let run = tmp.path().join("runs/killed");
    let mut pid = None;
    let mut lines = stderr.lines();
    while pid.is_none() {
        let line = lines.next().expect("stream-train said nothing").unwrap();
        if let Some((_, rest)) = line.split_once("rank 1 of 2 (mpi), pid ") {
            pid = rest.trim().parse::<u32>().ok();
        }
    }
    // Keep reading what the job says (a full pipe would stall it) until it ends.
    let said = std::thread::spawn(move || lines.map_while(|l| l.ok()).collect::<Vec<String>>());
    // Once a checkpoint exists, rank 1 dies.
    let start = Instant::now();
    while !run.join("checkpoint.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-KILL", &pid.unwrap().to_string()])
        .status()
        .unwrap();
    let killed = Instant::now();
    let status = common::wait_or_kill(
        &mut child,
        Duration::from_secs(30),
        "the job did not end after a rank died",
    );
    let rest = said.join().unwrap();
    eprintln!(
        "the job ended {:.1} s after rank 1 was killed: {status:?}",
        killed.elapsed().as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        rest.iter()
            .any(|l| l.contains("rank") || l.contains("signal") || l.contains("killed")),
        "no word of the failed rank: {rest:?}"
    );
    // The last checkpoint is whole, and a resume by two ranks goes on from it.
    let saved = Snapshot::load(&run, &Device::Cpu).unwrap().state;
    assert_eq!(saved.world_size, 2);
    let (ok, _, stderr) = output(train(
        tmp.path(),
        0,
        &data,
        &["--resume", run.to_str().unwrap(), "--epochs", "1"],
    ));
    assert!(!ok && stderr.contains("resume it with as many"), "{stderr}");
    let more = (saved.next_epoch + 1).to_string();
    let (ok, stdout, stderr) = output(train(
        tmp.path(),
        2,
        &data,
        &["--resume", run.to_str().unwrap(), "--epochs", &more],
    ));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("epoch {:>3}/{more}", saved.next_epoch + 1)),
        "{stdout}"
    );
}
