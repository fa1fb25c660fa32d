//! The optimizer's update as one multi-tensor op over many parameters, as PyTorch's `_foreach_`
//! ops and multi-tensor apply do: Nesterov SGD with weight decay and the EMA twin's update
//! ([`sgd_foreach`]), and the EMA of tensors without a gradient ([`ema_foreach`]). On the CPU
//! one pass (`candle_core::foreach`, split over rayon's threads by chunk), on CUDA one launch per
//! chunk of tensors ([`super::cuda::optim`]); each is one storage op however many tensors it
//! writes.
//!
//! The CPU pass is the reference and repeats candle's ops step for step, in f32 and in their
//! order (`p·wd` comes from candle's `affine`, which adds `+ 0`, and keeps it), so a run that
//! switches to it keeps every bit.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

pub use super::multi_tensor::{launch_chunks, sgd_operands, SgdRule, SgdTensor};

/// Elements per parallel task on the CPU.
const CHUNK: usize = 1 << 15;

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

/// One CPU task: a chunk of one parameter's tensors.
struct SgdChunk<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    b: Option<&'a mut [f32]>,
    e: Option<&'a mut [f32]>,
    first: bool,
    wd: f64,
    lr: f32,
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
        let mut chunks = Vec::new();
        for ((t, p), (g, l)) in tensors.iter().zip(params).zip(r) {
            let b = t.buf.map(|_| bufs.next().expect("a buffer per `buf`"));
            let e = t.ema.map(|_| twins.next().expect("a twin per `ema`"));
            let whole = SgdChunk {
                p,
                g: contiguous(g, l)?,
                b,
                e,
                first: t.first,
                wd: t.weight_decay,
                lr: s[t.rate_slot],
            };
            split_sgd(whole, &mut chunks);
        }
        let run = |c: SgdChunk| sgd_chunk(c, rule, d, keep);
        chunks.into_par_iter().for_each(run);
        Ok(())
    })
}

/// `whole` cut into tasks of at most [`CHUNK`] elements.
fn split_sgd<'a>(mut whole: SgdChunk<'a>, out: &mut Vec<SgdChunk<'a>>) {
    while whole.p.len() > CHUNK {
        let (p, p_rest) = std::mem::take(&mut whole.p).split_at_mut(CHUNK);
        let (g, g_rest) = whole.g.split_at(CHUNK);
        let (b, b_rest) = split_opt(whole.b.take());
        let (e, e_rest) = split_opt(whole.e.take());
        out.push(SgdChunk {
            p,
            g,
            b,
            e,
            ..whole
        });
        whole = SgdChunk {
            p: p_rest,
            g: g_rest,
            b: b_rest,
            e: e_rest,
            ..whole
        };
    }
    out.push(whole);
}

fn split_opt(s: Option<&mut [f32]>) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
    match s.map(|s| s.split_at_mut(CHUNK)) {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    }
}

/// One task's update, element by element in candle's order: `p·wd + 0` (its `affine`), the
/// sums and products each rounded to f32 as its separate ops round them.
fn sgd_chunk(c: SgdChunk, rule: SgdRule, d: f32, keep: f32) {
    let (wd, mu) = (c.wd as f32, rule.momentum as f32);
    let SgdChunk {
        p, g, mut b, mut e, ..
    } = c;
    for i in 0..p.len() {
        let mut grad = g[i];
        if c.wd != 0.0 {
            grad += p[i] * wd + 0.0;
        }
        if let Some(b) = b.as_deref_mut() {
            let next = if c.first {
                grad
            } else {
                (b[i] * mu + 0.0) + grad
            };
            b[i] = next;
            grad = if rule.nesterov {
                grad + (next * mu + 0.0)
            } else {
                next
            };
        }
        p[i] -= grad * c.lr;
        if let Some(e) = e.as_deref_mut() {
            e[i] = e[i] * d + p[i] * keep;
        }
    }
}

/// The CPU EMA pass over `pairs`.
fn ema_cpu(pairs: &[(&Tensor, &Tensor)], scalars: &Tensor, decay_slot: usize) -> Result<()> {
    let written: Vec<&Tensor> = pairs.iter().map(|(e, _)| *e).collect();
    let mut read: Vec<&Tensor> = pairs.iter().map(|(_, v)| *v).collect();
    read.push(scalars);
    candle_core::foreach::inplace("ema_foreach", &[], &written, &read, |w, r| {
        let s = f32_of(&r[pairs.len()])?;
        let (d, keep) = (s[decay_slot], s[decay_slot + 1]);
        let mut tasks = Vec::new();
        for ((es, el), (vs, vl)) in w.iter_mut().zip(r) {
            let e = f32_of_mut(es, el)?;
            let v = contiguous(vs, vl)?;
            tasks.extend(e.chunks_mut(CHUNK).zip(v.chunks(CHUNK)));
        }
        tasks.into_par_iter().for_each(|(e, v)| {
            for (e, v) in e.iter_mut().zip(v) {
                *e = *e * d + *v * keep;
            }
        });
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
