use super::*;

/// Every product of the convolution's definition that lands inside the image, as flat
/// `(y index, x index, w index)` of NCHW output, input and `[k][c][3][3]` filters.
pub(super) fn taps(g: &Geometry) -> Vec<(usize, usize, usize)> {
    let Geometry { n, c, k, h, w, .. } = *g;
    let mut taps = Vec::new();
    for img in 0..n {
        for o in 0..k {
            for i in 0..c {
                for t in 0..9 {
                    let (ky, kx) = (t / 3, t % 3);
                    for yy in 0..h {
                        let iy = yy + ky;
                        if iy < 1 || iy > h {
                            continue;
                        }
                        for xx in 0..w {
                            let ix = xx + kx;
                            if ix < 1 || ix > w {
                                continue;
                            }
                            taps.push((
                                ((img * k + o) * h + yy) * w + xx,
                                ((img * c + i) * h + iy - 1) * w + ix - 1,
                                (o * c + i) * 9 + t,
                            ));
                        }
                    }
                }
            }
        }
    }
    taps
}

/// `(y, dx, dw)` by the definition: each tap's product added where it belongs.
fn definition(g: &Geometry, x: &[f32], wt: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let (mut y, mut dx, mut dw) = (
        vec![0.0f32; dy.len()],
        vec![0.0; x.len()],
        vec![0.0; wt.len()],
    );
    for (yi, xi, wi) in taps(g) {
        y[yi] += x[xi] * wt[wi];
        dx[xi] += dy[yi] * wt[wi];
        dw[wi] += dy[yi] * x[xi];
    }
    [y, dx, dw]
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        assert!(
            (p - q).abs() < 1e-4 * (1.0 + q.abs()),
            "{what} [{i}]: {p} vs {q}"
        );
    }
}

/// Sizes that exercise every tile shape, partial tiles and partial channel blocks (on AVX-512,
/// the position tiles only on maps the channel-lane rows leave to them).
pub(super) const CASES: [(usize, usize, usize, usize); 18] = [
    (2, 56, 2, 15),
    (1, 20, 4, 5),
    (3, 40, 1, 16),
    (2, 26, 1, 17),
    (3, 5, 7, 6),
    (3, 24, 1, 9),
    (5, 12, 2, 11),
    (3, 128, 3, 3),
    (2, 112, 2, 3),
    (2, 80, 3, 4),
    (6, 24, 3, 3),
    (5, 12, 2, 3),
    (4, 13, 3, 3),
    (2, 7, 15, 15),
    (5, 4, 1, 1),
    (24, 32, 9, 31),
    (3, 11, 5, 2),
    // One input channel, and three output channels: odd channel pairs on the position tiles.
    (1, 3, 2, 17),
];

#[test]
fn every_tile_shape_is_chosen_somewhere_in_the_cases() {
    for isa in [Isa::Avx512, Isa::Avx2] {
        let shapes: std::collections::BTreeSet<_> = CASES
            .iter()
            .map(|&(c, k, h, w)| Tiling::new(c, k, h, w, isa))
            .filter(|p| !p.lane_rows())
            .map(|p| (p.co, p.v))
            .collect();
        assert_eq!(shapes.len(), isa.shapes().len(), "{isa:?}: {shapes:?}");
    }
}

/// A case's geometry for `n` images and its input, filters and output gradient: smooth values
/// of both signs, different in every element.
pub(super) fn operands(
    n: usize,
    (c, k, h, w): (usize, usize, usize, usize),
) -> (Geometry, Vec<f32>, Vec<f32>, Vec<f32>) {
    let wave = |len: usize, step: f32, f: fn(f32) -> f32| -> Vec<f32> {
        (0..len).map(|i| f(i as f32 * step)).collect()
    };
    (
        Geometry::new(&[n, c, h, w], &[k, c, 3, 3], 1, 1).unwrap(),
        wave(n * c * h * w, 0.37, f32::sin),
        wave(k * c * 9, 0.23, f32::cos),
        wave(n * k * h * w, 0.11, f32::sin),
    )
}

#[test]
fn every_isa_matches_the_definition_forward_and_backward() {
    for &(c, k, h, w) in &CASES {
        // More images than a weight-gradient group, and not a multiple of it.
        let n = GROUP + 2;
        let (g, x, wt, dy) = operands(n, (c, k, h, w));
        let [want, want_dx, want_dw] = definition(&g, &x, &wt, &dy);
        let what = format!("c{c} k{k} {h}x{w}");
        for isa in Isa::available() {
            let tiling = Tiling::new(c, k, h, w, isa);
            let packed = tiling.pack(|o, i, t| wt[(o * c + i) * 9 + t]);
            // In a test build `written_by` starts from NaN: an output `run` skips fails.
            // SAFETY: `run` writes every output (what this test checks).
            let y = unsafe { written_by(want.len(), |y| tiling.run(&x, &packed, y)) };
            close(&y, &want, &format!("{what} forward {isa:?}"));
            let back = Tiling::new(k, c, h, w, isa);
            let packed = back.pack(|o, i, t| wt[(i * c + o) * 9 + (8 - t)]);
            // SAFETY: as above.
            let dx = unsafe { written_by(x.len(), |dx| back.run(&dy, &packed, dx)) };
            close(&dx, &want_dx, &format!("{what} dx {isa:?}"));
        }
        close(&forward(&g, &x, &wt), &want, &what);
        close(&input_grad(&g, &wt, &dy), &want_dx, &what);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            close(
                &pool.install(|| weight_grad(&g, &x, &dy)),
                &want_dw,
                &format!("{what} dw"),
            );
        }
        for isa in Isa::available() {
            let tiling = Tiling::new(c, k, h, w, isa);
            let dw = tiling.weight_grad(&x, &dy, 0..n);
            close(&dw, &want_dw, &format!("{what} dw {isa:?}"));
        }
    }
}
