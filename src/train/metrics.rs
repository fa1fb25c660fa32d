//! Per-epoch metrics: JSON lines, CSV, and a learning-curve PNG.

use std::path::Path;

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::render;

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented images, dropout on).
    pub train_acc: f64,
    /// Test loss, raw weights (`None`: not evaluated this epoch, see `eval_every`).
    pub test_loss: Option<f64>,
    /// Test accuracy, raw weights.
    pub test_acc: Option<f64>,
    /// Test loss, EMA weights (equal to raw when the EMA is off).
    pub ema_test_loss: Option<f64>,
    /// Test accuracy, EMA weights.
    pub ema_test_acc: Option<f64>,
    /// Training images per second.
    pub images_per_second: f64,
    /// Fraction of the training time spent waiting for data.
    pub trainer_stall: f64,
    /// Epoch wall seconds (training and evaluation).
    pub seconds: f64,
}

const CSV_HEADER: &str =
    "epoch,lr,train_loss,train_acc,test_loss,test_acc,ema_test_loss,ema_test_acc,images_per_second,trainer_stall,seconds";

/// Rewrites `metrics.jsonl`, `metrics.csv` and `curve.png` in `dir` from the whole history.
pub fn write_all(dir: &Path, history: &[EpochMetrics]) -> std::io::Result<()> {
    let mut jsonl = String::new();
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for m in history {
        jsonl.push_str(&serde_json::to_string(m).map_err(std::io::Error::other)?);
        jsonl.push('\n');
        // An epoch without evaluation leaves its test cells empty.
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_acc,
            cell(m.test_loss),
            cell(m.test_acc),
            cell(m.ema_test_loss),
            cell(m.ema_test_acc),
            m.images_per_second,
            m.trainer_stall,
            m.seconds
        ));
    }
    render::write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    render::write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    render::save_png(&curve(history), &dir.join("curve.png"))
}

const RED: Rgb<u8> = Rgb([230, 80, 60]);
const BLUE: Rgb<u8> = Rgb([70, 140, 230]);
const GREEN: Rgb<u8> = Rgb([80, 200, 120]);

/// Two panels: loss (train, test) and accuracy (train, test, EMA test) against epoch.
pub fn curve(history: &[EpochMetrics]) -> RgbImage {
    let (w, h) = (640u32, 520u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([24, 24, 24]));
    let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64 + 1.0).collect();
    // Epochs without evaluation are NaN: no point, and the line joins the evaluated ones.
    let series = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<f64> {
        history.iter().map(|m| f(m).unwrap_or(f64::NAN)).collect()
    };
    let loss = [
        ("train loss", RED, series(|m| Some(m.train_loss))),
        ("test loss", BLUE, series(|m| m.test_loss)),
    ];
    let acc = [
        ("train acc", RED, series(|m| Some(m.train_acc))),
        ("test acc", BLUE, series(|m| m.test_acc)),
        ("ema test acc", GREEN, series(|m| m.ema_test_acc)),
    ];
    panel(&mut img, (0, 0, w, h / 2), "loss", &epochs, &loss, None);
    panel(
        &mut img,
        (0, h / 2, w, h / 2),
        "accuracy",
        &epochs,
        &acc,
        Some((0.0, 1.0)),
    );
    img
}

type Series<'a> = (&'a str, Rgb<u8>, Vec<f64>);

fn panel(
    img: &mut RgbImage,
    area: (u32, u32, u32, u32),
    title: &str,
    xs: &[f64],
    series: &[Series],
    range: Option<(f64, f64)>,
) {
    let (x0, y0, w, h) = area;
    let (left, right, top, bottom) = (x0 + 56, x0 + w - 16, y0 + 24, y0 + h - 28);
    let axis = Rgb([160, 160, 160]);
    for x in left..=right {
        img.put_pixel(x, bottom, axis);
    }
    for y in top..=bottom {
        img.put_pixel(left, y, axis);
    }
    render::draw_text(img, title, left + 4, y0 + 6);
    let values = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = range.unwrap_or_else(|| {
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        if lo > hi {
            (0.0, 1.0)
        } else {
            (lo.min(0.0), hi.max(lo + 1e-9))
        }
    });
    render::draw_text(img, &format!("{hi:.2}"), x0 + 4, top);
    render::draw_text(img, &format!("{lo:.2}"), x0 + 4, bottom - 8);
    let xmax = xs.last().copied().unwrap_or(1.0).max(1.0);
    render::draw_text(
        img,
        &format!("epoch {}", xmax as usize),
        right - 64,
        bottom + 8,
    );
    let px = |x: f64, y: f64| {
        let fx = left as f64 + (x / xmax) * (right - left) as f64;
        let fy = bottom as f64 - ((y - lo) / (hi - lo)) * (bottom - top) as f64;
        (fx, fy.clamp(top as f64, bottom as f64))
    };
    for (k, (name, colour, ys)) in series.iter().enumerate() {
        render::draw_text(img, name, left + 90 + k as u32 * 120, y0 + 6);
        for dx in 0..6 {
            img.put_pixel(left + 80 + k as u32 * 120 + dx, y0 + 10, *colour);
        }
        let points: Vec<(f64, f64)> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(&x, &y)| px(x, y))
            .collect();
        for p in &points {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)] {
                let (x, y) = (p.0 as i64 + dx, p.1 as i64 + dy);
                if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                    img.put_pixel(x as u32, y as u32, *colour);
                }
            }
        }
        for pair in points.windows(2) {
            let steps = ((pair[1].0 - pair[0].0)
                .abs()
                .max((pair[1].1 - pair[0].1).abs()) as usize)
                .max(1);
            for s in 0..=steps {
                let t = s as f64 / steps as f64;
                let (x, y) = (
                    pair[0].0 + t * (pair[1].0 - pair[0].0),
                    pair[0].1 + t * (pair[1].1 - pair[0].1),
                );
                img.put_pixel(x as u32, y as u32, *colour);
            }
        }
    }
}
