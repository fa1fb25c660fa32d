//! The forward drivers, over position tiles ([`Tiling::run_with`]) and channel-lane row tiles
//! ([`Tiling::run_lanes`]), for either kind of operand: f32 values, or the bf16 kernels' pairs
//! of input channels. The loops (images in parallel, output blocks, tiles, passes of input
//! channels) are one; the grids and the tiles that read them are the operand's.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::lanes::{blocks, RowTile, LANES};
use super::{taps, Tiling};

/// One kind of operand for the forward drivers.
pub(super) trait Operand {
    /// One grid cell: an f32 value, or a pair of bf16 values.
    type Cell: Copy + Default + Send + Sync;

    /// Grid planes per image (input channels, or their pairs): the count the filters and
    /// passes run over.
    fn planes(plan: &Tiling) -> usize;

    /// Copies one image (`[ins][h][w]`) into its zero-bordered grid, `[plane][(h+2)·(w+2)]`.
    fn border(plan: &Tiling, img: &[f32], grid: &mut [Self::Cell]);

    /// One position tile: `co` output channels × `lanes·v` positions from `grid[0]`, into
    /// `out[j·stride ..]`.
    fn tile(
        plan: &Tiling,
        grid: &[Self::Cell],
        filters: &[Self::Cell],
        out: &mut [f32],
        stride: usize,
    );

    /// One channel-lane row tile ([`RowTile::run`]'s contract, `ins` counting planes).
    fn row(
        tile: RowTile,
        grid: &[Self::Cell],
        offs: &[usize; 9],
        filters: &[Self::Cell],
        sums: (&mut [f32], bool),
        out: Option<&mut [MaybeUninit<f32>]>,
    );
}

/// f32 values, one input channel a plane: the kernels of [`super::tiles`] and [`super::lanes`].
pub(super) struct F32;

impl Operand for F32 {
    type Cell = f32;

    fn planes(plan: &Tiling) -> usize {
        plan.ins
    }

    fn border(plan: &Tiling, img: &[f32], grid: &mut [f32]) {
        plan.border(img, grid);
    }

    fn tile(plan: &Tiling, grid: &[f32], filters: &[f32], out: &mut [f32], stride: usize) {
        plan.tile(grid, filters, out, stride);
    }

    fn row(
        tile: RowTile,
        grid: &[f32],
        offs: &[usize; 9],
        filters: &[f32],
        (sums, resume): (&mut [f32], bool),
        out: Option<&mut [MaybeUninit<f32>]>,
    ) {
        tile.run(grid, offs, filters, sums, resume, out);
    }
}

impl Tiling {
    /// The f32 convolution: [`Tiling::run_with`] on f32 values.
    pub(super) fn run(&self, x: &[f32], packed: &[f32], y: &mut [MaybeUninit<f32>]) {
        self.run_with::<F32>(x, packed, y);
    }

    /// Convolves every image of `x` (`[n][ins][h][w]`) into `y` (`[n][outs][h][w]`), writing
    /// every element of `y`; `packed` holds the filters as the operand's tiles read them
    /// ([`Tiling::pack`], or the bf16 kernels' pairs).
    pub(super) fn run_with<O: Operand>(
        &self,
        x: &[f32],
        packed: &[O::Cell],
        y: &mut [MaybeUninit<f32>],
    ) {
        if self.lane_rows() {
            return self.run_lanes::<O>(x, packed, y);
        }
        let (hw, width, planes) = (self.h * self.w, self.width(), O::planes(self));
        let row = self.tiles() * width;
        // Past the last plane: the last tile's lanes beyond `span` read up to `width` further.
        let grid_len = planes * self.plane + width;
        y.par_chunks_mut(self.outs * hw).enumerate().for_each_init(
            || {
                (
                    vec![O::Cell::default(); grid_len],
                    vec![0.0f32; self.co * row],
                )
            },
            |(grid, out), (n, img_out)| {
                O::border(self, &x[n * self.ins * hw..(n + 1) * self.ins * hw], grid);
                for b in 0..self.blocks() {
                    let filters = &packed[b * planes * 9 * self.co..][..planes * 9 * self.co];
                    for t in 0..self.tiles() {
                        O::tile(
                            self,
                            &grid[t * width..],
                            filters,
                            &mut out[t * width..],
                            row,
                        );
                    }
                    self.store_block(b, out, img_out);
                }
            },
        );
    }

    /// [`Tiling::run_with`] on channel-lane tiles: every image of `x` into `y`, images in parallel;
    /// each row piece's last pass stores all of its real channels, so every output is written.
    ///
    /// Input channels go in passes (filters streamed from L2 for every tile cost a sixth of
    /// the 32>128 @15 forward on a Sapphire Rapids-class Xeon): each pass but the last leaves
    /// its sums in a `[position][channel]` buffer the next one resumes from.
    fn run_lanes<O: Operand>(&self, x: &[f32], packed: &[O::Cell], y: &mut [MaybeUninit<f32>]) {
        let (hw, planes) = (self.h * self.w, O::planes(self));
        let (nv, op) = self.lane_outs();
        // The first piece is the longest, so its vectors fit every piece.
        let shape = self.row_shape();
        let per_pass = self.lane_pass(planes, shape.vectors.min(nv));
        let offs = taps(self.wp);
        y.par_chunks_mut(self.outs * hw).enumerate().for_each_init(
            || {
                let partial = if per_pass < planes { hw * op } else { 0 };
                (
                    vec![O::Cell::default(); planes * self.plane],
                    vec![0.0f32; partial],
                )
            },
            |(grid, partial), (n, img_out)| {
                O::border(self, &x[n * self.ins * hw..(n + 1) * self.ins * hw], grid);
                for i0 in (0..planes).step_by(per_pass) {
                    let ins = per_pass.min(planes - i0);
                    let (resume, last) = (i0 > 0, i0 + ins == planes);
                    for (ob, v) in blocks(nv, shape) {
                        let tile = RowTile {
                            positions: 0,
                            vectors: v,
                            ins,
                            plane: self.plane,
                            op,
                            hw,
                            outs: self.outs - ob * LANES,
                        };
                        let filters = &packed[planes * 9 * ob * LANES + i0 * 9 * v * LANES..];
                        for yy in 0..self.h {
                            let grid = &grid[i0 * self.plane + yy * self.wp..];
                            for (x0, positions) in self.row_pieces() {
                                let q0 = yy * self.w + x0;
                                let tile = RowTile { positions, ..tile };
                                let sums =
                                    partial.get_mut(q0 * op + ob * LANES..).unwrap_or(&mut []);
                                let out = last.then(|| &mut img_out[ob * LANES * hw + q0..]);
                                O::row(tile, &grid[x0..], &offs, filters, (sums, resume), out);
                            }
                        }
                    }
                }
            },
        );
    }
}
