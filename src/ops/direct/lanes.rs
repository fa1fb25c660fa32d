//! The weight gradient with output channels in the vector's lanes (AVX-512F).
//!
//! The position-vector sums of [`Plan::weight_block`] spend lanes on the grid's border columns
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

use rayon::prelude::*;

use super::{taps, Kernel, Plan};

/// Output channels per vector.
pub(super) const LANES: usize = 16;

/// Bytes of one pass's transposed gradients and input grids: about half of a 1 MiB L2 (the
/// tests' small sizes take several passes and strips only with far smaller budgets).
const PASS_BYTES: usize = if cfg!(test) { 16 * 1024 } else { 512 * 1024 };

/// Bytes of a strip's transposed gradient for one block of channels: half of a 48 KiB L1 (most
/// of 32 KiB on older cores).
const STRIP_BYTES: usize = if cfg!(test) { 2 * 1024 } else { 24 * 1024 };

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

/// Where one tile's operands lie, in floats.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Walk {
    h: usize,
    w: usize,
    wp: usize,
    /// Padded output channels: the row of `acc` per tap.
    op: usize,
    /// Floats per position in the transposed gradient: the block's `16·v` channels.
    dstride: usize,
    /// One image's input grids (`ins · plane`).
    x_img: usize,
    /// Rows of the pass (image-major) the tile walks: `first..end`.
    first: usize,
    end: usize,
}

impl Plan {
    /// Vectors of output channels, and the channels they pad `outs` to.
    fn lane_outs(&self) -> (usize, usize) {
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
        let mut dw = vec![0.0f32; self.outs * self.ins * 9];
        for (o, filters) in dw.chunks_mut(self.ins * 9).enumerate() {
            for (it, d) in filters.iter_mut().enumerate() {
                *d = acc[it * op + o];
            }
        }
        dw
    }
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

impl Plan {
    /// Whether [`Plan::run`] takes channel-lane tiles: on AVX-512, maps of at most
    /// [`MAX_LANE_MAP`] columns.
    pub(super) fn lane_rows(&self) -> bool {
        self.kernel == Kernel::Avx512 && self.w <= MAX_LANE_MAP
    }

    /// A row's tiles: `(first column, positions)`, as few as hold at most [`MAX_ROW`] each, the
    /// longer first.
    fn row_pieces(&self) -> impl Iterator<Item = (usize, usize)> {
        let pieces = self.w.div_ceil(MAX_ROW);
        let (base, extra) = (self.w / pieces, self.w % pieces);
        (0..pieces).map(move |i| (i * base + i.min(extra), base + usize::from(i < extra)))
    }

    /// The forward tile's shape: one row, and the vectors its longest (first) piece holds.
    fn row_shape(&self) -> Shape {
        let (_, longest) = self.row_pieces().next().expect("a row has a piece");
        Shape {
            rows: 1,
            vectors: row_vectors(longest),
        }
    }

    /// Filters for [`Plan::run_lanes`]: per block of `v` vectors (from the block's first, at
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

    /// Input channels per pass of [`Plan::run_lanes`] for blocks of `v` vectors: as many as
    /// keep a block's filters and their input planes in L1 while the pass walks the image.
    fn lane_pass_ins(&self, v: usize) -> usize {
        let per_input = 9 * v * LANES * 4 + self.plane * 4;
        let passes = self.ins.div_ceil((ROW_PASS_BYTES / per_input).max(1));
        self.ins.div_ceil(passes)
    }

    /// [`Plan::run`] on channel-lane tiles: every image of `x` into `y`, images in parallel;
    /// each row piece's last pass stores all of its real channels, so every output is written.
    ///
    /// Input channels go in passes (filters streamed from L2 for every tile cost a sixth of
    /// the 32>128 @15 forward on a Sapphire Rapids-class Xeon): each pass but the last leaves
    /// its sums in a `[position][channel]` buffer the next one resumes from.
    pub(super) fn run_lanes(&self, x: &[f32], packed: &[f32], y: &mut [MaybeUninit<f32>]) {
        let hw = self.h * self.w;
        let (nv, op) = self.lane_outs();
        // The first piece is the longest, so its vectors fit every piece.
        let shape = self.row_shape();
        let per_pass = self.lane_pass_ins(shape.vectors.min(nv));
        let offs = taps(self.wp);
        y.par_chunks_mut(self.outs * hw).enumerate().for_each_init(
            || {
                let partial = if per_pass < self.ins { hw * op } else { 0 };
                (vec![0.0f32; self.ins * self.plane], vec![0.0f32; partial])
            },
            |(grid, partial), (n, img_out)| {
                self.border(&x[n * self.ins * hw..(n + 1) * self.ins * hw], grid);
                for i0 in (0..self.ins).step_by(per_pass) {
                    let ins = per_pass.min(self.ins - i0);
                    let (resume, last) = (i0 > 0, i0 + ins == self.ins);
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
                        let filters = &packed[self.ins * 9 * ob * LANES + i0 * 9 * v * LANES..];
                        for yy in 0..self.h {
                            let grid = &grid[i0 * self.plane + yy * self.wp..];
                            for (x0, positions) in self.row_pieces() {
                                let q0 = yy * self.w + x0;
                                let tile = RowTile { positions, ..tile };
                                let sums =
                                    partial.get_mut(q0 * op + ob * LANES..).unwrap_or(&mut []);
                                let out = last.then(|| &mut img_out[ob * LANES * hw + q0..]);
                                tile.run(&grid[x0..], &offs, filters, sums, resume, out);
                            }
                        }
                    }
                }
            },
        );
    }
}

/// One forward tile: `positions` consecutive outputs of a row × `vectors` of channels.
#[derive(Clone, Copy, Debug)]
struct RowTile {
    positions: usize,
    vectors: usize,
    ins: usize,
    plane: usize,
    /// Padded output channels: the filters' row.
    op: usize,
    /// Positions per output plane: the stride between channels in NCHW.
    hw: usize,
    /// Real output channels from the block's first on (lanes past them are not stored).
    outs: usize,
}

impl RowTile {
    /// Sums the tile's `9·ins` products, from `sums[p·op + 16·v ..]` with `resume` (else from
    /// zero), into NCHW `out[(16·v + lane)·hw + p]` if given (`out` from the block's first
    /// channel and the piece's first position), else back into `sums`; `grid` is read from the
    /// row's first position and `filters` from the block's first channel.
    fn run(
        &self,
        grid: &[f32],
        offs: &[usize; 9],
        filters: &[f32],
        sums: &mut [f32],
        resume: bool,
        out: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let (p, v) = (self.positions, self.vectors);
        assert!((1..=MAX_ROW).contains(&p) && (1..=row_vectors(p)).contains(&v));
        let far = offs.iter().max().expect("nine taps");
        assert!(grid.len() >= (self.ins - 1) * self.plane + far + p);
        assert!(filters.len() >= self.ins * 9 * v * LANES);
        let stored = self.outs.min(v * LANES);
        assert!(stored > (v - 1) * LANES);
        if resume || out.is_none() {
            assert!(sums.len() >= (p - 1) * self.op + v * LANES);
        }
        let out = match out {
            Some(out) => {
                assert!(out.len() >= (stored - 1) * self.hw + p);
                out.as_mut_ptr().cast::<f32>()
            }
            None => std::ptr::null_mut(),
        };
        #[cfg(target_arch = "x86_64")]
        {
            assert!(std::arch::is_x86_feature_detected!("avx512f"));
            let (g, f, o) = (grid.as_ptr(), filters.as_ptr(), out);
            let r = (sums.as_mut_ptr(), resume);
            macro_rules! dispatch {
                ($($p:literal => [$($v:literal),*]),*) => {
                    match (p, v) {
                        // SAFETY: the CPU has AVX-512F (checked above), and the asserts bound
                        // every load and store the tile makes.
                        $($(($p, $v) => unsafe { avx512::row::<$p, $v>(g, offs, *self, f, r, o) },)*)*
                        other => unreachable!("row tile {other:?}"),
                    }
                };
            }
            dispatch!(
                1 => [1, 2, 3, 4, 5, 6, 7, 8],
                2 => [1, 2, 3, 4, 5, 6, 7, 8],
                3 => [1, 2, 3, 4, 5, 6, 7, 8],
                4 => [1, 2, 3, 4, 5, 6],
                5 => [1, 2, 3, 4],
                6 => [1, 2, 3, 4],
                7 => [1, 2, 3],
                8 => [1, 2, 3]
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("channel-lane tiles run on AVX-512 only");
    }
}

/// `dst[q·16v + o] = src[o·hw + q]` for one image and block: `src` holds the block's real
/// channels (`[chans][hw]`), `dst` is `[hw][16·v]`, zero past them.
fn transpose(src: &[f32], hw: usize, v: usize, dst: &mut [f32]) {
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
mod avx512 {
    use std::arch::x86_64::*;

    use super::{RowTile, Walk, LANES};

    /// `P` positions × `V` vectors of output channels over all `9·ins` products, then one
    /// store each.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and the operands hold what [`RowTile::run`] asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row<const P: usize, const V: usize>(
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
                    let wv: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(f.add(LANES * v)));
                    for (p, lanes) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*src.add(off + p));
                        for (a, &wv) in lanes.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(b, wv, *a);
                        }
                    }
                }
            }
        }
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
                out[8 * k + 4 + j] =
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
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
            let g: [*const f32; R] =
                std::array::from_fn(|ky| grid.add(n * s.x_img + (y + ky) * s.wp));
            for xx in 0..s.w {
                if R == 1 {
                    // 24 accumulators and three broadcasts: each vector loaded as it is used.
                    let b: [__m512; 3] =
                        std::array::from_fn(|kx| _mm512_set1_ps(*g[0].add(xx + kx)));
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::CASES;
    use super::super::{Kernel, Plan};
    use super::{blocks, shape, LANES};

    #[test]
    fn every_channel_lane_tile_is_run_somewhere_in_the_cases() {
        let tiles: std::collections::BTreeSet<_> = CASES
            .iter()
            .flat_map(|&(_, k, _, _)| {
                let nv = k.div_ceil(LANES);
                let shape = shape(nv);
                blocks(nv, shape).map(move |(_, v)| (shape.rows, v))
            })
            .collect();
        let want = [(1, 4), (1, 7), (1, 8), (3, 1), (3, 2), (3, 3)];
        assert_eq!(tiles, want.into_iter().collect(), "{tiles:?}");
    }

    #[test]
    fn the_forward_passes_over_input_channels_come_one_two_and_more_in_the_cases() {
        // One pass (sums straight to NCHW), two (a start and a finish) and three or more (a
        // pass that resumes and stores again), so every way through a row tile is checked.
        let passes: std::collections::BTreeSet<_> = CASES
            .iter()
            .map(|&(c, k, h, w)| Plan::new(c, k, h, w, Kernel::Avx512))
            .filter(|p| p.lane_rows())
            .map(|p| {
                let v = p.row_shape().vectors.min(p.lane_outs().0);
                p.ins.div_ceil(p.lane_pass_ins(v)).min(3)
            })
            .collect();
        assert_eq!(passes, [1, 2, 3].into_iter().collect(), "{passes:?}");
    }
}
