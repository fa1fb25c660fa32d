//! Training ops with explicit backward passes, behind one interface the model calls
//! ([`conv2d`], [`block_tail`], [`squeeze`], [`gelu`], [`max_pool2`] and the [`Conv2d`] and
//! [`BatchNorm`] layers).
//!
//! [`Kernels::Fast`] runs 3×3 stride-1 convolutions as direct register-tiled kernels (no patch
//! matrix) and any other as im2col + GEMM per image, BatchNorm (+ ReLU or GELU) as one fused
//! pass and a bottleneck's tail (SE scale + residual add + ReLU) as another, each with a
//! hand-written backward pass, on f32 CPU tensors (elementwise loops on AVX2 where the CPU has
//! it; with [`Options::bf16_products`] the 3×3 convolutions multiply in bf16 on AVX512-BF16,
//! summing in f32). On CUDA (f32 or bf16 activations) BatchNorm, the tail and the SE squeeze are this
//! crate's own kernels, and convolution goes through cuDNN for its forward pass and both
//! gradients with cached plans (`cudnn` feature), or candle's forward with the backward of
//! [`conv::lowered`] (a forward convolution and one GEMM instead of candle's direct kernels).
//! With [`Kernels::Stock`], and for other dtypes, every call goes to candle's own ops.
//! [`Kernels::route`] is where that choice is made. [`Options`] carries the kernels with the
//! TF32 setting, which reaches cuDNN with each call; candle's cuBLAS switch is process-wide, so
//! it is set once where a run opens its device (`crate::device::set_tf32`), not by these ops.
//!
//! # Where an op's code lives
//!
//! Each op has up to three parts, always in the same places:
//! - its **glue**, in one file or folder at the top of `ops/` named after the op: the candle
//!   `CustomOp` impls (shape checks, dtype and device dispatch, forward and backward wiring:
//!   borrowing the tensors' data, calling a backend, wrapping what comes back as tensors);
//! - its **CPU maths**, in `cpu/<op>.rs` (or `cpu/<op>/`): its passes on plain slices, with no
//!   candle type;
//! - its **CUDA launches**, in `cuda/<op>.rs`: the kernels of `cuda/kernels.cu` (or cuDNN) on
//!   candle's CUDA storage.
//!
//! The glue imports its backends, never the other way round, and the CPU and CUDA sides do not
//! import each other (CPU files may share maths: the tail's ReLU is BatchNorm's). What the
//! glue and a backend both take lives in its own file at the top ([`Geometry`]
//! in `geometry.rs`, the optimizer's operands in `multi_tensor.rs`); `host.rs` holds the helpers
//! on candle's side (a CPU tensor as a slice, a slice as an output tensor, the `[n, c, …]` split
//! of a shape), `cpu/` what the CPU maths share (`mod.rs`, `gemm.rs`, `wide.rs`), and
//! `cuda/launch.rs` what the launches share. An op may have a backend on one side only; the
//! other side's route then takes candle's ops. Another dtype or instruction set is another
//! function in the same backend file or folder, which the glue picks by dtype; a variant with
//! its own tiles gets its own folder beside the f32 one (`cpu/conv/direct/bf16/`: the bf16
//! products, picked by [`Options::bf16_products`]), and shares the loops that drive the tiles
//! where they are the same (`cpu/conv/direct/drivers.rs`).
//!
//! | op | glue | CPU maths | CUDA launches |
//! |---|---|---|---|
//! | convolution | `conv/` (and `conv/lowered.rs`: the backward from candle's ops, any device) | `cpu/conv/` (`direct/` 3×3, its `bf16/` products, `im2col.rs`) | `cuda/conv.rs` (cuDNN) |
//! | BatchNorm (+ activation) | `batch_norm.rs` | `cpu/batch_norm.rs` | `cuda/batch_norm.rs` |
//! | block tail | `tail.rs` | `cpu/tail.rs` | `cuda/tail.rs` |
//! | SE squeeze | `squeeze.rs` | none: candle's mean | `cuda/squeeze.rs` |
//! | GELU (+ bias) | `gelu.rs` | `cpu/gelu.rs` | none: candle's `gelu_erf` |
//! | 2×2 max-pool | `max_pool.rs` | `cpu/max_pool.rs` | none: candle's `max` |
//! | SGD, EMA (multi-tensor) | `optim/` | `cpu/optim.rs` | `cuda/optim.rs` |
//!
//! Besides the ops: `kernels.rs` chooses ([`Kernels`], [`Route`], [`Options`]), `layers.rs` is
//! the interface the model calls, and `stage.rs` writes host values into a tensor that stays put.
//!
//! # Glossary
//! - [`Kernels`]: which family of implementations runs (`--kernels`: candle's `stock` ops or
//!   this crate's `fast` ones).
//! - [`Route`]: where one call goes (candle's ops, the CPU maths or the CUDA launches), from the
//!   kernels and the input's device and dtype.
//! - [`Options`]: the ops' settings: the kernels and the numeric switches (TF32 on CUDA, bf16
//!   products on the CPU).
//! - `model::Compute`: a network's [`Options`] and the dtype its activations compute in.
//! - `Isa`: the instruction set the CPU convolution's register tiles run on (AVX-512F,
//!   AVX2 + FMA, or portable Rust), detected at run time (`cpu/conv/direct/`).
//! - [`Geometry`]: a convolution's shape (batch, channels in and out, input size, kernel,
//!   stride, padding); per image (`n` = 1) in the model's layer table.
//! - `Tiling`: how the direct 3×3 convolution cuts one geometry into register tiles (the tile
//!   shape and the zero-bordered grid's sizes, `cpu/conv/direct/`).
//! - `CudnnPlan`: cuDNN's descriptors and chosen algorithms for one geometry and dtype, made on
//!   first use and cached (`cuda/conv.rs`).

mod batch_norm;
pub mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod gelu;
mod geometry;
mod host;
mod kernels;
mod layers;
mod max_pool;
mod multi_tensor;
pub mod optim;
#[cfg(feature = "cuda")]
mod squeeze;
pub mod stage;
mod tail;

pub use batch_norm::Stats;
pub use cpu::conv::bf16_products_available;
pub use geometry::Geometry;
pub use kernels::{Kernels, Options, Route};

pub use layers::{
    block_tail, conv2d, gelu, gelu_with_bias, max_pool2, squeeze, BatchNorm, Conv2d, Statistics,
};
