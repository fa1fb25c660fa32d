//! Test-time augmentation: which views of each test image an evaluation averages (the setting)
//! and the forward passes that average them.

use candle_core::{Result, Tensor};

use crate::model::{Mode, SeResNetD};

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
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The image as it is.
    #[default]
    None,
    /// The image and its left-right mirror (the view training's random flip already shows the
    /// model): mean of the two logits, at twice the evaluation cost.
    Flip,
}

impl Tta {
    /// The name `--tta` takes.
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
        }
    }
}

impl Tta {
    /// Eval-mode logits of `x` (`[n, c, h, w]`) under this test-time augmentation.
    pub fn logits(self, model: &SeResNetD, x: &Tensor) -> Result<Tensor> {
        let plain = model.forward(x, Mode::Eval)?;
        match self {
            Tta::None => Ok(plain),
            Tta::Flip => {
                let mirrored = model.forward(&x.flip(&[3])?, Mode::Eval)?;
                (plain + mirrored)? * 0.5
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::Tta;
    use crate::model::{build, Mode, ModelConfig};

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
}
