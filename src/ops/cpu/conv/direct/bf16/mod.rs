//! The direct 3×3 convolution with bf16 products (AVX512-BF16's `vdpbf16ps`) and f32 sums.
//!
//! The tiles are the f32 kernels' ([`super::tiles`], [`super::lanes`]) with the sum over input
//! channels taken two at a time: the bordered grid holds, per pair of input channels, one
//! 32-bit lane per position (the even channel's bf16 in the low half), the filters the same
//! pairs, and one instruction adds both products of each pair to an f32 accumulator. The
//! weight gradient pairs two neighbouring positions of a row instead: the output gradient,
//! transposed to channels in the lanes, as position pairs, and the input grid as plain bf16,
//! where the two inputs a pair's positions read for one tap are adjacent. Operands are
//! rounded to bf16 (nearest even) as they are copied into grids and packed, which each kernel
//! does anyway; outputs and every sum stay f32, as under PyTorch's autocast.
//!
//! The tilings (tile shapes, passes, strips) are the f32 ones: a pair is one lane as a float
//! is. So are the forward drivers, [`Tiling::run_with`] over the [`Pairs`] operand; the weight
//! gradient's loop is its own, as it pairs positions and transposes the gradient. On a map of
//! odd width a row's last position pair has one real position, so that share of the weight
//! gradient's products multiplies zeros (3% at 31 columns, 14% at 7, 33% at 3); pairing images
//! instead of positions would not waste it.

#[cfg(test)]
mod tests;

mod avx512;

use std::mem::MaybeUninit;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use super::drivers::Operand;
use super::lanes::{self, blocks, RowTile, Walk, LANES, PASS_BYTES, STRIP_BYTES};
use super::{images_per_chunk, sum_in_order, taps, written_by, Geometry, Isa, Tiling};

/// Whether this CPU multiplies bf16 pairs (AVX512-BF16, with the AVX-512F, BW and VL it builds
/// on).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `x` rounded to bf16, nearest even, as bits.
fn round(x: f32) -> u32 {
    u32::from(bf16::from_f32(x).to_bits())
}

/// Two values as one pair, `lo` in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    round(lo) | round(hi) << 16
}

/// Forward: `y = conv3x3(x, w)` with bf16 products, images in parallel.
pub(in crate::ops) fn forward(g: &Geometry, x: &[f32], wt: &[f32]) -> Vec<f32> {
    let plan = bf16_plan(g.c, g.k, g.h, g.w);
    let packed = pack(&plan, |o, i, t| wt[(o * g.c + i) * 9 + t]);
    // SAFETY: `Tiling::run_with` writes every output of every image.
    unsafe {
        written_by(g.n * g.k * g.h * g.w, |y| {
            plan.run_with::<Pairs>(x, &packed, y)
        })
    }
}

/// Input gradient: `dx = conv3x3(dy, w flipped, channels swapped)` with bf16 products.
pub(in crate::ops) fn input_grad(g: &Geometry, wt: &[f32], dy: &[f32]) -> Vec<f32> {
    let plan = bf16_plan(g.k, g.c, g.h, g.w);
    let packed = pack(&plan, |o, i, t| wt[(i * g.c + o) * 9 + (8 - t)]);
    // SAFETY: `Tiling::run_with` writes every output of every image.
    unsafe {
        written_by(g.n * g.c * g.h * g.w, |dx| {
            plan.run_with::<Pairs>(dy, &packed, dx)
        })
    }
}

/// Weight gradient with bf16 products, chunked over the batch as the f32 one is.
pub(in crate::ops) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let plan = bf16_plan(g.c, g.k, g.h, g.w);
    let per = images_per_chunk(g.n);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|j| weight_grad_chunk(&plan, x, dy, j * per..((j + 1) * per).min(g.n)))
        .collect();
    sum_in_order(&partials, g.k * g.c * 9)
}

/// The f32 plan on AVX-512, whose tiles these mirror.
fn bf16_plan(ins: usize, outs: usize, h: usize, w: usize) -> Tiling {
    assert!(available(), "bf16 products need AVX512-BF16");
    Tiling::new(ins, outs, h, w, Isa::Avx512)
}

/// Pairs of input channels.
fn pair_count(plan: &Tiling) -> usize {
    plan.ins.div_ceil(2)
}

/// Filters as pairs of input channels, in the layout of the f32 kernel the plan runs:
/// `[block][pair][tap][co]` for position tiles, per block of `v` vectors `[pair][9][16·v]` for
/// channel-lane rows; zero past the last channel either way.
fn pack(plan: &Tiling, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<u32> {
    let w = |o: usize, i: usize, t: usize| {
        if o < plan.outs && i < plan.ins {
            weight(o, i, t)
        } else {
            0.0
        }
    };
    let at = |o: usize, j: usize, t: usize| pair(w(o, 2 * j, t), w(o, 2 * j + 1, t));
    let pairs = pair_count(plan);
    if plan.lane_rows() {
        let (nv, op) = plan.lane_outs();
        let mut packed = vec![0u32; pairs * 9 * op];
        for (ob, v) in blocks(nv, plan.row_shape()) {
            let block = &mut packed[pairs * 9 * ob * LANES..][..pairs * 9 * v * LANES];
            for (jt, row) in block.chunks_mut(v * LANES).enumerate() {
                for (l, p) in row.iter_mut().enumerate() {
                    *p = at(ob * LANES + l, jt / 9, jt % 9);
                }
            }
        }
        return packed;
    }
    let mut packed = vec![0u32; plan.blocks() * pairs * 9 * plan.co];
    for (b, block) in packed.chunks_mut(pairs * 9 * plan.co).enumerate() {
        for (jt, taps) in block.chunks_mut(plan.co).enumerate() {
            for (l, p) in taps.iter_mut().enumerate() {
                *p = at(b * plan.co + l, jt / 9, jt % 9);
            }
        }
    }
    packed
}

/// Pairs of input channels: one 32-bit cell per position, the even channel's bf16 in the low
/// half, for the forward drivers ([`Tiling::run_with`]).
struct Pairs;

impl Operand for Pairs {
    type Cell = u32;

    fn planes(plan: &Tiling) -> usize {
        pair_count(plan)
    }

    fn border(plan: &Tiling, img: &[f32], grid: &mut [u32]) {
        let hw = plan.h * plan.w;
        assert!(available() && img.len() >= plan.ins * hw);
        for (j, plane) in grid
            .chunks_mut(plan.plane)
            .take(pair_count(plan))
            .enumerate()
        {
            let lo = &img[2 * j * hw..][..hw];
            let hi = (2 * j + 1 < plan.ins).then(|| &img[(2 * j + 1) * hw..][..hw]);
            plan.bordered(plane, |yy, dst| {
                let hi = hi.map_or(std::ptr::null(), |h| h[yy * plan.w..].as_ptr());
                // SAFETY: AVX512-BF16 and BW are present (asserted); row `yy` of `lo` and of `hi`
                // holds `w` floats, `dst` `w` pairs.
                unsafe {
                    avx512::pair_row(lo[yy * plan.w..].as_ptr(), hi, plan.w, dst.as_mut_ptr())
                }
            });
        }
    }

    fn tile(plan: &Tiling, grid: &[u32], filters: &[u32], out: &mut [f32], stride: usize) {
        let (width, pairs) = (plan.width(), pair_count(plan));
        assert!(grid.len() >= (pairs - 1) * plan.plane + 2 * plan.wp + 2 + width);
        assert!(filters.len() >= pairs * 9 * plan.co);
        assert!(out.len() >= (plan.co - 1) * stride + width);
        assert!(available());
        let offs = taps(plan.wp);
        let (g, f, o) = (grid.as_ptr(), filters.as_ptr(), out.as_mut_ptr());
        // SAFETY: the CPU has AVX512-BF16 (asserted), and the asserts above bound every load and
        // store the tile makes.
        unsafe {
            match (plan.co, plan.v) {
                (24, 1) => avx512::tile::<24, 1>(g, plan.plane, &offs, pairs, f, o, stride),
                (12, 2) => avx512::tile::<12, 2>(g, plan.plane, &offs, pairs, f, o, stride),
                (8, 3) => avx512::tile::<8, 3>(g, plan.plane, &offs, pairs, f, o, stride),
                s => unreachable!("tile shape {s:?}"),
            }
        }
    }

    fn row(
        s: RowTile,
        grid: &[u32],
        offs: &[usize; 9],
        filters: &[u32],
        (sums, resume): (&mut [f32], bool),
        out: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let out = s.check((grid.len(), offs, filters.len()), sums, resume, out);
        assert!(available());
        let (g, f, r) = (grid.as_ptr(), filters.as_ptr(), (sums.as_mut_ptr(), resume));
        // SAFETY: the CPU has AVX512-BF16 (asserted), and `check` bounds every load and store the
        // tile makes.
        unsafe { lanes::row_tile!(avx512, (s.positions, s.vectors), (g, offs, s, f, r, out)) }
    }
}

/// Copies one image into its zero-bordered grid of bf16 values, `[channel][plane]`.
fn border_plain(plan: &Tiling, img: &[f32], grid: &mut [u16]) {
    let hw = plan.h * plan.w;
    assert!(available() && img.len() >= plan.ins * hw);
    for (i, plane) in grid.chunks_mut(plan.plane).take(plan.ins).enumerate() {
        let src = &img[i * hw..][..hw];
        plan.bordered(plane, |yy, dst| {
            // SAFETY: AVX512-BF16, BW and VL are present (asserted); row `yy` of `src` holds `w`
            // floats, `dst` `w` values.
            unsafe { avx512::round_row(src[yy * plan.w..].as_ptr(), plan.w, dst.as_mut_ptr()) }
        });
    }
}

/// One chunk's weight gradient, `[outs][ins][9]`, over position pairs (see the module doc).
fn weight_grad_chunk(plan: &Tiling, x: &[f32], dy: &[f32], images: Range<usize>) -> Vec<f32> {
    let (hw, w2) = (plan.h * plan.w, plan.w.div_ceil(2));
    let (nv, op) = plan.lane_outs();
    let (x_img, d_img) = (plan.ins * plan.plane, plan.h * w2 * op);
    let per_pass = (PASS_BYTES / (2 * x_img + 4 * d_img)).clamp(1, images.len().max(1));
    let shape = lanes::shape(nv);
    let strip = (STRIP_BYTES / (4 * w2 * LANES * shape.vectors)).max(1);
    let offs = taps(plan.wp);
    let mut acc = vec![0.0f32; plan.ins * 9 * op];
    // A pair at a row's last position reads one value past it: one value of slack (two kept).
    let mut grids = vec![0u16; per_pass * x_img + 2];
    let mut grads = vec![0u32; per_pass * d_img];
    // One image's block at a time, `[position][16·v]`, before it is paired.
    let mut scratch = vec![0.0f32; hw * LANES * shape.vectors.min(nv)];
    let mut first = images.start;
    while first < images.end {
        let m = per_pass.min(images.end - first);
        for n in 0..m {
            let img = &x[(first + n) * plan.ins * hw..][..plan.ins * hw];
            border_plain(plan, img, &mut grids[n * x_img..]);
        }
        for (ob, v) in blocks(nv, shape) {
            let block = &mut grads[ob * LANES * m * plan.h * w2..][..v * LANES * m * plan.h * w2];
            for (n, img) in block.chunks_mut(v * LANES * plan.h * w2).enumerate() {
                let src = &dy[((first + n) * plan.outs + ob * LANES) * hw..];
                let chans = (plan.outs - ob * LANES).min(v * LANES);
                lanes::transpose(&src[..chans * hw], hw, v, &mut scratch);
                position_pairs(&scratch, plan.h, plan.w, v * LANES, img);
            }
        }
        for (ob, v) in blocks(nv, shape) {
            for r0 in (0..m * plan.h).step_by(strip) {
                let walk = Walk {
                    h: plan.h,
                    w: plan.w,
                    wp: plan.wp,
                    op,
                    dstride: v * LANES,
                    x_img,
                    first: r0,
                    end: (r0 + strip).min(m * plan.h),
                };
                let grads = &grads[ob * LANES * m * plan.h * w2..];
                for i in 0..plan.ins {
                    for ky in (0..3).step_by(shape.rows) {
                        let at = (i * 9 + ky * 3) * op + ob * LANES;
                        let grid = &grids[i * plan.plane + offs[ky * 3]..];
                        tile_pairs(shape.rows, v, grads, grid, walk, &mut acc[at..]);
                    }
                }
            }
        }
        first += m;
    }
    lanes::filters_of(&acc, plan.outs, plan.ins, op)
}

/// `[position][lanes]` rows as position pairs ([`avx512::position_pairs`]).
fn position_pairs(src: &[f32], h: usize, w: usize, lanes: usize, dst: &mut [u32]) {
    let w2 = w.div_ceil(2);
    assert!(lanes.is_multiple_of(LANES) && src.len() >= h * w * lanes);
    assert!(dst.len() >= h * w2 * lanes && available());
    // SAFETY: AVX512-BF16 and BW are present, and the lengths are as it needs (asserted).
    unsafe { avx512::position_pairs(src.as_ptr(), (h, w, lanes), dst.as_mut_ptr()) }
}

/// Adds one weight-gradient tile's sums into `acc`, as [`super::lanes`]'s `tile` does, with
/// `grads` as position pairs and `grid` in bf16.
fn tile_pairs(rows: usize, v: usize, grads: &[u32], grid: &[u16], s: Walk, acc: &mut [f32]) {
    let (last, w2) = (s.end - 1, s.w.div_ceil(2));
    let (n, y) = (last / s.h, last % s.h);
    assert!(v * LANES <= s.dstride);
    assert!(grads.len() >= ((n * s.h + y) * w2 + w2 - 1) * s.dstride + v * LANES);
    assert!(s.x_img >= (s.h + 2) * s.wp);
    // The last pair's second value of its farthest tap.
    assert!(grid.len() > n * s.x_img + (y + rows - 1) * s.wp + 2 * w2 + 1);
    assert!(acc.len() >= (3 * rows - 1) * s.op + v * LANES);
    assert!(available());
    let (d, g, a) = (grads.as_ptr(), grid.as_ptr(), acc.as_mut_ptr());
    // SAFETY: the CPU has AVX512-BF16 (asserted), and the asserts bound every load and store.
    unsafe {
        match (rows, v) {
            (3, 1) => avx512::grad_tile::<3, 1>(d, g, s, a),
            (3, 2) => avx512::grad_tile::<3, 2>(d, g, s, a),
            (3, 3) => avx512::grad_tile::<3, 3>(d, g, s, a),
            (1, 1) => avx512::grad_tile::<1, 1>(d, g, s, a),
            (1, 2) => avx512::grad_tile::<1, 2>(d, g, s, a),
            (1, 3) => avx512::grad_tile::<1, 3>(d, g, s, a),
            (1, 4) => avx512::grad_tile::<1, 4>(d, g, s, a),
            (1, 5) => avx512::grad_tile::<1, 5>(d, g, s, a),
            (1, 6) => avx512::grad_tile::<1, 6>(d, g, s, a),
            (1, 7) => avx512::grad_tile::<1, 7>(d, g, s, a),
            (1, 8) => avx512::grad_tile::<1, 8>(d, g, s, a),
            other => unreachable!("tile shape {other:?}"),
        }
    }
}
