//! The run's TensorBoard file (`tensorboard --logdir runs`): the training scalars at each step
//! whose loss is read, the epoch's figures (the same as `metrics.jsonl`'s) and the delivered
//! model's confusion matrix at the step that ends it, the first batch as augmentation made it,
//! and the resolved configuration as text. One step axis for all: the run's global step.

use super::Trainer;
use crate::render::{grid, heatmap, png_bytes, Row};
use crate::stream::EpochStats;
use crate::tensorboard::{EventWriter, EVENT_FILE};
use crate::train::error::{io, Result};
use crate::train::{EpochMetrics, TestEvaluation};

/// Images of the first batch the preview shows (rows of [`PREVIEW_ROW`]).
const PREVIEW_IMAGES: usize = 32;
const PREVIEW_ROW: usize = 8;

impl Trainer {
    /// Opens the event file of the run folder (rank 0, `tensorboard` on): a new one, or for a
    /// resumed run the old one without the events past the checkpoint's step, so each tag's
    /// steps go on increasing with no duplicate.
    pub(super) fn open_board(&mut self, resumed: bool) -> Result<()> {
        if self.run_dir.is_none() || !self.config.tensorboard {
            return Ok(());
        }
        let step = self.learner.steps() as u64;
        let path = self.dir.join(EVENT_FILE);
        let mut board = match resumed {
            true => EventWriter::resume(&self.dir, step),
            false => EventWriter::create(&self.dir),
        }
        .map_err(io(&path))?;
        // Indented: Markdown shows it as code.
        let toml: String = (self.config.to_toml().lines())
            .map(|l| format!("    {l}\n"))
            .collect();
        board.text("config", step, &toml).map_err(io(&path))?;
        board.flush().map_err(io(&path))?;
        self.board = Some(board);
        Ok(())
    }

    /// After a step whose loss was read: the epoch's mean loss and accuracy so far, each
    /// group's rate, images/s and the data stream's stall and queue depth so far; on CUDA the
    /// epoch's GPU busy so far (with graphs) and the memory in use.
    pub(super) fn log_step(
        &mut self,
        loss: f64,
        accuracy: f64,
        epoch_seconds: f64,
        stream: &EpochStats,
    ) -> Result<()> {
        if self.board.is_none() {
            return Ok(());
        }
        let steps = self.learner.steps();
        let busy = match &mut self.graphs {
            Some(graphs) => graphs.busy_seconds_so_far()?,
            None => None,
        };
        let memory = crate::device::memory_peak(&self.device)?;
        let images_per_second = self.sums.images() as f64 / epoch_seconds.max(1e-9);
        let Some(board) = &mut self.board else {
            return Ok(());
        };
        let last = steps.saturating_sub(1);
        let lr = (self.config.schedule).lr_at(last, self.batches_per_epoch, self.config.epochs);
        let rates = self.learner.group_rates(lr, last);
        let tags: Vec<String> = rates.iter().map(|(n, _)| format!("lr/{n}")).collect();
        let mut values = vec![
            ("train/loss", loss),
            ("train/accuracy", accuracy),
            ("throughput/images_per_second", images_per_second),
            ("pipeline/stall", stream.stall()),
            ("pipeline/queue_depth", stream.mean_depth()),
        ];
        values.extend(tags.iter().zip(&rates).map(|(t, (_, r))| (t.as_str(), *r)));
        if let Some(busy) = busy {
            values.push(("gpu/busy", busy / epoch_seconds.max(1e-9)));
        }
        if let Some((used, _)) = memory {
            values.push(("gpu/memory_mib", (used >> 20) as f64));
        }
        let path = board.path().to_path_buf();
        board.scalars(steps as u64, &values).map_err(io(&path))?;
        board.flush().map_err(io(&path))
    }

    /// The run's first batch, as augmentation made it (normalised images, `len × C × H × W`),
    /// shown back in pixels: what the model sees.
    pub(super) fn log_preview(&mut self, images: &[f32]) -> Result<()> {
        let header = &self.stores.header;
        let shape = header.shape;
        // The grid draws RGB: a store of another channel count shows no preview.
        let first = self.learner.steps() == 0 && shape.channels == 3;
        let Some(board) = self.board.as_mut().filter(|_| first) else {
            return Ok(());
        };
        let (len, c) = (shape.image_len(), shape.channels as usize);
        let plane = len / c;
        let pixels: Vec<Vec<u8>> = (images.chunks_exact(len).take(PREVIEW_IMAGES))
            .map(|image| {
                // Back from (v/255 − mean) / std, channels interleaved.
                let mut hwc = vec![0u8; len];
                for (i, v) in image.iter().enumerate() {
                    let (ch, at) = (i / plane, i % plane);
                    let value = (*v as f64 * header.std[ch] + header.mean[ch]) * 255.0;
                    hwc[at * c + ch] = value.round().clamp(0.0, 255.0) as u8;
                }
                hwc
            })
            .collect();
        let rows: Vec<Row> = (pixels.chunks(PREVIEW_ROW))
            .map(|row| Row {
                label: String::new(),
                images: row.iter().map(Vec::as_slice).collect(),
            })
            .collect();
        let image = grid(&rows, shape, 2);
        let path = board.path().to_path_buf();
        let png = png_bytes(&image).map_err(io(&path))?;
        (board.image("augmentation/first_batch", 0, image.dimensions(), png)).map_err(io(&path))
    }

    /// The epoch's figures as `metrics.jsonl` has them (the test split's where it was
    /// evaluated; GPU busy and memory on CUDA), at the step that ends it.
    pub(super) fn log_epoch(
        &mut self,
        m: &EpochMetrics,
        evaluation: Option<&TestEvaluation>,
    ) -> Result<()> {
        let steps = self.learner.steps() as u64;
        let memory = crate::device::memory_peak(&self.device)?;
        let Some(board) = &mut self.board else {
            return Ok(());
        };
        let mut values = vec![
            ("epoch/lr", m.lr),
            ("epoch/train_loss", m.train_loss),
            ("epoch/train_accuracy", m.train_acc),
            ("epoch/images_per_second", m.images_per_second),
            ("epoch/stall", m.trainer_stall),
            ("epoch/seconds", m.seconds),
        ];
        let optional = [
            ("test/loss", m.test_loss),
            ("test/accuracy", m.test_acc),
            ("test_ema/loss", m.ema_test_loss),
            ("test_ema/accuracy", m.ema_test_acc),
            ("gpu/busy", m.gpu_busy),
            (
                "gpu/memory_mib",
                memory.map(|(used, _)| (used >> 20) as f64),
            ),
        ];
        values.extend(optional.iter().filter_map(|(t, v)| v.map(|v| (*t, v))));
        let path = board.path().to_path_buf();
        board.scalars(steps, &values).map_err(io(&path))?;
        // The delivered model's confusion matrix (rows: true class; columns: predicted).
        if let Some(e) = evaluation {
            let image = heatmap(&e.ema.confusion, 24);
            let png = png_bytes(&image).map_err(io(&path))?;
            (board.image("test/confusion", steps, image.dimensions(), png)).map_err(io(&path))?;
        }
        board.flush().map_err(io(&path))
    }
}
