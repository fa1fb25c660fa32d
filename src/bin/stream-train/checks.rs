//! The two checks of a device against the CPU: `check-ops` (every op, forward and gradients) and
//! `check-step` (one whole training step, and an f64 reference).

use anyhow::{bail, Result};
use clap::Args;

use cifar_stream::device::describe;
use cifar_stream::ops::Kernels;
use cifar_stream::train::diag::step_check::{self, Tolerance, Verdict};
use cifar_stream::train::diag::{op_check, Side};

use crate::args::{positive, DeviceFlag, NetArgs, PrecisionFlag};
use crate::finish::Finish;
use crate::stream_args::SeedFlag;

/// `check-step`: the model, its kernels and precision on the device, and the tolerance.
#[derive(Args)]
pub struct CheckStepArgs {
    /// Images in the batch.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    images: usize,
    /// Largest accepted ‖device − cpu‖ / ‖cpu‖ for any tensor.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// A tensor also passes when the device is at most this many times further from the f64
    /// reference than the CPU's f32 is (deep f32 gradients are ill-conditioned on any device).
    #[arg(long, default_value_t = 4.0)]
    f64_factor: f64,
    /// Kernels on the CPU side (the reference).
    #[arg(long, value_enum, default_value = "fast")]
    cpu_kernels: Kernels,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    precision: PrecisionFlag,
    #[command(flatten)]
    seed: SeedFlag,
}

/// `check-step`: prints the worst tensors and a verdict line; fails when any tensor fails.
pub fn step(args: CheckStepArgs) -> Result<Finish> {
    let config = args.net.resolve(&[&args.precision, &args.seed])?;
    let device = args.net.device.select()?;
    // TF32 as the config says (`--no-tf32` for a strict f32 check); nothing on the CPU.
    let side = Side {
        precision: config.precision,
        tf32: config.tf32,
        ..Side::f32(&device, config.kernels)
    };
    let rows = step_check::compare(&config, args.images, side, args.cpu_kernels)?;
    println!(
        "{} ({} kernels, {}) vs cpu ({} kernels, f32), preset {}, {} images, {} tensors",
        describe(&device),
        config.kernels.name(),
        config.precision.name(),
        args.cpu_kernels.name(),
        config.preset,
        args.images,
        rows.len()
    );
    let tolerance = Tolerance {
        relative: args.tolerance,
        f64_factor: args.f64_factor,
    };
    println!(
        "  {:>10} {:>10} {:>10}  tensor",
        "vs cpu", "dev vs f64", "cpu vs f64"
    );
    for r in rows.iter().take(5) {
        println!(
            "  {:>10.3e} {:>10.3e} {:>10.3e}  {}{}",
            r.vs_cpu,
            r.device_vs_exact,
            r.cpu_vs_exact,
            r.name,
            if tolerance.passes(r) { "" } else { "  <- FAIL" }
        );
    }
    let v = Verdict::of(&rows, tolerance);
    println!(
        "check-step: logits {:.3e}, worst tensor {:.3e} vs cpu (tolerance {:.0e}); {} of {} tensors fail: {}",
        v.logits,
        v.worst,
        args.tolerance,
        v.failed,
        v.total,
        if v.ok() { "ok" } else { "FAIL" }
    );
    if !v.ok() {
        bail!("{} of {} tensors outside the tolerance", v.failed, v.total);
    }
    Ok(Finish::Done)
}

/// `check-ops`: the device's ops against the CPU's.
#[derive(Args)]
pub struct CheckOpsArgs {
    #[command(flatten)]
    device: DeviceFlag,
    /// Kernels on the device side (the CPU side is always the fast ops).
    #[arg(long, value_enum, default_value = "fast")]
    kernels: Kernels,
    /// Print every comparison, not only the worst of each op and dtype and the failures.
    #[arg(long)]
    all: bool,
}

/// `check-ops`: every op's forward and gradients on --device against the CPU, per op and dtype
/// the worst error against its tolerance; fails when any comparison does.
pub fn ops(args: CheckOpsArgs) -> Result<Finish> {
    let device = args.device.select()?;
    let rows = op_check::run(&device, args.kernels)?;
    println!(
        "{} ({} kernels) vs cpu (fast kernels, f32): {} comparisons",
        describe(&device),
        args.kernels.name(),
        rows.len()
    );
    println!(
        "  {:<16} {:<5} {:>6} {:>10} {:>10}  worst case",
        "op", "dtype", "cases", "worst", "tolerance"
    );
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in &rows {
        if !groups.contains(&(r.op, r.dtype)) {
            groups.push((r.op, r.dtype));
        }
    }
    for (op, dtype) in groups {
        let of: Vec<_> = rows
            .iter()
            .filter(|r| r.op == op && r.dtype == dtype)
            .collect();
        let worst = of
            .iter()
            .max_by(|a, b| a.error.total_cmp(&b.error))
            .expect("a group has rows");
        println!(
            "  {op:<16} {dtype:<5} {:>6} {:>10.3e} {:>10.0e}  {} {}{}",
            of.len(),
            worst.error,
            worst.tolerance,
            worst.case,
            worst.tensor,
            if of.iter().all(|r| r.passes()) {
                ""
            } else {
                "  <- FAIL"
            }
        );
    }
    for r in rows.iter().filter(|r| args.all || !r.passes()) {
        println!(
            "  {} {} {} {}: {:.3e} (tolerance {:.0e}){}",
            r.op,
            r.dtype,
            r.case,
            r.tensor,
            r.error,
            r.tolerance,
            if r.passes() { "" } else { "  FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.passes()).count();
    println!(
        "check-ops: {failed} of {} comparisons fail: {}",
        rows.len(),
        if failed == 0 { "ok" } else { "FAIL" }
    );
    if failed > 0 {
        bail!(
            "{failed} of {} comparisons outside their tolerance",
            rows.len()
        );
    }
    Ok(Finish::Done)
}
