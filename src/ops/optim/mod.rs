//! The optimizer's update as one multi-tensor op over many parameters, as PyTorch's `_foreach_`
//! ops and multi-tensor apply do: Nesterov SGD with weight decay and the EMA twin's update
//! ([`sgd_foreach`]), and the EMA of tensors without a gradient ([`ema_foreach`]). This is its
//! candle glue: on the CPU one pass (`candle_core::foreach`) over the slices of
//! `cpu/optim.rs`, split over rayon's threads by chunk; on CUDA one launch per chunk of
//! tensors (`cuda/optim.rs`); each is one storage op however many tensors it writes.
//!
//! The CPU pass is the reference and repeats candle's ops step for step, so a run that switches
//! to it keeps every bit.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

use super::cpu::optim::{self as cpu, SgdSlices};
pub use super::multi_tensor::{launch_chunks, sgd_operands, SgdRule, SgdTensor};

/// For each parameter: `g ← ∇ + wd·p`, `b ← μ·b + g` (first: `b ← g`), `g ← g + μ·b`
/// (Nesterov) or `g ← b`, `p ← p − lr·g` with `lr = scalars[rate_slot]`, then with a twin
/// `e ← d·e + (1 − d)·p`; one storage op for all of them. `scalars` is the step's f32 buffer.
pub fn sgd_foreach(tensors: &[SgdTensor], rule: SgdRule, scalars: &Tensor) -> Result<()> {
    check_sgd(tensors, rule, scalars)?;
    if tensors.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    if scalars.device().is_cuda() {
        return super::cuda::optim::sgd_multi(tensors, rule, scalars);
    }
    sgd_cpu(tensors, rule, scalars)
}

/// `e ← d·e + (1 − d)·v` for each pair `(e, v)` (f32, contiguous, one length per pair), `d`
/// and `1 − d` from `scalars[decay_slot]` and the next slot; one storage op for all pairs.
pub fn ema_foreach(
    pairs: &[(&Tensor, &Tensor)],
    scalars: &Tensor,
    decay_slot: usize,
) -> Result<()> {
    check_slots(scalars, &[decay_slot + 1])?;
    for (e, v) in pairs {
        check_f32("ema", e)?;
        check_f32("ema", v)?;
        if e.elem_count() != v.elem_count() {
            candle_core::bail!("ema: {:?} averages {:?}", e.shape(), v.shape());
        }
    }
    if pairs.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    if scalars.device().is_cuda() {
        return super::cuda::optim::ema_multi(pairs, scalars, decay_slot);
    }
    ema_cpu(pairs, scalars, decay_slot)
}

/// Every tensor f32 and contiguous, each parameter's tensors of one length, momentum with a
/// buffer, every slot inside the buffer.
fn check_sgd(tensors: &[SgdTensor], rule: SgdRule, scalars: &Tensor) -> Result<()> {
    let mut slots = vec![rule.decay_slot + 1];
    for t in tensors {
        let len = t.param.elem_count();
        for x in [Some(t.param), Some(t.grad), t.buf, t.ema]
            .into_iter()
            .flatten()
        {
            check_f32("sgd", x)?;
            if x.elem_count() != len {
                candle_core::bail!(
                    "sgd: a weight of {:?} with {:?}",
                    t.param.shape(),
                    x.shape()
                );
            }
        }
        if (rule.momentum != 0.0) != t.buf.is_some() {
            candle_core::bail!("sgd: a momentum buffer exactly when there is momentum");
        }
        slots.push(t.rate_slot);
    }
    check_slots(scalars, &slots)
}

fn check_f32(op: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        candle_core::bail!("{op}: tensors must be contiguous f32, got {:?}", t.dtype());
    }
    Ok(())
}

/// The scalar buffer is f32, contiguous, and holds every slot a pass will read.
pub fn check_slots(scalars: &Tensor, slots: &[usize]) -> Result<()> {
    let len = scalars.elem_count();
    if scalars.dtype() != DType::F32 || !scalars.is_contiguous() {
        candle_core::bail!("the step's scalar buffer must be contiguous f32");
    }
    if let Some(slot) = slots.iter().find(|&&s| s >= len) {
        candle_core::bail!("scalar slot {slot} past the buffer's {len} values");
    }
    Ok(())
}

/// The CPU pass; the written tensors are the weights, then the buffers, then the twins.
fn sgd_cpu(tensors: &[SgdTensor], rule: SgdRule, scalars: &Tensor) -> Result<()> {
    let (written, read, by_value) = sgd_operands(tensors, rule.momentum, scalars);
    candle_core::foreach::inplace("sgd_foreach", &by_value, &written, &read, |w, r| {
        let s = f32_of(&r[tensors.len()])?;
        let (d, keep) = (s[rule.decay_slot], s[rule.decay_slot + 1]);
        let buffers = tensors.iter().filter(|t| t.buf.is_some()).count();
        let mut w = w.iter_mut().map(|(s, l)| f32_of_mut(s, l));
        let params: Vec<_> = w.by_ref().take(tensors.len()).collect::<Result<_>>()?;
        let mut bufs = w
            .by_ref()
            .take(buffers)
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let mut twins = w.collect::<Result<Vec<_>>>()?.into_iter();
        let mut slices = Vec::with_capacity(tensors.len());
        for ((t, p), (g, l)) in tensors.iter().zip(params).zip(r) {
            let b = t.buf.map(|_| bufs.next().expect("a buffer per `buf`"));
            let e = t.ema.map(|_| twins.next().expect("a twin per `ema`"));
            slices.push(SgdSlices {
                p,
                g: contiguous(g, l)?,
                b,
                e,
                first: t.first,
                wd: t.weight_decay,
                lr: s[t.rate_slot],
            });
        }
        cpu::sgd(slices, rule.momentum, rule.nesterov, d, keep);
        Ok(())
    })
}

/// The CPU EMA pass over `pairs`.
fn ema_cpu(pairs: &[(&Tensor, &Tensor)], scalars: &Tensor, decay_slot: usize) -> Result<()> {
    let written: Vec<&Tensor> = pairs.iter().map(|(e, _)| *e).collect();
    let mut read: Vec<&Tensor> = pairs.iter().map(|(_, v)| *v).collect();
    read.push(scalars);
    candle_core::foreach::inplace("ema_foreach", &[], &written, &read, |w, r| {
        let s = f32_of(&r[pairs.len()])?;
        let (d, keep) = (s[decay_slot], s[decay_slot + 1]);
        let mut slices = Vec::with_capacity(pairs.len());
        for ((es, el), (vs, vl)) in w.iter_mut().zip(r) {
            slices.push((f32_of_mut(es, el)?, contiguous(vs, vl)?));
        }
        cpu::ema(slices, d, keep);
        Ok(())
    })
}

/// The f32 data of a CPU storage the layout describes (contiguous).
fn contiguous<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(cpu) => super::host::contiguous_f32(cpu, l),
        _ => candle_core::bail!("a CPU pass over a tensor on another device"),
    }
}

fn f32_of<'a>((s, l): &(&'a Storage, &Layout)) -> Result<&'a [f32]> {
    contiguous(s, l)
}

/// The f32 data of a CPU storage to write, as the layout describes it (contiguous).
fn f32_of_mut<'a>(s: &'a mut Storage, l: &Layout) -> Result<&'a mut [f32]> {
    let (start, end) = match l.contiguous_offsets() {
        Some(range) => range,
        None => candle_core::bail!("an in-place pass needs contiguous tensors"),
    };
    match s {
        Storage::Cpu(CpuStorage::F32(data)) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("an in-place pass takes f32 CPU tensors"),
    }
}

#[cfg(test)]
mod tests;
