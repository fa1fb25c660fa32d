//! `check-step`: holding one device (or kernel choice) against another: the same weights and
//! batch through a training forward and backward on both, compared tensor by tensor.

use candle_core::{DType, Device, Tensor};

use super::measure::relative_l2;
use super::side::Side;
use crate::model::Mode;
use crate::ops::Kernels;
use crate::seed;
use crate::train::config::TrainConfig;
use crate::train::error::{Error, Result};
use crate::train::net::Net;

/// Logits and every parameter gradient of one training step (no update).
fn step(config: &TrainConfig, side: Side, batch: usize) -> Result<Vec<(String, Tensor)>> {
    side.precision
        .check(side.device, side.kernels)
        .map_err(Error::Unsupported)?;
    let (mut model, vars) =
        crate::model::build_network(&config.model, config.seed, side.device, side.dtype)?;
    let compute = model.compute_mut();
    compute.set_kernels(side.kernels);
    compute.set_precision(side.precision, side.device);
    compute.set_tf32(side.tf32);
    // The sides of one comparison differ in TF32 within this process (the device side as the
    // config says, the CPU references strict), and candle's switch for its matrix products is
    // process-wide: each side sets it before its step.
    crate::device::set_tf32(side.device, side.tf32);
    let net = Net { model, vars };
    let device = side.device;
    let len = 3 * 32 * 32;
    let mut rng = seed::rng(config.seed, &[0x7061_7269_7479]);
    let pixels: Vec<f32> = (0..batch * len).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.u32(0..config.model.num_classes() as u32))
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
    let on_cpu = step(config, Side::f32(&cpu, cpu_kernels), batch)?;
    let exact = Side {
        dtype: DType::F64,
        ..Side::f32(&cpu, Kernels::Stock)
    };
    let exact = step(config, exact, batch)?;
    let mut rows = Vec::with_capacity(on_device.len());
    for (((name, d), (_, c)), (_, x)) in on_device.iter().zip(&on_cpu).zip(&exact) {
        rows.push(Row {
            name: name.clone(),
            vs_cpu: relative_l2(d, c)?,
            device_vs_exact: relative_l2(d, x)?,
            cpu_vs_exact: relative_l2(c, x)?,
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
