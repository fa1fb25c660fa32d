//! PNG grids of images with text labels, so a person can see what a store or a policy holds;
//! the one font every picture of the crate is labelled in (charts included); atomic writes.

use std::io::Cursor;
use std::path::Path;
use std::sync::Once;

use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::store::Shape;

/// The family name pictures use; [`font`] makes sure it is registered.
pub const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (embedded in the binary) as [`FONT`] for plotters, once per process;
/// call before drawing any text.
pub fn font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

/// One labelled row of same-shaped HWC RGB images.
pub struct Row<'a> {
    /// Text drawn at the left of the row.
    pub label: String,
    /// The images, left to right.
    pub images: Vec<&'a [u8]>,
}

const PAD: u32 = 2;
/// Label text height in pixels.
const TEXT: u32 = 14;
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
const INK: RGBColor = RGBColor(230, 230, 230);

/// The width `text` takes in the labels' font.
fn text_width(text: &str) -> u32 {
    font();
    (FONT, TEXT)
        .into_font()
        .box_size(text)
        .map_or(0, |(w, _)| w)
}

/// Lays the rows out as a grid, each image enlarged `scale` times (nearest neighbour), each
/// row's label at its left.
pub fn grid(rows: &[Row], shape: Shape, scale: u32) -> RgbImage {
    assert_eq!(shape.channels, 3, "grids draw RGB images");
    let (cell_w, cell_h) = (shape.width * scale, shape.height * scale);
    let label_w = rows.iter().map(|r| text_width(&r.label)).max().unwrap_or(0) + 2 * PAD;
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
    let labels: Vec<(&str, i32)> = rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            let top = PAD + r as u32 * (cell_h + PAD);
            (
                row.label.as_str(),
                (top + cell_h.saturating_sub(TEXT) / 2) as i32,
            )
        })
        .collect();
    draw_labels(&mut img, &labels);
    img
}

/// Draws each `(text, y)` at the left edge of `img`, in the pictures' font.
fn draw_labels(img: &mut RgbImage, labels: &[(&str, i32)]) {
    font();
    let (w, h) = img.dimensions();
    let mut raw = std::mem::take(img).into_raw();
    {
        let area = BitMapBackend::with_buffer(&mut raw, (w, h)).into_drawing_area();
        let style = (FONT, TEXT).into_font().color(&INK);
        for (text, y) in labels {
            // Drawing text into a buffer of the right size cannot fail.
            let _ = area.draw_text(text, &style, (PAD as i32, *y));
        }
        let _ = area.present();
    }
    *img = RgbImage::from_raw(w, h, raw).expect("the buffer keeps its size");
}

/// Encodes `img` as PNG and writes it atomically (temporary file, fsync, rename).
pub fn save_png(img: &RgbImage, path: &Path) -> std::io::Result<()> {
    write_atomic(path, &png_bytes(img)?)
}

/// `img` encoded as PNG.
pub fn png_bytes(img: &RgbImage) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// A square matrix of counts (a confusion matrix, `[true][predicted]`) as a heat map of
/// `cell`-pixel squares, each row scaled to its own total: white for none, deep blue for all.
pub fn heatmap(matrix: &[Vec<u64>], cell: u32) -> RgbImage {
    let n = matrix.len() as u32;
    let mut img = RgbImage::from_pixel((n * cell).max(1), (n * cell).max(1), BACKGROUND);
    for (r, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (c, &v) in row.iter().enumerate() {
            let share = v as f64 / total;
            let fade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
            let color = Rgb([fade(8.0), fade(48.0), fade(107.0)]);
            for y in 0..cell {
                for x in 0..cell {
                    img.put_pixel(c as u32 * cell + x, r as u32 * cell + y, color);
                }
            }
        }
    }
    img
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
        let label_w = text_width("ab") + 2 * PAD;
        assert!(label_w > 2 * PAD + 8, "the label has a width: {label_w}");
        assert_eq!(img.width(), label_w + 2 * (6 + PAD) + PAD);
        assert_eq!(img.height(), 6 + 2 * PAD);
        assert_eq!(*img.get_pixel(label_w, PAD), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(label_w + 5, PAD + 5), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(label_w + 6, PAD), BACKGROUND);
        // Some ink landed in the label column.
        let ink = (0..label_w)
            .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
            .any(|(x, y)| img.get_pixel(x, y).0[0] > 120);
        assert!(ink);
    }
}
