//! The ops' CUDA launches: the kernels of `kernels.cu` (compiled to PTX by `build.rs`, loaded the
//! way candle loads its own) and cuDNN, which the ops' glue at the top of `ops/` calls from the
//! same custom ops as the CPU maths, one file per op as in `cpu/`: [`batch_norm`], [`tail`],
//! [`squeeze`], [`optim`] (SGD + EMA) and [`conv`] (cuDNN, the `cudnn` feature), with what they
//! share in `launch.rs`.
//!
//! Every function here takes contiguous f32 or bf16 activations and keeps statistics in f32/f64.
//! The CPU maths are the reference: `stream-train check-ops` runs both on the same inputs and
//! compares.
//!
//! Writes into tensors the ops do not own (the running statistics, the optimizer's weights,
//! momentum and EMA) go through device pointers taken under candle's read locks. That is sound
//! here because every kernel runs on the device's one stream, in order, and nothing else touches
//! those buffers while a step runs; it is the in-place update candle's own `Var::set` performs.

pub mod batch_norm;
#[cfg(feature = "cudnn")]
pub mod conv;
pub(crate) mod launch;
pub mod optim;
pub mod squeeze;
pub mod tail;

#[cfg(test)]
mod tests {
    use super::launch::{plane_threads, splits};

    #[test]
    fn splits_fill_the_device_without_tiny_blocks() {
        // 256 channels of 128·32·32: four blocks each; 2,048 channels: one.
        assert_eq!(splits(256, 128 * 1024), 4);
        assert_eq!(splits(2048, 128 * 16), 1);
        // Few values per channel: never a block with less than 4,096 to fold.
        assert_eq!(splits(16, 8 * 16), 1);
        assert_eq!(plane_threads(16), 32);
        assert_eq!(plane_threads(1024), 256);
    }
}
