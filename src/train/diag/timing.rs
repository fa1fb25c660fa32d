//! Timing the training step and its ops on random data, with no data pipeline: what the device
//! alone can do, comparable with `tools/torch_reference.py speed`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::measure::uniform;
use crate::ops::conv::lowered;
use crate::ops::{BatchNorm, Geometry, Statistics};
use crate::seed;
use crate::store::Shape;
use crate::train::config::TrainConfig;
use crate::train::error::Result;
use crate::train::graph::{GraphKey, StepGraphs};
use crate::train::learner::Learner;

/// Untimed steps or repetitions before timing starts (allocator and caches settle).
pub const WARMUP: usize = 2;

/// Training-step throughput.
#[derive(Clone, Debug)]
pub struct StepRate {
    /// Images per second over the timed steps.
    pub images_per_second: f64,
    /// Storage ops one step dispatches on this device (forward, backward, optimizer, EMA), as
    /// the capture probe counts them in one more, untimed step: each is a kernel launch on CUDA.
    pub ops_per_step: usize,
    /// Peak device memory `(in use, reserved)` in bytes (CUDA only).
    pub memory_peak: Option<(u64, u64)>,
    /// The learner's kernels and precision, for the report.
    pub kernels: &'static str,
    /// See `kernels`.
    pub precision: &'static str,
    /// With graphs: whether the timed steps were replays, or why they were eager.
    pub graph: Option<String>,
}

/// Times `steps` training steps (forward, backward, SGD; no EMA, as PyTorch's reference step
/// has none) at `config.batch_size` on one random batch, after [`WARMUP`] untimed steps (and
/// the capture, where the step is a CUDA graph as `config.cuda_graph` says).
pub fn step_rate(config: &TrainConfig, device: &Device, steps: usize) -> Result<StepRate> {
    let mut config = config.clone();
    config.ema_decay = 0.0;
    config.lookahead = None;
    crate::device::set_tf32(device, config.tf32);
    let mut learner = Learner::new(&config, device, steps + WARMUP)?;
    // As the trainer's first epoch: what the recipe freezes from the start (a config with
    // `whiten_bias_epochs = 0` times the steps after the whitening bias stops).
    learner.freeze_for_epoch(0);
    let (b, shape) = (config.batch_size, Shape::CIFAR);
    let mut rng = seed::rng(config.seed, &[]);
    let pixels: Vec<f32> = (0..b * shape.image_len())
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(pixels, shape.nchw(b), device)?;
    let labels: Vec<u32> = (0..b)
        .map(|_| rng.u32(0..config.model.num_classes() as u32))
        .collect();
    let y = Tensor::from_vec(labels, b, device)?;
    // As a run does: on CUDA by default the step is a graph (warm-up, capture, launches).
    let mut graphs = StepGraphs::for_run(config.cuda_graph, device, &crate::dist::Local)?;
    let key = GraphKey {
        batch: b,
        frozen: learner.frozen().clone(),
    };
    // Graphs need two more untimed steps: the capture and the step after it, each held to an
    // eager step.
    let warmup = WARMUP + 2 * graphs.is_some() as usize;
    let mut start = Instant::now();
    for step in 0..steps + warmup {
        if step == warmup {
            device.synchronize()?;
            start = Instant::now();
        }
        learner.stage(config.schedule.lr, step as u64, b)?;
        match &mut graphs {
            Some(graphs) => {
                let state = match graphs.checks_next(&key) {
                    true => learner.persistent(),
                    false => Vec::new(),
                };
                let mut body = || learner.body(&x, &y).map(|_| ());
                graphs.run(device, key.clone(), &state, &mut body)?;
            }
            None => {
                learner.body(&x, &y)?;
            }
        }
        learner.finish_step()?;
    }
    device.synchronize()?;
    let images_per_second = (steps * b) as f64 / start.elapsed().as_secs_f64();
    let graph = graphs.as_ref().map(|g| g.status());
    learner.stage(config.schedule.lr, 0, b)?;
    let (body, trace) = crate::train::capture::record(|| learner.body(&x, &y));
    body?;
    learner.finish_step()?;
    let ops_per_step = trace
        .iter()
        .filter(|e| matches!(e, candle_core::probe::Event::Op { .. }))
        .count();
    Ok(StepRate {
        images_per_second,
        ops_per_step,
        memory_peak: crate::device::memory_peak(device)?,
        kernels: learner.model().compute().ops.kernels.name(),
        precision: learner.model().compute().precision().name(),
        graph,
    })
}

/// Median milliseconds of each op at one convolution shape of the model.
#[derive(Clone, Debug)]
pub struct OpTimes {
    /// The geometry, at the timed batch.
    pub shape: Geometry,
    /// Layers of the model with it.
    pub layers: usize,
    /// candle's forward convolution.
    pub forward: f64,
    /// candle's input gradient (`conv_transpose2d`), as its backprop computes it.
    pub dgrad: f64,
    /// candle's weight gradient (a convolution over transposed views), as its backprop does.
    pub wgrad: f64,
    /// The input gradient of [`lowered`] (what `--kernels fast` runs off the CPU).
    pub dgrad_lowered: f64,
    /// The weight gradient of [`lowered`].
    pub wgrad_lowered: f64,
    /// BatchNorm forward + backward on the output (with `config.kernels`).
    pub batch_norm: f64,
    /// The convolution forward + backward as `config.kernels` runs it in training: cuDNN with
    /// cached plans, or the lowered backward, or candle's own (`stock`).
    pub conv: f64,
}

/// Median milliseconds of the block-tail ops at one block output shape.
#[derive(Clone, Debug)]
pub struct TailTimes {
    /// `[batch, channels, side, side]`.
    pub shape: [usize; 4],
    /// Blocks with that output.
    pub blocks: usize,
    /// SE scale + residual add + ReLU, forward + backward.
    pub tail: f64,
    /// The SE squeeze (global average pool), forward + backward.
    pub squeeze: f64,
}

/// Times candle's convolution (forward, input and weight gradients), the lowered backward and
/// BatchNorm at every convolution shape of `config.model`, batch `config.batch_size`: medians of
/// `reps` runs after [`WARMUP`], each synchronised.
pub fn op_times(config: &TrainConfig, device: &Device, reps: usize) -> Result<Vec<OpTimes>> {
    let b = config.batch_size;
    let mut rng = seed::rng(config.seed, &[0x6f70]);
    let mut random = |dims: &[usize]| -> Result<Tensor> { Ok(uniform(&mut rng, dims, device)?) };
    let time = |f: &mut dyn FnMut() -> Result<Tensor>| median_ms(device, reps, f);
    crate::device::set_tf32(device, config.tf32);
    let mut rows = Vec::new();
    for (per_image, layers) in config.model.conv_shapes(32, 32) {
        let shape = Geometry { n: b, ..per_image };
        let Geometry {
            c: cin,
            h: hin,
            w: win,
            k: cout,
            kh,
            kw,
            stride,
            pad,
            ..
        } = shape;
        let (hout, wout) = (shape.ho(), shape.wo());
        let x = random(&[b, cin, hin, win])?;
        let w = random(&[cout, cin, kh, kw])?;
        let dy = random(&[b, cout, hout, wout])?;
        let forward = time(&mut || Ok(x.conv2d(&w, pad, stride, 1, 1)?))?;
        // As candle's backprop computes them (candle-core 0.11 backprop.rs, Op::Conv2D).
        let out_pad = hin - ((hout - 1) * stride + kh - 2 * pad);
        let dgrad = time(&mut || Ok(dy.conv_transpose2d(&w, pad, out_pad, stride, 1)?))?;
        let wgrad = time(&mut || {
            Ok(x.transpose(0, 1)?
                .conv2d(&dy.transpose(0, 1)?, pad, 1, stride, 1)?
                .transpose(0, 1)?)
        })?;
        let dgrad_lowered =
            time(&mut || Ok(lowered::input_grad(&dy, &w, stride, pad, (hin, win))?))?;
        let wgrad_lowered =
            time(&mut || Ok(lowered::weight_grad(&x, &dy, (kh, kw), stride, pad)?))?;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let bn = BatchNorm::new(cout, 1e-5, 1.0, vb)?;
        let y = Var::from_tensor(&dy)?;
        let batch_norm = time(&mut || {
            let batch = Statistics::Batch { sync: None };
            let o = bn.forward(y.as_tensor(), batch, false, config.kernels.into())?;
            o.sum_all()?.backward()?;
            Ok(o)
        })?;
        let xv = Var::from_tensor(&x)?;
        let conv = time(&mut || {
            let y = crate::ops::conv2d(xv.as_tensor(), &w, stride, pad, config.kernels)?;
            (&y * &dy)?.sum_all()?.backward()?;
            Ok(y)
        })?;
        rows.push(OpTimes {
            shape,
            layers,
            forward,
            dgrad,
            wgrad,
            dgrad_lowered,
            wgrad_lowered,
            batch_norm,
            conv,
        });
    }
    Ok(rows)
}

/// Times the block tail (`scale_add_relu` with a gate) and the SE squeeze, forward + backward
/// with `config.kernels`, at every block output shape of `config.model`.
pub fn tail_times(config: &TrainConfig, device: &Device, reps: usize) -> Result<Vec<TailTimes>> {
    let b = config.batch_size;
    let mut rng = seed::rng(config.seed, &[0x7461]);
    let mut random = |dims: &[usize]| -> Result<Tensor> { Ok(uniform(&mut rng, dims, device)?) };
    let mut shapes: Vec<([usize; 4], usize)> = Vec::new();
    for l in config.model.layers(32, 32) {
        if l.name.ends_with(".conv3") {
            let shape = [b, l.cout, l.out_hw.0, l.out_hw.1];
            match shapes.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, n)) => *n += 1,
                None => shapes.push((shape, 1)),
            }
        }
    }
    let mut rows = Vec::new();
    for (shape, blocks) in shapes {
        let x = Var::from_tensor(&random(&shape)?)?;
        let short = Var::from_tensor(&random(&shape)?)?;
        let gate = Var::from_tensor(&random(&[shape[0], shape[1], 1, 1])?)?;
        let probe = random(&shape)?;
        let tail = median_ms(device, reps, &mut || {
            let y = crate::ops::block_tail(
                x.as_tensor(),
                Some(gate.as_tensor()),
                short.as_tensor(),
                config.kernels,
            )?;
            (&y * &probe)?.sum_all()?.backward()?;
            Ok(y)
        })?;
        let squeeze = median_ms(device, reps, &mut || {
            let y = crate::ops::squeeze(x.as_tensor(), config.kernels)?;
            y.sum_all()?.backward()?;
            Ok(y)
        })?;
        rows.push(TailTimes {
            shape,
            blocks,
            tail,
            squeeze,
        });
    }
    Ok(rows)
}

/// The median over `reps` runs (after [`WARMUP`]) of `f`, synchronised, in milliseconds.
fn median_ms(device: &Device, reps: usize, f: &mut dyn FnMut() -> Result<Tensor>) -> Result<f64> {
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps.max(1) + WARMUP {
        device.synchronize()?;
        let t = Instant::now();
        let out = f()?;
        device.synchronize()?;
        drop(out);
        if i >= WARMUP {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
