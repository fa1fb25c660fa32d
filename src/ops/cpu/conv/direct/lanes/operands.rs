//! What the channel-lane kernels are handed: the vector width and each tile's operand layout,
//! shared by the tilings (`mod.rs`) and the AVX-512 kernels (`avx512.rs`).

/// Output channels per vector.
pub(in crate::ops::cpu::conv::direct) const LANES: usize = 16;

/// Where one tile's operands lie, in elements: floats, or for the bf16 products pairs (the
/// gradient) and bf16 values (the grids).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::ops::cpu::conv::direct) struct Walk {
    pub h: usize,
    pub w: usize,
    pub wp: usize,
    /// Padded output channels: the row of `acc` per tap.
    pub op: usize,
    /// Elements per position (a pair of positions for bf16) in the transposed gradient: the
    /// block's `16·v` channels.
    pub dstride: usize,
    /// One image's input grids (`ins · plane`).
    pub x_img: usize,
    /// Rows of the pass (image-major) the tile walks: `first..end`.
    pub first: usize,
    pub end: usize,
}

/// One forward tile: `positions` consecutive outputs of a row × `vectors` of channels.
#[derive(Clone, Copy, Debug)]
pub(in crate::ops::cpu::conv::direct) struct RowTile {
    pub positions: usize,
    pub vectors: usize,
    pub ins: usize,
    pub plane: usize,
    /// Padded output channels: the filters' row.
    pub op: usize,
    /// Positions per output plane: the stride between channels in NCHW.
    pub hw: usize,
    /// Real output channels from the block's first on (lanes past them are not stored).
    pub outs: usize,
}
