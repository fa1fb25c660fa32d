//! How a network computes, whatever its layers: the ops' settings (kernels, TF32) and the dtype
//! of activations (the variables stay their own dtype as master weights).

use candle_core::{DType, Device, Result, Tensor};

use super::precision::Precision;
use crate::ops::{Kernels, Options};

/// The ops' settings and the compute dtype of one network.
#[derive(Clone, Copy, Debug)]
pub struct Compute {
    /// Kernels and TF32.
    pub ops: Options,
    /// Dtype of activations and of weights at use; `None` computes in the variables' own.
    pub dtype: Option<DType>,
}

impl Default for Compute {
    fn default() -> Self {
        Compute {
            ops: Kernels::default().into(),
            dtype: None,
        }
    }
}

impl Compute {
    /// Chooses the convolution/BatchNorm implementation (the weights are unchanged).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.ops.kernels = kernels;
    }

    /// Allows (or forbids) TF32 tensor cores for f32 convolutions (cuDNN) on CUDA; candle's
    /// matrix products follow its process-wide switch (`crate::device::set_tf32`), which the
    /// run sets from the same configuration where it opens the device.
    pub fn set_tf32(&mut self, tf32: bool) {
        self.ops.tf32 = tf32;
    }

    /// Chooses the compute precision on `device` (the variables stay in their own dtype): bf16
    /// activations on CUDA, bf16 products inside f32 ops on the CPU.
    pub fn set_precision(&mut self, precision: Precision, device: &Device) {
        let cpu_bf16 = precision.is_cpu_bf16(device);
        self.ops.bf16_products = cpu_bf16;
        self.dtype = match precision {
            Precision::F32 => None,
            _ if cpu_bf16 => None,
            p => Some(p.dtype()),
        };
    }

    /// A forward pass's input in the compute dtype (`masters`: the variables' own, when there
    /// is none).
    pub fn input(&self, x: &Tensor, masters: DType) -> Result<Tensor> {
        x.to_dtype(self.dtype.unwrap_or(masters))
    }

    /// The compute precision in use (`F32` also when computing in the variables' own dtype).
    pub fn precision(&self) -> Precision {
        match self.dtype {
            Some(DType::BF16) => Precision::Bf16,
            _ if self.ops.bf16_products => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}
