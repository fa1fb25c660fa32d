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

/// One parameter's update settings.
#[derive(Clone, Copy, Debug)]
pub struct SgdSettings {
    /// Learning rate.
    pub lr: f64,
    /// L2 weight decay of this parameter.
    pub weight_decay: f64,
    /// Momentum (0: none; the buffer is then untouched).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The buffer holds nothing yet: it becomes the gradient.
    pub first: bool,
}

/// Nesterov SGD on `p` in place (its momentum buffer `buf` too; `None` only with momentum 0),
/// then, with `ema = Some((e, d))`, `e ← d·e + (1 − d)·p`: one launch. All f32, one length.
pub fn sgd_ema_step(
    p: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    ema: Option<(&Tensor, f64)>,
    set: SgdSettings,
) -> Result<()> {
    let grad = cuda_of(grad)?;
    let len = p.elem_count();
    check_len(len, "sgd")?;
    let lengths = [Some(&grad), buf, ema.map(|e| e.0)];
    if lengths.iter().flatten().any(|t| t.elem_count() != len) {
        candle_core::bail!("sgd: the weight, its gradient, buffer and EMA twin differ in length");
    }
    if set.momentum != 0.0 && buf.is_none() {
        candle_core::bail!("sgd: momentum without a buffer");
    }
    let decay = ema.map_or(0.0, |(_, d)| d as f32);
    let (lr, wd, mom) = (set.lr as f32, set.weight_decay as f32, set.momentum as f32);
    let (nesterov, first, len_i) = (set.nesterov as i32, set.first as i32, len as i64);
    let (ph, gh) = (Held::of(p), Held::of(&grad));
    let (bh, eh) = (buf.map(Held::of), ema.map(|e| Held::of(e.0)));
    let ((ps, pl), (gs, gl)) = (ph.cuda()?, gh.cuda()?);
    let bv = bh
        .as_ref()
        .map(|h| h.cuda().and_then(|(s, l)| f32_slice(s, l)));
    let ev = eh
        .as_ref()
        .map(|h| h.cuda().and_then(|(s, l)| f32_slice(s, l)));
    let (bv, ev) = (bv.transpose()?, ev.transpose()?);
    let dev = &ps.device;
    let (pv, gv) = (f32_slice(ps, pl)?, f32_slice(gs, gl)?);
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
    b.arg(&len_i).arg(&lr).arg(&wd).arg(&mom);
    b.arg(&nesterov).arg(&first).arg(&decay);
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(())
}

/// `e ← d·e + (1 − d)·v` in place (f32, one length): the EMA of tensors with no gradient.
pub fn ema_update(e: &Tensor, v: &Tensor, decay: f64) -> Result<()> {
    let len = e.elem_count();
    check_len(len, "ema")?;
    if v.elem_count() != len {
        candle_core::bail!("ema: lengths differ");
    }
    let (len_i, d) = (len as i64, decay as f32);
    let (eh, vh) = (Held::of(e), Held::of(v));
    let ((es, el), (vs, vl)) = (eh.cuda()?, vh.cuda()?);
    let dev = &es.device;
    let (ev, vv) = (f32_slice(es, el)?, f32_slice(vs, vl)?);
    let f = function(dev, "ema_update", "")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&ev).arg(&vv).arg(&len_i).arg(&d);
    unsafe { b.launch(elementwise(len)).w()? };
    Ok(())
}
