//! `check-ops`: each training op on a device against the CPU op it replaces: forward output and every
//! gradient over the geometries `tests/suite/ops.rs` uses, in f32 and (on CUDA) bf16, plus the fused
//! optimizer + EMA step. `stream-train check-ops` prints the table; on a GPU it is the first thing
//! the check runs, since the CUDA kernels can only be tested there.
//!
//! The reference is always the CPU with [`Kernels::Fast`] (held to candle's own ops and to finite
//! differences by `tests/suite/ops.rs`), in f32. A bf16 case feeds both sides the same bf16-rounded
//! inputs (the upstream gradient is rounded on the device side only, ~2^-9), so its error is the
//! device's bf16 arithmetic.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::measure::{relative_max, uniform};
use super::side::Side;
use crate::ops::{self, BatchNorm, Kernels, Statistics};
use crate::train::error::Result;
use crate::train::optim::{Ema, EmaStep, Optimizer, Param, Scalars, Sgd, StepScalars};

/// Largest accepted error (max |device − cpu| / max |cpu|) in f32: reassociated sums only.
pub const F32_TOLERANCE: f64 = 1e-4;
/// Largest accepted error in bf16: inputs and outputs rounded to 8 bits of mantissa
/// (2^-8 ≈ 4e-3 each), sums over up to 2,304 terms in f32.
pub const BF16_TOLERANCE: f64 = 3e-2;

/// One tensor of one case.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// `conv`, `batch-norm`, `batch-norm eval`, `tail`, `squeeze`, `sgd+ema`.
    pub op: &'static str,
    /// The geometry, e.g. `5x16x8x8 k3 s2 p1 -> 24`.
    pub case: String,
    /// `f32` or `bf16`.
    pub dtype: &'static str,
    /// `y`, `dx`, `dw`, …
    pub tensor: &'static str,
    /// max |device − cpu| / max |cpu|.
    pub error: f64,
    /// The bound it must stay under.
    pub tolerance: f64,
}

impl Comparison {
    /// Within tolerance (a non-finite error never is).
    pub fn passes(&self) -> bool {
        self.error.is_finite() && self.error <= self.tolerance
    }
}

fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = crate::seed::rng(seed, &[0x6f70_6368]);
    Ok(uniform(&mut rng, shape, &Device::Cpu)?)
}

/// Batch statistics (unsynchronised) when `train`, else the running ones.
fn statistics(train: bool) -> Statistics<'static> {
    if train {
        Statistics::Batch { sync: None }
    } else {
        Statistics::Running
    }
}

/// `inputs` on `side` as variables (activations in the side's dtype).
fn vars(inputs: &[&Tensor], side: Side) -> Result<Vec<Var>> {
    inputs
        .iter()
        .map(|t| {
            Ok(Var::from_tensor(
                &t.to_device(side.device)?.to_dtype(side.dtype)?,
            )?)
        })
        .collect()
}

/// `sum(y · probe)` backward: the gradients of `vars` (missing ones are an error).
fn grads(y: &Tensor, probe: &Tensor, vars: &[&Var]) -> Result<Vec<Tensor>> {
    let probe = probe.to_device(y.device())?.to_dtype(y.dtype())?;
    let g = (y * probe)?.sum_all()?.backward()?;
    vars.iter()
        .map(|v| {
            g.get(v.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("a gradient is missing".to_string()).into())
        })
        .collect()
}

type Named = Vec<(&'static str, Tensor)>;

fn conv(x: &Tensor, w: &Tensor, (stride, pad): (usize, usize), side: Side) -> Result<Named> {
    let v = vars(&[x, w], side)?;
    let y = ops::conv2d(v[0].as_tensor(), v[1].as_tensor(), stride, pad, side.ops())?;
    let probe = random(y.dims(), 99)?;
    let g = grads(&y, &probe, &[&v[0], &v[1]])?;
    Ok(vec![("y", y), ("dx", g[0].clone()), ("dw", g[1].clone())])
}

/// A BatchNorm of `c` channels on `side` with scales and shifts away from 1 and 0 and running
/// statistics away from their defaults; its variables in name order.
fn seeded_batch_norm(c: usize, side: Side) -> Result<(BatchNorm, Vec<(String, Var)>)> {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, side.device);
    let bn = BatchNorm::new(c, 1e-5, 1.0, vb)?;
    let named = crate::model::sorted_vars(&map);
    for (k, (name, var)) in named.iter().enumerate() {
        let r = random(&[c], 500 + k as u64)?;
        let value = if name.ends_with("running_var") || name.ends_with("weight") {
            ((r * 0.4)? + 1.0)?
        } else {
            (r * 0.5)?
        };
        var.set(&value.to_device(side.device)?)?;
    }
    Ok((bn, named))
}

/// The name under which a fused-ReLU case also reports its pre-activation; its `dx` is then
/// compared only where that is clearly away from zero (see `compare_all`).
const PRE_ACTIVATION: &str = "pre-activation";

fn batch_norm(x: &Tensor, relu: bool, train: bool, side: Side) -> Result<Named> {
    let c = x.dim(1)?;
    let (bn, named) = seeded_batch_norm(c, side)?;
    let v = vars(&[x], side)?;
    let y = bn.forward(v[0].as_tensor(), statistics(train), relu, side.ops())?;
    let probe = random(y.dims(), 98)?;
    let mut out = vec![("y", y.clone())];
    if relu {
        let (plain, _) = seeded_batch_norm(c, side)?;
        let pre = plain.forward(
            &v[0].as_tensor().detach(),
            statistics(train),
            false,
            side.ops(),
        )?;
        out.push((PRE_ACTIVATION, pre));
    }
    if train {
        let params: Vec<&Var> = named
            .iter()
            .filter(|(n, _)| n.ends_with("weight") || n.ends_with("bias"))
            .map(|(_, v)| v)
            .collect();
        let mut all = vec![&v[0]];
        all.extend(params);
        let g = grads(&y, &probe, &all)?;
        // sorted names: bias, running_mean, running_var, weight
        out.push(("dx", g[0].clone()));
        out.push(("dbeta", g[1].clone()));
        out.push(("dgamma", g[2].clone()));
        for (name, var) in &named {
            if name.ends_with("running_mean") {
                out.push(("running_mean", var.as_tensor().clone()));
            } else if name.ends_with("running_var") {
                out.push(("running_var", var.as_tensor().clone()));
            }
        }
    }
    Ok(out)
}

fn tail(x: &Tensor, gate: Option<&Tensor>, short: &Tensor, side: Side) -> Result<Named> {
    let mut inputs = vec![x, short];
    if let Some(g) = gate {
        inputs.push(g);
    }
    let v = vars(&inputs, side)?;
    let y = ops::block_tail(
        v[0].as_tensor(),
        v.get(2).map(|g| g.as_tensor()),
        v[1].as_tensor(),
        side.ops(),
    )?;
    let probe = random(y.dims(), 97)?;
    let all: Vec<&Var> = v.iter().collect();
    let g = grads(&y, &probe, &all)?;
    let mut out = vec![("y", y), ("dx", g[0].clone()), ("dshortcut", g[1].clone())];
    if gate.is_some() {
        out.push(("dgate", g[2].clone()));
    }
    Ok(out)
}

fn squeeze(x: &Tensor, side: Side) -> Result<Named> {
    let v = vars(&[x], side)?;
    let y = ops::squeeze(v[0].as_tensor(), side.ops())?;
    let probe = random(y.dims(), 96)?;
    let g = grads(&y, &probe, &[&v[0]])?;
    Ok(vec![("y", y), ("dx", g[0].clone())])
}

/// Three steps of SGD (momentum, Nesterov, weight decay) + EMA on a weight and a bias (and an
/// EMA-only statistic), fused on `side` when it is CUDA with the fast kernels.
fn sgd(side: Side) -> Result<Named> {
    let dev = side.device;
    let w = Var::from_tensor(&random(&[64, 3, 3, 3], 1)?.to_device(dev)?)?;
    let b = Var::from_tensor(&random(&[64], 2)?.to_device(dev)?)?;
    let stat = Var::from_tensor(&random(&[64], 3)?.to_device(dev)?)?;
    let twins: Vec<Var> = [&w, &b, &stat]
        .iter()
        .map(|v| Var::from_tensor(&v.as_tensor().zeros_like()?))
        .collect::<candle_core::Result<_>>()?;
    let ema = Ema::new(0.9, twins.clone(), vec![w.clone(), b.clone(), stat.clone()])?;
    // Two groups as a run makes them: the bias without weight decay, the filters with it.
    let params = vec![
        Param {
            name: "b".into(),
            var: b.clone(),
            group: 0,
        },
        Param {
            name: "w".into(),
            var: w.clone(),
            group: 1,
        },
    ];
    let mut sgd =
        Sgd::new(params, vec![0.0, 5e-4], 0.9, true)?.fused(side.kernels == Kernels::Fast);
    let scalars = Scalars::new(2, dev)?;
    for step in 0..3u64 {
        let cw = random(&[64, 3, 3, 3], 10 + step)?.to_device(dev)?;
        let cb = random(&[64], 20 + step)?.to_device(dev)?;
        let loss = ((w.as_tensor() * &cw)?.sum_all()? + (b.as_tensor() * &cb)?.sum_all()?)?;
        let g = loss.backward()?;
        // The bias steps at twice the filters' rate: each reads its own slot.
        scalars.write(&StepScalars {
            rates: vec![0.2, 0.1],
            ema_decay: Some(ema.decay_at(step as usize)),
        })?;
        let update = EmaStep { pairs: ema.pairs() };
        let done = sgd.step(&g, &scalars, Some(&update))?;
        ema.finish(&scalars, &done)?;
        stat.set(&(stat.as_tensor() * 0.5)?)?;
    }
    let mut out = vec![("w", w.as_tensor().clone()), ("b", b.as_tensor().clone())];
    for (name, t) in ["ema w", "ema b", "ema stat"].into_iter().zip(&twins) {
        out.push((name, t.as_tensor().clone()));
    }
    for (name, t) in sgd.momentum() {
        out.push((
            if name == "w" {
                "momentum w"
            } else {
                "momentum b"
            },
            t.clone(),
        ));
    }
    Ok(out)
}

/// Convolution shapes `(in channels, out channels, height = width)` that `check-ops` runs and
/// `tests/suite/ops.rs` checks on the CPU: a stem-like 3-channel input, odd sizes, wide-to-narrow and
/// narrow-to-wide.
pub const CONV_SHAPES: [(usize, usize, usize); 5] = [
    (3, 8, 9),
    (16, 24, 8),
    (64, 32, 6),
    (256, 16, 4),
    (8, 256, 4),
];

/// Every comparison of `device` (with `kernels`) against the CPU fast ops; bf16 cases only on
/// CUDA (the CPU's bf16 is products inside its f32 ops, checked by its own tests). TF32 is off
/// for the f32 cases.
pub fn run(device: &Device, kernels: Kernels) -> Result<Vec<Comparison>> {
    // The f32 cases are strict f32: cuDNN gets TF32 off through each side's options, candle's
    // process-wide cuBLAS switch (the lowered convolution's products) is set here.
    crate::device::set_tf32(device, false);
    compare_all(device, kernels)
}

fn compare_all(device: &Device, kernels: Kernels) -> Result<Vec<Comparison>> {
    let cpu = Device::Cpu;
    let reference = Side::f32(&cpu, Kernels::Fast);
    let mut dtypes = vec![DType::F32];
    if device.is_cuda() {
        dtypes.push(DType::BF16);
    }
    let mut rows = Vec::new();
    for dtype in dtypes {
        // TF32 off: the f32 cases hold the device to f32 arithmetic.
        let side = Side {
            dtype,
            ..Side::f32(device, kernels)
        };
        let (name, tolerance) = match dtype {
            DType::BF16 => ("bf16", BF16_TOLERANCE),
            _ => ("f32", F32_TOLERANCE),
        };
        // Both sides see the values `side` can hold.
        let held = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_dtype(DType::F32)?) };
        let mut compare =
            |op: &'static str, case: String, f: &dyn Fn(Side) -> Result<Named>| -> Result<()> {
                let want = f(reference)?;
                let got = f(side)?;
                // Where a fused ReLU's input is within rounding of zero, the two sides may mask
                // the gradient differently (each decides from its own statistics): leave those
                // few elements out of `dx`.
                let keep = match want.iter().find(|(n, _)| *n == PRE_ACTIVATION) {
                    Some((_, pre)) => Some(pre.abs()?.ge(1e-4)?.to_dtype(DType::F32)?),
                    None => None,
                };
                for ((tensor, g), (_, w)) in got.iter().zip(&want) {
                    let error = match (&keep, *tensor) {
                        (Some(keep), "dx") => {
                            let g = g.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                            relative_max(&(g * keep)?, &(w * keep)?)?
                        }
                        _ => relative_max(g, w)?,
                    };
                    rows.push(Comparison {
                        op,
                        case: case.clone(),
                        dtype: name,
                        tensor,
                        error,
                        tolerance,
                    });
                }
                Ok(())
            };
        let mut seed = 0;
        for batch in [1, 5] {
            for (cin, cout, hw) in CONV_SHAPES {
                for (k, stride, pad) in [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (3, 1, 0)] {
                    seed += 2;
                    let x = held(random(&[batch, cin, hw, hw], seed)?)?;
                    let w = held(random(&[cout, cin, k, k], seed + 1)?)?;
                    let case = format!("{batch}x{cin}x{hw}x{hw} k{k} s{stride} p{pad} -> {cout}");
                    compare("conv", case, &|s| conv(&x, &w, (stride, pad), s))?;
                }
            }
        }
        for (shape, relu) in [
            ([5, 3, 9, 9], false),
            ([5, 16, 8, 8], true),
            ([2, 64, 4, 4], true),
            ([5, 256, 1, 1], false),
            ([8, 32, 32, 32], true),
        ] {
            seed += 1;
            let x = held(random(&shape, seed)?.affine(3.0, 0.5)?)?;
            let case = format!("{shape:?} relu {relu}");
            compare("batch-norm", case.clone(), &|s| {
                batch_norm(&x, relu, true, s)
            })?;
            compare("batch-norm eval", case, &|s| batch_norm(&x, relu, false, s))?;
        }
        for (shape, gated) in [
            ([5, 16, 8, 8], true),
            ([2, 256, 4, 4], true),
            ([5, 8, 9, 9], false),
        ] {
            seed += 3;
            let x = held(random(&shape, seed)?)?;
            let short = held(random(&shape, seed + 1)?)?;
            let gate = held(random(&[shape[0], shape[1], 1, 1], seed + 2)?)?;
            let g = gated.then_some(&gate);
            compare("tail", format!("{shape:?} gate {gated}"), &|s| {
                tail(&x, g, &short, s)
            })?;
        }
        for shape in [[5, 16, 8, 8], [2, 512, 4, 4], [3, 8, 32, 32]] {
            seed += 1;
            let x = held(random(&shape, seed)?)?;
            compare("squeeze", format!("{shape:?}"), &|s| squeeze(&x, s))?;
        }
        if dtype == DType::F32 {
            compare("sgd+ema", "3 steps, momentum 0.9 nesterov".into(), &sgd)?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_stock_ops_pass_and_a_zero_tolerance_fails() {
        // On the CPU the "device" side is candle's stock ops: the harness compares real
        // differences (stock and fast are not bit-identical), so it can pass and fail.
        let rows = run(&Device::Cpu, Kernels::Stock).unwrap();
        assert!(rows.len() > 200, "{} comparisons", rows.len());
        let failing: Vec<_> = rows.iter().filter(|r| !r.passes()).collect();
        assert!(failing.is_empty(), "{failing:?}");
        let differing = rows.iter().filter(|r| r.error > 0.0).count();
        assert!(differing > rows.len() / 4, "only {differing} differ at all");
        for op in [
            "conv",
            "batch-norm",
            "batch-norm eval",
            "tail",
            "squeeze",
            "sgd+ema",
        ] {
            assert!(rows.iter().any(|r| r.op == op), "no {op} rows");
        }
    }
}
