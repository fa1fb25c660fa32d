//! Pixel-value operations on HWC `u8` images, following PIL's `ImageOps` and `ImageEnhance`
//! definitions (integer look-up tables, single-precision blends, truncation where PIL truncates).
//!
//! The enhancement ops (`color`, `contrast`) and grey conversion need RGB images.

use crate::store::Shape;

/// `255 − x` for every byte.
pub fn invert(img: &mut [u8]) {
    img.iter_mut().for_each(|v| *v = 255 - *v);
}

/// Keeps the top `bits` bits of every byte (`bits` in 0..=8; 0 gives black).
pub fn posterize(img: &mut [u8], bits: u32) {
    let mask = !((1u32 << (8 - bits.min(8))) - 1) as u8;
    img.iter_mut().for_each(|v| *v &= mask);
}

/// Inverts every byte at or above `threshold` (`threshold` ≥ 256 changes nothing).
pub fn solarize(img: &mut [u8], threshold: u32) {
    let lut: [u8; 256] = std::array::from_fn(|v| {
        if v as u32 >= threshold {
            255 - v as u8
        } else {
            v as u8
        }
    });
    img.iter_mut().for_each(|v| *v = lut[*v as usize]);
}

/// Most channels the histogram ops handle (kept on the stack: no allocation per image).
const MAX_CHANNELS: usize = 4;

/// Per-channel histograms (the first `c` entries are used).
fn histograms(img: &[u8], c: usize) -> [[u32; 256]; MAX_CHANNELS] {
    assert!(c <= MAX_CHANNELS, "at most {MAX_CHANNELS} channels");
    let mut h = [[0u32; 256]; MAX_CHANNELS];
    for px in img.chunks_exact(c) {
        for (k, &v) in px.iter().enumerate() {
            h[k][v as usize] += 1;
        }
    }
    h
}

fn apply_luts(img: &mut [u8], luts: &[[u8; 256]]) {
    let c = luts.len();
    for px in img.chunks_exact_mut(c) {
        for (v, lut) in px.iter_mut().zip(luts) {
            *v = lut[*v as usize];
        }
    }
}

/// Builds one LUT per channel from that channel's histogram and applies them.
fn per_channel_lut(img: &mut [u8], shape: Shape, lut_of: impl Fn(&[u32; 256]) -> [u8; 256]) {
    let c = shape.channels as usize;
    let h = histograms(img, c);
    let mut luts = [[0u8; 256]; MAX_CHANNELS];
    for k in 0..c {
        luts[k] = lut_of(&h[k]);
    }
    apply_luts(img, &luts[..c]);
}

/// Stretches each channel so its darkest value becomes 0 and its brightest 255 (PIL, cutoff 0).
pub fn autocontrast(img: &mut [u8], shape: Shape) {
    per_channel_lut(img, shape, |h| {
        let mut lut = [0u8; 256];
        let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
        for (i, out) in lut.iter_mut().enumerate() {
            *out = if hi <= lo {
                i as u8
            } else {
                let scale = 255.0 / (hi - lo) as f64;
                let offset = -(lo as f64) * scale;
                ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8
            };
        }
        lut
    });
}

/// Equalises each channel's histogram (PIL `ImageOps.equalize`).
pub fn equalize(img: &mut [u8], shape: Shape) {
    per_channel_lut(img, shape, |h| {
        let mut lut = [0u8; 256];
        // PIL: (sum of the non-zero bins minus the last of them) / 256, or nothing to do
        // when fewer than two bins are used.
        let used = h.iter().filter(|&&n| n > 0).count();
        let last = h.iter().rev().copied().find(|&n| n > 0).unwrap_or(0);
        let step = if used <= 1 {
            0
        } else {
            (h.iter().sum::<u32>() - last) / 256
        };
        if step == 0 {
            lut.iter_mut().enumerate().for_each(|(i, v)| *v = i as u8);
        } else {
            let mut n = step / 2;
            for (i, out) in lut.iter_mut().enumerate() {
                *out = (n / step).min(255) as u8;
                n += h[i];
            }
        }
        lut
    });
}

/// PIL's `Image.blend(degenerate, img, factor)`: single-precision interpolation, truncated;
/// extrapolation (`factor` outside 0..=1) is clipped to 0..=255. (Rust's saturating float → u8
/// cast does exactly that clipping and truncation.)
#[inline]
fn blend(degenerate: u8, value: u8, factor: f32) -> u8 {
    (degenerate as i32 as f32 + factor * (value as i32 - degenerate as i32) as f32) as u8
}

/// `blend(degenerate, v, factor)` for every byte value `v`.
fn blend_lut(degenerate: u8, factor: f32) -> [u8; 256] {
    std::array::from_fn(|v| blend(degenerate, v as u8, factor))
}

/// PIL's RGB → L conversion (ITU-R 601-2 luma in 16.16 fixed point, rounded).
#[inline]
pub fn luma(px: &[u8]) -> u8 {
    ((px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Brightness: blend with black (`factor` 1 = unchanged).
pub fn brightness(img: &mut [u8], factor: f32) {
    let lut = blend_lut(0, factor);
    img.iter_mut().for_each(|v| *v = lut[*v as usize]);
}

/// Colour (saturation): blend with the image's own grey version (`factor` 1 = unchanged).
pub fn color(img: &mut [u8], shape: Shape, factor: f32) {
    assert_eq!(shape.channels, 3, "color needs RGB");
    for px in img.chunks_exact_mut(3) {
        let g = luma(px);
        px.iter_mut().for_each(|v| *v = blend(g, *v, factor));
    }
}

/// Contrast: blend with a flat image of the mean grey level (`factor` 1 = unchanged).
pub fn contrast(img: &mut [u8], shape: Shape, factor: f32) {
    assert_eq!(shape.channels, 3, "contrast needs RGB");
    let n = img.len() / 3;
    let sum: u64 = img.chunks_exact(3).map(|px| luma(px) as u64).sum();
    let mean = (sum as f64 / n.max(1) as f64 + 0.5) as u8;
    let lut = blend_lut(mean, factor);
    img.iter_mut().for_each(|v| *v = lut[*v as usize]);
}

/// Sharpness: blend with PIL's `SMOOTH` 3×3 filter of the image (border pixels unchanged).
pub fn sharpness(src: &[u8], dst: &mut [u8], shape: Shape, factor: f32) {
    smooth(src, dst, shape);
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = blend(*d, s, factor);
    }
}

/// PIL's `ImageFilter.SMOOTH` (kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13); the one-pixel
/// border is copied unchanged, as PIL does.
pub fn smooth(src: &[u8], dst: &mut [u8], shape: Shape) {
    let (w, h, c) = (
        shape.width as usize,
        shape.height as usize,
        shape.channels as usize,
    );
    dst.copy_from_slice(src);
    if w < 3 || h < 3 {
        return;
    }
    let (k1, k5) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let stride = w * c;
    for y in 1..h - 1 {
        let above = &src[(y - 1) * stride..y * stride];
        let row = &src[y * stride..(y + 1) * stride];
        let below = &src[(y + 1) * stride..(y + 2) * stride];
        let out = &mut dst[y * stride..(y + 1) * stride];
        for i in c..stride - c {
            let f = |r: &[u8], centre: f32| {
                r[i - c] as f32 * k1 + r[i] as f32 * centre + r[i + c] as f32 * k1
            };
            // PIL sums the row below, the row itself, then the row above, in this order.
            out[i] = clip8(f(below, k1) + f(row, k5) + f(above, k1));
        }
    }
}

#[inline]
fn clip8(v: f32) -> u8 {
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        (v + 0.5) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(w: u32, h: u32) -> Shape {
        Shape {
            height: h,
            width: w,
            channels: 3,
        }
    }

    #[test]
    fn invert_is_255_minus_x() {
        let mut img: Vec<u8> = (0..=255).collect();
        invert(&mut img);
        assert!(img.iter().enumerate().all(|(i, &v)| v as usize == 255 - i));
    }

    #[test]
    fn posterize_keeps_the_top_bits() {
        let mut img = vec![0b1011_0111u8, 255, 0, 0b0001_1111];
        posterize(&mut img, 3);
        assert_eq!(img, vec![0b1010_0000, 0b1110_0000, 0, 0]);
        let mut img = vec![200u8; 3];
        posterize(&mut img, 8);
        assert_eq!(img, vec![200; 3]);
        posterize(&mut img, 0);
        assert_eq!(img, vec![0; 3]);
    }

    #[test]
    fn solarize_inverts_at_or_above_the_threshold() {
        let mut img = vec![99u8, 100, 101, 255, 0];
        solarize(&mut img, 100);
        assert_eq!(img, vec![99, 155, 154, 0, 0]);
        let mut img = vec![255u8, 3];
        solarize(&mut img, 256);
        assert_eq!(img, vec![255, 3]);
    }

    #[test]
    fn autocontrast_stretches_a_known_histogram() {
        // Channel 0 spans 50..=100, channel 1 is flat (unchanged), channel 2 spans 0..=255.
        let mut img = vec![50, 7, 0, 75, 7, 128, 100, 7, 255];
        autocontrast(&mut img, shape(3, 1));
        // scale = 255/50 = 5.1, offset = -255: 75 -> int(382.5 - 255) = 127, and 100 -> 254,
        // not 255: 5.1·100 is 509.99… in binary floating point and PIL truncates (checked
        // against Pillow 13).
        assert_eq!(img, vec![0, 7, 0, 127, 7, 128, 254, 7, 255]);
    }

    #[test]
    fn equalize_spreads_a_known_histogram() {
        // 4 pixels per channel value in {10, 20, 30, 40}, 16 pixels, grey (same in all channels).
        let vals: Vec<u8> = [10u8, 20, 30, 40].iter().flat_map(|&v| [v; 4]).collect();
        let mut img: Vec<u8> = vals.iter().flat_map(|&v| [v, v, v]).collect();
        equalize(&mut img, shape(16, 1));
        // step = (16 - 4) / 256 = 0 -> identity, as PIL.
        assert_eq!(img.iter().step_by(3).copied().collect::<Vec<_>>(), vals);
        // With 1024 pixels in 4 levels: step = (1024 - 256)/256 = 3, lut[v] = (1 + cum)/3.
        let vals: Vec<u8> = [10u8, 20, 30, 40].iter().flat_map(|&v| [v; 256]).collect();
        let mut img: Vec<u8> = vals.iter().flat_map(|&v| [v, v, v]).collect();
        equalize(&mut img, shape(1024, 1));
        let got: Vec<u8> = img.iter().step_by(3 * 256).copied().collect();
        assert_eq!(got, vec![0, 85, 171, 255]);
    }

    #[test]
    fn factor_one_enhancements_are_identity() {
        let s = shape(6, 5);
        let src: Vec<u8> = (0..s.image_len()).map(|i| (i * 37 % 256) as u8).collect();
        let mut img = src.clone();
        brightness(&mut img, 1.0);
        color(&mut img, s, 1.0);
        contrast(&mut img, s, 1.0);
        assert_eq!(img, src);
        let mut dst = vec![0; src.len()];
        sharpness(&src, &mut dst, s, 1.0);
        assert_eq!(dst, src);
    }

    #[test]
    fn brightness_zero_is_black_and_extrapolation_clips() {
        let mut img = vec![10u8, 200, 255];
        brightness(&mut img, 0.0);
        assert_eq!(img, vec![0, 0, 0]);
        let mut img = vec![10u8, 200, 100];
        brightness(&mut img, 1.9);
        assert_eq!(img, vec![19, 255, 190]);
    }
}
