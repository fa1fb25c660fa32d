//! SE-ResNet-D on candle: a three-conv stem, bottleneck stages with the stride on the 3×3 conv,
//! average-pool shortcuts, Squeeze-and-Excitation in every block, dropout, linear classifier.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder, VarMap};

use super::compute::Compute;
use super::config::ModelConfig;
use super::init::SeededInit;
use super::mode::{dropout_mask, Dropout, Mode};
use super::precision::Precision;
use crate::ops::{self, BatchNorm, Conv2d, Kernels, Options};

struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    /// conv → BN with unit scales, or zero ones (`zero_gamma`: a block's last BN, on request).
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        zero_gamma: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let gamma = if zero_gamma { 0.0 } else { 1.0 };
        Ok(ConvBn {
            conv: Conv2d::new(cin, cout, k, stride, false, vb.pp("conv"))?,
            bn: BatchNorm::new(cout, 1e-5, gamma, vb.pp("bn"))?,
        })
    }

    /// conv → BN, then ReLU when `relu` (fused into the BN pass by the fast kernels).
    fn forward(&self, x: &Tensor, mode: Mode, relu: bool, ops: Options) -> Result<Tensor> {
        let y = self.conv.forward(x, ops)?;
        self.bn.forward(&y, mode.statistics(), relu, ops)
    }
}

struct SqueezeExcite {
    reduce: Conv2d,
    expand: Conv2d,
}

impl SqueezeExcite {
    /// The per-channel gate `[n, c, 1, 1]` for `x`, in `x`'s dtype (the caller scales by it).
    /// Pooled and computed in f32: a tiny layer whose mean must not be summed in bf16.
    fn gate(&self, x: &Tensor, ops: Options) -> Result<Tensor> {
        let s = ops::squeeze(x, ops)?;
        let s = self.reduce.forward(&s, ops)?.relu()?;
        candle_nn::ops::sigmoid(&self.expand.forward(&s, ops)?)?.to_dtype(x.dtype())
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
    fn forward(&self, x: &Tensor, mode: Mode, ops: Options) -> Result<Tensor> {
        let y = self.conv1.forward(x, mode, true, ops)?;
        let y = self.conv2.forward(&y, mode, true, ops)?;
        let y = self.conv3.forward(&y, mode, false, ops)?;
        let gate = match &self.se {
            Some(se) => Some(se.gate(&y, ops)?),
            None => None,
        };
        let short = match &self.shortcut {
            None => x.clone(),
            Some((true, proj)) => proj.forward(&x.avg_pool2d(2)?, mode, false, ops)?,
            Some((false, proj)) => proj.forward(x, mode, false, ops)?,
        };
        ops::block_tail(&y, gate.as_ref(), &short, ops)
    }
}

/// The network; its weights live in the [`VarMap`] it was built from.
pub struct SeResNetD {
    config: ModelConfig,
    stem: Vec<ConvBn>,
    blocks: Vec<Bottleneck>,
    fc: Linear,
    compute: Compute,
}

impl SeResNetD {
    /// Builds the network's layers, creating their variables in `vb` with their initial values'
    /// hints: Kaiming-normal (fan-out) convolutions, unit BatchNorm scales (zero for each block's
    /// last one with `zero_init_last_bn`), zero biases, PyTorch's uniform linear layer.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|(key, message)| candle_core::Error::Msg(format!("{key}: {message}")))?;
        let half = config.stem_width / 2;
        let stem = vec![
            ConvBn::new(config.in_channels, half, 3, 1, false, vb.pp("stem.0"))?,
            ConvBn::new(half, half, 3, 1, false, vb.pp("stem.1"))?,
            ConvBn::new(half, config.stem_width, 3, 1, false, vb.pp("stem.2"))?,
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
                    let proj = ConvBn::new(cin, out, 1, 1, false, vb.pp("shortcut"))?;
                    Some((stride != 1, proj))
                } else {
                    None
                };
                blocks.push(Bottleneck {
                    conv1: ConvBn::new(cin, width, 1, 1, false, vb.pp("conv1"))?,
                    conv2: ConvBn::new(width, width, 3, stride, false, vb.pp("conv2"))?,
                    conv3: ConvBn::new(width, out, 1, 1, config.zero_init_last_bn, vb.pp("conv3"))?,
                    se,
                    shortcut,
                });
                cin = out;
            }
        }
        // PyTorch's nn.Linear: weight and bias uniform in ±1/√fan_in.
        let bound = 1.0 / (cin as f64).sqrt();
        let uniform = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let fc_vb = vb.pp("fc");
        let fc = Linear::new(
            fc_vb.get_with_hints((config.num_classes, cin), "weight", uniform)?,
            Some(fc_vb.get_with_hints(config.num_classes, "bias", uniform)?),
        );
        Ok(SeResNetD {
            config: config.clone(),
            stem,
            blocks,
            fc,
            compute: Compute::default(),
        })
    }

    /// Chooses the convolution/BatchNorm implementation (the weights are unchanged).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.compute.set_kernels(kernels);
    }

    /// The convolution/BatchNorm implementation in use.
    pub fn kernels(&self) -> Kernels {
        self.compute.ops.kernels
    }

    /// Allows (or forbids) TF32 tensor cores for f32 convolutions and products on CUDA.
    pub fn set_tf32(&mut self, tf32: bool) {
        self.compute.set_tf32(tf32);
    }

    /// The ops' settings: kernels and TF32.
    pub fn ops(&self) -> Options {
        self.compute.ops
    }

    /// Chooses the compute precision on `device` (the variables stay in their own dtype).
    pub fn set_precision(&mut self, precision: Precision, device: &Device) {
        self.compute.set_precision(precision, device);
    }

    /// Computes in `dtype` with the variables as master weights (`None`: in the variables' own
    /// dtype). [`Precision`] is the choice users make; this also takes f16, which candle's CPU
    /// matmul supports and bf16 not, so the mixed-precision path has CPU tests.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute.dtype = dtype;
    }

    /// The compute precision in use (`F32` also when computing in the variables' own dtype).
    pub fn precision(&self) -> Precision {
        self.compute.precision()
    }

    /// How it computes.
    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// How it computes, to change.
    pub fn compute_mut(&mut self) -> &mut Compute {
        &mut self.compute
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.fc.weight().device()
    }

    /// Dropout's rate and the width of the features it masks, when it drops anything.
    pub fn dropout(&self) -> Option<(f64, usize)> {
        let features = self.fc.weight().dim(1).ok()?;
        (self.config.dropout > 0.0).then_some((self.config.dropout, features))
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`, in the variables' dtype whatever
    /// the compute precision.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let ops = self.compute.ops;
        let masters = self.fc.weight().dtype();
        let mut x = self.compute.input(x, masters)?;
        for layer in &self.stem {
            x = layer.forward(&x, mode, true, ops)?;
        }
        for block in &self.blocks {
            x = block.forward(&x, mode, ops)?;
        }
        let mut x = x.to_dtype(masters)?.mean((2, 3))?;
        if let Mode::Train { dropout, .. } = mode {
            x = apply_dropout(&x, self.config.dropout, dropout)?;
        }
        self.fc.forward(&x)
    }
}

/// Inverted dropout at rate `p` with a mask drawn on the host ([`dropout_mask`]), so runs are
/// reproducible: drawn here from a seed, or staged by the trainer.
fn apply_dropout(x: &Tensor, p: f64, dropout: Dropout) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = match dropout {
        Dropout::Seed(seed) => {
            let mask = dropout_mask(p, seed, x.elem_count());
            Tensor::from_vec(mask, x.shape(), x.device())?
        }
        Dropout::Mask(mask) => mask.clone(),
    };
    x * mask.to_dtype(x.dtype())?
}

/// True for BatchNorm running statistics: variables that are state, not parameters.
pub fn is_running_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// A fresh model with deterministic initial weights: each variable draws the distribution its
/// layer asks for ([`SeResNetD::new`]) from a generator seeded by `(seed, hash(name))`.
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
    seeded(seed, device, dtype, |vb| SeResNetD::new(config, vb))
}

/// A network made by `make` from a builder whose variables (kept in the returned map) draw
/// their initial values from `seed`.
pub(super) fn seeded<M>(
    seed: u64,
    device: &Device,
    dtype: DType,
    make: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, VarMap)> {
    let varmap = VarMap::new();
    let init = SeededInit::new(seed, varmap.clone());
    let model = make(VarBuilder::from_backend(
        Box::new(init),
        dtype,
        device.clone(),
    ))?;
    Ok((model, varmap))
}

/// Variables of a map in name order (the map itself is unordered).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap();
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
