//! The capture check (train::capture) on real steps: the `tiny`, a small `seed` (EMA, dropout)
//! and a small `fast-muon` step are the same every step while their rates and EMA decay change,
//! and keep every persistent tensor in place; a rate passed by value, a replaced tensor and a
//! read inside the step each fail it, naming what went wrong.

use candle_core::{DType, Device, Tensor};
use cifar_stream::model::Architecture;
use cifar_stream::train::capture::{compare, record, CaptureError, Registry};
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::Learner;

const STEPS: usize = 4;

/// A fixed random batch of `n` CIFAR-sized images and labels.
fn batch(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let pixels: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.u32(0..10)).collect();
    (
        Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu).unwrap(),
        Tensor::from_vec(labels, n, &Device::Cpu).unwrap(),
    )
}

/// A rate that differs at every step (so a rate passed by value would show).
fn rate(config: &TrainConfig, step: usize) -> f64 {
    config.schedule.lr * (1.0 - 0.1 * step as f64)
}

/// `STEPS` steps, each body recorded with `extra` run inside the recording after it; returns
/// the traces and the persistent tensors' places checked step to step.
fn run_steps(
    config: &TrainConfig,
    extra: &dyn Fn(&Learner, usize, &Tensor) -> candle_core::Result<()>,
) -> Result<Vec<Vec<candle_core::probe::Event>>, CaptureError> {
    let mut learner = Learner::new(config, &Device::Cpu, 100).unwrap();
    learner.freeze_for_epoch(0);
    let (x, y) = batch(config.batch_size, 7);
    let mut traces: Vec<Vec<candle_core::probe::Event>> = Vec::new();
    let mut registry: Option<Registry> = None;
    for step in 0..STEPS {
        learner
            .stage(rate(config, step), step as u64, config.batch_size)
            .unwrap();
        let ((), trace) = record(|| {
            let (_, loss) = learner.body(&x, &y).unwrap();
            extra(&learner, step, &loss).unwrap();
        });
        learner.finish_step().unwrap();
        let persistent = learner.persistent();
        if let Some(r) = &registry {
            r.check(step, &persistent)?;
        }
        registry = Some(Registry::take(step, &persistent));
        if step >= 2 {
            // Step 0 is warm-up (momentum starts there).
            compare((step - 1, &traces[step - 1][..]), (step, &trace[..]))?;
        }
        traces.push(trace);
    }
    Ok(traces)
}

fn nothing(_: &Learner, _: usize, _: &Tensor) -> candle_core::Result<()> {
    Ok(())
}

fn tiny() -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.batch_size = 8;
    c
}

/// The report's network, narrow and at a small batch, with its EMA and dropout.
fn small_seed() -> TrainConfig {
    let mut c = TrainConfig::preset("seed").unwrap();
    c.batch_size = 4;
    let m = c.model.se_resnet_d_mut().unwrap();
    m.stem_width = 16;
    m.widths = vec![4, 8, 8, 8];
    m.blocks = vec![1, 1, 1, 1];
    assert!(m.dropout > 0.0 && c.ema_decay > 0.0);
    c
}

/// airbench94_muon's recipe, narrow: Muon, the whitening bias's taper, BatchNorm shifts at 64×.
fn small_fast_muon() -> TrainConfig {
    let mut c = TrainConfig::preset("fast-muon").unwrap();
    c.batch_size = 8;
    c.precision = cifar_stream::model::Precision::F32;
    let Architecture::Whitened(m) = &mut c.model else {
        panic!("fast-muon is the whitened net")
    };
    m.widths = vec![8, 16, 16];
    assert!(c.optim.muon.is_some() && c.optim.whiten_bias_to_zero);
    c
}

#[test]
fn tiny_seed_and_fast_muon_steps_are_the_same_every_step_and_stay_in_place() {
    for (name, config) in [
        ("tiny", tiny()),
        ("seed", small_seed()),
        ("fast-muon", small_fast_muon()),
    ] {
        let traces = run_steps(&config, &nothing).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Not an empty recording: the step's ops are there, and nothing is uploaded per step.
        assert!(traces[2].len() > 50, "{name}: {} events", traces[2].len());
    }
}

#[test]
fn a_rate_passed_by_value_fails_naming_the_op() {
    // As an optimizer that multiplied by the step's rate instead of reading its slot.
    let by_value = |l: &Learner, step: usize, _: &Tensor| {
        let (_, w) = &l.state()[0];
        (w * rate(&tiny(), step)).map(|_| ())
    };
    let e = run_steps(&tiny(), &by_value).unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert!(matches!(e, CaptureError::Differs { .. }), "{text}");
    assert!(text.contains("op affine"), "{text}");
}

#[test]
fn a_read_inside_the_step_fails_naming_it() {
    let read = |_: &Learner, _: usize, loss: &Tensor| loss.to_scalar::<f32>().map(|_| ());
    let e = run_steps(&tiny(), &read).unwrap_err();
    assert!(matches!(e, CaptureError::Reads { .. }), "{e}");
    assert!(e.to_string().contains("read of 1 values"), "{e}");
}

#[test]
fn a_fresh_upload_of_per_step_data_fails() {
    // As a dropout mask drawn inside the step.
    let upload = |_: &Learner, step: usize, _: &Tensor| {
        Tensor::new(&[step as f32], &Device::Cpu).map(|_| ())
    };
    let e = run_steps(&tiny(), &upload).unwrap_err();
    assert!(e.to_string().contains("upload of 1 F32 values"), "{e}");
}

#[test]
fn a_replaced_tensor_fails_naming_it() {
    let mut learner = Learner::new(&tiny(), &Device::Cpu, 100).unwrap();
    let (x, y) = batch(8, 7);
    learner.step(&x, &y, 0.1, 0).unwrap();
    let persistent = learner.persistent();
    let registry = Registry::take(0, &persistent);
    registry.check(1, &learner.persistent()).unwrap();
    // As an optimizer that replaced a momentum buffer with the tensor it computed.
    let mut replaced = persistent.clone();
    let i = replaced
        .iter()
        .position(|(n, _)| n.starts_with("momentum."))
        .unwrap();
    replaced[i].1 = replaced[i].1.to_dtype(DType::F64).unwrap();
    let e = registry.check(1, &replaced).unwrap_err();
    assert!(e.to_string().contains(&replaced[i].0), "{e}");
    // A state loaded from a checkpoint is copied in place: the same tensors afterwards.
    let state: std::collections::HashMap<String, Tensor> = persistent
        .iter()
        .filter(|(n, _)| n.contains('.') && !n.starts_with("dropout"))
        .map(|(n, t)| (n.clone(), t.copy().unwrap()))
        .collect();
    learner.load_state(&state, 1).unwrap();
    registry.check(1, &learner.persistent()).unwrap();
}
