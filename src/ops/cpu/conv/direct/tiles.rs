//! The register tiles of the position-vector kernels: the portable loop, and its AVX2 + FMA and
//! AVX-512F copies (a few output channels × `8·V` or `16·V` consecutive grid positions), plus the
//! AVX2 weight-gradient block. [`super::Tiling`] picks and calls them.

/// Strides of a weight-gradient block's operands, in floats.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Rows {
    /// One image's output gradient on the grid (`outs · row`).
    pub dy_img: usize,
    /// One channel's output gradient row on the grid.
    pub row: usize,
    /// One image's input grids (`ins · plane`).
    pub x_img: usize,
    pub plane: usize,
    pub wp: usize,
    pub ins: usize,
    pub images: usize,
}

/// The nine taps' offsets on a grid with rows of `wp`.
pub(super) fn taps(wp: usize) -> [usize; 9] {
    std::array::from_fn(|t| (t / 3) * wp + t % 3)
}

/// The tile in plain Rust.
#[allow(clippy::too_many_arguments)]
pub(super) fn portable(
    grid: &[f32],
    plane: usize,
    offs: &[usize; 9],
    ins: usize,
    filters: &[f32],
    out: &mut [f32],
    stride: usize,
    co: usize,
    width: usize,
) {
    let mut acc = vec![0.0f32; co * width];
    for i in 0..ins {
        for (t, &off) in offs.iter().enumerate() {
            let src = &grid[i * plane + off..][..width];
            let wts = &filters[(i * 9 + t) * co..][..co];
            for (lanes, &wv) in acc.chunks_mut(width).zip(wts) {
                for (a, &xv) in lanes.iter_mut().zip(src) {
                    *a += wv * xv;
                }
            }
        }
    }
    for (j, lanes) in acc.chunks(width).enumerate() {
        out[j * stride..][..width].copy_from_slice(lanes);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// The AVX2 tile's loop ([`super::avx2::tile`]) on 16-lane vectors.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `grid` holds `(ins-1)·plane + offs[8] + 16·V` floats, `filters`
    /// `ins·9·CO`, and `out` `(CO-1)·stride + 16·V`.
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::cpu::conv::direct) unsafe fn tile<const CO: usize, const V: usize>(
        grid: *const f32,
        plane: usize,
        offs: &[usize; 9],
        ins: usize,
        filters: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; CO];
        for i in 0..ins {
            let src = grid.add(i * plane);
            let wts = filters.add(i * 9 * CO);
            for (t, &off) in offs.iter().enumerate() {
                let xs: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(src.add(off + 16 * v)));
                for (j, lanes) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wts.add(t * CO + j));
                    for (a, &xv) in lanes.iter_mut().zip(&xs) {
                        *a = _mm512_fmadd_ps(wv, xv, *a);
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
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// `CO × V` accumulators over all `9·ins` products, then one store each.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `grid` holds `(ins-1)·plane + offs[8] + 8·V` floats, `filters`
    /// `ins·9·CO`, and `out` `(CO-1)·stride + 8·V`.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::ops::cpu::conv::direct) unsafe fn tile<const CO: usize, const V: usize>(
        grid: *const f32,
        plane: usize,
        offs: &[usize; 9],
        ins: usize,
        filters: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; CO];
        for i in 0..ins {
            let src = grid.add(i * plane);
            let wts = filters.add(i * 9 * CO);
            for (t, &off) in offs.iter().enumerate() {
                let xs: [__m256; V] =
                    std::array::from_fn(|v| _mm256_loadu_ps(src.add(off + 8 * v)));
                for (j, lanes) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*wts.add(t * CO + j));
                    for (a, &xv) in lanes.iter_mut().zip(&xs) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
        }
        for (j, lanes) in acc.iter().enumerate() {
            for (v, a) in lanes.iter().enumerate() {
                _mm256_storeu_ps(out.add(j * stride + 8 * v), *a);
            }
        }
    }

    /// For each input channel and kernel row, `O × 3` vector accumulators over the group's
    /// rows, each summed across its lanes and added to `dw[j][i][ky·3 + kx]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and the operands hold what `Tiling::weight_block` asserts.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::ops::cpu::conv::direct) unsafe fn weight_block<const O: usize>(
        grads: *const f32,
        grids: *const f32,
        dw: *mut f32,
        r: super::Rows,
    ) {
        for i in 0..r.ins {
            for ky in 0..3 {
                let mut acc = [[_mm256_setzero_ps(); 3]; O];
                for n in 0..r.images {
                    let d = grads.add(n * r.dy_img);
                    let x = grids.add(n * r.x_img + i * r.plane + ky * r.wp);
                    for q in (0..r.row).step_by(8) {
                        let xs: [__m256; 3] =
                            std::array::from_fn(|kx| _mm256_loadu_ps(x.add(q + kx)));
                        for (j, taps) in acc.iter_mut().enumerate() {
                            let dv = _mm256_loadu_ps(d.add(j * r.row + q));
                            for (a, &xv) in taps.iter_mut().zip(&xs) {
                                *a = _mm256_fmadd_ps(dv, xv, *a);
                            }
                        }
                    }
                }
                for (j, taps) in acc.iter().enumerate() {
                    let at = dw.add((j * r.ins + i) * 9 + ky * 3);
                    for (kx, a) in taps.iter().enumerate() {
                        *at.add(kx) += lanes_sum(*a);
                    }
                }
            }
        }
    }

    /// The sum of a vector's eight lanes.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA (it reads no memory).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }
}
