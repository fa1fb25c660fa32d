//! The operands of a multi-tensor optimizer update (one parameter's tensors and settings, what
//! they all share) and how many tensors go into one launch: what the CPU pass
//! ([`super::optim`]) and CUDA's (`ops::cuda::optim`) both take.

use candle_core::Tensor;

/// One parameter of an [`super::optim::sgd_foreach`]: its tensors (f32, contiguous, one
/// length) and settings.
#[derive(Clone, Copy, Debug)]
pub struct SgdTensor<'a> {
    /// The weight, updated in place.
    pub param: &'a Tensor,
    /// Its gradient.
    pub grad: &'a Tensor,
    /// Its momentum buffer, updated in place (`None` only with momentum 0).
    pub buf: Option<&'a Tensor>,
    /// Its EMA twin, updated in place after the weight (`None`: no twin).
    pub ema: Option<&'a Tensor>,
    /// The buffer holds nothing yet: it becomes the gradient.
    pub first: bool,
    /// Its L2 weight decay.
    pub weight_decay: f64,
    /// The slot of the step's scalar buffer that holds its rate.
    pub rate_slot: usize,
}

/// What every parameter of an [`super::optim::sgd_foreach`] shares.
#[derive(Clone, Copy, Debug)]
pub struct SgdRule {
    /// Momentum (0: none).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The slot of the scalar buffer that holds the EMA's decay `d` (the next holds `1 − d`).
    pub decay_slot: usize,
}

/// The tensors of lengths `lens` cut into launches of at most `per`, longest first, so each
/// launch's grid suits its tensors (the update is elementwise: the order changes nothing).
pub fn launch_chunks(lens: &[usize], per: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    order.chunks(per.max(1)).map(<[usize]>::to_vec).collect()
}

/// An SGD multi-tensor op's operands: what it writes (the weights, then the momentum buffers,
/// then the EMA twins, each in `tensors`' order), what it reads (the gradients, then the step's
/// scalar buffer), and its by-value arguments for the capture probe (the momentum and how many
/// buffers start this step).
pub fn sgd_operands<'a>(
    tensors: &[SgdTensor<'a>],
    momentum: f64,
    scalars: &'a Tensor,
) -> (Vec<&'a Tensor>, Vec<&'a Tensor>, [f64; 2]) {
    let mut written: Vec<&Tensor> = tensors.iter().map(|t| t.param).collect();
    written.extend(tensors.iter().filter_map(|t| t.buf));
    written.extend(tensors.iter().filter_map(|t| t.ema));
    let mut read: Vec<&Tensor> = tensors.iter().map(|t| t.grad).collect();
    read.push(scalars);
    let starting = tensors.iter().filter(|t| t.first).count() as f64;
    (written, read, [momentum, starting])
}
