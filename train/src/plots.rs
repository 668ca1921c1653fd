//! PNG plots: training curves, the confusion matrix, and shares as horizontal bars (parameter importances).
//!
//! Everything is drawn with plotters into an in-memory RGB buffer, encoded with `image` and written
//! atomically, so a plot on disk is always complete. Text uses the embedded DejaVu Sans font.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

use crate::metrics::ConfusionMatrix;
use crate::{Error, Result};

/// One named line of a [`Panel`]: `(x, y)` points, in x order. Points with NaN, infinite or absurd
/// (beyond ±1e100) coordinates are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Shown in the legend; series with an empty name get no legend entry.
    pub name: String,
    /// The points; NaN or infinite values (and, on a log axis, y ≤ 0) are left out.
    pub points: Vec<(f64, f64)>,
}

/// One chart of [`plot_panels`]: a title, axis labels and any number of series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    /// Drawn above the chart.
    pub title: String,
    /// The x axis description (e.g. "epoch").
    pub x_label: String,
    /// The y axis description (e.g. "loss").
    pub y_label: String,
    /// The lines of the chart.
    pub series: Vec<Series>,
    /// Whether the y axis is logarithmic (e.g. for learning rates).
    pub log_y: bool,
}

/// The family name the embedded font is registered under.
pub(crate) const FONT: &str = "sans-serif";
/// DejaVu Sans (its licence is beside it in `assets/fonts/`), also what rendered text lines are drawn with.
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONT_REGISTERED: OnceLock<bool> = OnceLock::new();

/// Width and height of one panel of [`plot_panels`], in pixels.
const PANEL_SIZE: (u32, u32) = (640, 440);
/// Confusion matrices with more classes than this are refused (the image would be huge and unreadable).
const MAX_CM_CLASSES: usize = 2000;
/// Line colours (the Tableau 10 palette), cycled through.
const PALETTE: [u32; 10] =
    [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf];
const TEXT: RGBColor = RGBColor(30, 30, 30);

pub(crate) type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Training curves: panels laid out in a grid (e.g. loss, accuracy/F1, learning rate), each with a legend.
///
/// Up to three panels go side by side; more fill a near-square grid. Each panel is 640×440 pixels.
/// Empty series, single points, NaNs and flat curves are drawn without error; no panels at all gives a
/// "no data" image.
pub fn plot_panels(panels: &[Panel], path: &Path) -> Result<()> {
    let (cols, rows) = panel_grid(panels.len());
    let size = (PANEL_SIZE.0 * cols as u32, PANEL_SIZE.1 * rows as u32);
    render(path, size, |root| {
        if panels.is_empty() {
            return draw_message(root, "no data");
        }
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        Ok(())
    })
}

/// The confusion matrix as a heat map with class names on both axes and counts (and row-normalised fraction) in each cell.
///
/// Cells are shaded by count (darker is more). Text shrinks, and then disappears, as the number of classes
/// grows; long class names are shortened. `class_names` must name every class, or be empty to label
/// classes by index.
pub fn plot_confusion_matrix(cm: &ConfusionMatrix, class_names: &[String], path: &Path) -> Result<()> {
    let n = cm.num_classes();
    let plot_err = |reason: String| Error::Plot { path: path.to_path_buf(), reason };
    if !class_names.is_empty() && class_names.len() != n {
        return Err(plot_err(format!("{} class names for a {n}-class confusion matrix", class_names.len())));
    }
    if n > MAX_CM_CLASSES {
        return Err(plot_err(format!("{n} classes is too many to plot (at most {MAX_CM_CLASSES})")));
    }
    ensure_font().map_err(|e| plot_err(e.to_string()))?;
    let names: Vec<String> =
        (0..n).map(|i| class_names.get(i).map_or_else(|| i.to_string(), |name| shorten(name, 24))).collect();
    let layout = CmLayout::new(cm, &names).map_err(|e| plot_err(e.to_string()))?;
    render(path, (layout.width, layout.height), |root| draw_confusion_matrix(root, cm, &names, &layout))
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> DrawResult<()> {
    let ok = *FONT_REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    ok.then_some(()).ok_or_else(|| "the embedded DejaVu Sans font could not be loaded".into())
}

/// Draws into a white `size` canvas, encodes it as PNG and writes it atomically to `path`.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult<()>) -> Result<()> {
    render_over(path, None, size, draw)
}

/// [`render`] over `base` (an RGB8 image of `size`) instead of white.
pub(crate) fn render_over(
    path: &Path,
    base: Option<Vec<u8>>,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult<()>,
) -> Result<()> {
    let png = (|| -> DrawResult<Vec<u8>> {
        ensure_font()?;
        let (w, h) = size;
        let white = base.is_none();
        let mut buf = base.unwrap_or_else(|| vec![0u8; w as usize * h as usize * 3]);
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            if white {
                root.fill(&WHITE)?;
            }
            draw(&root)?;
            root.present()?;
        }
        let img = image::RgbImage::from_raw(w, h, buf).ok_or("the pixel buffer has the wrong size")?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        Ok(png)
    })()
    .map_err(|e| Error::Plot { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::fsutil::write_atomic(path, &png)
}

/// Bar chart layout of [`plot_shares`]: width, row height, margins.
const SHARES_WIDTH: u32 = 760;
const SHARES_ROW: i32 = 30;
const SHARES_TOP: i32 = 56;
const SHARES_BOTTOM: i32 = 62;
const SHARES_PAD: i32 = 16;
const BAR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);

/// Shares of a whole (values in 0..=1, e.g. parameter importances) as horizontal bars, largest at the top, each
/// labelled with its value; the axis ends at the next tenth above the largest. NaN is drawn as 0, values outside
/// 0..=1 are clipped; an empty list gives a "no data" image. 760 px wide, 30 px per row.
pub fn plot_shares(title: &str, x_label: &str, rows: &[(String, f64)], path: &Path) -> Result<()> {
    let height = SHARES_TOP + SHARES_ROW * rows.len().max(1) as i32 + SHARES_BOTTOM;
    render(path, (SHARES_WIDTH, height as u32), |root| draw_shares(root, title, x_label, rows))
}

fn bar_style(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    style(size, &TEXT, h, v)
}

fn draw_shares(root: &Area<'_>, title: &str, x_label: &str, rows: &[(String, f64)]) -> DrawResult<()> {
    let (w, h) = root.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let put = |text: String, at: (i32, i32), s: TextStyle<'_>| root.draw(&Text::new(text, at, s));
    put(title.to_string(), (w / 2, SHARES_PAD), bar_style(18.0, HPos::Center, VPos::Top))?;
    if rows.is_empty() {
        return draw_message(root, "no data");
    }
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let names: Vec<String> = rows.iter().map(|(n, _)| shorten(n, 28)).collect();
    let mut name_w = 0;
    for n in &names {
        name_w = name_w.max((FONT, 14.0).into_font().box_size(n)?.0 as i32);
    }
    let (x0, x1, bottom) = (SHARES_PAD + name_w + 10, w - SHARES_PAD - 56, SHARES_TOP + SHARES_ROW * rows.len() as i32);
    let clean = |v: f64| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let top_value = rows.iter().map(|r| clean(r.1)).fold(0.0, f64::max);
    // The axis ends at the next tenth above the largest importance (0.1 at least, 1 at most).
    let axis_max = ((top_value * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
    let px = |v: f64| x0 + ((x1 - x0) as f64 * clean(v) / axis_max).round() as i32;
    let ticks = (axis_max * 10.0).round() as usize;
    let step = if ticks > 5 { 2 } else { 1 };
    for t in (0..=ticks).step_by(step) {
        let v = t as f64 / 10.0;
        let grid = if t == 0 { RGBColor(120, 120, 120) } else { RGBColor(225, 225, 225) };
        root.draw(&PathElement::new(vec![(px(v), SHARES_TOP - 6), (px(v), bottom + 4)], grid))?;
        put(format!("{v:.1}"), (px(v), bottom + 8), bar_style(13.0, HPos::Center, VPos::Top))?;
    }
    put(x_label.to_string(), ((x0 + x1) / 2, h - SHARES_PAD), bar_style(15.0, HPos::Center, VPos::Bottom))?;
    for (i, ((_, v), name)) in rows.iter().zip(&names).enumerate() {
        let mid = SHARES_TOP + SHARES_ROW * i as i32 + SHARES_ROW / 2;
        put(name.clone(), (x0 - 10, mid), bar_style(14.0, HPos::Right, VPos::Center))?;
        if px(*v) > x0 {
            root.draw(&Rectangle::new([(x0 + 1, mid - 10), (px(*v), mid + 10)], BAR.filled()))?;
        }
        put(format!("{v:.3}"), (px(*v) + 6, mid), bar_style(13.0, HPos::Left, VPos::Center))?;
    }
    Ok(())
}

/// Columns and rows for `n` panels: one row up to three, then a near-square grid.
fn panel_grid(n: usize) -> (usize, usize) {
    match n {
        0 => (1, 1),
        1..=3 => (n, 1),
        _ => {
            let cols = (n as f64).sqrt().ceil() as usize;
            (cols, n.div_ceil(cols))
        }
    }
}

fn draw_message(area: &Area<'_>, message: &str) -> DrawResult<()> {
    let (w, h) = area.dim_in_pixel();
    let centred = style(18.0, &RGBColor(110, 110, 110), HPos::Center, VPos::Center);
    area.draw(&Text::new(message.to_string(), (w as i32 / 2, h as i32 / 2), centred))?;
    Ok(())
}

/// Values beyond this magnitude (or, on a log axis, below its inverse) are skipped, which keeps the axis
/// arithmetic finite; a loss this large has diverged anyway.
const MAX_MAGNITUDE: f64 = 1e100;

/// The points of one series that can be drawn on the panel's axes.
fn clean_points(series: &Series, log_y: bool) -> Vec<(f64, f64)> {
    let drawable = |v: f64| v.is_finite() && v.abs() <= MAX_MAGNITUDE;
    series
        .points
        .iter()
        .copied()
        .filter(|&(x, y)| drawable(x) && drawable(y) && (!log_y || y >= 1.0 / MAX_MAGNITUDE))
        .collect()
}

fn draw_panel(area: &Area<'_>, panel: &Panel) -> DrawResult<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> =
        panel.series.iter().map(|s| (s.name.as_str(), clean_points(s, panel.log_y))).collect();
    let xs = lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1));
    let (Some(x), Some(y)) = (value_range(xs), value_range(ys)) else {
        draw_chart(area, panel, 0.0..1.0, 0.0..1.0, &[], SeriesLabelPosition::UpperRight)?;
        return draw_message(area, "no data");
    };
    let x = pad_linear(x, 0.0, 1.0);
    // Legend placement works on the axes as drawn: x linear, y linear or logarithmic.
    let (y, fy): (Range<f64>, fn(f64) -> f64) =
        if panel.log_y { (pad_log(y), f64::ln) } else { (pad_linear(y, 0.05, 0.0), |v| v) };
    let unit =
        |(px, py): (f64, f64)| ((px - x.start) / (x.end - x.start), (fy(py) - fy(y.start)) / (fy(y.end) - fy(y.start)));
    let legend = legend_position(&lines, unit);
    if panel.log_y {
        draw_chart(area, panel, x, y.log_scale(), &lines, legend)
    } else {
        draw_chart(area, panel, x, y, &lines, legend)
    }
}

fn draw_chart<Y>(
    area: &Area<'_>,
    panel: &Panel,
    x_range: Range<f64>,
    y_spec: Y,
    lines: &[(&str, Vec<(f64, f64)>)],
    legend: SeriesLabelPosition,
) -> DrawResult<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .caption(&panel.title, (FONT, 20).into_font().color(&TEXT))
        .x_label_area_size(46)
        .y_label_area_size(78)
        .build_cartesian_2d(x_range, y_spec)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .axis_desc_style((FONT, 15).into_font().color(&TEXT))
        .label_style((FONT, 13).into_font().color(&TEXT))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let [_, r, g, b] = PALETTE[i % PALETTE.len()].to_be_bytes();
        let color = RGBColor(r, g, b);
        let line = chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
        if !name.is_empty() {
            line.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        // Markers make short curves (and single points, which a line cannot show) visible.
        if points.len() <= 30 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    if lines.iter().any(|(name, _)| !name.is_empty()) {
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 14).into_font().color(&TEXT))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()?;
    }
    Ok(())
}

/// The corner where a legend box covers the fewest data points and line samples. `unit` maps a point to
/// 0..1 across the plot (from the left and from the bottom).
fn legend_position(lines: &[(&str, Vec<(f64, f64)>)], unit: impl Fn((f64, f64)) -> (f64, f64)) -> SeriesLabelPosition {
    // The legend's size as a fraction of the plot area (about 530×330 pixels): 8 px a character, 20 a row.
    let longest = lines.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
    let rows = lines.iter().filter(|(name, _)| !name.is_empty()).count();
    let (w, h) = (((longest as f64 * 8.0 + 50.0) / 530.0).min(1.0), ((rows as f64 * 20.0 + 14.0) / 330.0).min(1.0));
    let corners = [
        (SeriesLabelPosition::UpperRight, 1.0 - w, 1.0 - h),
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - h),
        (SeriesLabelPosition::LowerRight, 1.0 - w, 0.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
    ];
    let mut hits = [0usize; 4];
    for (_, points) in lines {
        let steps = if points.len() > 2000 { 1 } else { 8 };
        let samples = points.windows(2).flat_map(|pair| {
            let ((x0, y0), (x1, y1)) = (unit(pair[0]), unit(pair[1]));
            (0..steps).map(move |s| (s as f64 / steps as f64, x0, y0, x1, y1))
        });
        let samples = samples.map(|(t, x0, y0, x1, y1)| (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t));
        for (x, y) in samples.chain(points.last().map(|&p| unit(p))) {
            for (hit, (_, cx, cy)) in hits.iter_mut().zip(&corners) {
                *hit +=
                    usize::from((cx - 0.03..=cx + w + 0.03).contains(&x) && (cy - 0.03..=cy + h + 0.03).contains(&y));
            }
        }
    }
    let best = (0..4).min_by_key(|&i| hits[i]).unwrap_or(0);
    corners[best].0.clone()
}

/// `min..max` of the values, if there are any.
fn value_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A linear axis range with `margin` (a fraction of the span) on both sides. A flat range is widened by
/// 10% of its value, at least `min_pad` (and by 1 around 0).
fn pad_linear((lo, hi): (f64, f64), margin: f64, min_pad: f64) -> Range<f64> {
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        (lo - span * margin)..(hi + span * margin)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { (lo.abs() * 0.1).max(min_pad) };
        (lo - pad)..(hi + pad)
    }
}

/// A log axis range (both ends > 0) with a small margin; a flat range is widened to a factor of 2 either way.
fn pad_log((lo, hi): (f64, f64)) -> Range<f64> {
    if hi > lo {
        let factor = (hi / lo).powf(0.05).max(1.0);
        (lo / factor)..(hi * factor)
    } else {
        (lo / 2.0)..(hi * 2.0)
    }
}

/// A compact tick label: integers as integers, very small or large magnitudes in scientific notation.
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        String::new()
    } else if a < 1e-12 {
        "0".to_string()
    } else if !(1e-2..1e5).contains(&a) {
        // "1e-3", "2.5e-4": scientific notation without trailing zeros in the mantissa.
        let s = format!("{v:.2e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa =
            if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
        format!("{mantissa}e{exponent}")
    } else {
        format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `name`, cut to at most `max` characters with an ellipsis.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    name.chars().take(max.saturating_sub(1)).chain(['…']).collect()
}

/// Where everything of a confusion-matrix plot goes, in pixels.
#[derive(Debug)]
struct CmLayout {
    width: u32,
    height: u32,
    /// Top-left corner of the grid.
    grid: (i32, i32),
    cell: i32,
    /// Font size of the class names; `None` when the cells are too small for them.
    name_font: Option<f64>,
    rotate_x_names: bool,
    /// Font size of the counts; `None` when they don't fit.
    count_font: Option<f64>,
    /// Whether the row fraction fits below the count.
    show_fraction: bool,
    /// Left edge of the colour bar.
    bar_x: i32,
}

const CM_TITLE_FONT: f64 = 18.0;
const CM_AXIS_FONT: f64 = 16.0;
const CM_PAD: i32 = 16;
const CM_BAR_W: i32 = 18;

impl CmLayout {
    fn new(cm: &ConfusionMatrix, names: &[String]) -> DrawResult<Self> {
        let n = cm.num_classes().max(1) as i32;
        let cell = (720 / n).clamp(1, 110);
        let grid_side = cell * n;
        let text_w =
            |text: &str, size: f64| -> DrawResult<i32> { Ok((FONT, size).into_font().box_size(text)?.0 as i32) };

        let name_font = Some((f64::from(cell) * 0.8).min(14.0)).filter(|&f| f >= 6.0);
        let (mut name_w, mut rotate_x_names) = (0, false);
        if let Some(font) = name_font {
            for name in names {
                name_w = name_w.max(text_w(name, font)?);
            }
            rotate_x_names = name_w > cell - 6;
        }
        let name_h = name_font.map_or(0, |f| f.ceil() as i32);
        let x_names_h = if rotate_x_names { name_w } else { name_h };

        let max_count = cm.rows().into_iter().flatten().max().unwrap_or(0);
        let count_font = Some((f64::from(cell) * 0.3).min(16.0))
            .filter(|&f| f >= 7.0)
            .filter(|&f| text_w(&max_count.to_string(), f).is_ok_and(|w| w <= cell - 6));
        let show_fraction = count_font
            .is_some_and(|f| f64::from(cell) >= 3.2 * f && text_w("100.0%", f * 0.85).is_ok_and(|w| w <= cell - 6));

        let left = CM_PAD + CM_AXIS_FONT as i32 + 10 + name_w + 8;
        let top = CM_PAD + CM_TITLE_FONT as i32 + 18;
        let bar_x = left + grid_side + 24;
        let bar_label_w = text_w(&max_count.to_string(), 13.0)?;
        let width = bar_x + CM_BAR_W + 8 + bar_label_w + CM_PAD;
        let height = top + grid_side + 8 + x_names_h + 10 + CM_AXIS_FONT as i32 + CM_PAD;
        let title_w = text_w(&cm_title(cm), CM_TITLE_FONT)? + 2 * CM_PAD;
        Ok(Self {
            width: width.max(title_w).max(320) as u32,
            height: height as u32,
            grid: (left, top),
            cell,
            name_font,
            rotate_x_names,
            count_font,
            show_fraction,
            bar_x,
        })
    }

    /// The pixel rectangle of cell (truth, predicted): top-left and bottom-right corners.
    fn cell_rect(&self, truth: usize, predicted: usize) -> ((i32, i32), (i32, i32)) {
        let x0 = self.grid.0 + predicted as i32 * self.cell;
        let y0 = self.grid.1 + truth as i32 * self.cell;
        ((x0, y0), (x0 + self.cell, y0 + self.cell))
    }
}

fn cm_title(cm: &ConfusionMatrix) -> String {
    format!("Confusion matrix: {} samples, accuracy {:.1}%", cm.total(), cm.metrics().accuracy * 100.0)
}

/// Text in the embedded font, anchored at `(h, v)`.
fn style(size: f64, color: &RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle { font: (FONT, size).into_font(), color: color.to_backend_color(), pos: Pos::new(h, v) }
}

/// The "Blues" colour map at `t` in 0..=1 (white to dark blue).
fn blues(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(247., 251., 255.), (198., 219., 239.), (107., 174., 214.), (33., 113., 181.), (8., 48., 107.)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws `text` at `at` in `style`.
fn put(area: &Area<'_>, text: impl Into<String>, at: (i32, i32), style: TextStyle<'_>) -> DrawResult<()> {
    Ok(area.draw(&Text::new(text.into(), at, style))?)
}

fn draw_confusion_matrix(root: &Area<'_>, cm: &ConfusionMatrix, names: &[String], l: &CmLayout) -> DrawResult<()> {
    use {
        HPos::{Left, Right},
        VPos::{Bottom, Top},
    };
    put(root, cm_title(cm), (l.width as i32 / 2, CM_PAD), style(CM_TITLE_FONT, &TEXT, HPos::Center, Top))?;
    let n = cm.num_classes();
    if n == 0 {
        return draw_message(root, "no classes");
    }
    let (side, (gx, gy)) = (l.cell * n as i32, l.grid);
    let rows = cm.rows();
    let max_count = rows.iter().flatten().copied().max().unwrap_or(0);
    for (t, row) in rows.iter().enumerate() {
        let support: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let shade = if max_count == 0 { 0.0 } else { count as f64 / max_count as f64 };
            let (a, b) = l.cell_rect(t, p);
            root.draw(&Rectangle::new([a, (b.0 - 1, b.1 - 1)], blues(shade).filled()))?;
            let Some(font) = l.count_font else { continue };
            let color = if shade > 0.55 { WHITE } else { TEXT };
            let (cx, cy) = (a.0 + l.cell / 2, a.1 + l.cell / 2);
            if l.show_fraction && support > 0 {
                let fraction = format!("{:.1}%", count as f64 / support as f64 * 100.0);
                put(root, count.to_string(), (cx, cy - 1), style(font, &color, HPos::Center, Bottom))?;
                put(root, fraction, (cx, cy + 3), style(font * 0.85, &color, HPos::Center, Top))?;
            } else {
                put(root, count.to_string(), (cx, cy), style(font, &color, HPos::Center, VPos::Center))?;
            }
        }
    }
    let border = RGBColor(120, 120, 120);
    root.draw(&Rectangle::new([(gx - 1, gy - 1), (gx + side, gy + side)], border))?;

    // Class names: true classes left of the rows, predicted classes under the columns.
    if let Some(font) = l.name_font {
        let below = gy + side + 8;
        for (i, name) in names.iter().enumerate() {
            let mid = i as i32 * l.cell + l.cell / 2;
            put(root, name, (gx - 8, gy + mid), style(font, &TEXT, Right, VPos::Center))?;
            if l.rotate_x_names {
                put(
                    root,
                    name,
                    (gx + mid, below),
                    style(font, &TEXT, Right, VPos::Center).transform(FontTransform::Rotate270),
                )?;
            } else {
                put(root, name, (gx + mid, below), style(font, &TEXT, HPos::Center, Top))?;
            }
        }
    }
    let bottom = l.height as i32 - CM_PAD;
    put(root, "Predicted class", (gx + side / 2, bottom), style(CM_AXIS_FONT, &TEXT, HPos::Center, Bottom))?;
    let rotated = style(CM_AXIS_FONT, &TEXT, HPos::Center, Top).transform(FontTransform::Rotate270);
    put(root, "True class", (CM_PAD, gy + side / 2), rotated)?;

    // Colour bar from 0 (bottom) to the largest count (top).
    for y in 0..side {
        let t = 1.0 - f64::from(y) / f64::from((side - 1).max(1));
        root.draw(&Rectangle::new([(l.bar_x, gy + y), (l.bar_x + CM_BAR_W, gy + y + 1)], blues(t).filled()))?;
    }
    root.draw(&Rectangle::new([(l.bar_x - 1, gy - 1), (l.bar_x + CM_BAR_W, gy + side)], border))?;
    let label_x = l.bar_x + CM_BAR_W + 6;
    put(root, max_count.to_string(), (label_x, gy), style(13.0, &TEXT, Left, Top))?;
    put(root, "0", (label_x, gy + side), style(13.0, &TEXT, Left, Bottom))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    fn distinct_colours(img: &image::RgbImage) -> usize {
        let mut seen: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.to_string(), points: points.to_vec() }
    }

    fn panel(title: &str, series: Vec<Series>, log_y: bool) -> Panel {
        Panel { title: title.into(), x_label: "epoch".into(), y_label: "value".into(), series, log_y }
    }

    fn decay(n: usize) -> Vec<(f64, f64)> {
        (0..n).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect()
    }

    #[test]
    fn training_curves_are_a_png_of_the_expected_size_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let lr = [(0.0, 1e-3), (50.0, 1e-4), (100.0, 1e-5)];
        let panels = vec![
            panel("Loss", vec![series("train", &decay(20)), series("val", &decay(15))], false),
            panel("Accuracy", vec![series("val acc", &[(0.0, 0.5), (1.0, 0.7), (2.0, 0.8)])], false),
            panel("Learning rate", vec![series("lr", &lr)], true),
        ];
        plot_panels(&panels, &path).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (3 * PANEL_SIZE.0, PANEL_SIZE.1));
        assert!(distinct_colours(&img) > 10, "the image looks blank");

        assert_eq!((panel_grid(1), panel_grid(3), panel_grid(4), panel_grid(5)), ((1, 1), (3, 1), (2, 2), (3, 2)));
        let five: Vec<Panel> =
            (0..5).map(|i| panel(&format!("panel {i}"), vec![series("s", &decay(5))], false)).collect();
        plot_panels(&five, &path).unwrap();
        assert_eq!(decode(&path).dimensions(), (3 * PANEL_SIZE.0, 2 * PANEL_SIZE.1));
    }

    #[test]
    fn curve_edge_cases_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (nan, inf) = (f64::NAN, f64::INFINITY);
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![series("empty", &[])],
            vec![series("one point", &[(3.0, 0.25)])],
            vec![series("flat", &[(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)])],
            vec![series("zeros", &[(0.0, 0.0), (1.0, 0.0)])],
            vec![series("nan", &[(0.0, nan), (1.0, 1.0), (nan, 2.0), (2.0, inf), (3.0, 0.5)])],
            vec![series("all nan", &[(nan, nan), (1.0, nan)])],
            vec![series("", &[(0.0, 1.0), (1.0, 2.0)])],
            vec![series("extremes", &[(0.0, 1e300), (1.0, -1e300), (f64::MAX, 1.0), (2.0, 5e-324), (3.0, 1e90)])],
            vec![series("tiny span", &[(0.0, 1.0), (1e-12, 1.0 + 1e-12)])],
            vec![series("negative", &[(-5.0, -1.0), (-4.0, -3.0)])],
            vec![series("long", &(0..100_000).map(|i| (i as f64, (i as f64 * 0.01).sin())).collect::<Vec<_>>())],
            (0..14).map(|i| series(&format!("series {i}"), &[(0.0, i as f64), (1.0, i as f64 + 1.0)])).collect(),
        ];
        for (i, s) in cases.into_iter().enumerate() {
            for log_y in [false, true] {
                let path = dir.path().join(format!("case{i}-{log_y}.png"));
                plot_panels(&[panel(&format!("case {i}"), s.clone(), log_y)], &path).unwrap();
                assert_eq!(decode(&path).dimensions(), PANEL_SIZE);
            }
        }
        let path = dir.path().join("none.png");
        plot_panels(&[], &path).unwrap();
        assert!(distinct_colours(&decode(&path)) > 1);
        let missing = dir.path().join("nope").join("x.png");
        let err = plot_panels(&[Panel::default()], &missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    /// The most common colour inside a cell: its background, whatever text is drawn on it.
    fn cell_background(img: &image::RgbImage, ((x0, y0), (x1, y1)): ((i32, i32), (i32, i32))) -> [u8; 3] {
        let mut colours: Vec<[u8; 3]> =
            (y0 + 2..y1 - 2).flat_map(|y| (x0 + 2..x1 - 2).map(move |x| img.get_pixel(x as u32, y as u32).0)).collect();
        colours.sort_unstable();
        colours.chunk_by(|a, b| a == b).max_by_key(|run| run.len()).map(|run| run[0]).unwrap()
    }

    #[test]
    fn confusion_matrix_cells_darken_with_count() {
        let mut cm = ConfusionMatrix::new(3);
        for (t, p, n) in [(0, 0, 50), (0, 1, 5), (1, 1, 30), (1, 2, 10), (2, 0, 1), (2, 2, 20)] {
            (0..n).for_each(|_| cm.add(t, p));
        }
        let names: Vec<String> = ["cat", "dog", "a rather long class name"].map(String::from).to_vec();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        plot_confusion_matrix(&cm, &names, &path).unwrap();
        let img = decode(&path);
        let layout = CmLayout::new(&cm, &names).unwrap();
        assert_eq!(img.dimensions(), (layout.width, layout.height));
        assert!(distinct_colours(&img) > 10);
        let darkness =
            |(t, p)| 765 - cell_background(&img, layout.cell_rect(t, p)).iter().map(|&c| u32::from(c)).sum::<u32>();
        // Counts in increasing order: 0 (0,2), 1 (2,0), 5 (0,1), 10 (1,2), 20 (2,2), 30 (1,1), 50 (0,0).
        let order = [(0, 2), (2, 0), (0, 1), (1, 2), (2, 2), (1, 1), (0, 0)];
        for pair in order.windows(2) {
            let (a, b) = (darkness(pair[0]), darkness(pair[1]));
            assert!(b > a, "cell {:?} ({b}) should be darker than {:?} ({a})", pair[1], pair[0]);
        }
    }

    #[test]
    fn confusion_matrix_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        plot_confusion_matrix(&ConfusionMatrix::new(0), &[], &p("zero.png")).unwrap();
        plot_confusion_matrix(&ConfusionMatrix::new(1), &[], &p("one.png")).unwrap();
        plot_confusion_matrix(&ConfusionMatrix::new(4), &[], &p("empty.png")).unwrap();
        let mut many = ConfusionMatrix::new(150);
        for i in 0..150 {
            many.add(i, (i * 7) % 150);
            many.add(i, i);
        }
        let names: Vec<String> = (0..150).map(|i| format!("class number {i}")).collect();
        plot_confusion_matrix(&many, &names, &p("many.png")).unwrap();
        assert!(distinct_colours(&decode(&p("many.png"))) > 3);
        let err = plot_confusion_matrix(&ConfusionMatrix::new(3), &names[..2], &p("bad.png")).unwrap_err();
        assert!(matches!(err, Error::Plot { .. }), "{err}");
        assert!(plot_confusion_matrix(&ConfusionMatrix::new(MAX_CM_CLASSES + 1), &[], &p("huge.png")).is_err());
    }

    #[test]
    fn tick_labels_are_compact() {
        let ticks = [10.0, 0.25, 1e-4, 2.5e-4, -3e6, 0.001, 12345.0, -0.0, f64::NAN].map(format_tick);
        assert_eq!(ticks, ["10", "0.25", "1e-4", "2.5e-4", "-3e6", "1e-3", "12345", "0", ""]);
        assert_eq!(shorten("abcdef", 4), "abc…");
    }

    #[test]
    fn shares_are_bars_sorted_largest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shares.png");
        let rows = vec![("lr".to_string(), 0.25), ("optimizer".to_string(), 0.7), ("model.width".to_string(), 0.05)];
        plot_shares("t", "x", &rows, &path).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (SHARES_WIDTH, (SHARES_TOP + SHARES_ROW * 3 + SHARES_BOTTOM) as u32));
        // The top row's bar is the longest: "optimizer", though listed second.
        let bar_len = |row: i32| {
            let y = (SHARES_TOP + SHARES_ROW * row + SHARES_ROW / 2) as usize;
            img.rows().nth(y).unwrap().filter(|p| p.0 == [BAR.0, BAR.1, BAR.2]).count()
        };
        assert!(bar_len(0) > 2 * bar_len(1) && bar_len(1) > bar_len(2) && bar_len(2) > 0);
        plot_shares("t", "x", &[], &path).unwrap();
        assert_eq!(decode(&path).height(), (SHARES_TOP + SHARES_ROW + SHARES_BOTTOM) as u32);
    }
}
