//! The learning curve of a run, as a person reads it: three panels against the epoch (loss,
//! accuracy, learning rate) with labelled ticks, a legend of the series the run has, and the best
//! test accuracy marked. Drawn with plotters, as PNG (`curve.png`) and SVG (`curve.svg`).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::metrics::EpochMetrics;
use crate::render::{self, FONT};

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (960, 860);

const TRAIN: RGBColor = RGBColor(214, 39, 40);
const TEST: RGBColor = RGBColor(31, 119, 180);
const EMA: RGBColor = RGBColor(44, 160, 44);
const LR: RGBColor = RGBColor(90, 90, 90);

/// One line of a panel: its legend name, colour and `(epoch, value)` points (epochs 1-based;
/// epochs without the value, e.g. not evaluated, are left out).
struct Line {
    name: &'static str,
    colour: RGBColor,
    points: Vec<(i32, f64)>,
}

fn line(
    name: &'static str,
    colour: RGBColor,
    history: &[EpochMetrics],
    value: impl Fn(&EpochMetrics) -> Option<f64>,
) -> Line {
    let points = history
        .iter()
        .filter_map(|m| {
            value(m)
                .filter(|v| v.is_finite())
                .map(|v| (m.epoch as i32 + 1, v))
        })
        .collect();
    Line {
        name,
        colour,
        points,
    }
}

/// The curve of `history` as an RGB image of [`SIZE`]; `ema` says whether the run keeps an EMA
/// (its lines are drawn only then).
pub fn png(history: &[EpochMetrics], ema: bool) -> image::RgbImage {
    let (w, h) = SIZE;
    let mut raw = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut raw, SIZE).into_drawing_area();
        // Drawing into a buffer of the right size has no failure but a bug's.
        draw(&root, history, ema).expect("drawing the curve into a buffer");
        root.present().expect("drawing the curve into a buffer");
    }
    image::RgbImage::from_raw(w, h, raw).expect("the buffer keeps its size")
}

/// The same curve as an SVG document.
pub fn svg(history: &[EpochMetrics], ema: bool) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, history, ema).expect("drawing the curve into a string");
        root.present().expect("drawing the curve into a string");
    }
    out
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    history: &[EpochMetrics],
    ema: bool,
) -> Drawn<DB> {
    render::font();
    root.fill(&WHITE)?;
    let (loss_area, rest) = root.split_vertically(330);
    let (acc_area, lr_area) = rest.split_vertically(330);
    let mut loss = vec![
        line("train loss", TRAIN, history, |m| Some(m.train_loss)),
        line("test loss", TEST, history, |m| m.test_loss),
    ];
    let mut acc = vec![
        line("train accuracy", TRAIN, history, |m| {
            Some(100.0 * m.train_acc)
        }),
        line("test accuracy", TEST, history, |m| {
            m.test_acc.map(|a| 100.0 * a)
        }),
    ];
    if ema {
        loss.push(line("EMA test loss", EMA, history, |m| m.ema_test_loss));
        acc.push(line("EMA test accuracy", EMA, history, |m| {
            m.ema_test_acc.map(|a| 100.0 * a)
        }));
    }
    // The delivered model's (the EMA's when the run keeps one), the first epoch that reached it.
    let best = acc.last().filter(|_| acc.len() > 1).and_then(|l| {
        l.points
            .iter()
            .copied()
            .fold(None, |b: Option<(i32, f64)>, p| match b {
                Some(b) if b.1 >= p.1 => Some(b),
                _ => Some(p),
            })
    });
    let epochs = history.last().map_or(1, |m| m.epoch as i32 + 1);
    let max_loss = loss
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y = 0.0..(max_loss * 1.08).max(1e-6);
    panel(&loss_area, "loss", epochs, y, &loss, None, |v| {
        format!("{v:.2}")
    })?;
    let y = 0.0..100.0;
    panel(&acc_area, "accuracy (%)", epochs, y, &acc, best, |v| {
        format!("{v:.0}")
    })?;
    let lr = vec![line("learning rate", LR, history, |m| Some(m.lr))];
    let max_lr = lr[0].points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let y = 0.0..(max_lr * 1.1).max(1e-12);
    let title = "learning rate (each epoch's last step)";
    panel(&lr_area, title, epochs, y, &lr, None, move |v| {
        if max_lr >= 0.01 {
            format!("{v:.3}")
        } else {
            format!("{v:.1e}")
        }
    })?;
    Ok(())
}

/// One panel: axes with labelled ticks and a grid, the lines (and their points), a legend, and
/// `best` marked.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    epochs: i32,
    y: std::ops::Range<f64>,
    lines: &[Line],
    best: Option<(i32, f64)>,
    y_label: impl Fn(&f64) -> String,
) -> Drawn<DB> {
    // One epoch alone still gets an axis around it.
    let x = if epochs <= 1 { 0..2 } else { 1..epochs };
    let legend = emptiest_corner(lines, best, (x.start, x.end), (y.start, y.end));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x.clone(), y.clone())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(epochs.clamp(2, 12) as usize)
        .y_labels(6)
        .y_label_formatter(&y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for l in lines.iter().filter(|l| !l.points.is_empty()) {
        let style = l.colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), style))?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            l.points
                .iter()
                .map(|&p| Circle::new(p, 3, l.colour.filled())),
        )?;
    }
    if let Some((e, v)) = best {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        // The label reads away from the nearer edges.
        let right_half = 2 * e > x.start + x.end;
        let high = v > 0.9 * y.end;
        let h = if right_half { HPos::Right } else { HPos::Left };
        let vpos = if high { VPos::Top } else { VPos::Bottom };
        let text = (FONT, 15).into_font().color(&BLACK).pos(Pos::new(h, vpos));
        let offset = (
            if right_half { -10 } else { 10 },
            if high { 10 } else { -10 },
        );
        let mark = EmptyElement::at((e, v))
            + Circle::new((0, 0), 7, BLACK.stroke_width(2))
            + Text::new(format!("best {v:.2}% (epoch {e})"), offset, text);
        chart.draw_series(std::iter::once(mark))?;
    }
    // One line needs no legend: the title names it.
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 14))
            .draw()?;
    }
    Ok(())
}

/// The corner of the plot with the fewest points (and the best mark) near it, for the legend:
/// upper right, lower right, upper left, lower left, the first of the emptiest.
fn emptiest_corner(
    lines: &[Line],
    best: Option<(i32, f64)>,
    (x0, x1): (i32, i32),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
    let near = |p: (i32, f64), right: bool, upper: bool| {
        let fx = (p.0 - x0) as f64 / (x1 - x0).max(1) as f64;
        let fy = (p.1 - y0) / (y1 - y0).max(1e-12);
        (if right { fx > 0.55 } else { fx < 0.45 }) && (if upper { fy > 0.6 } else { fy < 0.4 })
    };
    let points: Vec<(i32, f64)> = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .chain(best.into_iter().flat_map(|b| [b, b, b]))
        .collect();
    [
        (true, true, SeriesLabelPosition::UpperRight),
        (true, false, SeriesLabelPosition::LowerRight),
        (false, true, SeriesLabelPosition::UpperLeft),
        (false, false, SeriesLabelPosition::LowerLeft),
    ]
    .into_iter()
    .map(|(right, upper, at)| {
        (
            points.iter().filter(|&&p| near(p, right, upper)).count(),
            at,
        )
    })
    .fold(None, |b: Option<(usize, SeriesLabelPosition)>, c| match b {
        Some(b) if b.0 <= c.0 => Some(b),
        _ => Some(c),
    })
    .map_or(SeriesLabelPosition::UpperRight, |(_, at)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, test_acc: Option<f64>, ema_acc: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            lr: 0.1 / (e + 1) as f64,
            train_loss: 2.0 - 0.3 * e as f64,
            train_acc: 0.2 + 0.1 * e as f64,
            test_loss: test_acc.map(|a| 2.0 - a),
            test_acc,
            ema_test_loss: ema_acc.map(|a| 2.0 - a),
            ema_test_acc: ema_acc,
            images_per_second: 100.0,
            trainer_stall: 0.0,
            gpu_busy: None,
            seconds: 1.0,
        }
    }

    /// The text of every `<text>` element of an SVG.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                Some(
                    t.split_once(">")?
                        .1
                        .split_once("</text>")?
                        .0
                        .trim()
                        .to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_legend_holds_the_series_the_run_has_and_the_best_is_marked() {
        // Epoch 2 not evaluated; the best (EMA when kept) is 60% at epoch 3, first reached there.
        let history = [
            epoch(0, Some(0.30), Some(0.35)),
            epoch(1, None, None),
            epoch(2, Some(0.55), Some(0.60)),
            epoch(3, Some(0.58), Some(0.60)),
        ];
        let without = texts(&svg(&history, false));
        for want in [
            "train loss",
            "test loss",
            "train accuracy",
            "test accuracy",
            "epoch",
        ] {
            assert!(without.iter().any(|t| t == want), "{want} in {without:?}");
        }
        assert!(!without.iter().any(|t| t.contains("EMA")), "{without:?}");
        assert!(
            without.iter().any(|t| t == "best 58.00% (epoch 4)"),
            "{without:?}"
        );
        // Every epoch has a labelled tick (the axis starts at the first epoch).
        for e in ["1", "2", "3", "4"] {
            assert!(
                without.iter().filter(|t| *t == e).count() >= 3,
                "tick {e}: {without:?}"
            );
        }
        let with = texts(&svg(&history, true));
        assert!(with.iter().any(|t| t == "EMA test accuracy"), "{with:?}");
        assert!(
            with.iter().any(|t| t == "best 60.00% (epoch 3)"),
            "{with:?}"
        );
        let img = png(&history, true);
        assert_eq!(img.dimensions(), SIZE);
    }

    #[test]
    fn one_epoch_and_no_evaluation_still_draw() {
        let one = texts(&svg(&[epoch(0, Some(0.1), None)], false));
        assert!(one.iter().any(|t| t == "best 10.00% (epoch 1)"), "{one:?}");
        let none = texts(&svg(&[epoch(0, None, None)], false));
        assert!(!none.iter().any(|t| t.starts_with("best")), "{none:?}");
        assert!(!none.iter().any(|t| t == "test accuracy"), "{none:?}");
    }
}
