//! Direct 3×3, stride-1, pad-1 convolution on the CPU (f32, NCHW), with no patch matrix.
//!
//! Each image is copied once into a zero-bordered grid, `(h+2) × (w+2)` per channel. On that
//! grid the output pixel `(y, x)` sits at the flat position `q = y·(w+2) + x`, and its tap
//! `(ky, kx)` reads the input at `q + ky·(w+2) + kx`: the image becomes a 1-D problem, so a
//! register tile of a few output channels × `8·V` consecutive positions sums all `9·c` products
//! before one store, the way oneDNN's direct kernels work, where im2col + GEMM writes a patch
//! matrix nine times the input and then packs it again. Positions that fall on the grid's two
//! border columns are computed and dropped (6% of the work at 31×31, more on small maps, which
//! is why the tile's width is chosen per map size).
//!
//! The input gradient is the same convolution of the output gradient, with the filters flipped
//! and their channel axes swapped. The weight gradient sums, for each filter tap, the output
//! gradient laid on the same grid (zero on the border columns) times the input grid shifted by
//! that tap: 8 pixels a vector, reduced across lanes once per group of images. Those zero
//! lanes do multiply real inputs, so a non-finite activation anywhere in a plane can make
//! the whole filter's gradient NaN where the exact sum would skip it; training is broken by
//! then anyway.
//!
//! The tile runs on AVX-512F (16 lanes, and 32 registers for 24 accumulators) or AVX2 + FMA
//! when the CPU has them (checked at run time) and as plain Rust otherwise. On AVX-512 the
//! weight gradient, and the forward pass on maps of at most 15 columns, put output channels in
//! the lanes instead ([`lanes`]): no lane is spent on a border column. The kernels round
//! differently (fused multiply-adds, other tile widths and orders); each is deterministic.

use std::mem::MaybeUninit;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub(super) mod bf16;
mod drivers;
mod lanes;
mod tiles;

use crate::ops::cpu::{images_per_chunk, sum_in_order, written_by};
use crate::ops::Geometry;
#[cfg(target_arch = "x86_64")]
use tiles::{avx2, avx512};
use tiles::{portable, taps, Rows};

/// Forward: `y = conv3x3(x, w)` for every image, images in parallel; `g` is a 3×3, stride-1,
/// pad-1 geometry (input `[n, c, h, w]`, filters `[k, c, 3, 3]`), as for every function here.
pub(super) fn forward(g: &Geometry, x: &[f32], wt: &[f32]) -> Vec<f32> {
    let tiling = Tiling::new(g.c, g.k, g.h, g.w, Isa::detect());
    let packed = tiling.pack(|o, i, t| wt[(o * g.c + i) * 9 + t]);
    // SAFETY: `Tiling::run` writes every output of every image.
    unsafe { written_by(g.n * g.k * g.h * g.w, |y| tiling.run(x, &packed, y)) }
}

/// Input gradient: `dx = conv3x3(dy, w flipped, channels swapped)`.
pub(super) fn input_grad(g: &Geometry, wt: &[f32], dy: &[f32]) -> Vec<f32> {
    let tiling = Tiling::new(g.k, g.c, g.h, g.w, Isa::detect());
    let packed = tiling.pack(|o, i, t| wt[(i * g.c + o) * 9 + (8 - t)]);
    // SAFETY: `Tiling::run` writes every output of every image.
    unsafe { written_by(g.n * g.c * g.h * g.w, |dx| tiling.run(dy, &packed, dx)) }
}

/// The instruction set the tiles run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Isa {
    /// AVX-512F tiles (16 lanes, 32 registers), with channel-lane kernels where they pay.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    /// `std::arch` AVX2 + FMA intrinsics.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// Plain Rust (any CPU).
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run (the tests check each).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let best = Isa::detect();
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|k| *k >= best)
            .collect()
    }

    /// Floats per vector register.
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }

    /// The tile shapes, `(output channels, vectors of positions)`: with AVX2, twelve
    /// accumulators of the sixteen registers (a 4 × 3 tile needs all sixteen with its loads,
    /// spills, and measured slower than 6 × 2 everywhere); with AVX-512, twenty-four of 32.
    fn shapes(self) -> &'static [(usize, usize)] {
        match self {
            Isa::Avx512 => &[(24, 1), (12, 2), (8, 3)],
            Isa::Avx2 | Isa::Portable => &[(12, 1), (6, 2)],
        }
    }
}

/// How one convolution is cut into register tiles: its sizes on the bordered grid and the tile
/// shape chosen for them.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    /// Input channels.
    ins: usize,
    /// Output channels.
    outs: usize,
    h: usize,
    w: usize,
    /// Grid row length, `w + 2`.
    wp: usize,
    /// Grid plane, `(h + 2)·(w + 2)`.
    plane: usize,
    /// Positions covering every output pixel: `(h-1)·wp + w`.
    span: usize,
    /// Output channels per tile.
    co: usize,
    /// Vectors of positions per tile.
    v: usize,
    /// The instruction set the tile shape was chosen for, which runs it.
    isa: Isa,
}

impl Tiling {
    fn new(ins: usize, outs: usize, h: usize, w: usize, isa: Isa) -> Self {
        let wp = w + 2;
        let span = (h - 1) * wp + w;
        let lanes = isa.lanes();
        // Lanes computed (channels and positions padded up to whole tiles) times loads per
        // multiply-add: 12 × 1 loads 13 per 12, 6 × 2 only 8, and measured 1.4x slower at the
        // same lanes (128 channels at 3×3), so it wins only on maps of one vector.
        let cost = |(co, v): (usize, usize)| {
            outs.div_ceil(co) * co * span.div_ceil(lanes * v) * lanes * v * (co + v) / (co * v)
        };
        let (co, v) = isa
            .shapes()
            .iter()
            .copied()
            .rev()
            .min_by_key(|&s| cost(s))
            .expect("shapes");
        Tiling {
            ins,
            outs,
            h,
            w,
            wp,
            plane: (h + 2) * wp,
            span,
            co,
            v,
            isa,
        }
    }

    fn blocks(&self) -> usize {
        self.outs.div_ceil(self.co)
    }

    fn tiles(&self) -> usize {
        self.span.div_ceil(self.width())
    }

    /// Positions per tile.
    fn width(&self) -> usize {
        self.isa.lanes() * self.v
    }

    /// Filters as the tile reads them, `[block][in][tap][co]`, zero past the last output
    /// channel; `weight(o, i, t)` is output channel `o`'s tap `t` (`ky·3 + kx`) on input `i`.
    fn pack(&self, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        if self.lane_rows() {
            return self.pack_lanes(weight);
        }
        let mut packed = vec![0.0f32; self.blocks() * self.ins * 9 * self.co];
        for (b, block) in packed.chunks_mut(self.ins * 9 * self.co).enumerate() {
            for i in 0..self.ins {
                for t in 0..9 {
                    for j in 0..self.co {
                        let o = b * self.co + j;
                        if o < self.outs {
                            block[(i * 9 + t) * self.co + j] = weight(o, i, t);
                        }
                    }
                }
            }
        }
        packed
    }

    /// Copies block `b`'s real output channels from the tiles' rows (`out`, channel `j` at
    /// `j·tiles·width`, positions on the grid) into the image's NCHW output, every pixel.
    fn store_block(&self, b: usize, out: &[f32], img_out: &mut [MaybeUninit<f32>]) {
        let (hw, row) = (self.h * self.w, self.tiles() * self.width());
        for j in 0..self.co.min(self.outs - b * self.co) {
            let dst = &mut img_out[(b * self.co + j) * hw..][..hw];
            for (yy, line) in dst.chunks_mut(self.w).enumerate() {
                let src = &out[j * row + yy * self.wp..][..self.w];
                for (d, &v) in line.iter_mut().zip(src) {
                    d.write(v);
                }
            }
        }
    }

    /// Copies one image into the interior of its zero-bordered grid.
    fn border(&self, img: &[f32], grid: &mut [f32]) {
        let hw = self.h * self.w;
        for (i, plane) in grid.chunks_mut(self.plane).take(self.ins).enumerate() {
            let src = &img[i * hw..(i + 1) * hw];
            self.bordered(plane, |yy, dst| {
                dst.copy_from_slice(&src[yy * self.w..][..self.w]);
            });
        }
    }

    /// Zeroes one grid plane's border and fills each interior row `yy` (its `w` cells) by `row`:
    /// the f32 grids' copy, or the bf16 kernels' rounding.
    fn bordered<T: Copy + Default>(&self, plane: &mut [T], row: impl Fn(usize, &mut [T])) {
        let wp = self.wp;
        plane[..wp].fill(T::default());
        for yy in 0..self.h {
            let line = &mut plane[(yy + 1) * wp..][..wp];
            line[0] = T::default();
            line[wp - 1] = T::default();
            row(yy, &mut line[1..=self.w]);
        }
        plane[(self.h + 1) * wp..].fill(T::default());
    }

    /// One tile: `co` output channels × `lanes·v` positions starting at `grid[0]`, into
    /// `out[j·stride ..]`.
    fn tile(&self, grid: &[f32], filters: &[f32], out: &mut [f32], stride: usize) {
        let width = self.width();
        // Every read the tile makes: the last input plane's farthest tap of its last lane.
        assert!(grid.len() >= (self.ins - 1) * self.plane + 2 * self.wp + 2 + width);
        assert!(filters.len() >= self.ins * 9 * self.co);
        assert!(out.len() >= (self.co - 1) * stride + width);
        let offs = taps(self.wp);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (Isa::detect), and the asserts above bound every
            // load and store the tile makes.
            Isa::Avx512 => unsafe {
                let (g, f, o) = (grid.as_ptr(), filters.as_ptr(), out.as_mut_ptr());
                match (self.co, self.v) {
                    (24, 1) => avx512::tile::<24, 1>(g, self.plane, &offs, self.ins, f, o, stride),
                    (12, 2) => avx512::tile::<12, 2>(g, self.plane, &offs, self.ins, f, o, stride),
                    (8, 3) => avx512::tile::<8, 3>(g, self.plane, &offs, self.ins, f, o, stride),
                    s => unreachable!("tile shape {s:?}"),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA (Isa::detect), and the asserts above bound
            // every load and store the tile makes.
            Isa::Avx2 => unsafe {
                let (g, f, o) = (grid.as_ptr(), filters.as_ptr(), out.as_mut_ptr());
                match (self.co, self.v) {
                    (12, 1) => avx2::tile::<12, 1>(g, self.plane, &offs, self.ins, f, o, stride),
                    (6, 2) => avx2::tile::<6, 2>(g, self.plane, &offs, self.ins, f, o, stride),
                    s => unreachable!("tile shape {s:?}"),
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => unreachable!("AVX is only detected on x86-64"),
            Isa::Portable => portable(
                grid, self.plane, &offs, self.ins, filters, out, stride, self.co, width,
            ),
        }
    }
}

/// Images whose grids one pass of the weight gradient holds: each accumulator is summed across
/// its lanes once per group, not once per image (on 3×3 and 7×7 maps a row is only 2 and 8
/// vectors long); 4 measured as fast as any larger group and faster than 1 or 2.
const GROUP: usize = 4;

/// Output channels per weight-gradient tile; with the three horizontal taps, nine accumulators.
const WG_OUTS: usize = 3;

/// Weight gradient: `dw[o][i][ky][kx] = Σ_n Σ_q dy[n][o][q] · grid(x)[n][i][q + ky·(w+2) + kx]`.
///
/// Chunked over the batch as the im2col path is ([`images_per_chunk`], [`sum_in_order`]): the
/// result is deterministic for a given thread count.
pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let tiling = Tiling::new(g.c, g.k, g.h, g.w, Isa::detect());
    let per = images_per_chunk(g.n);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|j| tiling.weight_grad(x, dy, j * per..((j + 1) * per).min(g.n)))
        .collect();
    sum_in_order(&partials, g.k * g.c * 9)
}

impl Tiling {
    /// Output-gradient row length on the grid: `span` rounded up to whole vectors.
    fn grad_row(&self) -> usize {
        self.span.div_ceil(8) * 8
    }

    /// One chunk's weight gradient, `[outs][ins][9]`.
    fn weight_grad(&self, x: &[f32], dy: &[f32], images: std::ops::Range<usize>) -> Vec<f32> {
        if self.isa == Isa::Avx512 {
            return self.weight_grad_lanes(x, dy, images);
        }
        let (hw, row) = (self.h * self.w, self.grad_row());
        let (x_img, dy_img) = (self.ins * self.plane, self.outs * row);
        let mut dw = vec![0.0f32; self.outs * self.ins * 9];
        // The last vector of a row reads up to 6 past `span + 2·wp + 2 = plane`.
        let mut grids = vec![0.0f32; GROUP * x_img + 8];
        // Zero on the border columns and past `span`: those lanes then add nothing.
        let mut grads = vec![0.0f32; GROUP * dy_img];
        let mut first = images.start;
        while first < images.end {
            let m = GROUP.min(images.end - first);
            for n in 0..m {
                let img = first + n;
                self.border(
                    &x[img * self.ins * hw..][..self.ins * hw],
                    &mut grids[n * x_img..],
                );
                let src = &dy[img * self.outs * hw..][..self.outs * hw];
                for (o, plane) in src.chunks(hw).enumerate() {
                    let dst = &mut grads[n * dy_img + o * row..][..row];
                    for (yy, line) in plane.chunks(self.w).enumerate() {
                        dst[yy * self.wp..][..self.w].copy_from_slice(line);
                    }
                }
            }
            for ob in (0..self.outs).step_by(WG_OUTS) {
                let outs = WG_OUTS.min(self.outs - ob);
                let block = &mut dw[ob * self.ins * 9..][..outs * self.ins * 9];
                self.weight_block(&grads[ob * row..], &grids, m, outs, block);
            }
            first += m;
        }
        dw
    }

    /// Adds `Σ_n Σ_q grads[n][j][q] · grids[n][i][q + ky·wp + kx]` to `dw[j][i][ky·3 + kx]` for
    /// `outs` channels `j` (`grads` starts at the block's first), over `m` images.
    fn weight_block(&self, grads: &[f32], grids: &[f32], m: usize, outs: usize, dw: &mut [f32]) {
        let (row, x_img, dy_img) = (
            self.grad_row(),
            self.ins * self.plane,
            self.outs * self.grad_row(),
        );
        assert!(m >= 1 && (1..=WG_OUTS).contains(&outs));
        assert!(grads.len() >= (m - 1) * dy_img + outs * row);
        // The farthest read: the last image's last plane, the third row's third tap.
        assert!(
            grids.len() >= (m - 1) * x_img + (self.ins - 1) * self.plane + 2 * self.wp + row + 2
        );
        assert!(dw.len() >= outs * self.ins * 9);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA (Isa::detect: AVX-512 only with them), and
            // the asserts above bound every load and store the block makes.
            Isa::Avx512 | Isa::Avx2 => unsafe {
                let shape = Rows {
                    dy_img,
                    row,
                    x_img,
                    plane: self.plane,
                    wp: self.wp,
                    ins: self.ins,
                    images: m,
                };
                let (d, g, o) = (grads.as_ptr(), grids.as_ptr(), dw.as_mut_ptr());
                match outs {
                    1 => avx2::weight_block::<1>(d, g, o, shape),
                    2 => avx2::weight_block::<2>(d, g, o, shape),
                    _ => avx2::weight_block::<3>(d, g, o, shape),
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => unreachable!("AVX is only detected on x86-64"),
            Isa::Portable => {
                for j in 0..outs {
                    for i in 0..self.ins {
                        for t in 0..9 {
                            let off = i * self.plane + (t / 3) * self.wp + t % 3;
                            let mut s = 0.0f32;
                            for n in 0..m {
                                let d = &grads[n * dy_img + j * row..][..row];
                                let xs = &grids[n * x_img + off..][..row];
                                s += d.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
                            }
                            dw[(j * self.ins + i) * 9 + t] += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
