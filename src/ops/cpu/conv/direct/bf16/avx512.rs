//! The bf16 tiles on AVX512-BF16: the f32 tiles' loops with `vdpbf16ps` in place of the fused
//! multiply-add. Each 32-bit lane of an operand holds a pair of bf16 values (the low half first)
//! and each f32 accumulator lane gains both products of its pair. The broadcast operand goes
//! last, where the instruction can take it from memory (the products are exact in f32, so the
//! order of the two sources changes no bit). Also the conversions into those operands: rows of
//! floats rounded to bf16 and paired, sixteen at a time.

use std::arch::x86_64::*;

use super::super::lanes::RowTile;
use super::super::lanes::{avx512::finish_row, Walk, LANES};

/// Sixteen pairs of bf16, as the dot-product instruction reads them.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn pairs(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte vectors of plain bits; every bit pattern is a valid value of each.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// One pair broadcast to all sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn broadcast(pair: u32) -> __m512bh {
    pairs(_mm512_set1_epi32(pair as i32))
}

/// The position tile ([`super::super::tiles::avx512::tile`]) over pairs of input channels.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `grid` holds `(pairs-1)·plane + offs[8] + 16·V` pairs,
/// `filters` `pairs·9·CO`, and `out` `(CO-1)·stride + 16·V` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile<const CO: usize, const V: usize>(
    grid: *const u32,
    plane: usize,
    offs: &[usize; 9],
    pair_count: usize,
    filters: *const u32,
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; CO];
    for i in 0..pair_count {
        let src = grid.add(i * plane);
        let wts = filters.add(i * 9 * CO);
        for (t, &off) in offs.iter().enumerate() {
            let xs: [__m512bh; V] = std::array::from_fn(|v| {
                pairs(_mm512_loadu_si512(src.add(off + 16 * v).cast::<__m512i>()))
            });
            for (j, lanes) in acc.iter_mut().enumerate() {
                let wv = broadcast(*wts.add(t * CO + j));
                for (a, &xv) in lanes.iter_mut().zip(&xs) {
                    *a = _mm512_dpbf16_ps(*a, xv, wv);
                }
            }
        }
    }
    for (j, lanes) in acc.iter().enumerate() {
        for (v, a) in lanes.iter().enumerate() {
            _mm512_storeu_ps(out.add(j * stride + 16 * v), *a);
        }
    }
}

/// The channel-lane forward tile ([`super::super::lanes::avx512::row`]) over pairs of input
/// channels: `s.ins` counts pairs.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16, and the operands hold what [`RowTile::check`] asserts.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn row<const P: usize, const V: usize>(
    grid: *const u32,
    offs: &[usize; 9],
    s: RowTile,
    filters: *const u32,
    (sums, resume): (*mut f32, bool),
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    if resume {
        for (p, lanes) in acc.iter_mut().enumerate() {
            for (v, a) in lanes.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(sums.add(p * s.op + LANES * v));
            }
        }
    }
    for i in 0..s.ins {
        let src = grid.add(i * s.plane);
        let wts = filters.add(i * 9 * V * LANES);
        for (t, &off) in offs.iter().enumerate() {
            let f = wts.add(t * V * LANES);
            let load = |v: usize| pairs(_mm512_loadu_si512(f.add(LANES * v).cast::<__m512i>()));
            if P < V {
                let b: [__m512bh; P] = std::array::from_fn(|p| broadcast(*src.add(off + p)));
                for v in 0..V {
                    let wv = load(v);
                    for (lanes, &b) in acc.iter_mut().zip(&b) {
                        lanes[v] = _mm512_dpbf16_ps(lanes[v], wv, b);
                    }
                }
            } else {
                let wv: [__m512bh; V] = std::array::from_fn(load);
                for (p, lanes) in acc.iter_mut().enumerate() {
                    let b = broadcast(*src.add(off + p));
                    for (a, &wv) in lanes.iter_mut().zip(&wv) {
                        *a = _mm512_dpbf16_ps(*a, wv, b);
                    }
                }
            }
        }
    }
    finish_row::<P, V>(&acc, s, sums, out);
}

/// The channel-lane weight-gradient tile ([`super::super::lanes::avx512::tile`]) over pairs of
/// a row's positions: `grads` holds, per row of the walk, `⌈w/2⌉` pairs × `dstride` lanes (a
/// pair's second position zero past the row's end), and each tap broadcasts the two inputs the
/// pair's positions read, adjacent on the bf16 grid.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16, and the operands hold what
/// [`super::tile_pairs`] asserts.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn grad_tile<const R: usize, const V: usize>(
    grads: *const u32,
    grid: *const u16,
    s: Walk,
    acc: *mut f32,
) {
    let w2 = s.w.div_ceil(2);
    let mut sums = [[[_mm512_setzero_ps(); V]; 3]; R];
    for r in s.first..s.end {
        let (n, y) = (r / s.h, r % s.h);
        let d = grads.add(r * w2 * s.dstride);
        let g: [*const u16; R] = std::array::from_fn(|ky| grid.add(n * s.x_img + (y + ky) * s.wp));
        let at = |ky: usize, x: usize| broadcast(g[ky].add(x).cast::<u32>().read_unaligned());
        for pair in 0..w2 {
            let (xx, d) = (2 * pair, d.add(pair * s.dstride));
            let load = |v: usize| pairs(_mm512_loadu_si512(d.add(LANES * v).cast::<__m512i>()));
            if R == 1 {
                let b: [__m512bh; 3] = std::array::from_fn(|kx| at(0, xx + kx));
                for v in 0..V {
                    let dv = load(v);
                    for (lanes, &b) in sums[0].iter_mut().zip(&b) {
                        lanes[v] = _mm512_dpbf16_ps(lanes[v], dv, b);
                    }
                }
            } else {
                let dv: [__m512bh; V] = std::array::from_fn(load);
                for (ky, taps) in sums.iter_mut().enumerate() {
                    for (kx, lanes) in taps.iter_mut().enumerate() {
                        let b = at(ky, xx + kx);
                        for (a, &dv) in lanes.iter_mut().zip(&dv) {
                            *a = _mm512_dpbf16_ps(*a, dv, b);
                        }
                    }
                }
            }
        }
    }
    for (ky, taps) in sums.iter().enumerate() {
        for (kx, lanes) in taps.iter().enumerate() {
            for (v, a) in lanes.iter().enumerate() {
                let p = acc.add((ky * 3 + kx) * s.op + LANES * v);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *a));
            }
        }
    }
}

/// Sixteen floats of `a` and of `b` as sixteen pairs `bf16(a[c]) | bf16(b[c]) << 16`, each
/// rounded to nearest even.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pair_up(a: __m512, b: __m512) -> __m512i {
    // Lanes 0–15 of the conversion are `a`'s, 16–31 `b`'s; the permutation alternates them.
    let both = _mm512_cvtne2ps_pbh(b, a);
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    // SAFETY: both are 64-byte vectors of plain bits; every bit pattern is valid in each.
    let bits = unsafe { std::mem::transmute::<__m512bh, __m512i>(both) };
    _mm512_permutexvar_epi16(order, bits)
}

/// The first `n` of sixteen lanes (all for `n ≥ 16`).
#[inline]
fn first(n: usize) -> __mmask16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// `dst[x] = bf16(lo[x]) | bf16(hi[x]) << 16` for `x < n` (`hi` null: zeros), rounded to nearest
/// even: one grid row of channel pairs.
///
/// # Safety
/// The CPU has AVX-512F, BW and AVX512-BF16; `lo` (and `hi` unless null) hold `n` floats, `dst`
/// `n` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pair_row(lo: *const f32, hi: *const f32, n: usize, dst: *mut u32) {
    for x in (0..n).step_by(16) {
        let m = first(n - x);
        let a = _mm512_maskz_loadu_ps(m, lo.add(x));
        let b = if hi.is_null() {
            _mm512_setzero_ps()
        } else {
            _mm512_maskz_loadu_ps(m, hi.add(x))
        };
        _mm512_mask_storeu_epi32(dst.add(x).cast::<i32>(), m, pair_up(a, b));
    }
}

/// `dst[x] = bf16(src[x])` for `x < n`, rounded to nearest even: one grid row in bf16.
///
/// # Safety
/// The CPU has AVX-512F, BW, VL and AVX512-BF16; `src` holds `n` floats, `dst` `n` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn round_row(src: *const f32, n: usize, dst: *mut u16) {
    for x in (0..n).step_by(16) {
        let m = first(n - x);
        let h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src.add(x)));
        let bits = std::mem::transmute::<__m256bh, __m256i>(h);
        _mm256_mask_storeu_epi16(dst.add(x).cast::<i16>(), m, bits);
    }
}

/// `[position][lanes]` rows (`h` rows of `w`) as position pairs: `dst[(y·⌈w/2⌉ + p)·lanes + c] =
/// pair(src[(y·w + 2p)·lanes + c], src[(y·w + 2p + 1)·lanes + c])`, the second zero past a
/// row's end.
///
/// # Safety
/// The CPU has AVX-512F, BW and AVX512-BF16; `lanes` is a multiple of 16, `src` holds
/// `h·w·lanes` floats and `dst` `h·⌈w/2⌉·lanes` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn position_pairs(
    src: *const f32,
    (h, w, lanes): (usize, usize, usize),
    dst: *mut u32,
) {
    let w2 = w.div_ceil(2);
    for y in 0..h {
        for p in 0..w2 {
            let a = src.add((y * w + 2 * p) * lanes);
            let d = dst.add((y * w2 + p) * lanes);
            for c in (0..lanes).step_by(16) {
                let b = if 2 * p + 1 < w {
                    _mm512_loadu_ps(a.add(lanes + c))
                } else {
                    _mm512_setzero_ps()
                };
                let v = pair_up(_mm512_loadu_ps(a.add(c)), b);
                _mm512_storeu_si512(d.add(c).cast::<__m512i>(), v);
            }
        }
    }
}
