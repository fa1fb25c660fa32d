//! The tail of a bottleneck block, `relu(x · s[n, c] + shortcut)` with `s` the
//! Squeeze-and-Excitation gate, as one pass each way over `[n·c][plane]` f32 data.

use rayon::prelude::*;

use super::batch_norm::relu_keep_nan;

/// `relu(x · gate[p] + short)` for each plane `p` of `x` (`gate` one value per plane, `short` as
/// long as `x`).
pub fn forward(x: &[f32], gate: &[f32], short: &[f32], plane: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane).zip(short.par_chunks(plane)))
        .enumerate()
        .for_each(|(p, (yp, (xp, sp)))| {
            let g = gate[p];
            for ((o, a), b) in yp.iter_mut().zip(xp).zip(sp) {
                *o = relu_keep_nan(a * g + b);
            }
        });
    y
}

/// `(dx, dgate, dshort)` from the output `y` and its gradient `dy`, planes in parallel.
pub fn backward(
    xs: &[f32],
    gs: &[f32],
    ys: &[f32],
    dys: &[f32],
    plane: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; xs.len()];
    let mut dshort = vec![0.0f32; xs.len()];
    let dgate: Vec<f32> = dx
        .par_chunks_mut(plane)
        .zip(dshort.par_chunks_mut(plane))
        .zip(xs.par_chunks(plane).zip(ys.par_chunks(plane)))
        .zip(dys.par_chunks(plane))
        .enumerate()
        .map(|(p, (((dxp, dsp), (xp, yp)), dyp))| plane_backward(gs[p], xp, yp, dyp, dxp, dsp))
        .collect();
    (dx, dgate, dshort)
}

/// One plane of the backward pass: `dx = m·g` and `dshort = m` for the ReLU-masked gradient `m`;
/// returns `Σ m·x`, the gate's gradient. Fixed lanes of eight so the loop vectorises.
fn plane_backward(
    g: f32,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dshort: &mut [f32],
) -> f32 {
    let mut acc = [0.0f32; 8];
    let body = x.len() / 8 * 8;
    let lanes = dx[..body]
        .chunks_exact_mut(8)
        .zip(dshort[..body].chunks_exact_mut(8))
        .zip(x[..body].chunks_exact(8))
        .zip(y[..body].chunks_exact(8).zip(dy[..body].chunks_exact(8)));
    for (((dx8, ds8), x8), (y8, d8)) in lanes {
        for l in 0..8 {
            let m = if y8[l] > 0.0 { d8[l] } else { 0.0 };
            dx8[l] = m * g;
            ds8[l] = m;
            acc[l] += m * x8[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in body..x.len() {
        let m = if y[i] > 0.0 { dy[i] } else { 0.0 };
        dx[i] = m * g;
        dshort[i] = m;
        sum += m * x[i];
    }
    sum
}
