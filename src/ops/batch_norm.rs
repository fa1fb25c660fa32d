//! BatchNorm over `[n, c, …]` (f32, CPU) fused with an optional ReLU: one pass for the batch
//! statistics, one to normalise; the backward pass is the closed form, two passes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{contiguous_f32, split_nc, with_f32};

/// Batch statistics of one training forward pass, per channel.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Mean.
    pub mean: Vec<f32>,
    /// Biased variance (divided by the count), as used to normalise.
    pub var: Vec<f32>,
    /// Values per channel (`n × spatial`).
    pub count: usize,
}

/// `(Σ a, Σ a·(b − off))` in f32 with eight independent partial sums, so it vectorises (a single
/// running sum is a dependency chain the compiler may not reorder).
fn sum_and_dot(a: &[f32], b: &[f32], off: f32) -> (f32, f32) {
    let (mut s, mut d) = ([0.0f32; 8], [0.0f32; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            s[l] += x[l];
            d[l] += x[l] * (y[l] - off);
        }
    }
    let (mut s1, mut d1) = (s.iter().sum::<f32>(), d.iter().sum::<f32>());
    for (x, y) in ra.iter().zip(rb) {
        s1 += x;
        d1 += x * (y - off);
    }
    (s1, d1)
}

/// `(Σ(x − m), Σ(x − m)²)` in f32 with eight partial sums (see [`sum_and_dot`]).
fn centred_sums(x: &[f32], m: f32) -> (f32, f32) {
    let (mut s, mut q) = ([0.0f32; 8], [0.0f32; 8]);
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for v in chunks {
        for l in 0..8 {
            let d = v[l] - m;
            s[l] += d;
            q[l] += d * d;
        }
    }
    let (mut s1, mut q1) = (s.iter().sum::<f32>(), q.iter().sum::<f32>());
    for v in rest {
        s1 += v - m;
        q1 += (v - m) * (v - m);
    }
    (s1, q1)
}

/// Per-channel `(Σ a, Σ a·(b − b_off[c]))` over `[n, c, s]` data, parallel over channels.
///
/// Each plane is summed in f32 (it vectorises) and planes are added in f64. Centring `b` first
/// (rather than expanding `Σ a·b − b_off·Σ a`) keeps variances accurate when means are large.
fn channel_sums(
    a: &[f32],
    b: &[f32],
    b_off: Option<&[f32]>,
    (n, c, s): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let off = b_off.map_or(0.0, |o| o[ch]);
            let (mut sa, mut sab) = (0.0f64, 0.0f64);
            for i in 0..n {
                let r = (i * c + ch) * s..(i * c + ch + 1) * s;
                let (p, q) = sum_and_dot(&a[r.clone()], &b[r], off);
                sa += p as f64;
                sab += q as f64;
            }
            (sa, sab)
        })
        .collect()
}

/// Per-channel `(Σ(x − m[c]), Σ(x − m[c])²)`, parallel over channels.
fn channel_centred(x: &[f32], m: &[f32], (n, c, s): (usize, usize, usize)) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for i in 0..n {
                let plane = &x[(i * c + ch) * s..(i * c + ch + 1) * s];
                let (p, q) = centred_sums(plane, m[ch]);
                s1 += p as f64;
                s2 += q as f64;
            }
            (s1, s2)
        })
        .collect()
}

/// `y = x·scale[c] + shift[c]`, then ReLU when asked, parallel over images.
fn affine(x: &[f32], scale: &[f32], shift: &[f32], relu: bool, c: usize, s: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut((c * s).max(1))
        .zip(x.par_chunks((c * s).max(1)))
        .for_each(|(yi, xi)| {
            for ch in 0..c {
                let (a, b) = (scale[ch], shift[ch]);
                let out = &mut yi[ch * s..(ch + 1) * s];
                let inp = &xi[ch * s..(ch + 1) * s];
                if relu {
                    for (o, v) in out.iter_mut().zip(inp) {
                        *o = (v * a + b).max(0.0);
                    }
                } else {
                    for (o, v) in out.iter_mut().zip(inp) {
                        *o = v * a + b;
                    }
                }
            }
        });
    y
}

/// The upstream gradient with ReLU's mask applied (`y > 0`) when the op ends in a ReLU.
fn masked<'a>(dy: &'a [f32], y: &[f32], relu: bool) -> Cow<'a, [f32]> {
    if relu {
        Cow::Owned(
            dy.iter()
                .zip(y)
                .map(|(g, v)| if *v > 0.0 { *g } else { 0.0 })
                .collect(),
        )
    } else {
        // No ReLU: the gradient as it came, without a copy.
        Cow::Borrowed(dy)
    }
}

/// Training-mode op on `(x, gamma, beta)`: normalises with batch statistics, which it leaves in
/// `stats` for the caller's running averages and for the backward pass.
pub(super) struct TrainOp {
    pub eps: f64,
    pub relu: bool,
    pub stats: Arc<Mutex<Stats>>,
}

impl CustomOp3 for TrainOp {
    fn name(&self) -> &'static str {
        "cifar-stream-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, s) = split_nc(l1.dims(), "batch-norm")?;
        let x = contiguous_f32(s1, l1)?;
        let gamma = contiguous_f32(s2, l2)?;
        let beta = contiguous_f32(s3, l3)?;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batch-norm: {c} channels but {} scales, {} shifts",
                gamma.len(),
                beta.len()
            );
        }
        let count = n * s;
        let mean: Vec<f32> = channel_sums(x, x, None, (n, c, s))
            .iter()
            .map(|p| (p.0 / count as f64) as f32)
            .collect();
        // Two passes: Σ(x − μ)² rather than Σx² − Mμ², which cancels badly.
        let centred = channel_centred(x, &mean, (n, c, s));
        let mut stats = Stats {
            mean: Vec::with_capacity(c),
            var: Vec::with_capacity(c),
            count,
        };
        let (mut scale, mut shift) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            // μ̂ is the f32-rounded mean; d is what it misses: Σ(x − μ)² = Σ(x − μ̂)² − M·d².
            let d = centred[ch].0 / count as f64;
            let var = (centred[ch].1 / count as f64 - d * d).max(0.0);
            let mean = mean[ch] as f64 + d;
            let a = gamma[ch] as f64 / (var + self.eps).sqrt();
            stats.mean.push(mean as f32);
            stats.var.push(var as f32);
            scale.push(a as f32);
            shift.push((beta[ch] as f64 - mean * a) as f32);
        }
        let y = affine(x, &scale, &shift, self.relu, c, s);
        *self.stats.lock().expect("batch-norm stats lock") = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
        let stats = self.stats.lock().expect("batch-norm stats lock").clone();
        let count = (n * s) as f64;
        let (dx, dgamma, dbeta) = with_f32(x, |xs| {
            with_f32(gamma, |gs| {
                with_f32(y, |ys| {
                    with_f32(dy, |dys| {
                        let g = masked(dys, ys, self.relu);
                        let invstd: Vec<f64> = stats
                            .var
                            .iter()
                            .map(|v| 1.0 / (*v as f64 + self.eps).sqrt())
                            .collect();
                        // Σg and Σg·(x − μ) per channel; Σg·x̂ = invstd·Σg·(x − μ).
                        let sums = channel_sums(&g, xs, Some(&stats.mean), (n, c, s));
                        let mut dgamma = Vec::with_capacity(c);
                        let mut dbeta = Vec::with_capacity(c);
                        // dx = a·g + b·(x − μ) + d per channel, from the closed form
                        // dx = γ·invstd/M · (M·g − Σg − x̂·Σg·x̂).
                        let (mut a, mut b, mut d) =
                            (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
                        for ch in 0..c {
                            let (sg, sgxc) = sums[ch];
                            let is = invstd[ch];
                            let sgxh = is * sgxc;
                            dgamma.push(sgxh as f32);
                            dbeta.push(sg as f32);
                            let k = gs[ch] as f64 * is;
                            a[ch] = k as f32;
                            b[ch] = (-k * is * sgxh / count) as f32;
                            d[ch] = (-k * sg / count) as f32;
                        }
                        let mean = &stats.mean;
                        let mut dx = vec![0.0f32; xs.len()];
                        dx.par_chunks_mut((c * s).max(1))
                            .zip(
                                g.par_chunks((c * s).max(1))
                                    .zip(xs.par_chunks((c * s).max(1))),
                            )
                            .for_each(|(di, (gi, xi))| {
                                for ch in 0..c {
                                    let r = ch * s..(ch + 1) * s;
                                    let (aa, bb, dd, mu) = (a[ch], b[ch], d[ch], mean[ch]);
                                    for ((o, gv), xv) in
                                        di[r.clone()].iter_mut().zip(&gi[r.clone()]).zip(&xi[r])
                                    {
                                        *o = aa * gv + bb * (xv - mu) + dd;
                                    }
                                }
                            });
                        Ok((dx, dgamma, dbeta))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

/// Per-channel affine map (+ ReLU) on `(x, scale, shift)`: BatchNorm with fixed statistics.
pub(super) struct AffineOp {
    pub relu: bool,
}

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "cifar-stream-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, s) = split_nc(l1.dims(), "batch-norm")?;
        let x = contiguous_f32(s1, l1)?;
        let scale = contiguous_f32(s2, l2)?;
        let shift = contiguous_f32(s3, l3)?;
        if scale.len() != c || shift.len() != c {
            candle_core::bail!("channel affine: {c} channels but {} scales", scale.len());
        }
        Ok((
            CpuStorage::F32(affine(x, scale, shift, self.relu, c, s)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, s) = split_nc(x.dims(), "batch-norm")?;
        let (dx, dscale, dshift) = with_f32(x, |xs| {
            with_f32(scale, |sc| {
                with_f32(y, |ys| {
                    with_f32(dy, |dys| {
                        let g = masked(dys, ys, self.relu);
                        let sums = channel_sums(&g, xs, None, (n, c, s));
                        let zero = vec![0.0f32; c];
                        let dx = affine(&g, sc, &zero, false, c, s);
                        let dscale = sums.iter().map(|p| p.1 as f32).collect::<Vec<_>>();
                        let dshift = sums.iter().map(|p| p.0 as f32).collect::<Vec<_>>();
                        Ok((dx, dscale, dshift))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dscale, c, dev)?),
            Some(Tensor::from_vec(dshift, c, dev)?),
        ))
    }
}
