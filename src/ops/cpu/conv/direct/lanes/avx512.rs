//! The channel-lane kernels on AVX-512F: the lane-row forward's tile (`row`, with the in-register
//! transpose of its sums into NCHW), the transpose of channel planes into `[position][16
//! channels]` rows (`positions_of`, the weight gradient's input), and the weight gradient's tile.

use std::arch::x86_64::*;

use super::operands::{RowTile, Walk, LANES};

/// `P` positions × `V` vectors of output channels over all `9·ins` products, then one
/// store each.
///
/// # Safety
/// The CPU has AVX-512F, and the operands hold what [`RowTile::run`] asserts.
#[target_feature(enable = "avx512f")]
pub(in crate::ops::cpu::conv::direct) unsafe fn row<const P: usize, const V: usize>(
    grid: *const f32,
    offs: &[usize; 9],
    s: RowTile,
    filters: *const f32,
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
            if P < V {
                // Hold the broadcasts: each filter vector loaded as it is used.
                let b: [__m512; P] = std::array::from_fn(|p| _mm512_set1_ps(*src.add(off + p)));
                for v in 0..V {
                    let wv = _mm512_loadu_ps(f.add(LANES * v));
                    for (lanes, &b) in acc.iter_mut().zip(&b) {
                        lanes[v] = _mm512_fmadd_ps(b, wv, lanes[v]);
                    }
                }
            } else {
                // Hold the filter vectors: each broadcast made as it is used.
                let wv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(f.add(LANES * v)));
                for (p, lanes) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*src.add(off + p));
                    for (a, &wv) in lanes.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(b, wv, *a);
                    }
                }
            }
        }
    }
    finish_row::<P, V>(&acc, s, sums, out);
}

/// A row tile's sums: into `sums` (`[position][channel]`, rows `s.op` apart) when `out` is
/// null, else transposed into NCHW `out` (the block's real channels only).
///
/// # Safety
/// The CPU has AVX-512F, and the operands hold what [`RowTile::check`](super::RowTile) asserts.
#[inline]
#[target_feature(enable = "avx512f")]
pub(in crate::ops::cpu::conv::direct) unsafe fn finish_row<const P: usize, const V: usize>(
    acc: &[[__m512; V]; P],
    s: RowTile,
    sums: *mut f32,
    out: *mut f32,
) {
    if out.is_null() {
        for (p, lanes) in acc.iter().enumerate() {
            for (v, a) in lanes.iter().enumerate() {
                _mm512_storeu_ps(sums.add(p * s.op + LANES * v), *a);
            }
        }
        return;
    }
    // Straight to NCHW: each vector's sixteen channels × the positions transposed in
    // registers, one store of up to eight positions per channel. A copy through a
    // `[position][channel]` buffer (sixteen scalar stores per position and vector) cost a
    // fifth of the 32>128 @15 forward on a Sapphire Rapids-class Xeon; a scatter, more.
    let keep = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(P as i32), keep);
    // `v` picks one vector from every position's accumulators.
    #[allow(clippy::needless_range_loop)]
    for v in 0..V {
        let real = s.outs.saturating_sub(LANES * v).min(LANES);
        let rows: [__m512; 8] = std::array::from_fn(|p| {
            if p < P {
                acc[p][v]
            } else {
                _mm512_setzero_ps()
            }
        });
        let cols = transpose_8x16(rows);
        let base = out.add(LANES * v * s.hw);
        for (c, col) in cols.iter().enumerate().take(real) {
            _mm256_maskstore_ps(base.add(c * s.hw), keep, *col);
        }
    }
}

/// Eight vectors of sixteen (row `p`, lane `c`) as sixteen of eight (row `c`, lane `p`).
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_8x16(r: [__m512; 8]) -> [__m256; 16] {
    // Within each 128-bit lane: pairs of rows interleaved, then four rows' values of one
    // channel gathered: u[j] holds channels 4i + j (lane i) of rows 0–3, u[4 + j] of 4–7.
    let t: [__m512; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[2 * (k / 2 % 4)], r[2 * (k / 2 % 4) + 1]);
        if k % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 8] = std::array::from_fn(|k| {
        let (half, j) = (k / 4, k % 4);
        let (a, b) = (t[4 * half + j / 2], t[4 * half + j / 2 + 2]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // Rows 0–3 and 4–7 of one channel side by side: channels j, 4 + j and 8 + j, 12 + j.
    let low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let high = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let mut out = [_mm256_setzero_ps(); 16];
    for j in 0..4 {
        for (k, idx) in [low, high].into_iter().enumerate() {
            let z = _mm512_permutex2var_ps(u[j], idx, u[4 + j]);
            out[8 * k + j] = _mm512_castps512_ps256(z);
            out[8 * k + 4 + j] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
        }
    }
    out
}

/// `dst[p·stride + c] = src[c·hw + p]` for `p < count ≤ 8` and sixteen channels `c`,
/// zero for `c ≥ chans`: eight positions' channel vectors from sixteen planes.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds `chans ≤ 16` planes `hw` apart of `count` values
/// each, and `dst` `count` rows of 16, `stride` apart.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn positions_of(
    src: *const f32,
    hw: usize,
    chans: usize,
    count: usize,
    dst: *mut f32,
    stride: usize,
) {
    let keep = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(count as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let plane = |c: usize| {
        if c < chans {
            _mm256_maskload_ps(src.add(c * hw), keep)
        } else {
            _mm256_setzero_ps()
        }
    };
    // Rows j of channels j (low half) and 8 + j (high half): transposed, lane p of the
    // result's row p holds channels 0–7 and row 8 + p channels 8–15 of position p.
    let rows: [__m512; 8] = std::array::from_fn(|j| {
        let low = _mm512_castps_pd(_mm512_castps256_ps512(plane(j)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(low, _mm256_castps_pd(plane(8 + j))))
    });
    let cols = transpose_8x16(rows);
    for p in 0..count {
        let low = _mm512_castps_pd(_mm512_castps256_ps512(cols[p]));
        let both = _mm512_insertf64x4::<1>(low, _mm256_castps_pd(cols[8 + p]));
        _mm512_storeu_ps(dst.add(p * stride), _mm512_castpd_ps(both));
    }
}

/// `3·R` taps × `V` vectors of accumulators over every position of the walk's rows.
///
/// # Safety
/// The CPU has AVX-512F, and the operands hold what [`super::tile`] asserts.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const R: usize, const V: usize>(
    grads: *const f32,
    grid: *const f32,
    s: Walk,
    acc: *mut f32,
) {
    let mut sums = [[[_mm512_setzero_ps(); V]; 3]; R];
    for r in s.first..s.end {
        let (n, y) = (r / s.h, r % s.h);
        let d = grads.add(r * s.w * s.dstride);
        let g: [*const f32; R] = std::array::from_fn(|ky| grid.add(n * s.x_img + (y + ky) * s.wp));
        for xx in 0..s.w {
            if R == 1 {
                // 24 accumulators and three broadcasts: each vector loaded as it is used.
                let b: [__m512; 3] = std::array::from_fn(|kx| _mm512_set1_ps(*g[0].add(xx + kx)));
                for v in 0..V {
                    let dv = _mm512_loadu_ps(d.add(xx * s.dstride + LANES * v));
                    for (lanes, &b) in sums[0].iter_mut().zip(&b) {
                        lanes[v] = _mm512_fmadd_ps(b, dv, lanes[v]);
                    }
                }
            } else {
                // 27 accumulators and three vectors: each broadcast made as it is used.
                let dv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(d.add(xx * s.dstride + LANES * v)));
                for (ky, taps) in sums.iter_mut().enumerate() {
                    for (kx, lanes) in taps.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*g[ky].add(xx + kx));
                        for (a, &dv) in lanes.iter_mut().zip(&dv) {
                            *a = _mm512_fmadd_ps(b, dv, *a);
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
