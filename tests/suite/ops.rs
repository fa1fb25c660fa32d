//! The fast ops against candle's stock ops (outputs and every gradient within 1e-4 relative, f32)
//! and against finite differences; the whole model with fast and stock kernels on the same
//! weights and batch.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cifar_stream::model::{build, sorted_vars, Mode, ModelConfig};
use cifar_stream::ops::{
    block_tail, conv2d, gelu, gelu_with_bias, max_pool2, BatchNorm, Kernels, Statistics,
};
use cifar_stream::train::diag::CONV_SHAPES;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|: error relative to the tensor's scale.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Output and (dx, dw) of `sum(conv(x, w) * probe)` for one kernel choice.
fn conv_grads(x: &Tensor, w: &Tensor, stride: usize, pad: usize, k: Kernels) -> [Tensor; 3] {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad, k).unwrap();
    let probe = random(y.dims(), 99).to_dtype(x.dtype()).unwrap();
    let loss = (&y * &probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    [
        y,
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(wv.as_tensor()).unwrap().clone(),
    ]
}

#[test]
fn conv_matches_stock_outputs_and_gradients() {
    let mut cases = 0;
    for batch in [1, 5] {
        for (cin, cout, hw) in CONV_SHAPES {
            for k in [1, 3] {
                for stride in [1, 2] {
                    for pad in [0, 1] {
                        if k == 1 && pad == 1 {
                            continue; // the model never pads a 1×1; covered below by k=3
                        }
                        let x = random(&[batch, cin, hw, hw], cases);
                        let w = random(&[cout, cin, k, k], cases + 1000);
                        let fast = conv_grads(&x, &w, stride, pad, Kernels::Fast);
                        let stock = conv_grads(&x, &w, stride, pad, Kernels::Stock);
                        for (name, f, s) in [("y", 0, 0), ("dx", 1, 1), ("dw", 2, 2)] {
                            let e = rel_err(&fast[f], &stock[s]);
                            assert!(
                                e < 1e-4,
                                "{name} batch {batch} {cin}->{cout} {hw}x{hw} k{k} s{stride} p{pad}: {e}"
                            );
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 5 * 3 * 2);
}

#[test]
fn lowered_conv_backward_matches_the_fast_op() {
    // The device path's backward (a forward convolution for dx, one GEMM for dw), run here on the
    // CPU, against the CPU fast op (held to candle's and to finite differences above): odd and
    // even sizes, non-square inputs, strides 1-3, padding up to k - 1. (candle's own backward
    // cannot be the reference here: it fails on non-square inputs whose two axes leave different
    // remainders under the stride.)
    let mut cases = 0;
    for (batch, cin, cout, (h, w)) in [(2, 3, 8, (9, 9)), (3, 16, 12, (8, 6)), (1, 40, 24, (5, 7))]
    {
        for (k, pads) in [(1, vec![0]), (3, vec![0, 1, 2]), (5, vec![2])] {
            for stride in [1, 2, 3] {
                for &pad in &pads {
                    if h + 2 * pad < k || w + 2 * pad < k {
                        continue;
                    }
                    let x = random(&[batch, cin, h, w], cases);
                    let wt = random(&[cout, cin, k, k], cases + 1000);
                    let xv = Var::from_tensor(&x).unwrap();
                    let wv = Var::from_tensor(&wt).unwrap();
                    let lowered = cifar_stream::ops::conv::lowered::conv2d(
                        xv.as_tensor(),
                        wv.as_tensor(),
                        stride,
                        pad,
                    )
                    .unwrap();
                    let reference = conv_grads(&x, &wt, stride, pad, Kernels::Fast);
                    let probe = random(lowered.dims(), 99);
                    let g = (&lowered * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    let got = [
                        lowered.clone(),
                        g.get(xv.as_tensor()).unwrap().clone(),
                        g.get(wv.as_tensor()).unwrap().clone(),
                    ];
                    for (name, i) in [("y", 0), ("dx", 1), ("dw", 2)] {
                        let e = rel_err(&got[i], &reference[i]);
                        assert!(
                            e < 1e-5,
                            "{name} batch {batch} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad}: {e}"
                        );
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 45);
}

#[test]
fn conv_gradient_matches_finite_differences() {
    let x = random(&[2, 2, 5, 5], 1).to_dtype(DType::F64).unwrap();
    let w = random(&[3, 2, 3, 3], 2).to_dtype(DType::F64).unwrap();
    // The fast path is f32: take its analytic gradient in f32, the differences in f64 (stock).
    let [_, dx, dw] = conv_grads(
        &x.to_dtype(DType::F32).unwrap(),
        &w.to_dtype(DType::F32).unwrap(),
        2,
        1,
        Kernels::Fast,
    );
    let probe = random(&[2, 3, 3, 3], 99).to_dtype(DType::F64).unwrap();
    let f = |x: &Tensor, w: &Tensor| -> f64 {
        (x.conv2d(w, 1, 2, 1, 1).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-4;
    for (t, grad, which) in [(&x, &dx, 0), (&w, &dw, 1)] {
        let base = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let grad = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in (0..base.len()).step_by(7) {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let p = Tensor::from_vec(plus, t.dims(), &Device::Cpu).unwrap();
            let m = Tensor::from_vec(minus, t.dims(), &Device::Cpu).unwrap();
            let fd = if which == 0 {
                (f(&p, &w) - f(&m, &w)) / (2.0 * h)
            } else {
                (f(&x, &p) - f(&x, &m)) / (2.0 * h)
            };
            assert!(
                (fd - grad[i] as f64).abs() < 1e-3,
                "arg {which} [{i}]: {fd} vs {}",
                grad[i]
            );
        }
    }
}

/// (y, dx, dgamma, dbeta, running mean, running var) after one forward/backward.
/// What follows the BatchNorm under test.
#[derive(Clone, Copy, Debug)]
enum After {
    Nothing,
    Relu,
    Gelu,
}

fn bn_run(x: &Tensor, train: bool, after: After, k: Kernels) -> Vec<Tensor> {
    let c = x.dim(1).unwrap();
    let vars = VarMap::new();
    let bn = BatchNorm::new(
        c,
        1e-5,
        1.0,
        VarBuilder::from_varmap(&vars, x.dtype(), &Device::Cpu),
    )
    .unwrap();
    // Non-trivial affine parameters and running statistics.
    for (name, v) in sorted_vars(&vars) {
        let seed = name.len() as u64;
        let r = random(&[c], seed);
        let r = if name.contains("var") {
            (r.abs().unwrap() + 0.5).unwrap()
        } else {
            r
        };
        v.set(&r.to_dtype(x.dtype()).unwrap()).unwrap();
    }
    let xv = Var::from_tensor(&(x * 3.0).unwrap().affine(1.0, 2.0).unwrap()).unwrap();
    let statistics = if train {
        Statistics::Batch { sync: None }
    } else {
        Statistics::Running
    };
    let y = match after {
        After::Gelu => bn.forward_gelu(xv.as_tensor(), statistics, k.into()),
        _ => bn.forward(
            xv.as_tensor(),
            statistics,
            matches!(after, After::Relu),
            k.into(),
        ),
    }
    .unwrap();
    let probe = random(y.dims(), 7).to_dtype(x.dtype()).unwrap();
    let g = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let by_name = |n: &str| {
        sorted_vars(&vars)
            .into_iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
    };
    vec![
        y,
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(by_name("weight").as_tensor()).unwrap().clone(),
        g.get(by_name("bias").as_tensor()).unwrap().clone(),
        by_name("running_mean").as_tensor().clone(),
        by_name("running_var").as_tensor().clone(),
    ]
}

#[test]
fn batch_norm_matches_stock_in_train_and_eval_alone_and_with_relu_or_gelu() {
    for shape in [[5, 3, 7, 7], [1, 256, 4, 4], [128, 16, 2, 2], [4, 32, 1, 1]] {
        let x = random(&shape, 3);
        for train in [true, false] {
            for after in [After::Nothing, After::Relu, After::Gelu] {
                let fast = bn_run(&x, train, after, Kernels::Fast);
                let stock = bn_run(&x, train, after, Kernels::Stock);
                let names = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"];
                for ((f, s), name) in fast.iter().zip(&stock).zip(names) {
                    let e = rel_err(f, s);
                    assert!(e < 1e-4, "{name} {shape:?} train {train} {after:?}: {e}");
                }
            }
        }
    }
}

#[test]
fn batch_norm_gradient_matches_finite_differences() {
    // Training-mode BN is a function of the whole batch: perturb one input, every output moves.
    let x = random(&[3, 2, 3, 3], 5);
    let [y, dx] = {
        let r = bn_run(&x, true, After::Nothing, Kernels::Fast);
        [r[0].clone(), r[1].clone()]
    };
    let probe = random(y.dims(), 7).to_dtype(DType::F64).unwrap();
    let xs = (x * 3.0)
        .unwrap()
        .affine(1.0, 2.0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let gamma = random(&[2], "weight".len() as u64)
        .to_dtype(DType::F64)
        .unwrap();
    let beta = random(&[2], "bias".len() as u64)
        .to_dtype(DType::F64)
        .unwrap();
    let f = |x: &Tensor| -> f64 {
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let c = x.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        let y = c
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        let y = y
            .broadcast_mul(&gamma.reshape((1, 2, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, 2, 1, 1)).unwrap())
            .unwrap();
        (y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let base = xs.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dx = dx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = 1e-4;
    for i in (0..base.len()).step_by(5) {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (f(&Tensor::from_vec(p, xs.dims(), &Device::Cpu).unwrap())
            - f(&Tensor::from_vec(m, xs.dims(), &Device::Cpu).unwrap()))
            / (2.0 * h);
        let analytic = dx[i] as f64;
        assert!((fd - analytic).abs() < 1e-3, "[{i}]: {fd} vs {analytic}");
    }
}

/// Logits, every parameter gradient, running statistics after the step, and eval logits, by name.
fn model_step(kernels: Kernels, dtype: DType) -> Vec<(String, Tensor)> {
    model_step_with(&ModelConfig::tiny(), 4, kernels, dtype)
}

fn model_step_with(
    config: &ModelConfig,
    images: usize,
    kernels: Kernels,
    dtype: DType,
) -> Vec<(String, Tensor)> {
    let config = config.clone();
    // ReLU's derivative jumps at zero, so an activation within f32 rounding of zero can take the
    // other branch in one implementation and move a gradient by that one element's share: input
    // seed 11 does it to the fast ops (one stem activation; 6.9e-5 in one channel's BN-shift
    // gradient), seed 3 to the stock ops. Seed 1 has no such tie; the f64 check below still
    // tells rounding from error if a change of weights introduces one.
    let x = random(&[images, 3, 32, 32], 1).to_dtype(dtype).unwrap();
    let labels: Vec<u32> = (0..images as u32)
        .map(|i| [1, 7, 3, 3][i as usize % 4])
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let (mut model, vars) = build(&config, 5, &Device::Cpu).unwrap();
    let vars = if dtype == DType::F32 {
        vars
    } else {
        // The same weights in another dtype: a second model whose variables are copies.
        let copy = VarMap::new();
        let vb = VarBuilder::from_varmap(&copy, dtype, &Device::Cpu);
        model = cifar_stream::model::SeResNetD::new(&config, vb).unwrap();
        let source = sorted_vars(&vars);
        for ((n1, v1), (n2, v2)) in source.iter().zip(sorted_vars(&copy)) {
            assert_eq!(n1, &n2);
            v2.set(&v1.as_tensor().to_dtype(dtype).unwrap()).unwrap();
        }
        copy
    };
    model.set_kernels(kernels);
    let logits = model.forward(&x, Mode::train(3)).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut named = vec![("logits".to_string(), logits)];
    for (name, var) in sorted_vars(&vars) {
        match grads.get(var.as_tensor()) {
            Some(g) => named.push((format!("grad {name}"), g.clone())),
            // BatchNorm running statistics: state, compared after the step.
            None => named.push((name, var.as_tensor().clone())),
        }
    }
    named.push(("eval logits".into(), model.forward(&x, Mode::Eval).unwrap()));
    named
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap()))
        .collect()
}

#[test]
fn whole_model_gives_the_same_logits_and_gradients_with_fast_and_stock_kernels() {
    let fast = model_step(Kernels::Fast, DType::F32);
    let stock = model_step(Kernels::Stock, DType::F32);
    // f64 through the stock ops: the ground truth that tells rounding from error.
    let exact = model_step(Kernels::Stock, DType::F64);
    assert_eq!(fast.len(), stock.len());
    let mut worst = 0f32;
    let mut failures = Vec::new();
    for (((name, f), (_, s)), (_, x)) in fast.iter().zip(&stock).zip(&exact) {
        let vs_stock = rel_err(f, s);
        let (fast_err, stock_err) = (rel_err(f, x), rel_err(s, x));
        worst = worst.max(vs_stock);
        // Within 1e-4 of stock, or (where both f32 sums round differently, e.g. the stem's
        // BatchNorm shift: a sum of 4,096 cancelling terms) no further from f64 than stock is.
        if !(vs_stock < 1e-4 || fast_err <= stock_err.max(1e-4)) {
            failures.push(format!(
                "{name}: fast vs stock {vs_stock}, vs f64: fast {fast_err}, stock {stock_err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("largest fast-vs-stock relative difference: {worst}");
}

#[test]
fn block_tail_matches_stock_with_and_without_a_gate() {
    for shape in [[5, 3, 7, 7], [2, 64, 4, 4], [3, 8, 1, 1]] {
        for gated in [true, false] {
            let run = |k: Kernels| -> Vec<Tensor> {
                let x = Var::from_tensor(&random(&shape, 1)).unwrap();
                let gate = Var::from_tensor(&random(&[shape[0], shape[1], 1, 1], 2)).unwrap();
                let short = Var::from_tensor(&random(&shape, 3)).unwrap();
                let g = gated.then(|| gate.as_tensor());
                let y = block_tail(x.as_tensor(), g, short.as_tensor(), k).unwrap();
                let probe = random(y.dims(), 4);
                let grads = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mut out = vec![y];
                out.push(grads.get(x.as_tensor()).unwrap().clone());
                out.push(grads.get(short.as_tensor()).unwrap().clone());
                if gated {
                    out.push(grads.get(gate.as_tensor()).unwrap().clone());
                }
                out
            };
            let (fast, stock) = (run(Kernels::Fast), run(Kernels::Stock));
            for (i, (f, s)) in fast.iter().zip(&stock).enumerate() {
                let e = rel_err(f, s);
                assert!(e < 1e-4, "{shape:?} gated {gated} output {i}: {e}");
            }
        }
    }
}

#[test]
fn the_fast_relus_keep_a_nan_as_pytorchs_do() {
    // f32::max(NaN, 0) is 0: a ReLU built on it hides a diverged run's NaN.
    let dev = Device::Cpu;
    let mut v = vec![1.0f32; 2 * 3 * 4 * 4];
    v[5] = f32::NAN;
    v[7] = -2.0;
    let x = Tensor::from_vec(v, (2, 3, 4, 4), &dev).unwrap();
    let short = x.zeros_like().unwrap();
    let y = block_tail(&x, None, &short, Kernels::Fast)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(y[5].is_nan() && y[7] == 0.0 && y[0] == 1.0, "{y:?}");
    let vars = VarMap::new();
    let bn = BatchNorm::new(
        3,
        1e-5,
        1.0,
        VarBuilder::from_varmap(&vars, DType::F32, &dev),
    )
    .unwrap();
    let y = bn
        .forward(&x, Statistics::Running, true, Kernels::Fast.into())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(y[5].is_nan() && y[7] == 0.0, "{y:?}");
}

/// The gradients of `sum(y * probe)`.
fn probed(y: &Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
    (y * probe).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Output and input gradient of `sum(op(x) * probe)`.
fn unary_grads(x: &Tensor, op: impl Fn(&Tensor) -> Tensor) -> [Tensor; 2] {
    let xv = Var::from_tensor(x).unwrap();
    let y = op(xv.as_tensor());
    let g = probed(&y, &random(y.dims(), 98));
    [y, g.get(xv.as_tensor()).unwrap().clone()]
}

#[test]
fn gelu_matches_candles_exact_gelu_and_its_gradient() {
    let x = (random(&[3, 5, 7, 9], 11) * 4.0).unwrap();
    let fast = unary_grads(&x, |t| gelu(t, Kernels::Fast).unwrap());
    let stock = unary_grads(&x, |t| t.gelu_erf().unwrap());
    for (name, f, s) in [("y", &fast[0], &stock[0]), ("dx", &fast[1], &stock[1])] {
        let e = rel_err(f, s);
        assert!(e < 1e-5, "gelu {name}: {e}");
    }
}

#[test]
fn gelu_with_bias_matches_a_broadcast_add_then_gelu_in_value_and_both_gradients() {
    let x = Var::from_tensor(&(random(&[3, 5, 7, 9], 12) * 3.0).unwrap()).unwrap();
    let b = Var::from_tensor(&random(&[5], 13)).unwrap();
    let probe = random(&[3, 5, 7, 9], 14);
    let run = |k: Kernels| {
        let y = gelu_with_bias(x.as_tensor(), b.as_tensor(), k).unwrap();
        let g = probed(&y, &probe);
        let dx = g.get(x.as_tensor()).unwrap().clone();
        [y, dx, g.get(b.as_tensor()).unwrap().clone()]
    };
    let (fast, stock) = (run(Kernels::Fast), run(Kernels::Stock));
    for (name, i) in [("y", 0), ("dx", 1), ("dbias", 2)] {
        assert_eq!(fast[i].dims(), stock[i].dims(), "{name}");
        let e = rel_err(&fast[i], &stock[i]);
        assert!(e < 1e-5, "gelu with bias {name}: {e}");
    }
    // A fixed input (the whitening layer's case) still trains the bias, and gets no gradient.
    let fixed = x.as_tensor().detach();
    let g = probed(
        &gelu_with_bias(&fixed, b.as_tensor(), Kernels::Fast).unwrap(),
        &probe,
    );
    assert!(g.get(&fixed).is_none());
    let db = g.get(b.as_tensor()).unwrap();
    assert!(rel_err(db, &stock[2]) < 1e-5);
    // The bias gradient is summed in plane order: the same bits on any number of threads.
    let bits = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(Kernels::Fast)[2].to_vec1::<f32>().unwrap())
    };
    assert_eq!(bits(1), bits(3));
    let mismatched = gelu_with_bias(x.as_tensor(), &random(&[4], 15), Kernels::Stock);
    assert!(mismatched.unwrap_err().to_string().contains("4 channels"));
}

#[test]
fn max_pool_routes_agree_with_a_hand_reference_and_floor_odd_maps_as_pytorch() {
    for (h, w) in [(8, 6), (7, 9), (31, 31), (3, 3)] {
        let x = random(&[2, 3, h, w], (h * w) as u64);
        let (oh, ow) = (h / 2, w / 2);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let probe = random(&[2, 3, oh, ow], 98)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // By hand: each window's maximum, which alone takes the window's gradient.
        let (mut y, mut dx) = (vec![0f32; 6 * oh * ow], vec![0f32; xs.len()]);
        for p in 0..6 {
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = |dy: usize, dx: usize| p * h * w + (2 * oy + dy) * w + 2 * ox + dx;
                    let best = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]
                        .into_iter()
                        .max_by(|&a, &b| xs[a].total_cmp(&xs[b]))
                        .unwrap();
                    let o = (p * oh + oy) * ow + ox;
                    y[o] = xs[best];
                    dx[best] = probe[o];
                }
            }
        }
        for k in [Kernels::Fast, Kernels::Stock] {
            let [got_y, got_dx] = unary_grads(&x, |t| max_pool2(t, k).unwrap());
            assert_eq!(got_y.dims(), [2, 3, oh, ow]);
            let got_y = got_y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got_dx = got_dx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got_y, y, "{k:?} {h}x{w}: output");
            assert_eq!(got_dx, dx, "{k:?} {h}x{w}: gradient");
        }
    }
}
