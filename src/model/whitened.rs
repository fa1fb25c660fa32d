//! The whitened conv net of airbench94 (KellerJordan/cifar10-airbench): a frozen 2×2
//! patch-whitening convolution with a learnable bias, GELU, then groups of
//! conv → max-pool 2 → BN → GELU → conv → BN → GELU, a global max-pool and a bias-free linear
//! layer whose logits are scaled down. No residuals: each conv starts as an identity on its first
//! channels ("dirac" initialisation), which lets a deep plain net train at a high rate.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::compute::Compute;
use super::config::{validate_io, Layer, MAX_WIDTH};
use super::mode::Mode;
use crate::ops::{self, BatchNorm, Conv2d, Options};

/// What defines a whitened conv net.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhitenedConfig {
    /// Output channels of each conv group (`[64, 256, 256]` = airbench94); each group halves
    /// the map.
    pub widths: Vec<usize>,
    /// Side of the whitening patches; the layer has `2 · in_channels · k²` filters (each
    /// eigenvector and its negative).
    pub whiten_kernel: usize,
    /// Floor added to the patch covariance's eigenvalues before they scale the filters.
    pub whiten_eps: f64,
    /// Epochs the whitening layer's bias trains before it is frozen too (airbench94: 3).
    pub whiten_bias_epochs: f64,
    /// BatchNorm running-statistics momentum (PyTorch's meaning; airbench94 uses 0.4).
    pub batch_norm_momentum: f64,
    /// Factor on the logits (airbench94: 1/9; airbench94_muon: 1/width).
    pub logit_scale: f64,
    /// The linear layer's weights rescaled to this standard deviation after their uniform
    /// draw (airbench94_muon: 1; absent: PyTorch's ±1/√fan_in left as drawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_std: Option<f64>,
    /// Output classes.
    pub num_classes: usize,
    /// Input channels.
    pub in_channels: usize,
}

/// The whitening layer's bias: the one variable of that layer that trains (for
/// `whiten_bias_epochs`).
pub const WHITEN_BIAS: &str = "whiten.bias";

impl WhitenedConfig {
    /// airbench94's network: groups of 64, 256 and 256 channels, 2×2 whitening (1.97 M trained
    /// parameters, 118 M multiply-accumulates per forward pass of a 32×32 image).
    pub fn airbench94() -> Self {
        WhitenedConfig {
            widths: vec![64, 256, 256],
            whiten_kernel: 2,
            whiten_eps: 5e-4,
            whiten_bias_epochs: 3.0,
            batch_norm_momentum: 0.4,
            logit_scale: 1.0 / 9.0,
            head_std: None,
            num_classes: 10,
            in_channels: 3,
        }
    }

    /// Filters of the whitening layer.
    pub fn whiten_width(&self) -> usize {
        2 * self.in_channels * self.whiten_kernel * self.whiten_kernel
    }

    /// Checks the description is buildable, naming the offending key (`model.<field>`).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let bad = |key, message: String| Err((key, message));
        if !(1..=4).contains(&self.widths.len())
            || self.widths.iter().any(|&w| !(1..=MAX_WIDTH).contains(&w))
        {
            return bad(
                "model.widths",
                format!(
                    "{:?}: 1 to 4 groups, each 1 to {MAX_WIDTH} channels",
                    self.widths
                ),
            );
        }
        if !(1..=4).contains(&self.whiten_kernel) {
            return bad(
                "model.whiten_kernel",
                format!("{} must be 1 to 4", self.whiten_kernel),
            );
        }
        if !(self.whiten_eps > 0.0 && self.whiten_eps.is_finite()) {
            return bad(
                "model.whiten_eps",
                format!("{} must be positive", self.whiten_eps),
            );
        }
        if self.whiten_bias_epochs.is_nan() || self.whiten_bias_epochs < 0.0 {
            return bad(
                "model.whiten_bias_epochs",
                format!("{} must be 0 or more", self.whiten_bias_epochs),
            );
        }
        if !(0.0..=1.0).contains(&self.batch_norm_momentum) {
            return bad(
                "model.batch_norm_momentum",
                format!("{} must be in [0, 1]", self.batch_norm_momentum),
            );
        }
        if !(self.logit_scale > 0.0 && self.logit_scale.is_finite()) {
            return bad(
                "model.logit_scale",
                format!("{} must be positive", self.logit_scale),
            );
        }
        if let Some(std) = self.head_std {
            if !(std > 0.0 && std.is_finite()) {
                return bad("model.head_std", format!("{std} must be positive"));
            }
        }
        validate_io(self.num_classes, self.in_channels)
    }

    /// The layer table for an input of `height × width`.
    pub fn layers(&self, height: usize, width: usize) -> Vec<Layer> {
        let k = self.whiten_kernel;
        let mut hw = (height + 1 - k, width + 1 - k);
        let mut cin = self.whiten_width();
        let mut t = vec![Layer {
            name: "whiten".into(),
            kind: "whiten",
            cin: self.in_channels,
            cout: cin,
            kernel: k,
            stride: 1,
            pad: 0,
            in_hw: (height, width),
            out_hw: hw,
            // The filters are fixed: only the bias trains.
            params: cin,
            macs: self.in_channels * k * k * cin * hw.0 * hw.1,
        }];
        for (g, &w) in self.widths.iter().enumerate() {
            let conv = |name: String, cin: usize, in_hw: (usize, usize)| Layer {
                name,
                kind: "conv3x3",
                cin,
                cout: w,
                kernel: 3,
                stride: 1,
                pad: 1,
                in_hw,
                out_hw: in_hw,
                // The conv, and the BatchNorm's shift (its scale stays 1).
                params: 9 * cin * w + w,
                macs: 9 * cin * w * in_hw.0 * in_hw.1,
            };
            t.push(conv(format!("group{g}.conv1"), cin, hw));
            hw = (hw.0 / 2, hw.1 / 2);
            t.push(conv(format!("group{g}.conv2"), w, hw));
            cin = w;
        }
        t.push(Layer::classifier(cin, self.num_classes, false));
        t
    }

    /// Whether variable `name` stays at its initial value: the whitening filters and the
    /// BatchNorm scales (airbench94 trains only the shifts).
    pub fn is_frozen(name: &str) -> bool {
        name == "whiten.weight" || (name.contains(".norm") && name.ends_with(".weight"))
    }
}

/// conv → (max-pool 2) → BN → GELU.
struct Stage {
    conv: Conv2d,
    pool: bool,
    norm: BatchNorm,
}

impl Stage {
    fn forward(&self, x: &Tensor, mode: Mode, ops: Options) -> Result<Tensor> {
        let mut y = self.conv.forward(x, ops)?;
        if self.pool {
            y = ops::max_pool2(&y, ops)?;
        }
        self.norm.forward_gelu(&y, mode.statistics(), ops)
    }
}

/// The network; its weights live in the [`candle_nn::VarMap`] it was built from.
pub struct WhitenedNet {
    config: WhitenedConfig,
    whiten: Conv2d,
    stages: Vec<Stage>,
    fc: Linear,
    compute: Compute,
    /// Whether the whitening bias trains now; once it does not, nothing before the first
    /// group needs a gradient, and the graph is cut there.
    whiten_bias_trains: bool,
}

/// A 3×3 conv with PyTorch's default initialisation (uniform in ±1/√fan_in), then each of its
/// first `min(cin, cout)` filters the identity on its own channel.
fn dirac_conv(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    let bound = 1.0 / ((cin * 9) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let conv = Conv2d::with_init(cin, cout, 3, 1, false, init, vb)?;
    let w = conv.weight();
    let mut values: Vec<f32> = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let per_filter = cin * 9;
    for f in 0..cin.min(cout) {
        let filter = &mut values[f * per_filter..][..per_filter];
        filter.fill(0.0);
        // The centre tap of input channel f.
        filter[f * 9 + 4] = 1.0;
    }
    let dirac = Tensor::from_vec(values, w.shape(), w.device())?.to_dtype(w.dtype())?;
    Var::from_tensor(w)?.set(&dirac)?;
    Ok(conv)
}

impl WhitenedNet {
    /// Builds the layers, creating their variables in `vb`: the whitening filters start at zero
    /// ([`WhitenedNet::set_whitening`] fills them from training images), its bias and the
    /// BatchNorm shifts at zero, the BatchNorm scales at one, the convs as [`dirac_conv`], the
    /// linear layer as PyTorch's (uniform in ±1/√fan_in).
    pub fn new(config: &WhitenedConfig, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|(key, message)| candle_core::Error::Msg(format!("{key}: {message}")))?;
        let (k, ww) = (config.whiten_kernel, config.whiten_width());
        let whiten = Conv2d::with_init(
            config.in_channels,
            ww,
            k,
            1,
            true,
            Init::Const(0.0),
            vb.pp("whiten"),
        )?
        .with_padding(0);
        let mut stages = Vec::new();
        let mut cin = ww;
        for (g, &w) in config.widths.iter().enumerate() {
            let vb = vb.pp(format!("group{g}"));
            for (i, c) in [(1, cin), (2, w)] {
                let norm = BatchNorm::new(w, 1e-12, 1.0, vb.pp(format!("norm{i}")))?
                    .with_momentum(config.batch_norm_momentum)?;
                stages.push(Stage {
                    conv: dirac_conv(c, w, vb.pp(format!("conv{i}")))?,
                    pool: i == 1,
                    norm,
                });
            }
            cin = w;
        }
        let bound = 1.0 / (cin as f64).sqrt();
        let head = vb.pp("fc").get_with_hints(
            (config.num_classes, cin),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        if let Some(std) = config.head_std {
            // As airbench94_muon's `w *= 1 / w.std()` (the sample standard deviation).
            let n = head.elem_count() as f64;
            let mean = head.mean_all()?;
            let var = (head.broadcast_sub(&mean)?.sqr()?.sum_all()? / (n - 1.0))?;
            let scale = (var.sqrt()?.recip()? * std)?;
            Var::from_tensor(&head)?.set(&head.broadcast_mul(&scale)?)?;
        }
        let fc = Linear::new(head, None);
        Ok(WhitenedNet {
            config: config.clone(),
            whiten,
            stages,
            fc,
            compute: Compute::default(),
            whiten_bias_trains: true,
        })
    }

    /// The whitening filters for `images` (`n` normalised CHW images of `shape`), shaped as this
    /// net's first layer, on its device ([`whitening_filters`]).
    pub fn whitening_for(&self, images: &[f32], shape: (usize, usize, usize)) -> Result<Tensor> {
        let (c, k) = (shape.0, self.config.whiten_kernel);
        let filters = whitening_filters(images, shape, k, self.config.whiten_eps);
        Tensor::from_vec(filters, (2 * c * k * k, c, k, k), self.device())
    }

    /// Sets the whitening filters from `filters` (`[2·c·k², c, k, k]`, see [`whitening_filters`]).
    pub fn set_whitening(&self, filters: &Tensor) -> Result<()> {
        let w = self.whiten.weight();
        Var::from_tensor(w)?.set(&filters.to_dtype(w.dtype())?.to_device(w.device())?)
    }

    /// Says whether the whitening bias trains from now on. When it does not, training passes
    /// cut the graph after the whitening layer: the first group's input gradient (its
    /// costliest product, at full resolution) is never computed for nothing.
    pub fn set_whiten_bias_trains(&mut self, trains: bool) {
        self.whiten_bias_trains = trains;
    }

    /// The architecture.
    pub fn config(&self) -> &WhitenedConfig {
        &self.config
    }

    /// How it computes.
    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// How it computes, to change.
    pub fn compute_mut(&mut self) -> &mut Compute {
        &mut self.compute
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.fc.weight().device()
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`, in the variables' dtype.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let ops = self.compute.ops;
        let masters = self.fc.weight().dtype();
        let x = self.compute.input(x, masters)?;
        let mut x = self.whiten.forward_fixed_weight_gelu(&x, ops)?;
        if !self.whiten_bias_trains {
            x = x.detach();
        }
        for stage in &self.stages {
            x = stage.forward(&x, mode, ops)?;
        }
        let x = x.to_dtype(masters)?.flatten_from(2)?.max(2)?;
        candle_nn::Module::forward(&self.fc, &x)? * self.config.logit_scale
    }
}

/// Whitening filters for `k×k` patches of `images` (`n` CHW f32 images of `c × h × w`, as the
/// network sees them): the eigenvectors `v` of the patches' second-moment matrix, scaled by
/// `1/√(λ + eps)`, largest eigenvalue first, then their negatives, as `[2·c·k², c, k, k]`. A
/// patch through the first half has unit second moment in every direction.
pub fn whitening_filters(
    images: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    eps: f64,
) -> Vec<f32> {
    let d = c * k * k;
    let n = images.len() / (c * h * w);
    let mut moment = nalgebra::DMatrix::<f64>::zeros(d, d);
    let mut patch = vec![0.0f64; d];
    let mut count = 0usize;
    for img in images.chunks_exact(c * h * w).take(n) {
        for y in 0..=h - k {
            for x in 0..=w - k {
                // Patch order = the conv weight's: channel, then row, then column.
                for ch in 0..c {
                    for dy in 0..k {
                        for dx in 0..k {
                            patch[(ch * k + dy) * k + dx] =
                                img[(ch * h + y + dy) * w + x + dx] as f64;
                        }
                    }
                }
                for i in 0..d {
                    for j in i..d {
                        moment[(i, j)] += patch[i] * patch[j];
                    }
                }
                count += 1;
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            moment[(i, j)] = moment[(j, i)];
        }
    }
    let moment = moment / count.max(1) as f64;
    let eigen = nalgebra::SymmetricEigen::new(moment);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let mut filters = Vec::with_capacity(2 * d * d);
    for sign in [1.0, -1.0] {
        for &e in &order {
            let scale = sign / (eigen.eigenvalues[e].max(0.0) + eps).sqrt();
            filters.extend((0..d).map(|i| (eigen.eigenvectors[(i, e)] * scale) as f32));
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_whiten_the_patches_they_were_computed_from() {
        // Correlated channels and neighbours: a smooth random field, the channels mixed.
        let (c, h, w, n) = (3, 9, 9, 40);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut images = vec![0.0f32; n * c * h * w];
        for img in images.chunks_exact_mut(c * h * w) {
            let base: Vec<f32> = (0..h * w).map(|_| rng.f32() - 0.5).collect();
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let right = base[y * w + (x + 1) % w];
                        img[(ch * h + y) * w + x] =
                            base[y * w + x] + 0.5 * right + 0.3 * ch as f32 * (rng.f32() - 0.5);
                    }
                }
            }
        }
        let k = 2;
        let d = c * k * k;
        let filters = whitening_filters(&images, (c, h, w), k, 1e-9);
        assert_eq!(filters.len(), 2 * d * d);
        // The second moment of the first half's responses over every patch: the identity.
        let mut moment = vec![0.0f64; d * d];
        let mut count = 0.0;
        for img in images.chunks_exact(c * h * w) {
            for y in 0..=h - k {
                for x in 0..=w - k {
                    let r: Vec<f64> = (0..d)
                        .map(|f| {
                            let mut s = 0.0f64;
                            for ch in 0..c {
                                for dy in 0..k {
                                    for dx in 0..k {
                                        let wt = filters[f * d + (ch * k + dy) * k + dx] as f64;
                                        s += wt * img[(ch * h + y + dy) * w + x + dx] as f64;
                                    }
                                }
                            }
                            s
                        })
                        .collect();
                    for i in 0..d {
                        for j in 0..d {
                            moment[i * d + j] += r[i] * r[j];
                        }
                    }
                    count += 1.0;
                }
            }
        }
        for i in 0..d {
            for j in 0..d {
                let want = if i == j { 1.0 } else { 0.0 };
                let got = moment[i * d + j] / count;
                assert!((got - want).abs() < 1e-3, "moment[{i}][{j}] = {got}");
            }
        }
        // The second half is the first's negative.
        for (a, b) in filters[..d * d].iter().zip(&filters[d * d..]) {
            assert_eq!(*a, -*b);
        }
    }
}
