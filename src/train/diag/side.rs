//! Where one side of a comparison (or a timing) runs: device, kernels, dtype, precision, TF32.

use candle_core::{DType, Device};

use crate::model::Precision;
use crate::ops::{Kernels, Options};

/// Where a step or an op runs.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// Device.
    pub device: &'a Device,
    /// Convolution/BatchNorm implementation.
    pub kernels: Kernels,
    /// Dtype of the weights and inputs (f64 takes candle's ops whatever `kernels` says).
    pub dtype: DType,
    /// Compute precision (bf16: a device side only; the CPU references compute in `dtype`).
    pub precision: Precision,
    /// TF32 tensor cores for f32 convolutions and products on CUDA.
    pub tf32: bool,
}

impl<'a> Side<'a> {
    /// f32 on `device` with `kernels`, no TF32: the strict reference.
    pub fn f32(device: &'a Device, kernels: Kernels) -> Side<'a> {
        Side {
            device,
            kernels,
            dtype: DType::F32,
            precision: Precision::F32,
            tf32: false,
        }
    }

    /// The side's ops settings.
    pub fn ops(&self) -> Options {
        Options {
            kernels: self.kernels,
            tf32: self.tf32,
            bf16_products: false,
        }
    }
}
