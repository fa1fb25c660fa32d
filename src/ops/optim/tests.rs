use candle_core::{Device, Tensor};

use super::*;
use crate::ops::cpu::optim::CHUNK;

/// Seeded values over several magnitudes and both signs, zeros of both signs among them.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len)
        .map(|i| match i % 11 {
            0 => 0.0,
            1 => -0.0,
            _ => (rng.f32() - 0.5) * 10f32.powi(rng.i32(-4..3)),
        })
        .collect()
}

fn tensor(len: usize, seed: u64) -> Tensor {
    Tensor::from_vec(values(len, seed), len, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Panics at the first element whose bits differ, naming `what`.
fn same_bits(got: &Tensor, want: &Tensor, what: &str) {
    let (g, w) = (bits(got), bits(want));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        let (a, b) = (f32::from_bits(g[i]), f32::from_bits(w[i]));
        panic!("{what}: element {i} is {a:e}, candle's ops give {b:e}");
    }
}

/// The step buffer: rates 0.07 (slot 0) and 0.3 (slot 1), then `d` and `1 − d`.
fn scalars(d: f64) -> Tensor {
    let v = [0.07f32, 0.3, d as f32, (1.0 - d) as f32];
    Tensor::new(&v, &Device::Cpu).unwrap()
}

/// One parameter's update in candle's ops, as `Sgd`'s unfused route writes it.
struct Reference {
    p: Tensor,
    b: Option<Tensor>,
    e: Option<Tensor>,
}

fn reference(t: &SgdTensor, rule: SgdRule, s: &Tensor) -> Reference {
    let (p, wd, mu) = (t.param, t.weight_decay, rule.momentum);
    let mut g = if wd != 0.0 {
        (t.grad + (p * wd).unwrap()).unwrap()
    } else {
        t.grad.clone()
    };
    let mut b = None;
    if mu != 0.0 {
        let next = match t.first {
            true => g.clone(),
            false => ((t.buf.unwrap() * mu).unwrap() + &g).unwrap(),
        };
        g = match rule.nesterov {
            true => (&g + (&next * mu).unwrap()).unwrap(),
            false => next.clone(),
        };
        b = Some(next);
    }
    let lr = s.narrow(0, t.rate_slot, 1).unwrap();
    let p = (p - g.broadcast_mul(&lr).unwrap()).unwrap();
    let (d, keep) = (s.narrow(0, 2, 1).unwrap(), s.narrow(0, 3, 1).unwrap());
    let e = t
        .ema
        .map(|e| (e.broadcast_mul(&d).unwrap() + p.broadcast_mul(&keep).unwrap()).unwrap());
    Reference { p, b, e }
}

/// The pass equals candle's ops bit for bit: with and without decay, momentum, Nesterov, a
/// started buffer and an EMA twin, on tensors longer than a task (split over threads).
#[test]
fn sgd_pass_equals_candles_ops_bit_for_bit() {
    let lens = [1, 7, 3 * CHUNK + 5, 300];
    for (case, &(mu, nesterov)) in [(0.9, true), (0.9, false), (0.0, false)].iter().enumerate() {
        let owned: Vec<[Tensor; 4]> = (lens.iter().enumerate())
            .map(|(i, &len)| {
                let k = (case * 10 + i) as u64 * 4;
                [0, 1, 2, 3].map(|j| tensor(len, k + j))
            })
            .collect();
        let tensors: Vec<SgdTensor> = (owned.iter().enumerate())
            .map(|(i, [p, g, b, e])| SgdTensor {
                param: p,
                grad: g,
                buf: (mu != 0.0).then_some(b),
                ema: (i != 1).then_some(e),
                first: i == 2,
                weight_decay: if i % 2 == 0 { 5e-4 } else { 0.0 },
                rate_slot: i % 2,
            })
            .collect();
        let rule = SgdRule {
            momentum: mu,
            nesterov,
            decay_slot: 2,
        };
        let s = scalars(0.999);
        let want: Vec<Reference> = tensors.iter().map(|t| reference(t, rule, &s)).collect();
        sgd_foreach(&tensors, rule, &s).unwrap();
        for (i, (t, w)) in tensors.iter().zip(&want).enumerate() {
            same_bits(t.param, &w.p, &format!("case {case}, weight {i}"));
            if let (Some(b), Some(wb)) = (t.buf, &w.b) {
                same_bits(b, wb, &format!("case {case}, buffer {i}"));
            }
            if let (Some(e), Some(we)) = (t.ema, &w.e) {
                same_bits(e, we, &format!("case {case}, twin {i}"));
            }
        }
    }
}

#[test]
fn ema_pass_equals_candles_ops_bit_for_bit() {
    let pairs: Vec<(Tensor, Tensor)> = [3, CHUNK + 1]
        .iter()
        .enumerate()
        .map(|(i, &len)| (tensor(len, 100 + i as u64), tensor(len, 200 + i as u64)))
        .collect();
    let s = scalars(0.9);
    let (d, keep) = (s.narrow(0, 2, 1).unwrap(), s.narrow(0, 3, 1).unwrap());
    let want: Vec<Tensor> = (pairs.iter())
        .map(|(e, v)| (e.broadcast_mul(&d).unwrap() + v.broadcast_mul(&keep).unwrap()).unwrap())
        .collect();
    let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(e, v)| (e, v)).collect();
    ema_foreach(&refs, &s, 2).unwrap();
    for ((e, _), w) in pairs.iter().zip(&want) {
        same_bits(e, w, "twin");
    }
}

/// Written in place: the tensors keep their storage, and one op is recorded for all of them.
#[test]
fn one_recorded_op_writes_every_tensor_in_place() {
    let (p, g, b) = (tensor(5, 1), tensor(5, 2), tensor(5, 3));
    let (q, h) = (tensor(9, 4), tensor(9, 5));
    let s = scalars(0.5);
    let t = |param, grad, buf| SgdTensor {
        param,
        grad,
        buf,
        ema: None,
        first: false,
        weight_decay: 0.0,
        rate_slot: 0,
    };
    let rule = SgdRule {
        momentum: 0.9,
        nesterov: true,
        decay_slot: 2,
    };
    let before = bits(&p);
    candle_core::probe::start();
    sgd_foreach(&[t(&p, &g, Some(&b)), t(&q, &h, None)], rule, &s).unwrap_err();
    let trace = candle_core::probe::stop();
    assert!(
        trace.is_empty(),
        "refused (momentum without a buffer) before any op: {trace:?}"
    );
    let b2 = tensor(9, 6);
    candle_core::probe::start();
    sgd_foreach(&[t(&p, &g, Some(&b)), t(&q, &h, Some(&b2))], rule, &s).unwrap();
    let trace = candle_core::probe::stop();
    assert_eq!(trace.len(), 1, "{trace:?}");
    assert_ne!(bits(&p), before, "the same tensor holds the update");
    assert_ne!(
        bits(&b2),
        bits(&tensor(9, 6)),
        "and the second parameter's buffer"
    );
}

#[test]
fn refuses_a_written_tensor_that_is_also_read() {
    let (p, b) = (tensor(4, 1), tensor(4, 2));
    let s = scalars(0.5);
    let aliased = SgdTensor {
        param: &p,
        grad: &p,
        buf: Some(&b),
        ema: None,
        first: true,
        weight_decay: 0.0,
        rate_slot: 0,
    };
    let rule = SgdRule {
        momentum: 0.9,
        nesterov: false,
        decay_slot: 2,
    };
    let err = sgd_foreach(&[aliased], rule, &s).unwrap_err().to_string();
    assert!(err.contains("shares its storage"), "{err}");
}

#[test]
fn launches_take_the_longest_tensors_together_and_every_tensor_once() {
    let lens = [5, 100, 1, 100, 7, 3];
    let chunks = launch_chunks(&lens, 2);
    assert_eq!(chunks, vec![vec![1, 3], vec![4, 0], vec![5, 2]]);
    let mut all: Vec<usize> = chunks.concat();
    all.sort();
    assert_eq!(all, (0..lens.len()).collect::<Vec<_>>());
    assert!(launch_chunks(&[], 48).is_empty());
}
