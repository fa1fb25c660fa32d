//! The optimizer on CUDA: Nesterov SGD with weight decay and the EMA twin's update in one launch
//! per parameter, and the EMA of tensors without a gradient (BatchNorm statistics).
//!
//! The weights, momentum buffers and EMA are written in place through device pointers taken
//! under candle's read locks: sound because every kernel runs on the device's one stream, in
//! order, and nothing else touches those buffers while a step runs (the in-place update
//! candle's own `Var::set` performs).

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{Result, Tensor};

use super::launch::{check_len, cuda_of, elementwise, f32_slice, function, Held};

/// One parameter's update settings: the constants, and where its per-step values live in the
/// step's scalar buffer.
#[derive(Clone, Copy, Debug)]
pub struct SgdSettings {
    /// L2 weight decay of this parameter.
    pub weight_decay: f64,
    /// Momentum (0: none; the buffer is then untouched).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The buffer holds nothing yet: it becomes the gradient.
    pub first: bool,
    /// The slot of the scalar buffer that holds this parameter's rate.
    pub rate_slot: usize,
    /// The slot that holds the EMA's decay `d` (and the next, `1 − d`).
    pub decay_slot: usize,
}

/// Nesterov SGD on `p` in place (its momentum buffer `buf` too; `None` only with momentum 0)
/// at the rate in `scalars[set.rate_slot]`, then, with an EMA twin `ema`,
/// `e ← d·e + (1 − d)·p` with `d` and `1 − d` from `scalars`: one launch. All f32, one length.
pub fn sgd_ema_step(
    p: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    ema: Option<&Tensor>,
    scalars: &Tensor,
    set: SgdSettings,
) -> Result<()> {
    let grad = cuda_of(grad)?;
    let len = p.elem_count();
    check_len(len, "sgd")?;
    check_slots(scalars, &[set.rate_slot, set.decay_slot + 1])?;
    let lengths = [Some(&grad), buf, ema];
    if lengths.iter().flatten().any(|t| t.elem_count() != len) {
        candle_core::bail!("sgd: the weight, its gradient, buffer and EMA twin differ in length");
    }
    if set.momentum != 0.0 && buf.is_none() {
        candle_core::bail!("sgd: momentum without a buffer");
    }
    let (wd, mom) = (set.weight_decay as f32, set.momentum as f32);
    let (nesterov, first, len_i) = (set.nesterov as i32, set.first as i32, len as i64);
    let (rate_slot, decay_slot) = (set.rate_slot as i32, set.decay_slot as i32);
    let (ph, gh, sh) = (Held::of(p), Held::of(&grad), Held::of(scalars));
    let (bh, eh) = (buf.map(Held::of), ema.map(Held::of));
    let ((ps, pl), (gs, gl), (ss, sl)) = (ph.cuda()?, gh.cuda()?, sh.cuda()?);
    let bv = bh
        .as_ref()
        .map(|h| h.cuda().and_then(|(s, l)| f32_slice(s, l)));
    let ev = eh
        .as_ref()
        .map(|h| h.cuda().and_then(|(s, l)| f32_slice(s, l)));
    let (bv, ev) = (bv.transpose()?, ev.transpose()?);
    let dev = &ps.device;
    let (pv, gv, sv) = (f32_slice(ps, pl)?, f32_slice(gs, gl)?, f32_slice(ss, sl)?);
    // A null pointer where there is no buffer or twin: the kernel skips it.
    let null: u64 = 0;
    let f = function(dev, "sgd_ema_step", "")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&pv).arg(&gv);
    match &bv {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    match &ev {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(&len_i).arg(&sv).arg(&rate_slot).arg(&decay_slot);
    b.arg(&wd).arg(&mom).arg(&nesterov).arg(&first);
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(())
}

/// `e ← d·e + (1 − d)·v` in place (f32, one length), `d` and `1 − d` read from
/// `scalars[decay_slot]` and the next slot: the EMA of tensors with no gradient.
pub fn ema_update(e: &Tensor, v: &Tensor, scalars: &Tensor, decay_slot: usize) -> Result<()> {
    let len = e.elem_count();
    check_len(len, "ema")?;
    if v.elem_count() != len {
        candle_core::bail!("ema: lengths differ");
    }
    check_slots(scalars, &[decay_slot + 1])?;
    let (len_i, slot) = (len as i64, decay_slot as i32);
    let (eh, vh, sh) = (Held::of(e), Held::of(v), Held::of(scalars));
    let ((es, el), (vs, vl), (ss, sl)) = (eh.cuda()?, vh.cuda()?, sh.cuda()?);
    let dev = &es.device;
    let (ev, vv, sv) = (f32_slice(es, el)?, f32_slice(vs, vl)?, f32_slice(ss, sl)?);
    let f = function(dev, "ema_update", "")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&ev).arg(&vv).arg(&len_i).arg(&sv).arg(&slot);
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(())
}

/// The scalar buffer is f32, contiguous, and holds every slot a kernel will read.
fn check_slots(scalars: &Tensor, slots: &[usize]) -> Result<()> {
    let len = scalars.elem_count();
    if scalars.dtype() != candle_core::DType::F32 || !scalars.is_contiguous() {
        candle_core::bail!("the step's scalar buffer must be contiguous f32");
    }
    if let Some(slot) = slots.iter().find(|&&s| s >= len) {
        candle_core::bail!("scalar slot {slot} past the buffer's {len} values");
    }
    Ok(())
}
