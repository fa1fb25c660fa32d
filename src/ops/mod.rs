//! Training ops with explicit backward passes, behind one interface the model calls
//! ([`conv2d`], [`block_tail`], [`squeeze`] and the [`Conv2d`] and [`BatchNorm`] layers).
//!
//! [`Kernels::Fast`] runs 3×3 stride-1 convolutions as direct register-tiled kernels (no patch
//! matrix) and any other as im2col + GEMM per image, BatchNorm (+ ReLU or GELU) as one fused
//! pass and a bottleneck's tail (SE scale + residual add + ReLU) as another, each with a
//! hand-written backward pass, on f32 CPU tensors (elementwise loops on AVX2 where the CPU has
//! it, `wide`). On CUDA (f32 or bf16 activations) BatchNorm,
//! the tail and the SE squeeze are this crate's own kernels ([`cuda`]), and convolution goes
//! through cuDNN for its forward pass and both gradients with cached plans (`cudnn` feature), or
//! candle's forward with the backward of [`lowered`] (a forward convolution and one GEMM instead
//! of candle's direct kernels). With [`Kernels::Stock`], and for other dtypes, every call goes to
//! candle's own ops. [`Kernels::route`] is where that choice is made; [`Options`] carries the
//! kernels with the TF32 setting, so nothing is chosen by a process-wide switch of this crate.

mod batch_norm;
mod batch_norm_cpu;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
mod direct;
mod gelu;
mod gemm;
mod host;
mod kernels;
mod layers;
pub mod lowered;
mod max_pool;
mod multi_tensor;
pub mod optim;
#[cfg(feature = "cuda")]
mod squeeze;
pub mod stage;
mod tail;
mod wide;

pub use batch_norm::Stats;
pub use conv::Geometry;
pub use kernels::{Kernels, Options, Route};
pub use layers::{
    block_tail, conv2d, gelu, gelu_with_bias, max_pool2, squeeze, BatchNorm, Conv2d, Statistics,
};
