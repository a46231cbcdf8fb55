//! Plots in PNG and SVG (plotters): latency percentiles and throughput against load, TTFT and
//! KV usage against context length, and the concurrency × context feasibility grid.
//!
//! Text in bitmaps needs a font: DejaVu Sans is embedded (`assets/DejaVuSans.ttf`, licence
//! beside it) and registered once under the family name `sans-serif`, so the PNGs render the
//! same everywhere without fontconfig. Log-scaled axes are drawn on `log2(x)` with labels
//! mapped back to `x`, which keeps one code path for linear and logarithmic charts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded plot font could not be loaded"))
    }
}

/// Pixel size of every plot.
pub const SIZE: (u32, u32) = (1000, 600);

/// Colours of successive series (colour-blind-safe Okabe–Ito palette).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points `(x, y)` in data units.
    pub points: Vec<(f64, f64)>,
    /// Index into [`PALETTE`].
    pub color: usize,
    /// Line width in pixels (a wide line drawn first stays visible under a narrow one).
    pub width: u32,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Draw the x axis on a log2 scale.
    pub x_log: bool,
    pub series: Vec<Series>,
    /// A vertical marker `(x, label)`, e.g. the knee.
    pub marker: Option<(f64, String)>,
}

fn tx(x: f64, log: bool) -> f64 {
    if log { x.max(1e-9).log2() } else { x }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn padded(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let lo = if from_zero { lo.min(0.0) } else { lo };
    if (hi - lo).abs() < 1e-12 {
        (lo - 1.0, hi + 1.0)
    } else {
        let pad = (hi - lo) * 0.05;
        (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
    }
}

/// The x and y ranges of a line chart: its points' (x transformed, y from 0), padded.
fn axis_ranges(c: &LineChart) -> ((f64, f64), (f64, f64)) {
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let xs: Vec<f64> = pts.clone().map(|p| tx(p.0, c.x_log)).collect();
    let ys: Vec<f64> = pts.map(|p| p.1).filter(|y| y.is_finite()).collect();
    let (x0, x1) = padded(
        xs.iter().copied().fold(f64::INFINITY, f64::min).min(1e300),
        xs.iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(-1e300),
        false,
    );
    let (y0, y1) = padded(
        0.0,
        ys.iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(0.0),
        true,
    );
    let (x0, x1) = if x0.is_finite() && x1.is_finite() {
        (x0, x1)
    } else {
        (0.0, 1.0)
    };
    ((x0, x1), (y0, y1))
}

fn draw_line_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &LineChart,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {}: {e:?}", c.title);
    root.fill(&WHITE).map_err(err)?;
    let ((x0, x1), (y0, y1)) = axis_ranges(c);
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let log = c.x_log;
    // on a log2 axis, label only the powers of two
    let xfmt = move |v: &f64| {
        if !log {
            fmt_tick(*v)
        } else if (v - v.round()).abs() < 1e-6 {
            fmt_tick(v.round().exp2())
        } else {
            String::new()
        }
    };
    let x_labels = if log {
        (((x1 - x0) * 8.0).ceil() as usize).clamp(2, 200)
    } else {
        10
    };
    let yfmt = |v: &f64| fmt_tick(*v);
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .x_labels(x_labels)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    for s in &c.series {
        let color = PALETTE[s.color % PALETTE.len()];
        let width = s.width.max(1);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| (tx(p.0, log), p.1))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new(*p, width + 1, color.filled())),
            )
            .map_err(err)?;
    }
    if let Some((x, label)) = &c.marker {
        let xm = tx(*x, log);
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(
                vec![(xm, y0), (xm, y1)],
                grey.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One row of the feasibility grid.
#[derive(Debug, Clone)]
pub struct GridRowPlot {
    /// Row label (e.g. `512 tokens, capacity 8`).
    pub label: String,
    /// `(concurrency, fits)` cells.
    pub cells: Vec<(u32, bool)>,
    /// Capacity computed from the cache geometry, outlined when among the cells.
    pub capacity: Option<u64>,
}

fn draw_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[GridRowPlot],
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {title}: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let ncols = rows.iter().map(|r| r.cells.len()).max().unwrap_or(1).max(1);
    let nrows = rows.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..ncols as f64, 0f64..nrows as f64)
        .map_err(err)?;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let yfmt = move |v: &f64| {
        let i = v.floor() as usize;
        if (v - v.floor() - 0.5).abs() < 0.26 {
            labels.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .y_desc("sequence length")
        .x_labels(0)
        .y_labels(nrows * 4)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    let fit = RGBColor(0, 158, 115);
    let nofit = RGBColor(213, 94, 0);
    for (ri, r) in rows.iter().enumerate() {
        for (ci, (conc, fits)) in r.cells.iter().enumerate() {
            let (x, y) = (ci as f64, ri as f64);
            let color = if *fits { fit } else { nofit };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.04, y + 0.06), (x + 0.96, y + 0.94)],
                    color.mix(0.8).filled(),
                )))
                .map_err(err)?;
            if r.capacity == Some(u64::from(*conc)) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x + 0.04, y + 0.06), (x + 0.96, y + 0.94)],
                        BLACK.stroke_width(4),
                    )))
                    .map_err(err)?;
            }
            let text = format!("{conc} {}", if *fits { "fits" } else { "queues" });
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x + 0.12, y + 0.6),
                    ("sans-serif", 17).into_font().color(&WHITE),
                )))
                .map_err(err)?;
        }
    }
    root.draw(&Text::new(
        "green: all sequences ran at once, no preemption; orange: queued or preempted; black outline: capacity computed from cache_config_info",
        (20, SIZE.1 as i32 - 30),
        ("sans-serif", 13).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn write_both(
    dir: &Path,
    stem: &str,
    draw_png: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
    draw_svg: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    ensure_font()?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw_png(&root)?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw_svg(&root)?;
    }
    Ok(vec![png, svg])
}

/// Writes `<dir>/<stem>.png` and `<dir>/<stem>.svg` for a line chart.
pub fn line_chart(dir: &Path, stem: &str, c: &LineChart) -> anyhow::Result<Vec<PathBuf>> {
    write_both(
        dir,
        stem,
        |r| draw_line_chart(r, c),
        |r| draw_line_chart(r, c),
    )
}

/// Writes `<dir>/<stem>.png` and `<dir>/<stem>.svg` for a feasibility grid.
pub fn grid_chart(
    dir: &Path,
    stem: &str,
    title: &str,
    rows: &[GridRowPlot],
) -> anyhow::Result<Vec<PathBuf>> {
    write_both(
        dir,
        stem,
        |r| draw_grid(r, title, rows),
        |r| draw_grid(r, title, rows),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let c = LineChart {
            title: "latency".into(),
            x_label: "concurrency".into(),
            y_label: "ms".into(),
            x_log: true,
            series: vec![
                Series {
                    name: "p50".into(),
                    points: vec![(1.0, 10.0), (2.0, 11.0), (4.0, 20.0), (8.0, f64::NAN)],
                    color: 0,
                    width: 3,
                },
                Series {
                    name: "p99".into(),
                    points: vec![(1.0, 12.0), (2.0, 15.0), (4.0, 40.0)],
                    color: 1,
                    width: 3,
                },
            ],
            marker: Some((2.0, "knee".into())),
        };
        let files = line_chart(dir.path(), "lat", &c).unwrap();
        assert_eq!(files.len(), 2);
        let png = std::fs::read(&files[0]).unwrap();
        assert!(png.len() > 1000);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{}",
            &svg[..40]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("latency"));
    }

    #[test]
    fn empty_chart_and_grid_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let c = LineChart {
            title: "empty".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_log: false,
            series: vec![],
            marker: None,
        };
        line_chart(dir.path(), "empty", &c).unwrap();
        let rows = vec![GridRowPlot {
            label: "512 tokens, capacity 2".into(),
            cells: vec![(1, true), (2, true), (3, false)],
            capacity: Some(2),
        }];
        let files = grid_chart(dir.path(), "grid", "feasibility", &rows).unwrap();
        assert_eq!(&std::fs::read(&files[0]).unwrap()[..4], b"\x89PNG");
        grid_chart(dir.path(), "grid0", "none", &[]).unwrap();
    }

    #[test]
    fn ticks() {
        assert_eq!(fmt_tick(4.0), "4");
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(0.25), "0.250");
        assert_eq!(padded(0.0, 0.0, true), (-1.0, 1.0));
    }
}
