//! Cutout: squares centred on uniformly random pixels, clipped at the border.

/// A half-open pixel rectangle `[y0, y1) × [x0, x1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// First row.
    pub y0: usize,
    /// One past the last row.
    pub y1: usize,
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
}

/// Draws one square of side `length` centred on a uniformly random pixel, clipped to the image:
/// rows `[cy − length/2, cy + length/2)`, as DeVries & Taylor's and the PBA authors' code.
pub fn draw_box(rng: &mut fastrand::Rng, height: usize, width: usize, length: usize) -> Rect {
    let cy = rng.usize(0..height);
    let cx = rng.usize(0..width);
    let half = length / 2;
    Rect {
        y0: cy.saturating_sub(half),
        y1: (cy + half).min(height),
        x0: cx.saturating_sub(half),
        x1: (cx + half).min(width),
    }
}

/// Fills `rect` of an HWC `u8` image with `fill` (one value per channel).
pub fn fill_u8(img: &mut [u8], width: usize, rect: Rect, fill: &[u8]) {
    let c = fill.len();
    for y in rect.y0..rect.y1 {
        for px in img[(y * width + rect.x0) * c..(y * width + rect.x1) * c].chunks_exact_mut(c) {
            px.copy_from_slice(fill);
        }
    }
}

/// Zeroes `rect` in every plane of a CHW `f32` image (zero = the mean after normalisation).
pub fn zero_chw(img: &mut [f32], height: usize, width: usize, rect: Rect) {
    for plane in img.chunks_exact_mut(height * width) {
        for y in rect.y0..rect.y1 {
            plane[y * width + rect.x0..y * width + rect.x1].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_clipped_squares_around_the_drawn_centre() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..500 {
            let mut probe = rng.clone();
            let (cy, cx) = (probe.usize(0..32), probe.usize(0..32));
            let r = draw_box(&mut rng, 32, 32, 4);
            assert_eq!((r.y0, r.y1), (cy.saturating_sub(2), (cy + 2).min(32)));
            assert_eq!((r.x0, r.x1), (cx.saturating_sub(2), (cx + 2).min(32)));
            assert!(r.y1 - r.y0 <= 4 && r.x1 - r.x0 <= 4);
        }
    }

    #[test]
    fn fill_touches_exactly_the_rectangle() {
        let mut img = vec![1u8; 5 * 4 * 3];
        let r = Rect {
            y0: 1,
            y1: 3,
            x0: 2,
            x1: 5,
        };
        fill_u8(&mut img, 5, r, &[7, 8, 9]);
        for y in 0..4 {
            for x in 0..5 {
                let px = &img[(y * 5 + x) * 3..][..3];
                let inside = (1..3).contains(&y) && (2..5).contains(&x);
                assert_eq!(
                    px,
                    if inside {
                        &[7, 8, 9][..]
                    } else {
                        &[1, 1, 1][..]
                    }
                );
            }
        }
        let mut chw = vec![1f32; 2 * 4 * 5];
        zero_chw(&mut chw, 4, 5, r);
        assert_eq!(chw.iter().filter(|&&v| v == 0.0).count(), 2 * 2 * 3);
        assert_eq!(chw[5 + 2], 0.0);
        assert_eq!(chw[20 + 5 + 2], 0.0);
    }
}
