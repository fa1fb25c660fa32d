//! A saved run opened for use: its weights (EMA or raw) in a network, evaluation on a store, and
//! classification of images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::checkpoint::{Snapshot, State};
use super::error::{Error, Result};
use super::evaluate::{evaluate, Evaluation};
use super::learner::Part;
use super::net::Net;
use super::optim::averaging;
use crate::augment::Augmenter;
use crate::model::Precision;
use crate::store::{Images, Reader, Shape};
use crate::train::Tta;

/// A saved run's network, ready to evaluate or predict.
pub struct SavedRun {
    /// Where the run stood when saved (its configuration, classes, normalisation).
    pub state: State,
    /// The network holding the chosen weights.
    pub net: Net,
    /// Which weights: [`Part::Ema`] or [`Part::Model`] (raw).
    pub weights: Part,
    /// True when the run trained in bf16 and this device computes it in f32 instead.
    pub precision_fallback: bool,
    dir: PathBuf,
}

/// One image's predicted class.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Softmax probability of that class.
    pub probability: f32,
}

impl SavedRun {
    /// Opens the run in `dir` on `device` with its EMA weights, or the raw ones when `raw` is set
    /// or the run kept no EMA. A bf16 run on the CPU evaluates in f32: the same weights, more
    /// exactly, on any CPU (bf16 products need AVX512-BF16).
    pub fn load(dir: &Path, raw: bool, device: &Device) -> Result<SavedRun> {
        let snapshot = Snapshot::load(dir, device)?;
        let mut config = snapshot.state.config.clone();
        let precision_fallback = config.precision == Precision::Bf16 && device.is_cpu();
        if precision_fallback {
            config.precision = Precision::F32;
        }
        crate::device::set_tf32(device, config.tf32);
        let net = Net::new(&config, device)?;
        let weights = if raw || !averaging::Kind::of(&config).delivers_copy() {
            Part::Model
        } else {
            Part::Ema
        };
        net.load_state(snapshot.tensors(), weights.prefix())
            .map_err(|source| Error::State {
                path: snapshot.path().to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(SavedRun {
            state: snapshot.state,
            net,
            weights,
            precision_fallback,
            dir: dir.to_path_buf(),
        })
    }

    /// One line on what was loaded: the folder, which weights, after how many epochs.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} weights after {} epochs{}",
            self.dir.display(),
            if self.weights == Part::Ema {
                "EMA"
            } else {
                "raw"
            },
            self.state.next_epoch,
            if self.state.batch > 0 {
                format!(" (+ {} batches of the next)", self.state.batch)
            } else {
                String::new()
            }
        )
    }

    /// The run's test-time augmentation, unless `choice` overrides it.
    pub fn tta(&self, choice: Option<Tta>) -> Tta {
        choice.unwrap_or(self.state.config.tta)
    }

    /// Evaluates on every image of `store`, normalised as the run's training store was.
    pub fn evaluate(
        &self,
        store: Arc<Reader>,
        pool: Arc<rayon::ThreadPool>,
        tta: Tta,
    ) -> Result<Evaluation> {
        let classes = self.state.classes.len();
        if store.classes().len() != classes {
            return Err(Error::Unsupported(format!(
                "{} has {} classes, the run {classes}",
                store.path().display(),
                store.classes().len()
            )));
        }
        let images: Arc<dyn Images + Send + Sync> = store;
        if images.shape() != self.state.shape {
            return Err(Error::Unsupported(format!(
                "the store's images are {}, the run trained on {}",
                images.shape(),
                self.state.shape
            )));
        }
        let augmenter =
            Augmenter::normalise_only(images.shape(), &self.state.mean, &self.state.std);
        evaluate(
            &self.net.model,
            images,
            Arc::new(augmenter),
            pool,
            self.state.config.eval_batch_size,
            tta,
            &crate::dist::Local,
        )
    }

    /// Classifies `pixels`: whole images of the run's shape, interleaved HWC bytes, back to back.
    pub fn predict(&self, pixels: &[u8], tta: Tta) -> Result<Vec<Prediction>> {
        let shape = self.state.shape;
        let len = shape.image_len();
        if pixels.is_empty() || !pixels.len().is_multiple_of(len) {
            return Err(Error::Unsupported(format!(
                "{} bytes are not whole {shape} images",
                pixels.len()
            )));
        }
        let augmenter = Augmenter::normalise_only(shape, &self.state.mean, &self.state.std);
        let mut x = vec![0f32; pixels.len()];
        for (src, out) in pixels.chunks(len).zip(x.chunks_mut(len)) {
            augmenter.augment_into(src, 0, 0, out);
        }
        let n = pixels.len() / len;
        let x = Tensor::from_vec(x, shape.nchw(n), self.net.model.device())?;
        let probs = candle_nn::ops::softmax(&tta.logits(&self.net.model, &x)?, 1)?;
        let probs: Vec<Vec<f32>> = probs.to_vec2()?;
        Ok(probs
            .into_iter()
            .map(|p| {
                let (class, probability) = p
                    .iter()
                    .copied()
                    .enumerate()
                    .fold((0, f32::MIN), |a, (i, v)| if v > a.1 { (i, v) } else { a });
                let name = self.state.classes.get(class).cloned().unwrap_or_default();
                Prediction {
                    class,
                    name,
                    probability,
                }
            })
            .collect())
    }
}

/// Images larger than this on a side are refused before decoding (a header can claim anything).
const MAX_SIDE: u32 = 16_384;

/// Reads an image file as interleaved RGB bytes of `shape`. One of another size is refused, or
/// with `resize` resized to it (bilinear with antialiasing, as torchvision's `Resize` on a PIL
/// image: a triangle filter widened by the scale when shrinking): the model takes the size it
/// trained on, and changing an image is the caller's choice, not a silent default.
pub fn read_image(path: &Path, shape: Shape, resize: bool) -> Result<Vec<u8>> {
    let error = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let reader = || {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| error(e.to_string()))
    };
    // The size from the header first, so a file claiming a huge image allocates nothing.
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| error(e.to_string()))?;
    let fits = (w, h) == (shape.width, shape.height);
    if !fits && !resize {
        return Err(error(format!(
            "image is {w}x{h}, the model takes {}x{} (resize it, or pass --resize)",
            shape.width, shape.height
        )));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(error(format!(
            "image is {w}x{h}; images over {MAX_SIDE} pixels on a side are refused"
        )));
    }
    let img = reader()?.decode().map_err(|e| error(e.to_string()))?;
    if shape.channels != 3 {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: format!(
                "the model takes {} channels; files are read as RGB",
                shape.channels
            ),
        });
    }
    let rgb = img.to_rgb8();
    if fits {
        return Ok(rgb.into_raw());
    }
    let filter = image::imageops::FilterType::Triangle;
    Ok(image::imageops::resize(&rgb, shape.width, shape.height, filter).into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_a_flat_image_flat_and_refuses_without_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.png");
        let flat = image::RgbImage::from_pixel(64, 48, image::Rgb([200, 100, 50]));
        flat.save(&path).unwrap();
        let err = read_image(&path, Shape::CIFAR, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64x48") && err.contains("--resize"), "{err}");
        let pixels = read_image(&path, Shape::CIFAR, true).unwrap();
        assert_eq!(pixels.len(), 32 * 32 * 3);
        assert!(pixels.chunks(3).all(|p| p == [200, 100, 50]));
        // A left-to-right ramp stays a ramp.
        let ramp = image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([(x * 4) as u8, 0, 0]));
        ramp.save(&path).unwrap();
        let row: Vec<u8> = read_image(&path, Shape::CIFAR, true).unwrap()[..32 * 3]
            .chunks(3)
            .map(|p| p[0])
            .collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
        assert!(row[0] < 10 && row[31] > 240, "{row:?}");
    }
}
