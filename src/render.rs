//! PNG grids of images with text labels, so a person can see what a store or a policy holds.

use std::io::Cursor;
use std::path::Path;

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::store::Shape;

/// One labelled row of same-shaped HWC RGB images.
pub struct Row<'a> {
    /// Text drawn at the left of the row.
    pub label: String,
    /// The images, left to right.
    pub images: Vec<&'a [u8]>,
}

const PAD: u32 = 2;
const GLYPH: u32 = 8;
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
const INK: Rgb<u8> = Rgb([230, 230, 230]);

/// Lays the rows out as a grid, each image enlarged `scale` times (nearest neighbour).
pub fn grid(rows: &[Row], shape: Shape, scale: u32) -> RgbImage {
    assert_eq!(shape.channels, 3, "grids draw RGB images");
    let (cell_w, cell_h) = (shape.width * scale, shape.height * scale);
    let label_w = rows
        .iter()
        .map(|r| r.label.chars().count() as u32)
        .max()
        .unwrap_or(0)
        * GLYPH
        + 2 * PAD;
    let cols = rows
        .iter()
        .map(|r| r.images.len() as u32)
        .max()
        .unwrap_or(0);
    let width = label_w + cols * (cell_w + PAD) + PAD;
    let height = rows.len() as u32 * (cell_h + PAD) + PAD;
    let mut img = RgbImage::from_pixel(width.max(1), height.max(1), BACKGROUND);
    for (r, row) in rows.iter().enumerate() {
        let top = PAD + r as u32 * (cell_h + PAD);
        draw_text(
            &mut img,
            &row.label,
            PAD,
            top + cell_h.saturating_sub(GLYPH) / 2,
        );
        for (c, pixels) in row.images.iter().enumerate() {
            let left = label_w + c as u32 * (cell_w + PAD);
            for y in 0..cell_h {
                for x in 0..cell_w {
                    let at = (((y / scale) * shape.width + x / scale) * 3) as usize;
                    img.put_pixel(
                        left + x,
                        top + y,
                        Rgb([pixels[at], pixels[at + 1], pixels[at + 2]]),
                    );
                }
            }
        }
    }
    img
}

/// Draws `text` with the 8×8 bitmap font, top-left corner at `(x, y)`.
pub fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                let (px, py) = (x + i as u32 * GLYPH + col, y + row as u32);
                if bits >> col & 1 == 1 && px < img.width() && py < img.height() {
                    img.put_pixel(px, py, INK);
                }
            }
        }
    }
}

/// Encodes `img` as PNG and writes it atomically (temporary file, fsync, rename).
pub fn save_png(img: &RgbImage, path: &Path) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = crate::store::temp_file_in(dir, ".write.")?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_scaled_images_after_the_label_column() {
        let shape = Shape {
            height: 2,
            width: 2,
            channels: 3,
        };
        let red = [255, 0, 0].repeat(4);
        let rows = [Row {
            label: "ab".into(),
            images: vec![&red, &red],
        }];
        let img = grid(&rows, shape, 3);
        let label_w = 2 * GLYPH + 2 * PAD;
        assert_eq!(img.width(), label_w + 2 * (6 + PAD) + PAD);
        assert_eq!(img.height(), 6 + 2 * PAD);
        assert_eq!(*img.get_pixel(label_w, PAD), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(label_w + 5, PAD + 5), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(label_w + 6, PAD), BACKGROUND);
        // Some ink landed in the label column.
        let ink = (0..label_w)
            .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
            .any(|(x, y)| *img.get_pixel(x, y) == INK);
        assert!(ink);
    }
}
