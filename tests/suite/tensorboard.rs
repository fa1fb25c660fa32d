//! TensorBoard event files read back by TensorBoard's own reader (the `tensorboard` package):
//! every tag, steps increasing, and each epoch's figures equal to `metrics.jsonl`'s. Skipped
//! where python3 cannot import tensorboard, unless `CIFAR_STREAM_TENSORBOARD=required` (CI).
//! The resume case (SIGKILLs, then `--resume`) is in crash.rs.

use serde_json::Value;

use crate::common::*;

/// An f32 TensorBoard value against an f64 metric.
fn close(board: f64, metric: f64) -> bool {
    (board - metric).abs() <= 1e-6 * metric.abs().max(1.0)
}

#[test]
fn a_runs_events_read_back_equal_to_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 60);
    // 600 images in batches of 20: 30 steps an epoch, the loss read at each epoch's 25th.
    tiny_run(tmp.path(), &data)
        .args(["--epochs", "3", "--ema-decay", "0.9"])
        .assert()
        .success();
    let run = tmp.path().join("runs/tiny");
    let Some(events) = tensorboard_events(&run) else {
        return;
    };
    steps_increase(&events);
    let steps = |tag: &str| -> Vec<i64> {
        (events[tag].as_array())
            .unwrap_or_else(|| panic!("no tag {tag} in {events}"))
            .iter()
            .map(|p| p[0].as_i64().unwrap())
            .collect()
    };
    for tag in [
        "train/loss",
        "train/accuracy",
        "throughput/images_per_second",
    ] {
        assert_eq!(steps(tag), [25, 55, 85], "{tag}");
    }
    for tag in [
        "pipeline/stall",
        "pipeline/queue_depth",
        "lr/filters",
        "lr/norm_scale",
    ] {
        assert_eq!(steps(tag).len(), 3, "{tag}");
    }
    assert_eq!(events["#text"], serde_json::json!(["config"]));
    // The first batch once, a confusion matrix per evaluation.
    assert_eq!(
        events["#images"]["augmentation/first_batch"],
        serde_json::json!([0])
    );
    assert_eq!(
        events["#images"]["test/confusion"],
        serde_json::json!([30, 60, 90])
    );
    // Each epoch's figures, at the step that ends it, equal metrics.jsonl's.
    let metrics: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pairs = [
        ("epoch/lr", "lr"),
        ("epoch/train_loss", "train_loss"),
        ("epoch/train_accuracy", "train_acc"),
        ("epoch/images_per_second", "images_per_second"),
        ("epoch/stall", "trainer_stall"),
        ("epoch/seconds", "seconds"),
        ("test/loss", "test_loss"),
        ("test/accuracy", "test_acc"),
        ("test_ema/loss", "ema_test_loss"),
        ("test_ema/accuracy", "ema_test_acc"),
    ];
    for (tag, key) in pairs {
        assert_eq!(steps(tag), [30, 60, 90], "{tag}");
        for (point, m) in events[tag].as_array().unwrap().iter().zip(&metrics) {
            let (board, metric) = (point[1].as_f64().unwrap(), m[key].as_f64().unwrap());
            assert!(
                close(board, metric),
                "{tag}: {board} against {key} {metric}"
            );
        }
    }
    // No GPU here: no GPU tags.
    assert!(events.get("gpu/busy").is_none());
}

#[test]
fn no_tensorboard_writes_no_event_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 4);
    tiny_run(tmp.path(), &data)
        .args(["--epochs", "1", "--no-tensorboard"])
        .assert()
        .success();
    let names = list(&tmp.path().join("runs/tiny"));
    assert!(!names.iter().any(|n| n.contains("tfevents")), "{names:?}");
}
