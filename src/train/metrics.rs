//! Per-epoch metrics: JSON lines, CSV, and a learning-curve PNG.

use serde::{Deserialize, Serialize};

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented images, dropout on).
    pub train_acc: f64,
    /// Test loss, raw weights (`None`: not evaluated this epoch, see `eval_every`).
    pub test_loss: Option<f64>,
    /// Test accuracy, raw weights.
    pub test_acc: Option<f64>,
    /// Test loss, EMA weights (equal to raw when the EMA is off).
    pub ema_test_loss: Option<f64>,
    /// Test accuracy, EMA weights.
    pub ema_test_acc: Option<f64>,
    /// Training images per second.
    pub images_per_second: f64,
    /// Fraction of the training time spent waiting for data.
    pub trainer_stall: f64,
    /// On CUDA with the step as a graph: the replays' GPU time (CUDA events) over the epoch's
    /// training time. `None` where no graph ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_busy: Option<f64>,
    /// Epoch wall seconds (training and evaluation).
    pub seconds: f64,
}

const CSV_HEADER: &str =
    "epoch,lr,train_loss,train_acc,test_loss,test_acc,ema_test_loss,ema_test_acc,images_per_second,trainer_stall,seconds,gpu_busy";

/// The history as JSON lines (one object per epoch) and as CSV (test cells empty where an
/// epoch was not evaluated): the contents of `metrics.jsonl` and `metrics.csv`.
pub fn encode(history: &[EpochMetrics]) -> std::io::Result<(String, String)> {
    let mut jsonl = String::new();
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for m in history {
        jsonl.push_str(&serde_json::to_string(m).map_err(std::io::Error::other)?);
        jsonl.push('\n');
        // An epoch without evaluation leaves its test cells empty.
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_acc,
            cell(m.test_loss),
            cell(m.test_acc),
            cell(m.ema_test_loss),
            cell(m.ema_test_acc),
            m.images_per_second,
            m.trainer_stall,
            m.seconds,
            cell(m.gpu_busy)
        ));
    }
    Ok((jsonl, csv))
}
