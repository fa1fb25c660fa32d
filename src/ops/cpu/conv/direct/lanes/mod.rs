//! The weight gradient with output channels in the vector's lanes (AVX-512F).
//!
//! The position-vector sums of [`Tiling::weight_block`] spend lanes on the grid's border columns
//! and on rounding each row up to whole vectors (nearly half of them on a 3×3 map), and sum
//! every accumulator across its lanes once per group of images. Here each image's output
//! gradient is transposed, per block of `V` vectors, to `[image][position][16·V]` (channels past
//! the block's real ones zero), and a tile of the
//! taps of one, or all three, kernel rows × `V` vectors of 16 output channels walks every real
//! output position of a strip of rows: per position `V` loads of the gradient and one broadcast
//! of the input (from the bordered grid) per tap, `taps · V` fused multiply-adds, nothing
//! summed across lanes and no border lanes. A strip is sized so that its gradient stays in L1
//! while the tile runs through every input channel.
//!
//! On maps of at most [`MAX_LANE_MAP`] columns the forward pass (and so the input gradient) runs
//! the same way: a tile of up to [`MAX_ROW`] positions of one output row × `V` vectors of output
//! channels sums the products of a pass of input channels (a broadcast of the input per
//! position and a load of the filters per vector; a block's filters contiguous, a pass's in
//! L1), resuming from the last pass's `[position][channel]` sums; the last pass transposes its
//! sums in registers straight into NCHW. Position vectors there would compute the border
//! columns and round each image up to whole vectors: 16 lanes for the 9 outputs of a 3×3 map, 2
//! of every 17 at 15×15.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::{taps, Isa, Tiling};
pub(super) use operands::{RowTile, Walk, LANES};

/// Bytes of one pass's transposed gradients and input grids: about half of a 1 MiB L2 (the
/// tests' small sizes take several passes and strips only with far smaller budgets).
pub(super) const PASS_BYTES: usize = if cfg!(test) { 16 * 1024 } else { 512 * 1024 };

/// Bytes of a strip's transposed gradient for one block of channels: half of a 48 KiB L1 (most
/// of 32 KiB on older cores).
pub(super) const STRIP_BYTES: usize = if cfg!(test) { 2 * 1024 } else { 24 * 1024 };

/// The tile's shape: kernel rows per tile (1 or 3) and the most vectors of channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub rows: usize,
    pub vectors: usize,
}

/// The shape with the fewest loads per position over all channel blocks, for `nv` vectors of
/// output channels: a tile of `3·rows` taps × `v` vectors loads `v + 3·rows` values per position
/// for its `3·rows·v` multiply-adds. Three rows × three vectors (27 accumulators) or one row ×
/// eight (24) fill AVX-512's 32 registers with the values each position loads.
pub(super) fn shape(nv: usize) -> Shape {
    let loads = |s: Shape| (3 / s.rows) * nv + 9 * nv.div_ceil(s.vectors);
    [
        Shape {
            rows: 3,
            vectors: 3,
        },
        Shape {
            rows: 1,
            vectors: 8,
        },
    ]
    .into_iter()
    .min_by_key(|&s| loads(s))
    .expect("shapes")
}

/// The channel blocks a gradient of `nv` vectors is cut into: `(first vector, vectors)`.
pub(super) fn blocks(nv: usize, shape: Shape) -> impl Iterator<Item = (usize, usize)> {
    (0..nv)
        .step_by(shape.vectors)
        .map(move |ob| (ob, shape.vectors.min(nv - ob)))
}

impl Tiling {
    /// Vectors of output channels, and the channels they pad `outs` to.
    pub(super) fn lane_outs(&self) -> (usize, usize) {
        let nv = self.outs.div_ceil(LANES);
        (nv, nv * LANES)
    }

    /// One chunk's weight gradient, `[outs][ins][9]`, with channels in the lanes.
    pub(super) fn weight_grad_lanes(
        &self,
        x: &[f32],
        dy: &[f32],
        images: Range<usize>,
    ) -> Vec<f32> {
        let hw = self.h * self.w;
        let (nv, op) = self.lane_outs();
        let (x_img, d_img) = (self.ins * self.plane, hw * op);
        let per_pass = (PASS_BYTES / (4 * (x_img + d_img))).clamp(1, images.len().max(1));
        let shape = shape(nv);
        let strip = (STRIP_BYTES / (4 * self.w * LANES * shape.vectors)).max(1);
        let offs = taps(self.wp);
        // `[ins][9][op]`: each tile adds its accumulators into its own taps and channels.
        let mut acc = vec![0.0f32; self.ins * 9 * op];
        // The broadcasts read real taps only: the grid's last plane needs no slack.
        let mut grids = vec![0.0f32; per_pass * x_img];
        // Channels past `outs` stay zero: their lanes add nothing.
        let mut grads = vec![0.0f32; per_pass * d_img];
        let mut first = images.start;
        while first < images.end {
            let m = per_pass.min(images.end - first);
            for n in 0..m {
                let img = first + n;
                self.border(
                    &x[img * self.ins * hw..][..self.ins * hw],
                    &mut grids[n * x_img..],
                );
            }
            // Per block of channels, `[image][position][16·v]`: a position's vectors
            // contiguous, so a strip of them fills L1 rather than the sets of its few lanes.
            for (ob, v) in blocks(nv, shape) {
                let block = &mut grads[ob * LANES * m * hw..][..v * LANES * m * hw];
                for (n, img) in block.chunks_mut(v * LANES * hw).enumerate() {
                    let src = &dy[((first + n) * self.outs + ob * LANES) * hw..];
                    let chans = (self.outs - ob * LANES).min(v * LANES);
                    transpose(&src[..chans * hw], hw, v, img);
                }
            }
            for (ob, v) in blocks(nv, shape) {
                for r0 in (0..m * self.h).step_by(strip) {
                    let walk = Walk {
                        h: self.h,
                        w: self.w,
                        wp: self.wp,
                        op,
                        dstride: v * LANES,
                        x_img,
                        first: r0,
                        end: (r0 + strip).min(m * self.h),
                    };
                    for i in 0..self.ins {
                        for ky in (0..3).step_by(shape.rows) {
                            let at = (i * 9 + ky * 3) * op + ob * LANES;
                            let grid = &grids[i * self.plane + offs[ky * 3]..];
                            tile(
                                shape.rows,
                                v,
                                &grads[ob * LANES * m * hw..],
                                grid,
                                walk,
                                &mut acc[at..],
                            );
                        }
                    }
                }
            }
            first += m;
        }
        filters_of(&acc, self.outs, self.ins, op)
    }
}

/// The weight gradient `[outs][ins][9]` from the tiles' sums `[ins][9][op]`.
pub(super) fn filters_of(acc: &[f32], outs: usize, ins: usize, op: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; outs * ins * 9];
    for (o, filters) in dw.chunks_mut(ins * 9).enumerate() {
        for (it, d) in filters.iter_mut().enumerate() {
            *d = acc[it * op + o];
        }
    }
    dw
}

/// Bytes of one forward pass's filters and input planes: most of a 48 KiB L1 (the tests' take
/// several passes on every case but one).
const ROW_PASS_BYTES: usize = if cfg!(test) { 2 * 1024 } else { 32 * 1024 };

/// The most positions of a row in one forward tile.
const MAX_ROW: usize = 8;

/// The widest map whose forward pass runs on channel-lane tiles. Measured on a Zen 5 (batch
/// 200, best of 20, three rounds): at 15 columns they beat the position tiles (32>32 and the
/// 128>32 input gradient ~10% faster, 32>128 a wash), at 31 they lose (24>32 forward 9.2 ms
/// against 8.2, its 32>24 input gradient 11 against 8).
const MAX_LANE_MAP: usize = 15;

/// Calls the row-tile kernel `$module::row::<P, V>` with `$args` for the tile `(p, v)`: one arm
/// per shape [`row_vectors`] allows, for the f32 and the bf16 kernels alike.
macro_rules! row_tile {
    ($module:ident, ($p:expr, $v:expr), $args:tt) => {
        $crate::ops::cpu::conv::direct::lanes::row_tile!(@ $module, ($p, $v), $args;
            1 => [1, 2, 3, 4, 5, 6, 7, 8],
            2 => [1, 2, 3, 4, 5, 6, 7, 8],
            3 => [1, 2, 3, 4, 5, 6, 7, 8],
            4 => [1, 2, 3, 4, 5, 6],
            5 => [1, 2, 3, 4],
            6 => [1, 2, 3, 4],
            7 => [1, 2, 3],
            8 => [1, 2, 3])
    };
    (@ $module:ident, ($p:expr, $v:expr), $args:tt; $($pp:literal => [$($vv:literal),*]),*) => {
        match ($p, $v) {
            $($(($pp, $vv) => $module::row::<$pp, $vv> $args,)*)*
            other => unreachable!("row tile {other:?}"),
        }
    };
}
pub(super) use row_tile;

/// The most vectors of channels a tile of `p` positions holds: `p·v` accumulators, and the
/// values one tap loads (the `p` broadcasts or the `v` filter vectors, whichever are fewer) and
/// one more, within AVX-512's 32 registers.
fn row_vectors(p: usize) -> usize {
    match p {
        1..=3 => 8,
        4 => 6,
        5 | 6 => 4,
        7 | 8 => 3,
        _ => unreachable!("rows of at most {MAX_ROW} positions"),
    }
}

impl Tiling {
    /// Whether [`Tiling::run_with`] takes channel-lane tiles: on AVX-512, maps of at most
    /// [`MAX_LANE_MAP`] columns.
    pub(super) fn lane_rows(&self) -> bool {
        self.isa == Isa::Avx512 && self.w <= MAX_LANE_MAP
    }

    /// A row's tiles: `(first column, positions)`, as few as hold at most [`MAX_ROW`] each, the
    /// longer first.
    pub(super) fn row_pieces(&self) -> impl Iterator<Item = (usize, usize)> {
        let pieces = self.w.div_ceil(MAX_ROW);
        let (base, extra) = (self.w / pieces, self.w % pieces);
        (0..pieces).map(move |i| (i * base + i.min(extra), base + usize::from(i < extra)))
    }

    /// The forward tile's shape: one row, and the vectors its longest (first) piece holds.
    pub(super) fn row_shape(&self) -> Shape {
        let (_, longest) = self.row_pieces().next().expect("a row has a piece");
        Shape {
            rows: 1,
            vectors: row_vectors(longest),
        }
    }

    /// Filters for [`Tiling::run_lanes`]: per block of `v` vectors (from the block's first, at
    /// `ins·9·16·first`), `[ins][9][16·v]`, zero past the last output channel. A block's
    /// filters are contiguous so that a pass's fit in L1: rows of all `op` channels, of which
    /// a block reads a few vectors, would fill only those vectors' cache sets.
    pub(super) fn pack_lanes(&self, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let (nv, op) = self.lane_outs();
        let mut packed = vec![0.0f32; self.ins * 9 * op];
        for (ob, v) in blocks(nv, self.row_shape()) {
            let block = &mut packed[self.ins * 9 * ob * LANES..][..self.ins * 9 * v * LANES];
            for (it, row) in block.chunks_mut(v * LANES).enumerate() {
                for (j, p) in row.iter_mut().enumerate() {
                    let o = ob * LANES + j;
                    if o < self.outs {
                        *p = weight(o, it / 9, it % 9);
                    }
                }
            }
        }
        packed
    }

    /// Inputs per pass of [`Tiling::run_lanes`] for blocks of `v` vectors, out of `count` (input
    /// channels, or the bf16 kernels' channel pairs: 4 bytes a lane either way): as many as keep
    /// a block's filters and their input planes in L1 while the pass walks the image.
    pub(super) fn lane_pass(&self, count: usize, v: usize) -> usize {
        let per_input = 9 * v * LANES * 4 + self.plane * 4;
        let passes = count.div_ceil((ROW_PASS_BYTES / per_input).max(1));
        count.div_ceil(passes)
    }
}

impl RowTile {
    /// Asserts that a tile's operands (`grid` and `filters` lengths in elements, each element
    /// one input channel's value or one pair's) hold every read and write the tile makes, and
    /// returns where its NCHW output goes (null: back into `sums`).
    pub(super) fn check(
        &self,
        (grid, offs, filters): (usize, &[usize; 9], usize),
        sums: &[f32],
        resume: bool,
        out: Option<&mut [MaybeUninit<f32>]>,
    ) -> *mut f32 {
        let (p, v) = (self.positions, self.vectors);
        assert!((1..=MAX_ROW).contains(&p) && (1..=row_vectors(p)).contains(&v));
        let far = offs.iter().max().expect("nine taps");
        assert!(grid >= (self.ins - 1) * self.plane + far + p);
        assert!(filters >= self.ins * 9 * v * LANES);
        let stored = self.outs.min(v * LANES);
        assert!(stored > (v - 1) * LANES);
        if resume || out.is_none() {
            assert!(sums.len() >= (p - 1) * self.op + v * LANES);
        }
        match out {
            Some(out) => {
                assert!(out.len() >= (stored - 1) * self.hw + p);
                out.as_mut_ptr().cast::<f32>()
            }
            None => std::ptr::null_mut(),
        }
    }

    /// Sums the tile's `9·ins` products, from `sums[p·op + 16·v ..]` with `resume` (else from
    /// zero), into NCHW `out[(16·v + lane)·hw + p]` if given (`out` from the block's first
    /// channel and the piece's first position), else back into `sums`; `grid` is read from the
    /// row's first position and `filters` from the block's first channel.
    pub(super) fn run(
        &self,
        grid: &[f32],
        offs: &[usize; 9],
        filters: &[f32],
        sums: &mut [f32],
        resume: bool,
        out: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let (p, v) = (self.positions, self.vectors);
        let out = self.check((grid.len(), offs, filters.len()), sums, resume, out);
        #[cfg(target_arch = "x86_64")]
        {
            assert!(std::arch::is_x86_feature_detected!("avx512f"));
            let (g, f, o) = (grid.as_ptr(), filters.as_ptr(), out);
            let r = (sums.as_mut_ptr(), resume);
            // SAFETY: the CPU has AVX-512F (checked above), and the asserts bound every load
            // and store the tile makes.
            unsafe { row_tile!(avx512, (p, v), (g, offs, *self, f, r, o)) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("channel-lane tiles run on AVX-512 only");
    }
}

/// `dst[q·16v + o] = src[o·hw + q]` for one image and block: `src` holds the block's real
/// channels (`[chans][hw]`), `dst` is `[hw][16·v]`, zero past them.
pub(super) fn transpose(src: &[f32], hw: usize, v: usize, dst: &mut [f32]) {
    let chans = src.len() / hw.max(1);
    assert!(src.len() == chans * hw && chans <= v * LANES && dst.len() >= hw * v * LANES);
    // Every vector but the last holds at least one real channel, so no load starts past `src`.
    assert!(chans > (v - 1) * LANES);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        for j in 0..v {
            let real = chans.saturating_sub(j * LANES).min(LANES);
            for q0 in (0..hw).step_by(8) {
                let count = (hw - q0).min(8);
                // SAFETY: AVX-512F is present (checked above); the loads read channels
                // `16j .. 16j + real` at positions `q0 .. q0 + count` of `src`, the stores
                // `count` rows of 16 at `(q0 + p)·16v + 16j` within `dst` (both asserted).
                unsafe {
                    avx512::positions_of(
                        src.as_ptr().add(j * LANES * hw + q0),
                        hw,
                        real,
                        count,
                        dst.as_mut_ptr().add(q0 * v * LANES + j * LANES),
                        v * LANES,
                    )
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("channel-lane tiles run on AVX-512 only");
}

/// Adds one tile's sums into `acc` (`[taps][op]` from the tile's first tap and channel):
/// `rows` kernel rows from the one `grid` starts at, `v` vectors of channels from `grads`.
fn tile(rows: usize, v: usize, grads: &[f32], grid: &[f32], s: Walk, acc: &mut [f32]) {
    let last = s.end - 1;
    let (n, y) = (last / s.h, last % s.h);
    // The farthest reads: the last row's last position, its last tap and last vector.
    assert!(v * LANES <= s.dstride);
    assert!(grads.len() >= ((n * s.h + y) * s.w + s.w - 1) * s.dstride + v * LANES);
    // Earlier images' rows lie below the last one's only if an image's grid holds its rows.
    assert!(s.x_img >= (s.h + 2) * s.wp);
    assert!(grid.len() > n * s.x_img + (y + rows - 1) * s.wp + s.w + 1);
    assert!(acc.len() >= (3 * rows - 1) * s.op + v * LANES);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        let (d, g, a) = (grads.as_ptr(), grid.as_ptr(), acc.as_mut_ptr());
        // SAFETY: the CPU has AVX-512F (checked above), and the asserts bound every load and
        // store the tile makes.
        unsafe {
            match (rows, v) {
                (3, 1) => avx512::tile::<3, 1>(d, g, s, a),
                (3, 2) => avx512::tile::<3, 2>(d, g, s, a),
                (3, 3) => avx512::tile::<3, 3>(d, g, s, a),
                (1, 1) => avx512::tile::<1, 1>(d, g, s, a),
                (1, 2) => avx512::tile::<1, 2>(d, g, s, a),
                (1, 3) => avx512::tile::<1, 3>(d, g, s, a),
                (1, 4) => avx512::tile::<1, 4>(d, g, s, a),
                (1, 5) => avx512::tile::<1, 5>(d, g, s, a),
                (1, 6) => avx512::tile::<1, 6>(d, g, s, a),
                (1, 7) => avx512::tile::<1, 7>(d, g, s, a),
                (1, 8) => avx512::tile::<1, 8>(d, g, s, a),
                other => unreachable!("tile shape {other:?}"),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("channel-lane tiles run on AVX-512 only");
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;
mod operands;

#[cfg(test)]
mod tests;
