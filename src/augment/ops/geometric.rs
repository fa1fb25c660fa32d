//! Geometric operations on HWC `u8` images: PIL-exact affine sampling (rotate, shear, translate),
//! horizontal flip, and pad-and-crop.

use crate::store::Shape;

/// What fills pixels that a padding or a geometric op uncovers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PadFill {
    /// Zero bytes (black).
    Zero,
    /// The dataset's mean colour (zero after normalisation).
    Mean,
    /// Mirror the image at its border without repeating the edge (`reflect` in numpy/torch).
    Reflect,
}

/// Samples `src` through an affine map exactly as PIL's `Image.transform(AFFINE, NEAREST)` does.
///
/// Output pixel `(x, y)` takes input pixel `(a·(x+½) + b·(y+½) + c, d·(x+½) + e·(y+½) + f)`,
/// rounded toward −∞; pixels that fall outside take `fill`. Like PIL, a pure shift/scale is
/// sampled in `f64` and anything with rotation or shear in 16.16 fixed point, accumulated row by
/// row in PIL's order, so results match it bit for bit.
pub fn affine(src: &[u8], dst: &mut [u8], shape: Shape, m: [f64; 6], fill: &[u8]) {
    let (w, h, c) = (
        shape.width as i64,
        shape.height as i64,
        shape.channels as usize,
    );
    debug_assert_eq!(fill.len(), c);
    let whole = |v: f64| v.fract() == 0.0 && v.abs() < 1e9;
    if m[0] == 1.0 && m[1] == 0.0 && m[3] == 0.0 && m[4] == 1.0 && whole(m[2]) && whole(m[5]) {
        // A whole-pixel shift: PIL samples input (x + c, y + f) exactly; copy row spans.
        shift(src, dst, shape, m[2] as i64, m[5] as i64, fill);
        return;
    }
    let mut put = |x: i64, y: i64, xi: i64, yi: i64| {
        let o = ((y * w + x) as usize) * c;
        let from = if (0..w).contains(&xi) && (0..h).contains(&yi) {
            &src[((yi * w + xi) as usize) * c..]
        } else {
            fill
        };
        // A constant length lets RGB copies compile to moves instead of a `memcpy` per pixel.
        if c == 3 {
            dst[o..o + 3].copy_from_slice(&from[..3]);
        } else {
            dst[o..o + c].copy_from_slice(&from[..c]);
        }
    };
    let fits = |x: f64, y: f64| {
        (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0
    };
    let (fw, fh) = (w as f64, h as f64);
    let fixed = fits(0.0, 0.0) && fits(fw, fh) && fits(0.0, fh) && fits(fw, 0.0);
    if (m[1] != 0.0 || m[3] != 0.0) && fixed {
        let fix = |v: f64| -> i64 {
            if v < 0.0 {
                v.floor() as i64
            } else {
                v as i64
            }
        };
        let fix = |v: f64| fix(v * 65536.0 + 0.5);
        let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
        let mut xo = fix(m[2] + m[1] * 0.5 + m[0] * 0.5);
        let mut yo = fix(m[5] + m[4] * 0.5 + m[3] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (xo, yo);
            for x in 0..w {
                put(x, y, xx >> 16, yy >> 16);
                xx += a0;
                yy += a3;
            }
            xo += a1;
            yo += a4;
        }
    } else {
        let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
        let mut xo = m[2] + m[1] * 0.5 + m[0] * 0.5;
        let mut yo = m[5] + m[4] * 0.5 + m[3] * 0.5;
        for y in 0..h {
            let (mut xx, mut yy) = (xo, yo);
            for x in 0..w {
                put(x, y, coord(xx), coord(yy));
                xx += m[0];
                yy += m[3];
            }
            xo += m[1];
            yo += m[4];
        }
    }
}

/// Output `(x, y)` = input `(x + sx, y + sy)`, `fill` outside.
fn shift(src: &[u8], dst: &mut [u8], shape: Shape, sx: i64, sy: i64, fill: &[u8]) {
    let (w, h, c) = (
        shape.width as i64,
        shape.height as i64,
        shape.channels as usize,
    );
    // Output columns whose source column lies inside the image.
    let (x0, x1) = ((-sx).clamp(0, w), (w - sx).clamp(0, w));
    for y in 0..h {
        let out = &mut dst[(y * w) as usize * c..((y + 1) * w) as usize * c];
        let yi = y + sy;
        if !(0..h).contains(&yi) || x0 >= x1 {
            out.chunks_exact_mut(c)
                .for_each(|px| px.copy_from_slice(fill));
            continue;
        }
        out[..x0 as usize * c]
            .chunks_exact_mut(c)
            .for_each(|px| px.copy_from_slice(fill));
        out[x1 as usize * c..]
            .chunks_exact_mut(c)
            .for_each(|px| px.copy_from_slice(fill));
        let from = ((yi * w + x0 + sx) as usize) * c;
        out[x0 as usize * c..x1 as usize * c]
            .copy_from_slice(&src[from..from + (x1 - x0) as usize * c]);
    }
}

/// Rotates counter-clockwise by `degrees` about the centre, as PIL's `Image.rotate` (nearest).
pub fn rotate(src: &[u8], dst: &mut [u8], shape: Shape, degrees: f64, fill: &[u8]) {
    let angle = degrees.rem_euclid(360.0);
    if angle == 0.0 {
        dst.copy_from_slice(src);
        return;
    }
    let (cx, cy) = (shape.width as f64 / 2.0, shape.height as f64 / 2.0);
    let theta = (-angle).to_radians();
    // PIL rounds the matrix to 15 decimals so that e.g. cos(90°) is exactly 0.
    let round15 = |v: f64| (v * 1e15).round() / 1e15;
    let (a, b, d, e) = (
        round15(theta.cos()),
        round15(theta.sin()),
        round15(-theta.sin()),
        round15(theta.cos()),
    );
    let c = a * -cx + b * -cy + cx;
    let f = d * -cx + e * -cy + cy;
    affine(src, dst, shape, [a, b, c, d, e, f], fill);
}

/// Shears along x: input `x' = x + factor·y` (PIL `AFFINE (1, factor, 0, 0, 1, 0)`).
pub fn shear_x(src: &[u8], dst: &mut [u8], shape: Shape, factor: f64, fill: &[u8]) {
    affine(src, dst, shape, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill);
}

/// Shears along y: input `y' = factor·x + y` (PIL `AFFINE (1, 0, 0, factor, 1, 0)`).
pub fn shear_y(src: &[u8], dst: &mut [u8], shape: Shape, factor: f64, fill: &[u8]) {
    affine(src, dst, shape, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill);
}

/// Translates by `pixels` along x: output `(x, y)` = input `(x + pixels, y)` (PIL convention).
pub fn translate_x(src: &[u8], dst: &mut [u8], shape: Shape, pixels: f64, fill: &[u8]) {
    affine(src, dst, shape, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill);
}

/// Translates by `pixels` along y: output `(x, y)` = input `(x, y + pixels)` (PIL convention).
pub fn translate_y(src: &[u8], dst: &mut [u8], shape: Shape, pixels: f64, fill: &[u8]) {
    affine(src, dst, shape, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill);
}

/// Mirrors the image left to right, in place.
pub fn hflip(img: &mut [u8], shape: Shape) {
    let (w, c) = (shape.width as usize, shape.channels as usize);
    for row in img.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            let (l, r) = (x * c, (w - 1 - x) * c);
            for k in 0..c {
                row.swap(l + k, r + k);
            }
        }
    }
}

/// Maps a coordinate of the padded image back into `0..n` by reflection (no edge repeat).
#[inline]
pub fn reflect(v: isize, n: isize) -> isize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = v.rem_euclid(period);
    if m < n {
        m
    } else {
        period - m
    }
}

/// Crops a `height×width` window at offset `(dy, dx)` of the image padded by `pad` on every side.
///
/// `dy, dx` range over `0..=2·pad`; `(pad, pad)` with no flip is the identity. `fill` gives the
/// colour for [`PadFill::Zero`] / [`PadFill::Mean`] padding.
#[allow(clippy::too_many_arguments)]
pub fn pad_crop(
    src: &[u8],
    dst: &mut [u8],
    shape: Shape,
    pad: usize,
    dy: usize,
    dx: usize,
    mode: PadFill,
    fill: &[u8],
) {
    let (w, h, c) = (
        shape.width as isize,
        shape.height as isize,
        shape.channels as usize,
    );
    for y in 0..h {
        let sy = y + dy as isize - pad as isize;
        for x in 0..w {
            let sx = x + dx as isize - pad as isize;
            let out = &mut dst[((y * w + x) as usize) * c..][..c];
            let inside = (0..h).contains(&sy) && (0..w).contains(&sx);
            let (ry, rx) = match (inside, mode) {
                (true, _) => (sy, sx),
                (false, PadFill::Reflect) => (reflect(sy, h), reflect(sx, w)),
                (false, _) => {
                    out.copy_from_slice(fill);
                    continue;
                }
            };
            out.copy_from_slice(&src[((ry * w + rx) as usize) * c..][..c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Shape = Shape {
        height: 5,
        width: 7,
        channels: 3,
    };

    fn ramp() -> Vec<u8> {
        (0..S.image_len()).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn px(img: &[u8], x: usize, y: usize) -> &[u8] {
        &img[(y * 7 + x) * 3..][..3]
    }

    #[test]
    fn translate_by_k_moves_pixels_by_k_and_fills_the_rest() {
        let src = ramp();
        let mut dst = vec![0; src.len()];
        translate_x(&src, &mut dst, S, 2.0, &[9, 8, 7]);
        for y in 0..5 {
            for x in 0..7 {
                let want = if x + 2 < 7 {
                    px(&src, x + 2, y)
                } else {
                    &[9, 8, 7][..]
                };
                assert_eq!(px(&dst, x, y), want, "({x},{y})");
            }
        }
        translate_y(&src, &mut dst, S, -1.0, &[1, 2, 3]);
        for y in 0..5 {
            for x in 0..7 {
                let want = if y >= 1 {
                    px(&src, x, y - 1)
                } else {
                    &[1, 2, 3][..]
                };
                assert_eq!(px(&dst, x, y), want);
            }
        }
    }

    #[test]
    fn zero_magnitude_geometric_ops_are_identity() {
        let src = ramp();
        let mut dst = vec![0; src.len()];
        for op in [rotate, shear_x, shear_y, translate_x, translate_y] {
            op(&src, &mut dst, S, 0.0, &[0, 0, 0]);
            assert_eq!(dst, src);
        }
    }

    #[test]
    fn flip_twice_is_identity_and_once_mirrors() {
        let src = ramp();
        let mut img = src.clone();
        hflip(&mut img, S);
        assert_eq!(px(&img, 0, 2), px(&src, 6, 2));
        assert_eq!(px(&img, 3, 4), px(&src, 3, 4));
        hflip(&mut img, S);
        assert_eq!(img, src);
    }

    #[test]
    fn crop_with_no_shift_is_identity_and_shifts_fill_by_mode() {
        let src = ramp();
        let mut dst = vec![0; src.len()];
        for mode in [PadFill::Zero, PadFill::Mean, PadFill::Reflect] {
            pad_crop(&src, &mut dst, S, 0, 0, 0, mode, &[5, 5, 5]);
            assert_eq!(dst, src);
            pad_crop(&src, &mut dst, S, 4, 4, 4, mode, &[5, 5, 5]);
            assert_eq!(dst, src);
        }
        // Shift right by one (dx = pad - 1): column 0 comes from the padding.
        pad_crop(&src, &mut dst, S, 4, 4, 3, PadFill::Mean, &[5, 6, 7]);
        assert_eq!(px(&dst, 0, 1), &[5, 6, 7]);
        assert_eq!(px(&dst, 1, 1), px(&src, 0, 1));
        pad_crop(&src, &mut dst, S, 4, 4, 3, PadFill::Reflect, &[0, 0, 0]);
        assert_eq!(
            px(&dst, 0, 1),
            px(&src, 1, 1),
            "reflect does not repeat the edge"
        );
    }

    #[test]
    fn reflect_matches_numpy_reflect() {
        // np.pad(np.arange(4), 5, mode="reflect")
        let want = [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2];
        let got: Vec<isize> = (-5..9).map(|v| reflect(v, 4)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rotate_180_about_the_centre_reverses_the_image() {
        let s = Shape {
            height: 4,
            width: 4,
            channels: 1,
        };
        let src: Vec<u8> = (0..16).collect();
        let mut dst = vec![0; 16];
        rotate(&src, &mut dst, s, 180.0, &[0]);
        let rev: Vec<u8> = (0..16).rev().collect();
        assert_eq!(dst, rev);
    }
}
