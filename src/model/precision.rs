//! The dtype the network computes in; its variables (master weights) stay f32 either way.

use candle_core::{DType, Device};

use crate::ops::Kernels;

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
    /// On CUDA: convolutions, the residual tail and activations in bf16; weights are cast from
    /// their f32 masters at each use, so gradients, the optimizer and the EMA stay f32.
    /// BatchNorm, the Squeeze-and-Excitation gate, pooling, the classifier and the loss compute
    /// in f32, as PyTorch's autocast keeps reductions in f32. On the CPU (AVX512-BF16 only):
    /// the 3×3 convolutions, forward and both gradients, multiply bf16-rounded operands and sum
    /// in f32; activations stay f32 between ops, and every other op computes in f32.
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

    /// Refuses a precision `device` cannot compute in with `kernels`, saying why.
    pub fn check(self, device: &Device, kernels: Kernels) -> Result<(), String> {
        if self == Precision::Bf16 && device.is_cpu() {
            if kernels != Kernels::Fast {
                return Err(
                    "precision bf16 on the CPU needs --kernels fast: candle's own CPU \
                            ops have no bf16 products"
                        .into(),
                );
            }
            if !crate::ops::bf16_products_available() {
                return Err(
                    "precision bf16 on the CPU needs AVX512-BF16 (vdpbf16ps: Zen 4 and \
                            later, Sapphire Rapids and later Xeons), which this CPU lacks; \
                            train with --precision f32"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Whether this precision on `device` is the CPU's: bf16 products inside f32 ops rather
    /// than bf16 activations.
    pub fn is_cpu_bf16(self, device: &Device) -> bool {
        self == Precision::Bf16 && device.is_cpu()
    }
}
