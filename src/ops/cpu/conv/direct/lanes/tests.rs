use super::super::tests::CASES;
use super::super::{Isa, Tiling};
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
        .map(|&(c, k, h, w)| Tiling::new(c, k, h, w, Isa::Avx512))
        .filter(|p| p.lane_rows())
        .map(|p| {
            let v = p.row_shape().vectors.min(p.lane_outs().0);
            p.ins.div_ceil(p.lane_pass(p.ins, v)).min(3)
        })
        .collect();
    assert_eq!(passes, [1, 2, 3].into_iter().collect(), "{passes:?}");
}
