//! Which implementation an op runs ([`Kernels`], with TF32 in [`Options`]) and, for a given
//! input, where that takes it ([`Route`]): the one place the choice is made.

use candle_core::{DType, Device, Tensor};

/// Which implementation of convolution and BatchNorm to run.
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
pub enum Kernels {
    /// candle-nn's convolution and BatchNorm (autograd through candle's generic ops).
    Stock,
    /// This crate's ops with explicit backward passes: on the CPU (f32) its own im2col + GEMM
    /// convolution, BatchNorm and block tail; on CUDA (f32, bf16) its own kernels and cuDNN.
    #[default]
    Fast,
}

impl Kernels {
    /// The name `--kernels` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Stock => "stock",
            Kernels::Fast => "fast",
        }
    }

    /// Where an op on `x` runs: this crate's CPU ops for f32 on the CPU, its CUDA kernels for
    /// f32 or bf16 on CUDA, candle's own ops for everything else and for [`Kernels::Stock`].
    pub fn route(self, x: &Tensor) -> Route {
        if self != Kernels::Fast {
            return Route::Stock;
        }
        match (x.device(), x.dtype()) {
            (Device::Cpu, DType::F32) => Route::Cpu,
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), DType::F32 | DType::BF16) => Route::Cuda,
            _ => Route::Stock,
        }
    }
}

/// Where one op runs (see [`Kernels::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// candle's generic ops.
    Stock,
    /// This crate's CPU ops.
    Cpu,
    /// This crate's CUDA kernels (and cuDNN for convolutions).
    #[cfg(feature = "cuda")]
    Cuda,
}

/// How the ops compute: the implementation, and whether f32 convolutions through cuDNN on CUDA
/// may round their inputs to TF32 on tensor cores (10 mantissa bits in the products, sums in
/// f32; 1.82× the f32 `seed` step on an H200, with cuBLAS's products likewise; PyTorch's default
/// for cuDNN convolutions). cuDNN takes the setting with each call; candle's matrix products
/// follow a process-wide switch, set once where a run opens its device
/// (`crate::device::set_tf32`), not here. TF32 changes nothing on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The implementation.
    pub kernels: Kernels,
    /// TF32 allowed on CUDA.
    pub tf32: bool,
    /// On the CPU, 3×3 stride-1 convolutions (forward and both gradients) multiply operands
    /// rounded to bf16 and sum in f32 (AVX512-BF16; see [`crate::ops::bf16_products_available`]);
    /// other convolutions and every other op stay f32. Nothing changes on CUDA, where bf16 is
    /// the activations' dtype instead.
    pub bf16_products: bool,
}

impl From<Kernels> for Options {
    /// `kernels` with TF32 allowed (the default setting).
    fn from(kernels: Kernels) -> Options {
        Options {
            kernels,
            tf32: true,
            bf16_products: false,
        }
    }
}
