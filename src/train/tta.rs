//! Test-time augmentation: which views of each test image an evaluation averages (the setting)
//! and the forward passes that average them.

use candle_core::{Result, Tensor};

use crate::model::{Mode, Network};

/// Views of each test image whose logits are averaged.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The image as it is.
    #[default]
    None,
    /// The image and its left-right mirror (the view training's random flip already shows the
    /// model): mean of the two logits, at twice the evaluation cost.
    Flip,
    /// airbench's level 2: half the flip view's logits, plus a quarter each of the flip view of
    /// the image moved one pixel down-right and one up-left (reflected at the border), at six
    /// times the evaluation cost.
    FlipTranslate,
}

impl Tta {
    /// Model passes per test image.
    pub fn views(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Flip => 2,
            Tta::FlipTranslate => 6,
        }
    }

    /// The name `--tta` takes.
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
            Tta::FlipTranslate => "flip-translate",
        }
    }
}

impl Tta {
    /// Eval-mode logits of `x` (`[n, c, h, w]`) under this test-time augmentation, detached
    /// (no gradient flows back through them).
    pub fn logits(self, model: &Network, x: &Tensor) -> Result<Tensor> {
        // Detached at once: a view's logits would otherwise keep its whole forward graph (every
        // activation of the batch) alive until the last view is done.
        let view = |x: &Tensor| -> Result<Tensor> { Ok(model.forward(x, Mode::Eval)?.detach()) };
        let flip = |x: &Tensor| -> Result<Tensor> {
            let plain = view(x)?;
            let mirrored = view(&x.flip(&[3])?)?;
            (plain + mirrored)? * 0.5
        };
        match self {
            Tta::None => view(x),
            Tta::Flip => flip(x),
            Tta::FlipTranslate => {
                let moved = (flip(&shift(x, 1)?)? + flip(&shift(x, -1)?)?)?;
                (flip(x)? * 0.5)? + (moved * 0.25)?
            }
        }
    }
}

/// `x: [n, c, h, w]` moved `by` pixels (±1) down and right, the uncovered row and column
/// reflected from inside the image (PyTorch's `reflect` padding, then a crop).
fn shift(x: &Tensor, by: i32) -> Result<Tensor> {
    let mut x = x.clone();
    for dim in [2, 3] {
        let n = x.dim(dim)?;
        x = if by > 0 {
            Tensor::cat(&[x.narrow(dim, 1, 1)?, x.narrow(dim, 0, n - 1)?], dim)?
        } else {
            Tensor::cat(&[x.narrow(dim, 1, n - 1)?, x.narrow(dim, n - 2, 1)?], dim)?
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{shift, Tta};
    use crate::model::{build, Mode, ModelConfig, Network};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn flip_averages_the_logits_of_the_image_and_its_left_right_mirror() {
        let dev = Device::Cpu;
        let (model, _) = build(&ModelConfig::tiny(), 3, &dev).unwrap();
        let model = Network::SeResnetD(model);
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &dev).unwrap();
        let plain = model.forward(&x, Mode::Eval).unwrap();
        assert!(max_abs_diff(&Tta::None.logits(&model, &x).unwrap(), &plain) == 0.0);

        let mirrored = model.forward(&x.flip(&[3]).unwrap(), Mode::Eval).unwrap();
        let mean = ((&plain + &mirrored).unwrap() * 0.5).unwrap();
        let flip = Tta::Flip.logits(&model, &x).unwrap();
        assert!(max_abs_diff(&flip, &mean) < 1e-6);
        assert!(
            max_abs_diff(&flip, &plain) > 1e-4,
            "the mirror changed nothing"
        );

        // An image symmetric left-right is its own mirror, whatever the weights (a flip of the
        // wrong axis would fail here).
        let symmetric = (&x + x.flip(&[3]).unwrap()).unwrap();
        let plain = model.forward(&symmetric, Mode::Eval).unwrap();
        let flip = Tta::Flip.logits(&model, &symmetric).unwrap();
        assert!(max_abs_diff(&flip, &plain) < 1e-5);
    }

    #[test]
    fn evaluation_logits_hold_no_graph() {
        // A graph behind the logits would keep every activation of every view alive (a
        // fast-cpu evaluation peaked at 6.2 GB for it, against 1.3 GB without).
        let dev = Device::Cpu;
        let (model, _) = build(&ModelConfig::tiny(), 3, &dev).unwrap();
        let model = Network::SeResnetD(model);
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &dev).unwrap();
        assert!(model.forward(&x, Mode::Eval).unwrap().track_op());
        for tta in [Tta::None, Tta::Flip, Tta::FlipTranslate] {
            assert!(!tta.logits(&model, &x).unwrap().track_op(), "{tta:?}");
        }
    }

    #[test]
    fn shifts_move_by_one_pixel_and_reflect_at_the_border() {
        let dev = Device::Cpu;
        // One 3×3 plane 0..9.
        let x = Tensor::arange(0f32, 9., &dev)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let rows = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Down-right: row −1 is row 1, column −1 is column 1.
        assert_eq!(
            rows(shift(&x, 1).unwrap()),
            [4., 3., 4., 1., 0., 1., 4., 3., 4.]
        );
        // Up-left: row 3 is row 1, column 3 is column 1.
        assert_eq!(
            rows(shift(&x, -1).unwrap()),
            [4., 5., 4., 7., 8., 7., 4., 5., 4.]
        );
    }
}
