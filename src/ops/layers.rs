//! The interface the model calls: [`conv2d`], [`block_tail`] and [`squeeze`], and the
//! [`Conv2d`] and [`BatchNorm`] layers that hold their variables. Each call takes its
//! [`Route`] from [`Kernels::route`] and goes to this crate's CPU or CUDA op or to candle's.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::batch_norm::{Activation, AffineOp, Stats, TrainOp};
use super::kernels::{Kernels, Options, Route};
use super::{conv, gelu as gelu_op, max_pool, tail};
use crate::dist::Collective;

/// `conv2d(x, w)` for `x: [n, c, h, w]`, `w: [k, c, kh, kw]`, square stride and zero padding.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    ops: impl Into<Options>,
) -> Result<Tensor> {
    let ops = ops.into();
    let (n, c, h, wd) = x.dims4()?;
    let (k, _, kh, kw) = w.dims4()?;
    if ops.kernels == Kernels::Fast && h == 1 && wd == 1 && kh == 1 && kw == 1 && pad == 0 {
        // A pointwise conv on a 1×1 map (Squeeze-and-Excitation) is a plain matrix product.
        let y = x.reshape((n, c))?.matmul(&w.reshape((k, c))?.t()?)?;
        return y.reshape((n, k, 1, 1));
    }
    match ops.kernels.route(x) {
        Route::Stock => x.conv2d(w, pad, stride, 1, 1),
        Route::Cpu => conv::conv2d(x, w, stride, pad, ops),
        #[cfg(feature = "cudnn")]
        Route::Cuda => conv::conv2d(x, w, stride, pad, ops),
        #[cfg(all(feature = "cuda", not(feature = "cudnn")))]
        Route::Cuda => conv::lowered::conv2d(x, w, stride, pad),
    }
}

/// `relu(x · gate + shortcut)` for `x, shortcut: [n, c, h, w]` and an optional per-channel gate
/// `[n, c, 1, 1]` (Squeeze-and-Excitation): a bottleneck block's tail, one fused op on the fast
/// path.
pub fn block_tail(
    x: &Tensor,
    gate: Option<&Tensor>,
    shortcut: &Tensor,
    ops: impl Into<Options>,
) -> Result<Tensor> {
    if ops.into().kernels.route(x) == Route::Stock {
        let y = match gate {
            Some(g) => x.broadcast_mul(g)?,
            None => x.clone(),
        };
        return (y + shortcut)?.relu();
    }
    let (n, c, _, _) = x.dims4()?;
    let gate = match gate {
        Some(g) => g.contiguous()?,
        // An untracked constant: its gradient is computed (cheap) and dropped.
        None => Tensor::ones((n, c, 1, 1), x.dtype(), x.device())?,
    };
    x.contiguous()?.apply_op3_arc(
        &gate,
        &shortcut.contiguous()?,
        Arc::new(Box::new(tail::BlockTail)),
    )
}

/// The per-channel mean of `x: [n, c, h, w]` as f32 `[n, c, 1, 1]` (the Squeeze-and-Excitation
/// squeeze), summed in f32 whatever `x`'s dtype: one kernel each way on CUDA with the fast ops,
/// a cast and candle's mean elsewhere.
pub fn squeeze(x: &Tensor, ops: impl Into<Options>) -> Result<Tensor> {
    match ops.into().kernels.route(x) {
        #[cfg(feature = "cuda")]
        Route::Cuda => x
            .contiguous()?
            .apply_op1_arc(Arc::new(Box::new(super::squeeze::Squeeze))),
        _ => x.to_dtype(DType::F32)?.mean_keepdim((2, 3)),
    }
}

/// GELU, exact (erf) form, as PyTorch's `nn.GELU()`: one pass each way on the CPU fast path,
/// candle's `gelu_erf` elsewhere.
pub fn gelu(x: &Tensor, ops: impl Into<Options>) -> Result<Tensor> {
    match ops.into().kernels.route(x) {
        Route::Cpu => x
            .contiguous()?
            .apply_op1_arc(Arc::new(Box::new(gelu_op::Gelu))),
        _ => x.gelu_erf(),
    }
}

/// `gelu(x + bias)` with one bias per channel of `x: [n, c, …]`: on the CPU fast path one pass
/// each way (the bias's gradient summed in GELU's backward pass), elsewhere a broadcast add then
/// [`gelu`].
pub fn gelu_with_bias(x: &Tensor, bias: &Tensor, ops: impl Into<Options>) -> Result<Tensor> {
    let ops = ops.into();
    let c = bias.elem_count();
    if x.rank() < 2 || x.dim(1)? != c {
        candle_core::bail!(
            "gelu with bias: input {:?} against a bias of {c} channels",
            x.dims()
        );
    }
    let bias = bias.to_dtype(x.dtype())?;
    match ops.kernels.route(x) {
        Route::Cpu => x
            .contiguous()?
            .apply_op2_arc(&bias.contiguous()?, Arc::new(Box::new(gelu_op::GeluBias))),
        _ => {
            let shape: Vec<usize> = (0..x.rank()).map(|d| if d == 1 { c } else { 1 }).collect();
            gelu(&x.broadcast_add(&bias.reshape(shape)?)?, ops)
        }
    }
}

/// 2×2 max-pooling with stride 2 of `x: [n, c, h, w]` into `[n, c, h/2, w/2]` (odd sizes drop
/// their last row or column, as PyTorch's `MaxPool2d(2)`): one pass each way on the CPU fast
/// path; elsewhere a max over each window's two axes. Not candle's `max_pool2d`: its backward
/// gives the maximum a quarter of the gradient (it scales by the window's mean of the
/// arg-max mask instead of dividing by it) and picks wrong windows on odd sizes. On that route
/// exact ties in a window (rare in f32, less so in bf16) each get the gradient; PyTorch and the
/// CPU op give it to the first.
pub fn max_pool2(x: &Tensor, ops: impl Into<Options>) -> Result<Tensor> {
    match ops.into().kernels.route(x) {
        Route::Cpu => x
            .contiguous()?
            .apply_op1_arc(Arc::new(Box::new(max_pool::MaxPool2))),
        _ => {
            let (n, c, h, w) = x.dims4()?;
            let (oh, ow) = (h / 2, w / 2);
            x.narrow(2, 0, 2 * oh)?
                .narrow(3, 0, 2 * ow)?
                .contiguous()?
                .reshape((n, c, oh, 2, ow, 2))?
                .max(5)?
                .max(3)
        }
    }
}

/// A convolution layer's weight and geometry.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    /// A `k×k` convolution `cin → cout` with padding `k/2`: weight at `vb["weight"]`,
    /// Kaiming-normal (fan-out, ReLU gain); with `bias`, a zero `vb["bias"]`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let init = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        Conv2d::with_init(cin, cout, k, stride, bias, init, vb)
    }

    /// [`Conv2d::new`] with the weight drawn from `init`.
    pub fn with_init(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        bias: bool,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((cout, cin, k, k), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(cout, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            pad: k / 2,
        })
    }

    /// The same layer with another zero padding on every side (`new` pads `k/2`).
    pub fn with_padding(self, pad: usize) -> Self {
        Conv2d { pad, ..self }
    }

    /// The weight, `[cout, cin, k, k]` (a variable of the builder's map).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Applies the convolution (and bias) in `x`'s dtype, casting the weights to it (their
    /// gradients flow back to the variables' own dtype).
    pub fn forward(&self, x: &Tensor, ops: Options) -> Result<Tensor> {
        self.apply(x, &self.weight, ops)
    }

    /// `gelu(conv(x) + bias)` with the weight held fixed (a filter bank that never trains: no
    /// gradient is computed for it; the bias still trains), the bias and GELU in one op
    /// ([`gelu_with_bias`]).
    pub fn forward_fixed_weight_gelu(&self, x: &Tensor, ops: Options) -> Result<Tensor> {
        let y = self.convolve(x, &self.weight.detach(), ops)?;
        match &self.bias {
            Some(b) => gelu_with_bias(&y, b, ops),
            None => gelu(&y, ops),
        }
    }

    /// The convolution alone, in `x`'s dtype.
    fn convolve(&self, x: &Tensor, weight: &Tensor, ops: Options) -> Result<Tensor> {
        conv2d(x, &weight.to_dtype(x.dtype())?, self.stride, self.pad, ops)
    }

    fn apply(&self, x: &Tensor, weight: &Tensor, ops: Options) -> Result<Tensor> {
        let y = self.convolve(x, weight, ops)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Which statistics a BatchNorm normalises with.
#[derive(Clone, Copy)]
pub enum Statistics<'a> {
    /// The batch's own (training), updating the running ones; with `sync`, those of the whole
    /// global batch over every rank (synchronised BatchNorm, the CPU fast kernels).
    Batch {
        /// The ranks to synchronise over.
        sync: Option<&'a Arc<dyn Collective>>,
    },
    /// The running statistics (evaluation).
    Running,
}

/// BatchNorm over channels with running statistics (PyTorch's momentum 0.1 and unbiased running
/// variance), optionally followed by a ReLU that the fast path fuses into the same pass.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    stock: candle_nn::BatchNorm,
}

impl BatchNorm {
    /// Creates `weight` (all `gamma`), `bias` (0), `running_mean` (0) and `running_var` (1) in
    /// `vb`, under candle-nn's names.
    pub fn new(channels: usize, eps: f64, gamma: f64, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        let weight = vb.get_with_hints(channels, "weight", Init::Const(gamma))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let stock = candle_nn::BatchNorm::new(
            channels,
            running_mean.clone(),
            running_var.clone(),
            weight.clone(),
            bias.clone(),
            eps,
        )?;
        Ok(BatchNorm {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps,
            momentum: stock.momentum(),
            stock,
        })
    }

    /// The same layer with another running-statistics momentum (PyTorch's meaning: the weight of
    /// each new batch; `new` uses 0.1).
    pub fn with_momentum(self, momentum: f64) -> Result<Self> {
        let stock = candle_nn::BatchNorm::new_with_momentum(
            self.weight.dim(0)?,
            self.running_mean.as_tensor().clone(),
            self.running_var.as_tensor().clone(),
            self.weight.clone(),
            self.bias.clone(),
            self.eps,
            momentum,
        )?;
        Ok(BatchNorm {
            momentum,
            stock,
            ..self
        })
    }

    /// Normalises `x: [n, c, …]` with `statistics`, then ReLU when `relu`. An `x` of another
    /// dtype than the parameters (bf16 compute) is normalised in theirs, so statistics are never
    /// summed in bf16, and the result cast back.
    pub fn forward(
        &self,
        x: &Tensor,
        statistics: Statistics,
        relu: bool,
        ops: Options,
    ) -> Result<Tensor> {
        let act = if relu {
            Activation::Relu
        } else {
            Activation::Identity
        };
        self.forward_with(x, statistics, act, ops)
    }

    /// [`BatchNorm::forward`] then GELU ([`gelu`]): on the CPU fast path in the same pass each
    /// way (the normalised values are never stored), elsewhere as two ops.
    pub fn forward_gelu(&self, x: &Tensor, statistics: Statistics, ops: Options) -> Result<Tensor> {
        if ops.kernels.route(x) == Route::Cpu && x.dtype() == self.weight.dtype() {
            self.forward_with(x, statistics, Activation::Gelu, ops)
        } else {
            gelu(&self.forward(x, statistics, false, ops)?, ops)
        }
    }

    fn forward_with(
        &self,
        x: &Tensor,
        statistics: Statistics,
        act: Activation,
        ops: Options,
    ) -> Result<Tensor> {
        let route = ops.kernels.route(x);
        // The CUDA kernels read bf16 activations themselves and keep their statistics in f32.
        #[cfg(feature = "cuda")]
        let reads_any = route == Route::Cuda;
        #[cfg(not(feature = "cuda"))]
        let reads_any = false;
        if x.dtype() != self.weight.dtype() && !reads_any {
            let y = self.forward_with(&x.to_dtype(self.weight.dtype())?, statistics, act, ops)?;
            return y.to_dtype(x.dtype());
        }
        if route == Route::Stock {
            let train = matches!(statistics, Statistics::Batch { .. });
            let y = candle_nn::ModuleT::forward_t(&self.stock, x, train)?;
            return match act {
                Activation::Identity => Ok(y),
                Activation::Relu => y.relu(),
                Activation::Gelu => y.gelu_erf(),
            };
        }
        let x = x.contiguous()?;
        let Statistics::Batch { sync } = statistics else {
            let scale = (&self.weight / (self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            let op = AffineOp { activation: act };
            return x.apply_op3_arc(&scale, &shift, Arc::new(Box::new(op)));
        };
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = TrainOp {
            eps: self.eps,
            activation: act,
            stats: stats.clone(),
            affine: Default::default(),
            #[cfg(feature = "cuda")]
            momentum: self.momentum,
            #[cfg(feature = "cuda")]
            running: (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            ),
            #[cfg(feature = "cuda")]
            saved: Default::default(),
            sync: sync.cloned(),
        };
        let y = x.apply_op3_arc(&self.weight, &self.bias, Arc::new(Box::new(op)))?;
        if route == Route::Cpu {
            // The CUDA kernels update the running statistics themselves, in place.
            let stats = stats.lock().expect("batch-norm stats lock").clone();
            self.update_running(&stats)?;
        }
        Ok(y)
    }

    /// `running ← (1 − m)·running + m·batch`, with the unbiased batch variance, as PyTorch does.
    /// On the CPU route only, where the statistics are host memory: exempt from the capture
    /// probe (the CUDA kernels update them in place on the device).
    fn update_running(&self, stats: &Stats) -> Result<()> {
        candle_core::probe::exempt(|| self.blend_running(stats))
    }

    fn blend_running(&self, stats: &Stats) -> Result<()> {
        let m = self.momentum;
        let unbias = stats.count as f64 / (stats.count.max(2) - 1) as f64;
        let blend = |var: &Var, batch: &[f32], scale: f64| -> Result<()> {
            let old = var.as_tensor().to_vec1::<f32>()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(o, b)| ((1.0 - m) * *o as f64 + m * scale * *b as f64) as f32)
                .collect();
            var.set(&Tensor::from_vec(new, old.len(), var.device())?)
        };
        blend(&self.running_mean, &stats.mean, 1.0)?;
        blend(&self.running_var, &stats.var, unbias)
    }
}
