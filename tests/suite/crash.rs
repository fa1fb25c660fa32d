//! Crash-proof runs, with real signals: the `stream-train` binary is killed (SIGKILL) at random
//! moments — during start-up, steps, evaluation and checkpoint writes, which a test hook slows
//! down — and stopped with SIGINT and SIGTERM, then resumed, over and over; the run that ends
//! has the same weights, EMA, momentum and metrics, bit for bit, as one never interrupted.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{checkpoint_bits, same_curves, steps_increase, tensorboard_events};
use candle_core::Device;
use cifar_stream::train::checkpoint;
use cifar_stream::train::Snapshot;

/// A small run: 16 steps per epoch, 6 epochs, an EMA, evaluation and a checkpoint every step.
fn train_args(data: &Path, runs: &Path, name: &str) -> Vec<String> {
    let args = [
        "--preset",
        "tiny",
        "--widths",
        "4,8,16",
        "--stem-width",
        "8",
        "--batch-size",
        "10",
        "--epochs",
        "6",
        "--ema-decay",
        "0.9",
        "--save-every-steps",
        "1",
        "-q",
    ];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["--data".into(), data.display().to_string()]);
    v.extend(["--runs".into(), runs.display().to_string()]);
    v.extend(["--name".into(), name.into()]);
    v
}

fn stream_train() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("stream-train"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Starts the run in `dir`: new while it has no checkpoint, else resumed from it.
fn spawn(data: &Path, runs: &Path, dir: &Path, delay_ms: u64) -> Child {
    let mut c = stream_train();
    if checkpoint::path(dir).exists() {
        c.arg("--resume").arg(dir).arg("-q");
    } else {
        c.args(train_args(data, runs, "killed"));
    }
    c.arg("--checkpoint-write-delay-ms")
        .arg(delay_ms.to_string())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    // Its status is not checked: the process may have ended on its own in between.
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
}

/// metrics.jsonl without the fields that measure time.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            for timing in ["images_per_second", "trainer_stall", "seconds", "gpu_busy"] {
                m.remove(timing);
            }
            v
        })
        .collect()
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect()
}

#[test]
fn killed_at_random_moments_and_resumed_it_ends_bit_identical_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_store(tmp.path(), 16);
    let runs = tmp.path().join("runs");
    let whole = stream_train()
        .args(train_args(&data, &runs, "whole"))
        .status()
        .unwrap();
    assert!(whole.success());

    let dir = runs.join("killed");
    let mut rng = fastrand::Rng::with_seed(20261129);
    let (mut kills, mut in_write, mut graceful, mut lives) = (0, 0, 0, 0);
    // Each save pauses 2 × 20 ms, so a good share of the kills lands inside a checkpoint write.
    let delay_ms = 20;
    let finished = loop {
        lives += 1;
        assert!(lives < 400, "no end after {lives} starts ({kills} kills)");
        let mut child = spawn(&data, &runs, &dir, delay_ms);
        // Enough kills first; then let the run finish.
        if kills >= 24 {
            break common::wait_or_kill(
                &mut child,
                Duration::from_secs(120),
                "the run did not end",
            );
        }
        std::thread::sleep(Duration::from_millis(rng.u64(30..300)));
        if child.try_wait().unwrap().is_some() {
            // It finished on its own before the signal.
            break child.wait().unwrap();
        }
        let graceful_stop = lives % 6 == 0;
        if graceful_stop {
            // Ctrl-C or SIGTERM: the run saves where it stands and exits 130 (or, still starting
            // up before its handler exists, dies of the signal).
            signal(&child, if lives % 12 == 0 { "INT" } else { "TERM" });
            let status = common::wait_or_kill(
                &mut child,
                Duration::from_secs(60),
                "stream-train did not stop",
            );
            assert!(
                status.code() == Some(130) || status.code().is_none(),
                "stopped by a signal: {status:?}"
            );
            graceful += 1;
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            // A temporary checkpoint left behind: the kill landed inside a write.
            if dir.is_dir() && !temporaries(&dir).is_empty() {
                in_write += 1;
            }
        }
        // Whatever was interrupted, the last committed checkpoint is whole.
        if checkpoint::path(&dir).exists() {
            Snapshot::load(&dir, &Device::Cpu).unwrap();
        }
    };
    assert!(finished.success(), "the last life failed: {finished:?}");
    eprintln!(
        "{kills} SIGKILLs ({in_write} inside a checkpoint write) and {graceful} SIGINT/SIGTERM \
         stops survived over {lives} starts"
    );
    assert!(kills >= 20, "only {kills} kills landed");
    assert!(in_write >= 1, "no kill landed inside a checkpoint write");
    assert_eq!(metrics(&runs.join("whole")), metrics(&dir));
    assert_eq!(checkpoint_bits(&runs.join("whole")), checkpoint_bits(&dir));
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
    // TensorBoard's reader sees the killed run's curves as the uninterrupted run's: every
    // event past a lost checkpoint was dropped on resume, so no step shows twice or goes back,
    // and the same steps carry the same values (timings aside).
    let whole = tensorboard_events(&runs.join("whole"));
    if let (Some(whole), Some(killed)) = (whole, tensorboard_events(&dir)) {
        steps_increase(&killed);
        same_curves(&whole, &killed);
    }
}
