//! 2×2 max-pooling with stride 2 (odd sizes floor, as PyTorch's `MaxPool2d(2)`) as one pass each
//! way over `[planes][h][w]` f32 data: the scalar passes, their AVX-512F copies (the same bits),
//! and PyTorch's rule for ties and NaNs.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{wide, written_by};

/// `b` if it beats `a` under PyTorch's rule: greater, or a NaN over a number; on ties the
/// first in row-major order keeps the gradient.
#[inline(always)]
fn later_wins(a: f32, b: f32) -> bool {
    b > a || (b.is_nan() && !a.is_nan())
}

/// The larger of `a` and `b`, a NaN over any number; of two equal values (+0 and -0) the first.
/// PyTorch returns the arg-max's value, which may be the other zero; the vector pass takes
/// the window in this pass's order, so both give the same bits.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if later_wins(a, b) {
        b
    } else {
        a
    }
}

/// Which of a window's values `[top-left, top-right, bottom-left, bottom-right]` is its
/// maximum under [`later_wins`], by selects rather than branches (real activations make those
/// branches unpredictable).
#[inline(always)]
fn window_argmax(v: [f32; 4]) -> usize {
    let (mut best, mut at) = (v[0], 0);
    for (i, &x) in v.iter().enumerate().skip(1) {
        let wins = later_wins(best, x);
        best = if wins { x } else { best };
        at = if wins { i } else { at };
    }
    at
}

/// One plane's forward pass: `out[oy][ox]` the maximum of the window below it.
#[inline(always)]
fn pool_plane(xp: &[f32], w: usize, out: &mut [MaybeUninit<f32>], ow: usize) {
    for (oy, line) in out.chunks_exact_mut(ow).enumerate() {
        let (r0, r1) = (
            &xp[2 * oy * w..][..2 * ow],
            &xp[(2 * oy + 1) * w..][..2 * ow],
        );
        for ((o, top), bottom) in line
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            o.write(nan_max(
                nan_max(top[0], bottom[0]),
                nan_max(top[1], bottom[1]),
            ));
        }
    }
}

/// One plane's backward pass: every input position written, the window's gradient at its
/// arg-max and zero elsewhere (also on a floored odd row or column).
#[inline(always)]
fn unpool_plane(
    xp: &[f32],
    dp: &[f32],
    w: usize,
    oh: usize,
    ow: usize,
    gp: &mut [MaybeUninit<f32>],
) {
    for oy in 0..oh {
        let (r0, r1) = (
            &xp[2 * oy * w..][..2 * ow],
            &xp[(2 * oy + 1) * w..][..2 * ow],
        );
        let (g0, g1) = gp[2 * oy * w..][..2 * w].split_at_mut(w);
        for ox in 0..ow {
            let at = window_argmax([r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]]);
            let d = dp[oy * ow + ox];
            let pick = |k: usize| if at == k { d } else { 0.0 };
            g0[2 * ox].write(pick(0));
            g0[2 * ox + 1].write(pick(1));
            g1[2 * ox].write(pick(2));
            g1[2 * ox + 1].write(pick(3));
        }
    }
    zero_floored(gp, w, oh, ow);
}

/// Zero gradient on what no window covers: the last column of an odd width, the last row of
/// an odd height.
#[inline(always)]
fn zero_floored(gp: &mut [MaybeUninit<f32>], w: usize, oh: usize, ow: usize) {
    if w > 2 * ow {
        for row in gp[..2 * oh * w].chunks_exact_mut(w) {
            row[w - 1].write(0.0);
        }
    }
    for g in &mut gp[2 * oh * w..] {
        g.write(0.0);
    }
}

/// [`pool_plane`] on the fastest code this CPU runs (the same bits on every path).
fn pool(xp: &[f32], w: usize, out: &mut [MaybeUninit<f32>], ow: usize) {
    assert!(xp.len() >= out.len() / ow * 2 * w && w >= 2 * ow && out.len().is_multiple_of(ow));
    #[cfg(target_arch = "x86_64")]
    if wide::has_avx512f() {
        // SAFETY: the CPU has AVX-512F, and the assert bounds every row the pass reads.
        return unsafe {
            avx512::pool_plane(xp.as_ptr(), w, out.as_mut_ptr().cast(), out.len() / ow, ow)
        };
    }
    wide::run(
        #[inline(always)]
        || pool_plane(xp, w, out, ow),
    )
}

/// [`unpool_plane`] on the fastest code this CPU runs (the same bits on every path).
fn unpool(xp: &[f32], dp: &[f32], w: usize, oh: usize, ow: usize, gp: &mut [MaybeUninit<f32>]) {
    assert!(xp.len() >= 2 * oh * w && dp.len() >= oh * ow && gp.len() >= 2 * oh * w);
    assert!(w >= 2 * ow);
    #[cfg(target_arch = "x86_64")]
    if wide::has_avx512f() {
        let g = gp.as_mut_ptr().cast::<f32>();
        // SAFETY: the CPU has AVX-512F, and the asserts bound every read and write.
        unsafe { avx512::unpool_rows(xp.as_ptr(), dp.as_ptr(), w, oh, ow, g) };
        return zero_floored(gp, w, oh, ow);
    }
    wide::run(
        #[inline(always)]
        || unpool_plane(xp, dp, w, oh, ow, gp),
    )
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The low `n` of 16 lanes.
    #[inline]
    fn first(n: usize) -> __mmask16 {
        if n >= 16 {
            !0
        } else {
            (1u16 << n) - 1
        }
    }

    /// Lanes where `b` beats `a` under [`super::later_wins`]: greater, or a NaN over a number.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn wins(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
            | (_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b) & _mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a))
    }

    /// The left and right values of `n ≤ 16` windows whose `2n` inputs start at `row`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `row` holds `2n` floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn columns(row: *const f32, n: usize) -> (__m512, __m512) {
        let lo = _mm512_maskz_loadu_ps(first(2 * n), row);
        // Only past 8 windows: `row.add(16)` may lie beyond the plane's end, not only its lanes.
        let hi = if n > 8 {
            _mm512_maskz_loadu_ps(first(2 * n - 16), row.add(16))
        } else {
            _mm512_setzero_ps()
        };
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (
            _mm512_permutex2var_ps(lo, even, hi),
            _mm512_permutex2var_ps(lo, odd, hi),
        )
    }

    /// [`super::pool_plane`] on 16 windows at a time: the same comparisons in the same order.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xp` holds `2·oh` rows of `w ≥ 2·ow` floats and `out` `oh·ow`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pool_plane(xp: *const f32, w: usize, out: *mut f32, oh: usize, ow: usize) {
        let max = |a: __m512, b: __m512| _mm512_mask_blend_ps(wins(a, b), a, b);
        for oy in 0..oh {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            for ox in (0..ow).step_by(16) {
                let n = (ow - ox).min(16);
                let (t0, t1) = columns(r0.add(2 * ox), n);
                let (b0, b1) = columns(r1.add(2 * ox), n);
                let y = max(max(t0, b0), max(t1, b1));
                _mm512_mask_storeu_ps(out.add(oy * ow + ox), first(n), y);
            }
        }
    }

    /// [`super::unpool_plane`]'s windows on 16 at a time: each window's gradient at the arg-max
    /// [`super::window_argmax`] picks (the same scan), zero at its other three inputs. The
    /// floored odd column and row are left to the caller.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xp` and `gp` hold `2·oh` rows of `w ≥ 2·ow` floats and `dp`
    /// `oh·ow`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn unpool_rows(
        xp: *const f32,
        dp: *const f32,
        w: usize,
        oh: usize,
        ow: usize,
        gp: *mut f32,
    ) {
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        // `n` windows' left and right gradients back into `2n` interleaved floats at `dst`.
        let store = |dst: *mut f32, left: __m512, right: __m512, n: usize| {
            _mm512_mask_storeu_ps(dst, first(2 * n), _mm512_permutex2var_ps(left, low, right));
            if n > 8 {
                let rest = first(2 * n - 16);
                _mm512_mask_storeu_ps(dst.add(16), rest, _mm512_permutex2var_ps(left, high, right));
            }
        };
        for oy in 0..oh {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            let (g0, g1) = (gp.add(2 * oy * w), gp.add((2 * oy + 1) * w));
            for ox in (0..ow).step_by(16) {
                let n = (ow - ox).min(16);
                let (t0, t1) = columns(r0.add(2 * ox), n);
                let (b0, b1) = columns(r1.add(2 * ox), n);
                // The scan of `window_argmax`: each later value that wins takes the window.
                let m1 = wins(t0, t1);
                let best = _mm512_mask_blend_ps(m1, t0, t1);
                let m2 = wins(best, b0);
                let best = _mm512_mask_blend_ps(m2, best, b0);
                let m3 = wins(best, b1);
                let at = [!(m1 | m2 | m3), m1 & !(m2 | m3), m2 & !m3, m3];
                let d = _mm512_maskz_loadu_ps(first(n), dp.add(oy * ow + ox));
                let pick = at.map(|m| _mm512_maskz_mov_ps(m, d));
                store(g0.add(2 * ox), pick[0], pick[1], n);
                store(g1.add(2 * ox), pick[2], pick[3], n);
            }
        }
    }
}

/// Every `h × w` plane of `x` pooled into `(h/2) × (w/2)`, planes in parallel.
pub fn forward(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "{planes} planes of {h}x{w}");
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| pool(xp, w, yp, ow))
    };
    // SAFETY: `x` holds `planes` planes (asserted), so each output plane is paired with one
    // and written whole by `pool`.
    unsafe { written_by(planes * oh * ow, fill) }
}

/// The gradient at the input `xs` (planes of `h × w`) from `ds` (planes of `(h/2) × (w/2)`):
/// each window's gradient at its arg-max, zero elsewhere.
pub fn backward(xs: &[f32], ds: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(
        ds.len() * (h * w),
        xs.len() * (oh * ow),
        "a gradient plane per input plane"
    );
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(h * w)
            .zip(xs.par_chunks(h * w).zip(ds.par_chunks(oh * ow)))
            .for_each(|(gp, (xp, dp))| unpool(xp, dp, w, oh, ow, gp))
    };
    // SAFETY: `ds` holds a plane for each of `xs` (asserted), and `unpool` writes every element
    // of each.
    unsafe { written_by(xs.len(), fill) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// PyTorch's rule by its definition: scan the window in row-major order and keep a value
    /// only if it is greater than the kept one, or a NaN over a number.
    pub(crate) fn reference(v: [f32; 4]) -> usize {
        let mut at = 0;
        for i in 1..4 {
            let (kept, x) = (v[at], v[i]);
            if (!kept.is_nan() && x.is_nan()) || x > kept {
                at = i;
            }
        }
        at
    }

    #[test]
    fn ties_go_to_the_first_and_a_nan_beats_any_number() {
        let values = [0.0f32, 1.0, -1.0, f32::NAN, 1.0];
        for a in values {
            for b in values {
                for c in values {
                    for d in values {
                        let v = [a, b, c, d];
                        assert_eq!(window_argmax(v), reference(v), "{v:?}");
                    }
                }
            }
        }
    }

    /// Few distinct values, so most windows hold ties (of +0 and -0 too); some hold NaNs.
    pub(crate) fn tied(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match (i * 7 + i / 13) % 11 {
                3 => f32::NAN,
                4 => -0.0,
                k => (k % 3) as f32,
            })
            .collect()
    }

    /// Plane sizes with rows of under half a vector of windows, exactly half (the second
    /// load's start one past the plane's end), one, and one plus a part, even and odd.
    pub(crate) const SIZES: [(usize, usize); 9] = [
        (2, 2),
        (5, 7),
        (2, 16),
        (3, 17),
        (3, 31),
        (4, 32),
        (6, 34),
        (7, 37),
        (2, 66),
    ];

    /// Floats either side of each plane in [`same_bits`]: a store past the plane shows there.
    const GUARD: usize = 32;
    const SENTINEL: f32 = 12345.0;

    /// `pool` and `unpool` (the vector passes where the CPU has them) against the scalar
    /// passes, bit for bit, on an `h × w` plane of `xs`, each plane inside guard floats that
    /// must come back untouched.
    fn same_bits(h: usize, w: usize, xs: &[f32]) {
        let (oh, ow) = (h / 2, w / 2);
        let guarded = |v: &[f32]| [&[SENTINEL; GUARD][..], v, &[SENTINEL; GUARD]].concat();
        let uninit = |n: usize| {
            let mut v = vec![MaybeUninit::new(SENTINEL); n + 2 * GUARD];
            v[GUARD..GUARD + n].fill(MaybeUninit::new(f32::NAN));
            v
        };
        // SAFETY: every element is initialised (by `uninit` or a pass).
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            v.iter()
                .map(|x| unsafe { x.assume_init() }.to_bits())
                .collect()
        };
        let sentinels = |v: &[MaybeUninit<f32>]| {
            let b = bits(v);
            let mut guard = b[..GUARD].iter().chain(&b[b.len() - GUARD..]);
            guard.all(|&x| x == SENTINEL.to_bits())
        };
        let dp: Vec<f32> = (0..oh * ow).map(|i| i as f32 - 3.5).collect();
        let (xg, dg) = (guarded(xs), guarded(&dp));
        let (x, d) = (&xg[GUARD..GUARD + h * w], &dg[GUARD..GUARD + oh * ow]);

        let (mut fast, mut slow) = (uninit(oh * ow), uninit(oh * ow));
        pool(x, w, &mut fast[GUARD..GUARD + oh * ow], ow);
        pool_plane(x, w, &mut slow[GUARD..GUARD + oh * ow], ow);
        assert_eq!(bits(&fast), bits(&slow), "forward {h}x{w}");
        assert!(sentinels(&fast), "forward {h}x{w} wrote past its plane");

        let (mut fast, mut slow) = (uninit(h * w), uninit(h * w));
        unpool(x, d, w, oh, ow, &mut fast[GUARD..GUARD + h * w]);
        unpool_plane(x, d, w, oh, ow, &mut slow[GUARD..GUARD + h * w]);
        assert_eq!(bits(&fast), bits(&slow), "backward {h}x{w}");
        assert!(sentinels(&fast), "backward {h}x{w} wrote past its plane");
    }

    /// On a CPU without AVX-512F both sides are the scalar passes and this shows nothing (it
    /// says so); the op test below still checks them against the rule.
    #[test]
    fn the_vector_passes_give_the_scalar_passes_bits() {
        for (h, w) in SIZES {
            same_bits(h, w, &tied(h * w));
        }
        // Every window of four values from {-1, -0, +0, 1, NaN}: 625 windows on one row pair
        // (39 vectors and a tail of one).
        let values = [-1.0f32, -0.0, 0.0, 1.0, f32::NAN];
        let ow = values.len().pow(4);
        let mut xs = vec![0.0f32; 2 * 2 * ow];
        for k in 0..ow {
            let v = |i: u32| values[k / values.len().pow(i) % values.len()];
            let (top, bottom) = xs.split_at_mut(2 * ow);
            (top[2 * k], top[2 * k + 1]) = (v(0), v(1));
            (bottom[2 * k], bottom[2 * k + 1]) = (v(2), v(3));
        }
        same_bits(2, 2 * ow, &xs);
        if !wide::has_avx512f() {
            eprintln!("no AVX-512F on this CPU: the scalar passes were compared with themselves");
        }
    }
}
