//! Training ops with explicit backward passes, behind one interface the model calls.
//!
//! [`Kernels::Fast`] runs convolution as im2col + GEMM per image, BatchNorm (+ ReLU) as one fused
//! pass and a bottleneck's tail (SE scale + residual add + ReLU) as another, each with a
//! hand-written backward pass, on f32 CPU tensors. On CUDA (f32 or bf16 activations) BatchNorm,
//! the tail and the SE squeeze are this crate's own kernels ([`cuda`]), and convolution goes
//! through cuDNN for its forward pass and both gradients with cached plans (`cudnn` feature), or
//! candle's forward with the backward of [`lowered`] (a forward convolution and one GEMM instead
//! of candle's direct kernels). With [`Kernels::Stock`], and for other dtypes, every call goes to
//! candle's own ops; the model only ever calls [`conv2d`], [`BatchNorm::forward`],
//! [`scale_add_relu`] and [`squeeze`].

mod batch_norm;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
mod gemm;
mod host;
pub mod lowered;
mod residual;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

pub use batch_norm::Stats;
pub use conv::Geometry;

/// Which implementation of convolution and BatchNorm to run.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// candle-nn's convolution and BatchNorm (autograd through candle's generic ops).
    Stock,
    /// This module's ops with explicit backward passes (CPU f32); elsewhere candle's ops with
    /// the convolution backward of [`lowered`].
    #[default]
    Fast,
}

impl Kernels {
    /// The name `--kernels` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Stock => "stock",
            Kernels::Fast => "fast",
        }
    }

    /// True when the fast path applies to `x`: f32 on the CPU, f32 or bf16 on CUDA.
    fn fast_for(self, x: &Tensor) -> bool {
        if self != Kernels::Fast {
            return false;
        }
        match x.device() {
            Device::Cpu => x.dtype() == DType::F32,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => matches!(x.dtype(), DType::F32 | DType::BF16),
            _ => false,
        }
    }
}

/// Whether f32 convolutions (cuDNN) and matrix products (cuBLAS, through candle) on CUDA may
/// round their inputs to TF32 on tensor cores: 10 mantissa bits in the products, sums in f32,
/// 1.82× the f32 `seed` step on an H200. On by default, as PyTorch's cuDNN convolutions are; the
/// CPU is unaffected.
pub fn set_tf32(on: bool) {
    TF32.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
}

/// Runs `f` with TF32 allowed or not, then restores the setting before.
pub fn with_tf32<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let before = tf32();
    set_tf32(on);
    let out = f();
    set_tf32(before);
    out
}

thread_local! {
    static BATCH_NORM_SYNC: std::cell::RefCell<Option<Arc<dyn crate::dist::Collective>>> =
        const { std::cell::RefCell::new(None) };
}

/// Synchronised BatchNorm on this thread: training-mode statistics (and their gradients) over
/// every rank of `world` ([`Kernels::Fast`] on the CPU); `None` goes back to each batch's own.
pub fn set_batch_norm_sync(world: Option<Arc<dyn crate::dist::Collective>>) {
    BATCH_NORM_SYNC.with(|s| *s.borrow_mut() = world);
}

/// Whether TF32 is allowed (see [`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(std::sync::atomic::Ordering::Relaxed)
}

static TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `conv2d(x, w)` for `x: [n, c, h, w]`, `w: [k, c, kh, kw]`, square stride and zero padding.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    kernels: Kernels,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (k, _, kh, kw) = w.dims4()?;
    if kernels == Kernels::Fast && h == 1 && wd == 1 && kh == 1 && kw == 1 && pad == 0 {
        // A pointwise conv on a 1×1 map (Squeeze-and-Excitation) is a plain matrix product.
        let y = x.reshape((n, c))?.matmul(&w.reshape((k, c))?.t()?)?;
        return y.reshape((n, k, 1, 1));
    }
    if kernels == Kernels::Fast && !x.device().is_cpu() {
        #[cfg(feature = "cudnn")]
        let y = cuda::conv::conv2d(x, w, stride, pad);
        #[cfg(not(feature = "cudnn"))]
        let y = lowered::conv2d(x, w, stride, pad);
        return y;
    }
    if !kernels.fast_for(x) {
        return x.conv2d(w, pad, stride, 1, 1);
    }
    x.contiguous()?.apply_op2_arc(
        &w.contiguous()?,
        Arc::new(Box::new(conv::Conv2dOp { stride, pad })),
    )
}

/// `relu(x · gate + shortcut)` for `x, shortcut: [n, c, h, w]` and an optional per-channel gate
/// `[n, c, 1, 1]` (Squeeze-and-Excitation): a bottleneck block's tail, one fused op on the fast
/// path.
pub fn scale_add_relu(
    x: &Tensor,
    gate: Option<&Tensor>,
    shortcut: &Tensor,
    kernels: Kernels,
) -> Result<Tensor> {
    if !kernels.fast_for(x) {
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
        Arc::new(Box::new(residual::ScaleAddRelu)),
    )
}

/// The per-channel mean of `x: [n, c, h, w]` as f32 `[n, c, 1, 1]` (the Squeeze-and-Excitation
/// squeeze), summed in f32 whatever `x`'s dtype: one kernel each way on CUDA with the fast ops,
/// a cast and candle's mean elsewhere.
pub fn squeeze(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels.fast_for(x) && x.device().is_cuda() {
        return x
            .contiguous()?
            .apply_op1_arc(Arc::new(Box::new(residual::Squeeze)));
    }
    let _ = kernels;
    x.to_dtype(DType::F32)?.mean_keepdim((2, 3))
}

/// A convolution layer's weight and geometry.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    /// A `k×k` convolution `cin → cout` with padding `k/2`, weight at `vb["weight"]` (and
    /// `vb["bias"]` when `bias`), initialised as candle-nn's.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            let bound = 1.0 / ((cin * k * k) as f64).sqrt();
            Some(vb.get_with_hints(
                cout,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
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

    /// Applies the convolution (and bias) in `x`'s dtype, casting the weights to it (their
    /// gradients flow back to the variables' own dtype).
    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        let y = conv2d(x, &w, self.stride, self.pad, kernels)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
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
    /// Creates `weight`, `bias`, `running_mean`, `running_var` in `vb` (candle-nn's names).
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
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

    /// Normalises `x: [n, c, …]` with batch statistics (updating the running ones) when `train`,
    /// else with the running statistics; then ReLU when `relu`. An `x` of another dtype than the
    /// parameters (bf16 compute) is normalised in theirs, so statistics are never summed in bf16,
    /// and the result cast back.
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool, kernels: Kernels) -> Result<Tensor> {
        // The CUDA kernels read bf16 activations themselves and keep their statistics in f32.
        let reads_any = kernels.fast_for(x) && !x.device().is_cpu();
        if x.dtype() != self.weight.dtype() && !reads_any {
            let y = self.forward(&x.to_dtype(self.weight.dtype())?, train, relu, kernels)?;
            return y.to_dtype(x.dtype());
        }
        if !kernels.fast_for(x) {
            let y = candle_nn::ModuleT::forward_t(&self.stock, x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let x = x.contiguous()?;
        if !train {
            let scale = (&self.weight / (self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            let op = batch_norm::AffineOp { relu };
            return x.apply_op3_arc(&scale, &shift, Arc::new(Box::new(op)));
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = batch_norm::TrainOp {
            eps: self.eps,
            relu,
            stats: stats.clone(),
            #[cfg(feature = "cuda")]
            momentum: self.momentum,
            #[cfg(feature = "cuda")]
            running: (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            ),
            #[cfg(feature = "cuda")]
            saved: Default::default(),
            sync: BATCH_NORM_SYNC.with(|s| s.borrow().clone()),
        };
        let y = x.apply_op3_arc(&self.weight, &self.bias, Arc::new(Box::new(op)))?;
        if x.device().is_cpu() {
            // The CUDA kernels update the running statistics themselves, in place.
            let stats = stats.lock().expect("batch-norm stats lock").clone();
            self.update_running(&stats)?;
        }
        Ok(y)
    }

    /// `running ← (1 − m)·running + m·batch`, with the unbiased batch variance, as PyTorch does.
    fn update_running(&self, stats: &Stats) -> Result<()> {
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
