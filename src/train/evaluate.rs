//! Evaluation: a model over every image of a split, in order, with test-time augmentation:
//! mean loss, accuracy and the confusion matrix.

use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::error::Result;
use crate::augment::Augmenter;
use crate::dist::Collective;
use crate::model::Network;
use crate::store::Images;
use crate::stream::{Loader, LoaderConfig, Shard};
use crate::train::Tta;

/// Accuracy and loss of one evaluation, with its confusion matrix (`[true][predicted]`).
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// Counts by true class (rows) and predicted class (columns).
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// The confusion matrix as a table: one row per true class, columns headed by the first six
    /// characters of each class name, and each class's recall.
    pub fn confusion_table(&self, classes: &[String]) -> String {
        let mut out = String::new();
        let width = classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = write!(out, "{:>width$}", "true\\pred");
        for class in classes {
            let short: String = class.chars().take(6).collect();
            let _ = write!(out, " {short:>6}");
        }
        let _ = writeln!(out, " {:>7}", "recall");
        for (k, row) in self.confusion.iter().enumerate() {
            let name = classes.get(k).map_or("?", String::as_str);
            let _ = write!(out, "{name:>width$}");
            for v in row {
                let _ = write!(out, " {v:>6}");
            }
            let n: u64 = row.iter().sum();
            let _ = writeln!(out, " {:>6.1}%", 100.0 * row[k] as f64 / n.max(1) as f64);
        }
        out
    }
}

/// Evaluates `model` on every image of `images` (running BN statistics; no augmentation but
/// `tta`'s views), reading and normalising on `pool`. With several ranks in `world`, each takes
/// its share of the images and every rank gets the totals.
pub fn evaluate(
    model: &Network,
    images: Arc<dyn Images + Send + Sync>,
    augmenter: Arc<Augmenter>,
    pool: Arc<rayon::ThreadPool>,
    batch_size: usize,
    tta: Tta,
    world: &dyn Collective,
) -> Result<Evaluation> {
    let device: Device = model.device().clone();
    let classes = model.num_classes();
    let shape = images.shape();
    // Each rank its own images, all of them once (no padding to even shares).
    let config = LoaderConfig {
        shard: (world.size() > 1).then_some(Shard {
            rank: world.rank(),
            world: world.size(),
            even: false,
        }),
        ..LoaderConfig::evaluation(batch_size)
    };
    let mut loader = Loader::start(
        images,
        augmenter,
        pool,
        config,
        Arc::new(AtomicBool::new(false)),
    );
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut n_total) = (0f64, 0usize);
    if let Some(epoch) = loader.epoch() {
        for batch in epoch {
            let batch = batch?;
            let n = batch.len();
            let x = Tensor::from_slice(&batch.images, shape.nchw(n), &device)?;
            let y = Tensor::from_slice(&batch.labels, n, &device)?;
            let logits = tta.logits(model, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let predicted: Vec<u32> = logits.argmax(1)?.to_vec1()?;
            for (&t, &p) in batch.labels.iter().zip(&predicted) {
                confusion[t as usize][p as usize] += 1;
            }
            loss_sum += loss * n as f64;
            n_total += n;
        }
    }
    if world.size() > 1 {
        // Counts below 2^53 are exact in f64.
        let mut totals: Vec<f64> = confusion.iter().flatten().map(|&v| v as f64).collect();
        totals.extend([loss_sum, n_total as f64]);
        world.all_reduce_sum_f64(&mut totals)?;
        for (v, t) in confusion.iter_mut().flatten().zip(&totals) {
            *v = *t as u64;
        }
        loss_sum = totals[classes * classes];
        n_total = totals[classes * classes + 1] as usize;
    }
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    Ok(Evaluation {
        loss: loss_sum / n_total.max(1) as f64,
        accuracy: correct as f64 / n_total.max(1) as f64,
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::Evaluation;

    #[test]
    fn the_confusion_table_cuts_names_by_character_not_byte() {
        let e = Evaluation {
            loss: 0.0,
            accuracy: 0.5,
            confusion: vec![vec![3, 1], vec![1, 3]],
        };
        // Multi-byte names: byte slicing at 6 would split a character and panic.
        let classes = ["chëvrëfeuille".to_string(), "貓".to_string()];
        let table = e.confusion_table(&classes);
        assert!(table.contains("chëvrë"), "{table}");
        assert!(table.contains(" 75.0%"), "{table}");
        assert_eq!(table.lines().count(), 3);
    }
}
