//! An epoch's training loss and accuracy, summed on the device.
//!
//! Reading a scalar back from a GPU waits for every kernel queued before it. A trainer that read
//! each step's loss would drain the queue every step, so the GPU would idle while the host fetched
//! and uploaded the next batch. These sums stay on the device; the trainer reads them every few
//! steps (progress) and once at the end of the epoch.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

/// The prefix of the sums' names in a checkpoint.
const PREFIX: &str = "epoch_sums.";
/// The prefix checkpoints written before the rename used; still read.
const OLD_PREFIX: &str = "running.";

/// Sums of `loss × batch` and of correct predictions since the epoch started, in two device
/// scalars allocated once and written in place (a captured step adds to the same memory).
pub struct EpochSums {
    loss: Var,
    hits: Var,
    images: usize,
}

impl EpochSums {
    /// Zero totals on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(EpochSums {
            loss: Var::zeros((), DType::F64, device)?,
            hits: Var::zeros((), DType::U32, device)?,
            images: 0,
        })
    }

    /// Starts a new epoch: zero totals, in the same storage.
    pub fn reset(&mut self) -> Result<()> {
        self.loss.set(&self.loss.zeros_like()?)?;
        self.hits.set(&self.hits.zeros_like()?)?;
        self.images = 0;
        Ok(())
    }

    /// Adds one batch's sums on the device: its `logits` `[n, classes]`, mean `loss` and labels
    /// `y` `[n]` (u32). Queues device work only and touches no host state (a captured step
    /// replays it without calling it): [`EpochSums::count`] counts the batch's images.
    pub fn add(&self, logits: &Tensor, loss: &Tensor, y: &Tensor) -> Result<()> {
        let n = y.dims1()?;
        // Detached: a total that held the loss would keep the whole step's graph alive.
        let loss = (loss.detach().to_dtype(DType::F64)? * n as f64)?;
        let hits = logits
            .detach()
            .argmax(1)?
            .eq(y)?
            .to_dtype(DType::U32)?
            .sum_all()?;
        self.loss.set(&(self.loss.as_tensor() + loss)?)?;
        self.hits.set(&(self.hits.as_tensor() + hits)?)
    }

    /// Counts `n` more images, on the host, for each batch [`EpochSums::add`]ed.
    pub fn count(&mut self, n: usize) {
        self.images += n;
    }

    /// The two sums as named tensors, whether or not a batch was added (what lives across
    /// steps, for the capture check).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (format!("{PREFIX}loss"), self.loss.as_tensor().clone()),
            (format!("{PREFIX}hits"), self.hits.as_tensor().clone()),
        ]
    }

    /// Images added so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The device-side sums as named tensors (`epoch_sums.loss`, `epoch_sums.hits`) once a batch
    /// was added, for a checkpoint; [`EpochSums::images`] goes with them.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        if self.images == 0 {
            return Vec::new();
        }
        self.tensors()
    }

    /// Copies in the totals of a [`EpochSums::state`] over `images` images (zeros when it holds
    /// none: a checkpoint at an epoch boundary).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, images: usize) -> Result<()> {
        let get = |n: &str| {
            [PREFIX, OLD_PREFIX]
                .iter()
                .find_map(|p| tensors.get(&format!("{p}{n}")).cloned())
        };
        self.reset()?;
        if let (Some(loss), Some(hits)) = (get("loss"), get("hits")) {
            self.loss.set(&loss)?;
            self.hits.set(&hits)?;
            self.images = images;
        }
        Ok(())
    }

    /// `(Σ loss × batch, correct)` so far (zeros before the first batch); waits for the device.
    pub fn read_sums(&self) -> Result<(f64, f64)> {
        let loss = self.loss.as_tensor().to_scalar::<f64>()?;
        let hits = self.hits.as_tensor().to_scalar::<u32>()?;
        Ok((loss, hits as f64))
    }

    /// `(mean loss, accuracy)` so far (zeros before the first batch); waits for the device.
    pub fn read(&self) -> Result<(f64, f64)> {
        let (loss, hits) = self.read_sums()?;
        let n = (self.images as f64).max(1.0);
        Ok((loss / n, hits / n))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::EpochSums;

    #[test]
    fn means_weight_each_batch_by_its_size() {
        let dev = Device::Cpu;
        let mut r = EpochSums::new(&dev).unwrap();
        assert_eq!(r.read().unwrap(), (0.0, 0.0));
        // Batch 1: two images, both right, loss 1.0. Batch 2: one image, wrong, loss 4.0.
        let logits = Tensor::new(&[[0.0f32, 2.0], [3.0, 1.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0], &dev).unwrap();
        r.add(&logits, &Tensor::new(1.0f32, &dev).unwrap(), &y)
            .unwrap();
        r.count(2);
        let logits = Tensor::new(&[[0.0f32, 2.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        r.add(&logits, &Tensor::new(4.0f32, &dev).unwrap(), &y)
            .unwrap();
        r.count(1);
        let (loss, acc) = r.read().unwrap();
        assert_eq!(r.images(), 3);
        assert!((loss - 2.0).abs() < 1e-12, "{loss}");
        assert!((acc - 2.0 / 3.0).abs() < 1e-12, "{acc}");
    }

    #[test]
    fn the_state_round_trips_and_the_old_names_are_read() {
        let dev = Device::Cpu;
        let mut r = EpochSums::new(&dev).unwrap();
        assert!(r.state().is_empty());
        let logits = Tensor::new(&[[0.0f32, 2.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32], &dev).unwrap();
        r.add(&logits, &Tensor::new(3.0f32, &dev).unwrap(), &y)
            .unwrap();
        r.count(1);
        let state: std::collections::HashMap<String, Tensor> = r.state().into_iter().collect();
        let mut back = EpochSums::new(&dev).unwrap();
        back.load_state(&state, 1).unwrap();
        assert_eq!(back.read().unwrap(), (3.0, 1.0));
        // A checkpoint written before the rename named them `running.…`.
        let old = state
            .into_iter()
            .map(|(k, t)| (k.replace("epoch_sums.", "running."), t))
            .collect();
        back.reset().unwrap();
        assert_eq!(back.read().unwrap(), (0.0, 0.0));
        back.load_state(&old, 1).unwrap();
        assert_eq!(back.read().unwrap(), (3.0, 1.0));
    }
}
