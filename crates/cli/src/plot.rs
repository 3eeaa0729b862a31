//! Line plots to PNG (loss curves, learning curves). Text needs a TrueType
//! font: DejaVu Sans from the system when present (Debian: fonts-dejavu-core);
//! without one the plot is drawn without labels rather than failing.
//!
//! Offline only; allocates freely.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn font_available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Plot series as lines into a PNG at `path`.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<()> {
    line_plot_marked(path, title, x_label, y_label, series, &[])
}

/// Vertical lines at x positions (events: a version swapped in, a
/// rollback), one colour and legend entry per kind.
pub struct Marks<'a> {
    pub name: &'a str,
    pub xs: &'a [f64],
    pub color: RGBColor,
}

/// [`line_plot`] with vertical event marks drawn behind the series.
pub fn line_plot_marked(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    marks: &[Marks<'_>],
) -> Result<()> {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(anyhow!("nothing to plot"));
    }
    // Every mark is on the plot, even one before the first point.
    for &x in marks
        .iter()
        .flat_map(|m| m.xs.iter())
        .filter(|x| x.is_finite())
    {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    // A flat series gets a readable range around its value: a pad of a
    // millionth would label every tick of the axis with the same number.
    let flat = (y1 - y0) <= 1e-9 * y0.abs().max(y1.abs()).max(1.0);
    let pad = if flat {
        (0.5 * y0.abs()).max(0.5)
    } else {
        (y1 - y0) * 0.05
    };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let text = font_available();
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(65);
    }
    let mut chart = b
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    for m in marks {
        let c = m.color;
        let lines = chart
            .draw_series(
                m.xs.iter()
                    .filter(|x| x.is_finite())
                    .map(|&x| PathElement::new(vec![(x, y0), (x, y1)], c.mix(0.6).stroke_width(2))),
            )
            .map_err(|e| anyhow!("{e}"))?;
        if text && !m.xs.is_empty() {
            lines
                .label(m.name)
                .legend(move |(x, y)| PathElement::new(vec![(x + 10, y - 8), (x + 10, y + 8)], c));
        }
    }
    let colors = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        BLACK,
        RGBColor(230, 140, 0),
        RGBColor(0, 130, 130),
    ];
    for (i, s) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        // A non-finite y is a gap (no action sent, say): the line breaks
        // there instead of joining its two sides.
        let runs = s
            .points
            .split(|(_, y)| !y.is_finite())
            .filter(|r| !r.is_empty());
        for (k, run) in runs.enumerate() {
            let line = chart
                .draw_series(LineSeries::new(run.iter().copied(), c.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?;
            if text && k == 0 {
                line.label(s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
