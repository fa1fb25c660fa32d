use super::super::tests::{operands, taps, CASES};
use super::super::GROUP;
use super::*;

/// `x` in f64, rounded to bf16 first (as the kernels see it) when `round`.
fn exact(x: &[f32], round: bool) -> Vec<f64> {
    let value = |v: f32| if round { bf16::from_f32(v).to_f32() } else { v };
    x.iter().map(|&v| f64::from(value(v))).collect()
}

/// `(y, dx, dw)` by the definition in f64, on bf16-rounded operands when `round`, each with the
/// sum of its products' magnitudes (the scale of any rounding in any order of summation).
fn definition(
    g: &Geometry,
    (x, wt, dy): (&[f32], &[f32], &[f32]),
    round: bool,
) -> [(Vec<f64>, Vec<f64>); 3] {
    let (x, wt, dy) = (exact(x, round), exact(wt, round), exact(dy, round));
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

/// Within `tol` of the products' magnitude of the definition's sum.
fn close(got: &[f32], (want, mag): &(Vec<f64>, Vec<f64>), tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = m * tol + 1e-30;
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what} [{i}]: {g} vs {w} (±{tol})"
        );
    }
}

#[test]
fn the_bf16_kernels_hold_to_the_definition_on_rounded_and_on_f32_operands() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for &(c, k, h, w) in &CASES {
        let n = GROUP + 2;
        let (g, x, wt, dy) = operands(n, (c, k, h, w));
        let what = format!("c{c} k{k} {h}x{w}");
        let y = forward(&g, &x, &wt);
        let dx = input_grad(&g, &wt, &dy);
        let dw: Vec<Vec<f32>> = [1, 3]
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                pool.unwrap().install(|| weight_grad(&g, &x, &dy))
            })
            .into();
        // Against the exact sum of the bf16 products: within f32 summation error, a few units
        // in the last place of f32 per product's share (2⁻¹⁶ of the magnitude: loose enough for
        // any order and either vendor's rounding inside the pair, far below a bf16 step, 2⁻⁸).
        // Against f32's definition: within what rounding both operands to 8 bits can move a
        // product (2⁻⁸ of it) and the f32 sums (2⁻⁷ in all).
        for (round, tol) in [(true, 2f64.powi(-16)), (false, 2f64.powi(-7))] {
            let [want, want_dx, want_dw] = definition(&g, (&x, &wt, &dy), round);
            let what = format!("{what} (rounded operands: {round})");
            close(&y, &want, tol, &format!("{what} forward"));
            close(&dx, &want_dx, tol, &format!("{what} dx"));
            for (dw, threads) in dw.iter().zip([1, 3]) {
                close(dw, &want_dw, tol, &format!("{what} dw ({threads} threads)"));
            }
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
