//! The optimizer's updates on the CPU over plain f32 slices, cut into tasks of at most
//! [`CHUNK`] elements run on rayon's threads: Nesterov SGD with weight decay and the EMA twin
//! ([`sgd`]), and the EMA alone ([`ema`]). Each element's update repeats candle's ops step for
//! step, in f32 and in their order (`p·wd` comes from candle's `affine`, which adds `+ 0`, and
//! keeps it), so a run that switches to it keeps every bit.

use rayon::prelude::*;

/// Elements per parallel task.
pub(crate) const CHUNK: usize = 1 << 15;

/// One parameter's slices (one length) and settings for [`sgd`].
pub struct SgdSlices<'a> {
    /// The weight, updated in place.
    pub p: &'a mut [f32],
    /// Its gradient.
    pub g: &'a [f32],
    /// Its momentum buffer, updated in place (`None`: no momentum).
    pub b: Option<&'a mut [f32]>,
    /// Its EMA twin, updated in place after the weight (`None`: no twin).
    pub e: Option<&'a mut [f32]>,
    /// The buffer holds nothing yet: it becomes the gradient.
    pub first: bool,
    /// L2 weight decay.
    pub wd: f64,
    /// Learning rate.
    pub lr: f32,
}

/// For each parameter: `g ← ∇ + wd·p`, `b ← μ·b + g` (first: `b ← g`), `g ← g + μ·b`
/// (`nesterov`) or `g ← b`, `p ← p − lr·g`, then with a twin `e ← d·e + keep·p`.
pub fn sgd(params: Vec<SgdSlices>, momentum: f64, nesterov: bool, d: f32, keep: f32) {
    let mut chunks = Vec::new();
    for whole in params {
        split(whole, &mut chunks);
    }
    let run = |c: SgdSlices| update(c, momentum, nesterov, d, keep);
    chunks.into_par_iter().for_each(run);
}

/// `e ← d·e + keep·v` for each pair `(e, v)` of one length.
pub fn ema(pairs: Vec<(&mut [f32], &[f32])>, d: f32, keep: f32) {
    let mut tasks = Vec::new();
    for (e, v) in pairs {
        tasks.extend(e.chunks_mut(CHUNK).zip(v.chunks(CHUNK)));
    }
    tasks.into_par_iter().for_each(|(e, v)| {
        for (e, v) in e.iter_mut().zip(v) {
            *e = *e * d + *v * keep;
        }
    });
}

/// `whole` cut into tasks of at most [`CHUNK`] elements.
fn split<'a>(mut whole: SgdSlices<'a>, out: &mut Vec<SgdSlices<'a>>) {
    while whole.p.len() > CHUNK {
        let (p, p_rest) = std::mem::take(&mut whole.p).split_at_mut(CHUNK);
        let (g, g_rest) = whole.g.split_at(CHUNK);
        let (b, b_rest) = split_opt(whole.b.take());
        let (e, e_rest) = split_opt(whole.e.take());
        out.push(SgdSlices {
            p,
            g,
            b,
            e,
            ..whole
        });
        whole = SgdSlices {
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
fn update(c: SgdSlices, momentum: f64, nesterov: bool, d: f32, keep: f32) {
    let (wd, mu) = (c.wd as f32, momentum as f32);
    let SgdSlices {
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
            grad = if nesterov {
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
