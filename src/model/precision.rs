//! The dtype the network computes in; its variables (master weights) stay f32 either way.

use candle_core::{DType, Device};

/// Compute precision of the forward and backward passes.
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
pub enum Precision {
    /// Everything in f32: the reference.
    #[default]
    F32,
    /// Convolutions, the residual tail and activations in bf16; weights are cast from their f32
    /// masters at each use, so gradients, the optimizer and the EMA stay f32. BatchNorm, the
    /// Squeeze-and-Excitation gate, pooling, the classifier and the loss compute in f32, as
    /// PyTorch's autocast keeps reductions in f32.
    Bf16,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The dtype of activations and of weights at use.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Refuses a precision `device` cannot compute in, saying why.
    pub fn check(self, device: &Device) -> Result<(), String> {
        if self == Precision::Bf16 && device.is_cpu() {
            return Err(
                "precision bf16 needs a CUDA device: candle's CPU matmul has no bf16".into(),
            );
        }
        Ok(())
    }
}
