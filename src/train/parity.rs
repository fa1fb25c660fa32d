//! Holding one device (or kernel choice) against another: the same weights and batch through a
//! training forward and backward on both, compared tensor by tensor.

use candle_core::{DType, Device, Tensor};

use super::error::{Error, Result};
use super::net::Net;
use crate::model::{Mode, Precision};
use crate::ops::Kernels;
use crate::seed;
use crate::train::config::TrainConfig;

/// `‖a − b‖ / ‖b‖` over all elements, in f64 (0 when both are zero).
pub fn relative_error(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let (a, b) = (a.to_vec1::<f64>()?, b.to_vec1::<f64>()?);
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    Ok(if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    })
}

/// Where a step runs: device, kernels, dtype.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// Device.
    pub device: &'a Device,
    /// Convolution/BatchNorm implementation.
    pub kernels: Kernels,
    /// Dtype of the weights (f64 takes candle's ops whatever `kernels` says).
    pub dtype: DType,
    /// Compute precision (bf16: the device side only; the CPU references compute in `dtype`).
    pub precision: Precision,
}

/// Logits and every parameter gradient of one training step (no update).
fn step(config: &TrainConfig, side: Side, batch: usize) -> Result<Vec<(String, Tensor)>> {
    side.precision
        .check(side.device)
        .map_err(Error::Unsupported)?;
    let (mut model, vars) =
        crate::model::build_as(&config.model, config.seed, side.device, side.dtype)?;
    model.set_kernels(side.kernels);
    model.set_precision(side.precision);
    // TF32 as the config says (`--no-tf32` for a strict f32 check); nothing on the CPU.
    model.set_tf32(config.tf32);
    let net = Net { model, vars };
    let device = side.device;
    let len = 3 * 32 * 32;
    let mut rng = seed::rng(config.seed, &[0x7061_7269_7479]);
    let pixels: Vec<f32> = (0..batch * len).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.u32(0..config.model.num_classes as u32))
        .collect();
    let x = Tensor::from_vec(pixels, (batch, 3, 32, 32), device)?.to_dtype(side.dtype)?;
    let y = Tensor::from_vec(labels, batch, device)?;
    let logits = net.model.forward(&x, Mode::train(1))?;
    let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
    let grads = loss.backward()?;
    let mut out = vec![("logits".to_string(), logits)];
    for (name, var) in net.named() {
        if let Some(g) = grads.get(var.as_tensor()) {
            out.push((format!("grad {name}"), g.clone()));
        }
    }
    Ok(out)
}

/// One tensor's relative errors: device against CPU, and each against the f64 reference.
#[derive(Clone, Debug)]
pub struct Row {
    /// `logits` or `grad <variable>`.
    pub name: String,
    /// ‖device − cpu‖ / ‖cpu‖ (both f32).
    pub vs_cpu: f64,
    /// ‖device − f64‖ / ‖f64‖.
    pub device_vs_exact: f64,
    /// ‖cpu − f64‖ / ‖f64‖: how far f32 rounding alone moves this tensor.
    pub cpu_vs_exact: f64,
}

/// The same step on `device` (f32), on the CPU (f32) and on the CPU in f64, tensor by tensor,
/// worst `vs_cpu` first. Deep f32 gradients drift from f64 by up to ~1e-2 in the first layers of
/// the seed network at small batches (BatchNorm's backward cancels), on any device, so
/// `cpu_vs_exact` is the yardstick for `device_vs_exact`.
pub fn compare(
    config: &TrainConfig,
    batch: usize,
    device: Side,
    cpu_kernels: Kernels,
) -> Result<Vec<Row>> {
    let cpu = Device::Cpu;
    let on_device = step(config, device, batch)?;
    let on_cpu = step(
        config,
        Side {
            device: &cpu,
            kernels: cpu_kernels,
            dtype: DType::F32,
            precision: Precision::F32,
        },
        batch,
    )?;
    let exact = step(
        config,
        Side {
            device: &cpu,
            kernels: Kernels::Stock,
            dtype: DType::F64,
            precision: Precision::F32,
        },
        batch,
    )?;
    let mut rows = Vec::with_capacity(on_device.len());
    for (((name, d), (_, c)), (_, x)) in on_device.iter().zip(&on_cpu).zip(&exact) {
        rows.push(Row {
            name: name.clone(),
            vs_cpu: relative_error(d, c)?,
            device_vs_exact: relative_error(d, x)?,
            cpu_vs_exact: relative_error(c, x)?,
        });
    }
    rows.sort_by(|p, q| q.vs_cpu.total_cmp(&p.vs_cpu));
    Ok(rows)
}

/// When a device tensor counts as matching: within `relative` of the CPU's, or no further from
/// the f64 reference than `f64_factor` times the CPU's own f32 rounding (deep f32 gradients are
/// ill-conditioned on any device, so the CPU's distance from f64 is the yardstick).
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Largest accepted ‖device − cpu‖ / ‖cpu‖.
    pub relative: f64,
    /// Accepted distance from f64, as a multiple of the CPU's.
    pub f64_factor: f64,
}

impl Tolerance {
    /// Whether `row` passes (a non-finite error never does).
    pub fn passes(&self, row: &Row) -> bool {
        row.vs_cpu.is_finite()
            && (row.vs_cpu <= self.relative
                || row.device_vs_exact <= (self.f64_factor * row.cpu_vs_exact).max(self.relative))
    }
}

/// The outcome of a comparison under a tolerance.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The logits' error against the CPU.
    pub logits: f64,
    /// The worst tensor's error against the CPU.
    pub worst: f64,
    /// Tensors that fail.
    pub failed: usize,
    /// Tensors compared.
    pub total: usize,
}

impl Verdict {
    /// Judges `rows` (as [`compare`] returns them, worst first).
    pub fn of(rows: &[Row], tolerance: Tolerance) -> Verdict {
        Verdict {
            logits: rows
                .iter()
                .find(|r| r.name == "logits")
                .map_or(f64::NAN, |r| r.vs_cpu),
            worst: rows.first().map_or(0.0, |r| r.vs_cpu),
            failed: rows.iter().filter(|r| !tolerance.passes(r)).count(),
            total: rows.len(),
        }
    }

    /// True when every tensor passes.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}
