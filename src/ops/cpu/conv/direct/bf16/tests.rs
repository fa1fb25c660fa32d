use super::super::tests::{operands, taps, CASES};
use super::super::GROUP;
use super::*;

/// `x` as the kernels see it: rounded to bf16.
fn rounded(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(bf16::from_f32(v))).collect()
}

/// `(y, dx, dw)` by the definition on bf16-rounded operands, in f64, each with the sum of its
/// products' magnitudes (the scale of f32 rounding in any order of summation).
fn definition(g: &Geometry, x: &[f32], wt: &[f32], dy: &[f32]) -> [(Vec<f64>, Vec<f64>); 3] {
    let (x, wt, dy) = (rounded(x), rounded(wt), rounded(dy));
    let zeros = |n: usize| (vec![0.0f64; n], vec![0.0f64; n]);
    let (mut y, mut dx, mut dw) = (zeros(dy.len()), zeros(x.len()), zeros(wt.len()));
    for (yi, xi, wi) in taps(g) {
        for ((sum, mag), i, p) in [
            (&mut y, yi, x[xi] * wt[wi]),
            (&mut dx, xi, dy[yi] * wt[wi]),
            (&mut dw, wi, dy[yi] * x[xi]),
        ] {
            sum[i] += p;
            mag[i] += p.abs();
        }
    }
    [y, dx, dw]
}

/// Within f32 summation error of the exact sum of the bf16 products: a few units in the last
/// place of f32 per product's share of the magnitude (2⁻¹⁶ of it, loose enough for any order
/// and either vendor's rounding inside the pair, far below one bf16 step, 2⁻⁸).
fn close(got: &[f32], (want, mag): &(Vec<f64>, Vec<f64>), what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = m * 2f64.powi(-16) + 1e-30;
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what} [{i}]: {g} vs {w} (±{tol})"
        );
    }
}

#[test]
fn the_bf16_kernels_equal_the_definition_on_rounded_operands() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for &(c, k, h, w) in &CASES {
        let n = GROUP + 2;
        let (g, x, wt, dy) = operands(n, (c, k, h, w));
        let [want, want_dx, want_dw] = definition(&g, &x, &wt, &dy);
        let what = format!("c{c} k{k} {h}x{w}");
        close(&forward(&g, &x, &wt), &want, &format!("{what} forward"));
        close(&input_grad(&g, &wt, &dy), &want_dx, &format!("{what} dx"));
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let dw = pool.install(|| weight_grad(&g, &x, &dy));
            close(&dw, &want_dw, &format!("{what} dw ({threads} threads)"));
        }
    }
}

#[test]
fn a_pair_is_two_roundings_to_nearest_even() {
    // 1 + 2⁻⁸ is halfway between two bf16 values: to the even one, 1; 1 + 3·2⁻⁸ up to 1 + 2⁻⁶.
    assert_eq!(
        pair(1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)),
        0x3f80 | 0x3f82 << 16
    );
    if available() {
        // The vector conversions agree with it, odd lengths (masked tails) and a missing
        // second half included.
        let a: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 2f32.powi(-9)).collect();
        let b: Vec<f32> = (0..37).map(|i| -(i as f32) * 1e-3).collect();
        let mut d = [7u32; 38];
        // SAFETY: AVX512-BF16 is present; 37 values each, 37 written (the 38th must stay).
        unsafe { avx512::pair_row(a.as_ptr(), b.as_ptr(), 37, d.as_mut_ptr()) };
        let want: Vec<u32> = a.iter().zip(&b).map(|(&a, &b)| pair(a, b)).collect();
        assert_eq!((&d[..37], d[37]), (&want[..], 7));
        // SAFETY: as above, no second half.
        unsafe { avx512::pair_row(a.as_ptr(), std::ptr::null(), 37, d.as_mut_ptr()) };
        let want: Vec<u32> = a.iter().map(|&a| pair(a, 0.0)).collect();
        assert_eq!(&d[..37], &want[..]);
        let mut r = [7u16; 38];
        // SAFETY: as above.
        unsafe { avx512::round_row(b.as_ptr(), 37, r.as_mut_ptr()) };
        let want: Vec<u16> = b.iter().map(|&b| round(b) as u16).collect();
        assert_eq!((&r[..37], r[37]), (&want[..], 7));
    }
}
