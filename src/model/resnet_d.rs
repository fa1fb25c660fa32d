//! SE-ResNet-D on candle: a three-conv stem, bottleneck stages with the stride on the 3×3 conv,
//! average-pool shortcuts, Squeeze-and-Excitation in every block, dropout, linear classifier.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

use super::config::ModelConfig;
use super::precision::Precision;
use crate::ops::{self, BatchNorm, Conv2d, Kernels};
use crate::seed;

/// Whether a forward pass trains (batch statistics, dropout) or evaluates (running statistics).
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Training: BatchNorm uses and updates batch statistics; dropout draws its mask from `seed`.
    Train {
        /// Seed of this step's dropout mask.
        dropout_seed: u64,
    },
    /// Evaluation: running statistics, no dropout.
    Eval,
}

impl Mode {
    fn train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(ConvBn {
            conv: Conv2d::new(cin, cout, k, stride, false, vb.pp("conv"))?,
            bn: BatchNorm::new(cout, 1e-5, vb.pp("bn"))?,
        })
    }

    /// conv → BN, then ReLU when `relu` (fused into the BN pass by the fast kernels).
    fn forward(&self, x: &Tensor, mode: Mode, relu: bool, kernels: Kernels) -> Result<Tensor> {
        let y = self.conv.forward(x, kernels)?;
        self.bn.forward(&y, mode.train(), relu, kernels)
    }
}

struct SqueezeExcite {
    reduce: Conv2d,
    expand: Conv2d,
}

impl SqueezeExcite {
    /// The per-channel gate `[n, c, 1, 1]` for `x`, in `x`'s dtype (the caller scales by it).
    /// Pooled and computed in f32: a tiny layer whose mean must not be summed in bf16.
    fn gate(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let s = ops::squeeze(x, kernels)?;
        let s = self.reduce.forward(&s, kernels)?.relu()?;
        candle_nn::ops::sigmoid(&self.expand.forward(&s, kernels)?)?.to_dtype(x.dtype())
    }
}

struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    se: Option<SqueezeExcite>,
    /// `(average-pool first, projection)`; `None` is the identity.
    shortcut: Option<(bool, ConvBn)>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor, mode: Mode, kernels: Kernels) -> Result<Tensor> {
        let y = self.conv1.forward(x, mode, true, kernels)?;
        let y = self.conv2.forward(&y, mode, true, kernels)?;
        let y = self.conv3.forward(&y, mode, false, kernels)?;
        let gate = match &self.se {
            Some(se) => Some(se.gate(&y, kernels)?),
            None => None,
        };
        let short = match &self.shortcut {
            None => x.clone(),
            Some((true, proj)) => proj.forward(&x.avg_pool2d(2)?, mode, false, kernels)?,
            Some((false, proj)) => proj.forward(x, mode, false, kernels)?,
        };
        ops::scale_add_relu(&y, gate.as_ref(), &short, kernels)
    }
}

/// The network; its weights live in the [`VarMap`] it was built from.
pub struct SeResNetD {
    config: ModelConfig,
    stem: Vec<ConvBn>,
    blocks: Vec<Bottleneck>,
    fc: Linear,
    kernels: Kernels,
    /// Dtype of activations and of weights at use; `None` computes in the variables' own.
    compute: Option<DType>,
}

impl SeResNetD {
    /// Builds the network's layers, creating their variables in `vb`.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|(key, message)| candle_core::Error::Msg(format!("{key}: {message}")))?;
        let half = config.stem_width / 2;
        let stem = vec![
            ConvBn::new(config.in_channels, half, 3, 1, vb.pp("stem.0"))?,
            ConvBn::new(half, half, 3, 1, vb.pp("stem.1"))?,
            ConvBn::new(half, config.stem_width, 3, 1, vb.pp("stem.2"))?,
        ];
        let mut blocks = Vec::new();
        let mut cin = config.stem_width;
        for (s, (&n, &width)) in config.blocks.iter().zip(&config.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let out = width * config.expansion;
                let vb = vb.pp(format!("stage{s}.{b}"));
                let hidden = config.se_hidden(out);
                let se = if hidden > 0 {
                    Some(SqueezeExcite {
                        reduce: Conv2d::new(out, hidden, 1, 1, true, vb.pp("se.reduce"))?,
                        expand: Conv2d::new(hidden, out, 1, 1, true, vb.pp("se.expand"))?,
                    })
                } else {
                    None
                };
                let shortcut = if stride != 1 || cin != out {
                    Some((stride != 1, ConvBn::new(cin, out, 1, 1, vb.pp("shortcut"))?))
                } else {
                    None
                };
                blocks.push(Bottleneck {
                    conv1: ConvBn::new(cin, width, 1, 1, vb.pp("conv1"))?,
                    conv2: ConvBn::new(width, width, 3, stride, vb.pp("conv2"))?,
                    conv3: ConvBn::new(width, out, 1, 1, vb.pp("conv3"))?,
                    se,
                    shortcut,
                });
                cin = out;
            }
        }
        let fc = candle_nn::linear(cin, config.num_classes, vb.pp("fc"))?;
        Ok(SeResNetD {
            config: config.clone(),
            stem,
            blocks,
            fc,
            kernels: Kernels::default(),
            compute: None,
        })
    }

    /// Chooses the convolution/BatchNorm implementation (the weights are unchanged).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// The convolution/BatchNorm implementation in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Chooses the compute precision (the variables stay in their own dtype).
    pub fn set_precision(&mut self, precision: Precision) {
        self.compute = match precision {
            Precision::F32 => None,
            p => Some(p.dtype()),
        };
    }

    /// Computes in `dtype` with the variables as master weights (`None`: in the variables' own
    /// dtype). [`Precision`] is the choice users make; this also takes f16, which candle's CPU
    /// matmul supports and bf16 not, so the mixed-precision path has CPU tests.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute = dtype;
    }

    /// The compute precision in use (`F32` also when computing in the variables' own dtype).
    pub fn precision(&self) -> Precision {
        match self.compute {
            Some(DType::BF16) => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.fc.weight().device()
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`, in the variables' dtype whatever
    /// the compute precision.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let masters = self.fc.weight().dtype();
        let mut x = x.to_dtype(self.compute.unwrap_or(masters))?;
        for layer in &self.stem {
            x = layer.forward(&x, mode, true, self.kernels)?;
        }
        for block in &self.blocks {
            x = block.forward(&x, mode, self.kernels)?;
        }
        let mut x = x.to_dtype(masters)?.mean((2, 3))?;
        if let Mode::Train { dropout_seed } = mode {
            x = dropout(&x, self.config.dropout, dropout_seed)?;
        }
        self.fc.forward(&x)
    }
}

/// Inverted dropout with a mask drawn on the host from `seed`, so runs are reproducible.
fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = seed::rng(seed, &[]);
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.f64() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// True for BatchNorm running statistics: variables that are state, not parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// A fresh model with deterministic initial weights: Kaiming-normal (fan-out) convolutions, unit
/// BatchNorm scales (zero for each block's last one when asked), zero biases, PyTorch's uniform
/// linear init. Variable `name` draws from a generator seeded by `(seed, hash(name))`.
pub fn build(config: &ModelConfig, seed: u64, device: &Device) -> Result<(SeResNetD, VarMap)> {
    build_as(config, seed, device, DType::F32)
}

/// [`build`] with variables of another dtype (the same initial values, rounded from f32): f64
/// models are the reference that tells rounding from error.
pub fn build_as(
    config: &ModelConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<(SeResNetD, VarMap)> {
    let varmap = VarMap::new();
    let model = SeResNetD::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
    for (name, var) in sorted_vars(&varmap) {
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let mut rng = seed::rng(seed, &[xxhash_rust::xxh3::xxh3_64(name.as_bytes())]);
        let values: Vec<f32> = if name.ends_with("running_var") {
            vec![1.0; n]
        } else if name.ends_with("running_mean")
            || name.ends_with(".bias") && !name.starts_with("fc.")
        {
            vec![0.0; n]
        } else if name.ends_with("bn.weight") {
            let zero = config.zero_init_last_bn && name.ends_with("conv3.bn.weight");
            vec![if zero { 0.0 } else { 1.0 }; n]
        } else if name.starts_with("fc.") {
            let fan_in = if name.ends_with("weight") {
                shape.dims()[1]
            } else {
                model_fc_in(config)
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        } else {
            // Convolution weight [out, in, k, k]: Kaiming normal, fan-out, ReLU gain.
            let d = shape.dims();
            let std = (2.0 / (d[0] * d[2] * d[3]) as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
    }
    Ok((model, varmap))
}

fn model_fc_in(config: &ModelConfig) -> usize {
    config.widths.last().copied().unwrap_or(0) * config.expansion
}

/// Variables of a map in name order (the map itself is unordered).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap();
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
