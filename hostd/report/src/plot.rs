//! SVG figures: one curve per backend (or per mode), axes with units, a legend, and error
//! bars where a point has a spread. Text stays real SVG text, so figures need no fonts.

use std::path::Path;

use plotters::prelude::*;

/// One point: x, y and an optional spread (drawn from y − err to y + err). The report's
/// figures give the half-width of the 95 % confidence interval of the mean (the interval is
/// symmetric), and say so in each caption.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Horizontal position.
    pub x: f64,
    /// Vertical position.
    pub y: f64,
    /// Error bar: ± this much around `y`.
    pub err: Option<f64>,
}

#[derive(Debug, Clone, Default)]
/// One curve: its legend name and its points.
pub struct Series {
    /// Its legend name.
    pub name: String,
    /// Its points, drawn in order.
    pub points: Vec<Point>,
    /// A reference curve (theory): thin, dashed, no points.
    pub reference: bool,
    /// Palette index; default: the series' position.
    pub color: Option<usize>,
    /// A measured curve drawn dashed (e.g. hot next to cold of the same colour).
    pub dashed: bool,
}

#[derive(Debug, Clone)]
/// A line chart of one or more series.
pub struct Chart {
    /// Its title.
    pub title: String,
    /// The horizontal axis's label.
    pub x_label: String,
    /// The vertical axis's label.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
    /// A logarithmic vertical axis.
    pub log_y: bool,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn range(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (if log { 0.1 } else { 0.0 }, 1.0);
    }
    if log {
        return (lo / 1.5, hi * 1.5);
    }
    let lo = if lo >= 0.0 { 0.0 } else { lo * 1.1 };
    let hi = if hi <= lo { lo + 1.0 } else { hi * 1.1 };
    (lo, hi)
}

/// The legend, drawn by hand in the column right of the plot (plotters' own legend is laid
/// out with font metrics an SVG without fonts does not have).
fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x, mut y) = (795, 40);
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
        let style = color.stroke_width(if s.reference { 1 } else { 2 });
        if s.reference || s.dashed {
            root.draw(&PathElement::new(vec![(x, y), (x + 8, y)], style))?;
            root.draw(&PathElement::new(vec![(x + 12, y), (x + 20, y)], style))?;
        } else {
            root.draw(&PathElement::new(vec![(x, y), (x + 20, y)], style))?;
        }
        root.draw(&Text::new(s.name.clone(), (x + 26, y - 6), ("sans-serif", 12).into_font()))?;
        y += 18;
    }
    Ok(())
}

/// Why a figure was not made, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum PlotError {
    /// plotters could not draw it (its error is generic over the drawing backend: in words).
    #[error("{0}")]
    Draw(String),
    #[error("writing {}: {source}", path.display())]
    Write { path: std::path::PathBuf, source: std::io::Error },
}

fn draw(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Renders `chart` to an SVG string.
pub fn render(chart: &Chart) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        // The legend goes in a column right of the plot, where it can hide no curve.
        let root = SVGBackend::with_string(&mut svg, (980, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let pts = || chart.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = range(pts().map(|p| p.x), false);
        let x1 = if x1 <= x0 { x0 + 1.0 } else { x1 };
        let (y0, y1) = range(
            pts().flat_map(|p| [p.y - p.err.unwrap_or(0.0), p.y + p.err.unwrap_or(0.0)]),
            chart.log_y,
        );
        let mut b = ChartBuilder::on(&root);
        b.caption(&chart.title, ("sans-serif", 20))
            .margin(12)
            .margin_right(190)
            .x_label_area_size(45)
            .y_label_area_size(70);
        macro_rules! draw {
            ($ctx:expr) => {{
                let mut ctx = $ctx;
                ctx.configure_mesh()
                    .x_desc(chart.x_label.as_str())
                    .y_desc(chart.y_label.as_str())
                    .axis_desc_style(("sans-serif", 15))
                    .draw()
                    .map_err(draw)?;
                for (i, s) in chart.series.iter().enumerate() {
                    let color = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
                    let style = ShapeStyle {
                        color: color.to_rgba(),
                        filled: false,
                        stroke_width: if s.reference { 1 } else { 2 },
                    };
                    let mut line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x, p.y)).collect();
                    line.sort_by(|a, b| a.0.total_cmp(&b.0));
                    if s.reference || s.dashed {
                        ctx.draw_series(DashedLineSeries::new(line, 6, 4, style)).map_err(draw)?;
                    } else {
                        ctx.draw_series(LineSeries::new(line, style)).map_err(draw)?;
                    }
                    if !s.reference {
                        ctx.draw_series(
                            s.points.iter().map(|p| Circle::new((p.x, p.y), 3, color.filled())),
                        )
                        .map_err(draw)?;
                        ctx.draw_series(s.points.iter().filter_map(|p| {
                            p.err.map(|e| {
                                ErrorBar::new_vertical(
                                    p.x,
                                    p.y - e,
                                    p.y,
                                    p.y + e,
                                    color.stroke_width(1),
                                    6,
                                )
                            })
                        }))
                        .map_err(draw)?;
                    }
                }
            }};
        }
        if chart.log_y {
            draw!(b.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(draw)?);
        } else {
            draw!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(draw)?);
        }
        legend(&root, &chart.series).map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// Renders and writes atomically.
pub fn write(chart: &Chart, path: &Path) -> Result<(), PlotError> {
    let svg = render(chart)?;
    crate::runstate::write_atomic(path, svg.as_bytes())
        .map_err(|source| PlotError::Write { path: path.into(), source })
}

/// One bar series: name, one value per category (None: missing), optional spread per category.
pub type BarSeries = (String, Vec<Option<f64>>, Vec<Option<f64>>);

/// Grouped bars: one group per category (e.g. backend), one bar per series within it.
#[derive(Debug, Clone)]
pub struct Bars {
    /// Its title.
    pub title: String,
    /// The vertical axis's label.
    pub y_label: String,
    /// The groups' labels, left to right.
    pub categories: Vec<String>,
    /// (series name, one value per category (None: missing), optional spread per category).
    pub series: Vec<BarSeries>,
    /// Horizontal marks per category: (label, value per category), e.g. model predictions.
    pub marks: Vec<(String, Vec<Option<f64>>)>,
}

/// Renders grouped bars to an SVG string.
pub fn render_bars(b: &Bars) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let ncat = b.categories.len().max(1);
        let nser = b.series.len().max(1);
        let vals = b
            .series
            .iter()
            .flat_map(|(_, v, e)| {
                v.iter()
                    .zip(e.iter().chain(std::iter::repeat(&None)))
                    .filter_map(|(v, e)| v.map(|v| v + e.unwrap_or(0.0)))
            })
            .chain(b.marks.iter().flat_map(|(_, v)| v.iter().flatten().copied()));
        // Headroom above the tallest bar for the legend.
        let y1 = range(vals, false).1 * 1.35;
        let mut chart = ChartBuilder::on(&root)
            .caption(&b.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..ncat as f64, 0f64..y1)
            .map_err(draw)?;
        let cats = b.categories.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(ncat * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 {
                    cats.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(b.y_label.as_str())
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(draw)?;
        let width = 0.8 / nser as f64;
        for (si, (name, v, e)) in b.series.iter().enumerate() {
            let color = PALETTE[si % PALETTE.len()];
            let x0 = |ci: usize| ci as f64 + 0.1 + si as f64 * width;
            chart
                .draw_series(v.iter().enumerate().filter_map(|(ci, v)| {
                    v.map(|v| {
                        Rectangle::new([(x0(ci), 0.0), (x0(ci) + width * 0.9, v)], color.filled())
                    })
                }))
                .map_err(draw)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            chart
                .draw_series(v.iter().zip(e.iter()).enumerate().filter_map(|(ci, (v, e))| {
                    let (v, e) = (v.as_ref()?, e.as_ref()?);
                    let x = x0(ci) + width * 0.45;
                    Some(ErrorBar::new_vertical(x, v - e, *v, v + e, BLACK.stroke_width(1), 6))
                }))
                .map_err(draw)?;
        }
        for (mi, (name, v)) in b.marks.iter().enumerate() {
            let color = PALETTE[(b.series.len() + mi) % PALETTE.len()];
            chart
                .draw_series(v.iter().enumerate().filter_map(|(ci, v)| {
                    v.map(|v| {
                        PathElement::new(
                            vec![(ci as f64 + 0.05, v), (ci as f64 + 0.95, v)],
                            color.stroke_width(2),
                        )
                    })
                }))
                .map_err(draw)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// Renders grouped bars and writes them atomically.
pub fn write_bars(b: &Bars, path: &Path) -> Result<(), PlotError> {
    let svg = render_bars(b)?;
    crate::runstate::write_atomic(path, svg.as_bytes())
        .map_err(|source| PlotError::Write { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_axes_legend_and_points() {
        let c = Chart {
            title: "Startup".into(),
            x_label: "guests (n)".into(),
            y_label: "T_startup (s)".into(),
            series: vec![
                Series {
                    name: "uml cold".into(),
                    points: vec![
                        Point { x: 1.0, y: 0.5, err: Some(0.1) },
                        Point { x: 10.0, y: 2.0, err: None },
                    ],
                    reference: false,
                    ..Default::default()
                },
                Series {
                    name: "theory".into(),
                    points: vec![
                        Point { x: 1.0, y: 0.4, err: None },
                        Point { x: 10.0, y: 4.0, err: None },
                    ],
                    reference: true,
                    ..Default::default()
                },
            ],
            log_y: false,
        };
        let svg = render(&c).unwrap();
        for text in ["Startup", "guests (n)", "T_startup (s)", "uml cold", "theory"] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert!(svg.matches("<circle").count() >= 2);
        let log = render(&Chart { log_y: true, ..c }).unwrap();
        assert!(log.starts_with("<svg"));
    }

    #[test]
    fn bars_render_with_labels_and_marks() {
        let b = Bars {
            title: "Isolation".into(),
            y_label: "time / T_a".into(),
            categories: vec!["ns".into(), "uml".into()],
            series: vec![
                ("guest 1".into(), vec![Some(1.0), Some(2.0)], vec![Some(0.1), None]),
                ("guest 2".into(), vec![Some(1.5), None], vec![None, None]),
            ],
            marks: vec![("per-VM model".into(), vec![Some(1.5), Some(1.5)])],
        };
        let svg = render_bars(&b).unwrap();
        for t in ["Isolation", "time / T_a", "ns", "uml", "guest 1", "per-VM model"] {
            assert!(svg.contains(t), "missing {t}");
        }
        assert!(svg.matches("<rect").count() >= 3);
    }

    #[test]
    fn empty_chart_still_renders() {
        let c = Chart {
            title: "none".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![],
            log_y: false,
        };
        assert!(render(&c).unwrap().contains("none"));
    }
}
#[cfg(test)]
mod look {
    #[test]
    #[ignore = "writes /tmp/vb-plot.svg for a person to look at"]
    fn write_sample() {
        use super::*;
        let c = Chart {
            title: "Concurrent startup, uml".into(),
            x_label: "guests started together (n)".into(),
            y_label: "T_startup = max ready time (s)".into(),
            series: vec![
                Series {
                    name: "cold".into(),
                    points: vec![
                        Point { x: 1.0, y: 0.5, err: Some(0.1) },
                        Point { x: 10.0, y: 2.0, err: Some(0.3) },
                        Point { x: 50.0, y: 9.0, err: None },
                    ],
                    reference: false,
                    ..Default::default()
                },
                Series {
                    name: "hot".into(),
                    points: vec![
                        Point { x: 1.0, y: 0.2, err: None },
                        Point { x: 10.0, y: 1.0, err: None },
                        Point { x: 50.0, y: 4.0, err: None },
                    ],
                    reference: false,
                    ..Default::default()
                },
                Series {
                    name: "affine reference".into(),
                    points: vec![
                        Point { x: 1.0, y: 0.2, err: None },
                        Point { x: 50.0, y: 6.0, err: None },
                    ],
                    reference: true,
                    ..Default::default()
                },
            ],
            log_y: false,
        };
        write(&c, std::path::Path::new("/tmp/vb-plot.svg")).unwrap();
    }
}
