//! Runs that go wrong and what a person reads then: a diverging run stops and keeps its last
//! finite checkpoint, a checkpoint with a non-finite tensor is refused, and no printed error says
//! its cause twice.

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use candle_core::Device;
use safetensors::tensor::{SafeTensors, TensorView};

use cifar_stream::train::checkpoint;

use crate::common::{checkpoint_bits, synthetic_store, tiny_run};

/// A small `tiny` run on `data` in `dir` with `extra` flags.
fn stream_train(dir: &Path, data: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    tiny_run(dir, data).args(extra).assert()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn a_diverging_run_stops_naming_where_and_keeps_its_last_finite_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 10);
    stream_train(tmp.path(), &data, &["--epochs", "1"]).success();
    let run = tmp.path().join("runs/tiny");
    let before = checkpoint_bits(&run);
    // The command: a learning rate of 100 with no warm-up, resumed from that checkpoint.
    let failed = stream_train(
        tmp.path(),
        &data,
        &[
            "--resume",
            "runs/tiny",
            "--lr",
            "100",
            "--warmup-epochs",
            "0",
            "--epochs",
            "4",
        ],
    )
    .failure();
    assert_eq!(failed.get_output().status.code(), Some(1));
    let err = stderr(&failed);
    assert!(
        err.contains("error: the run diverged in epoch 2 at step ")
            && err.contains("learning rate ")
            && (err.contains(" is NaN") || err.contains(" is inf") || err.contains("holds NaN")),
        "{err}"
    );
    // Nothing of the diverged epochs was written: the checkpoint is the epoch-1 one, loadable.
    assert_eq!(checkpoint_bits(&run), before);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    Command::cargo_bin("stream-train")
        .unwrap()
        .args(["eval", "--checkpoint"])
        .arg(&run)
        .arg("--data")
        .arg(&data)
        .assert()
        .success();
}

#[test]
fn a_diverging_run_from_scratch_leaves_no_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 10);
    let failed = stream_train(
        tmp.path(),
        &data,
        &["--lr", "100", "--warmup-epochs", "0", "--epochs", "3"],
    )
    .failure();
    assert!(stderr(&failed).contains("the run diverged in epoch"));
    let run = tmp.path().join("runs/tiny");
    assert!(!run.join("checkpoint.safetensors").exists());
}

/// Rewrites the checkpoint of run `dir` with `name`'s first value set to NaN, checksum and all.
fn poison(dir: &Path, name: &str) {
    let path = dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let target = owned.iter_mut().find(|t| t.0 == name).expect("tensor");
    target.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let named = views.iter().map(|(n, v)| (n.as_str(), v));
    meta.insert("checksum".into(), checkpoint::checksum(named));
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn eval_predict_and_resume_refuse_a_checkpoint_with_a_non_finite_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 4);
    stream_train(tmp.path(), &data, &["--epochs", "1"]).success();
    let run = tmp.path().join("runs/tiny");
    let tensor = "model.stage1.0.conv2.conv.weight";
    poison(&run, tensor);
    let image = tmp.path().join("x.png");
    image::RgbImage::new(32, 32).save(&image).unwrap();
    let commands: [Vec<&std::ffi::OsStr>; 3] = [
        vec![
            "eval".as_ref(),
            "--checkpoint".as_ref(),
            run.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ],
        vec![
            "predict".as_ref(),
            "--checkpoint".as_ref(),
            run.as_os_str(),
            image.as_os_str(),
        ],
        vec![
            "--resume".as_ref(),
            run.as_os_str(),
            "--epochs".as_ref(),
            "2".as_ref(),
        ],
    ];
    for args in commands {
        let out = Command::cargo_bin("stream-train")
            .unwrap()
            .current_dir(tmp.path())
            .args(&args)
            .assert()
            .failure();
        let err = stderr(&out);
        assert!(
            err.contains(&format!("tensor {tensor} holds NaN or infinity"))
                && err.contains("checkpoint.safetensors"),
            "{args:?}: {err}"
        );
    }
    // The library says the same to a caller that loads it directly.
    let refused = cifar_stream::train::Snapshot::load(&run, &Device::Cpu);
    assert!(refused.is_err_and(|e| e.to_string().contains(tensor)));
}

/// The `error:` line of a failed command, cut at `": "` into its clauses.
fn clauses(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    line.split(": ").map(str::to_string).collect()
}

#[test]
fn the_clause_splitter_sees_a_repeat() {
    let c = clauses("x\nerror: a.txt: No such file (os error 2): No such file (os error 2)\n");
    assert_eq!(
        c,
        [
            "a.txt",
            "No such file (os error 2)",
            "No such file (os error 2)"
        ]
    );
}

#[test]
fn no_printed_error_says_its_cause_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = synthetic_store(dir, 4);
    stream_train(dir, &data, &["--epochs", "1", "--name", "done"]).success();
    let damaged = dir.join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let good = std::fs::read(dir.join("runs/done/checkpoint.safetensors")).unwrap();
    std::fs::write(
        damaged.join("checkpoint.safetensors"),
        &good[..good.len() / 2],
    )
    .unwrap();
    let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "stream-train",
            vec![
                "predict".into(),
                "--checkpoint".into(),
                "runs/missing".into(),
                "x.png".into(),
            ],
        ),
        (
            "stream-train",
            vec!["eval".into(), "--checkpoint".into(), path("damaged")],
        ),
        (
            "stream-train",
            vec![
                "--data".into(),
                path("nowhere"),
                "--preset".into(),
                "tiny".into(),
            ],
        ),
        (
            "stream-train",
            vec!["--config".into(), path("missing.toml")],
        ),
        (
            "stream-train",
            vec!["--resume".into(), path("runs/missing")],
        ),
        (
            "stream-train",
            vec![
                "predict".into(),
                "--checkpoint".into(),
                path("runs/done"),
                path("missing.png"),
            ],
        ),
        (
            "prep-dataset",
            vec!["--source".into(), path("missing.tar.gz")],
        ),
        (
            "prep-dataset",
            vec![
                "--synthetic".into(),
                "--per-class".into(),
                "2".into(),
                "--out".into(),
                "/proc/no/such".into(),
            ],
        ),
    ];
    for (bin, args) in cases {
        let out = Command::cargo_bin(bin)
            .unwrap()
            .current_dir(dir)
            .args(&args)
            .assert()
            .failure();
        let err = stderr(&out);
        let c = clauses(&err);
        for (i, clause) in c.iter().enumerate() {
            assert!(
                !c[i + 1..].contains(clause),
                "{bin} {args:?} repeats {clause:?}: {err}"
            );
        }
    }
}
