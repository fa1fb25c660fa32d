//! Test-time augmentation setting: which views of each test image an evaluation averages. The
//! forward passes themselves are the trainer's (`train::tta`).

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
