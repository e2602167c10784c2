//! Drawing a [`Figure`] onto any plotters backend.
//!
//! plotters is used only for primitives (paths, polygons, rectangles,
//! circles, text) in pixel space; axes, ticks, legends and colour bars are laid
//! out here so that PNG and SVG output are identical and no chart-builder
//! generics leak into the model.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{
    FontDesc, FontFamily, FontStyle, FontTransform, RGBAColor, ShapeStyle, TextStyle,
};

use crate::colors::{palette_color, viridis};
use crate::geom::{
    P, Rect, clip_polygon, clip_polyline, clip_segment, contour_segments, dash_polyline,
};
use crate::model::{Figure, Heatmap, LegendPos, Marker, Panel, Scale, Series, Style, StyleKind};
use crate::text;
use crate::ticks::{Tick, Ticks, linear_ticks, ticks, to_axis};

type Res = Result<(), String>;

const FIG_TITLE_PX: f64 = 22.0;
const PANEL_TITLE_PX: f64 = 18.0;
const LABEL_PX: f64 = 16.0;
const TICK_PX: f64 = 14.0;
const LEGEND_PX: f64 = 14.0;
const PAD: f64 = 10.0;
const TICK_LEN: f64 = 5.0;
const MINOR_TICK_LEN: f64 = 3.0;

const TEXT: (u8, u8, u8) = (0, 0, 0);
const TICK_TEXT: (u8, u8, u8) = (34, 34, 34);
const GRID: (u8, u8, u8) = (0, 0, 0);
const GRID_ALPHA: f64 = 0.09;
const REFLINE: (u8, u8, u8) = (90, 90, 90);
const BAND_ALPHA: f64 = 0.22;
/// Font size (ascent + descent, as ab_glyph scales) per em of DejaVu Sans.
const EM_PER_SIZE: f64 = 1.164;

/// Smallest and largest panel side accepted, in pixels.
const MIN_PANEL_SIDE: u32 = 120;
const MAX_PANEL_SIDE: u32 = 8000;

fn rgba(c: (u8, u8, u8), a: f64) -> RGBAColor {
    RGBAColor(c.0, c.1, c.2, a)
}

/// Pixel size and title band of a figure: `(width, height, title_height)`.
pub(crate) fn figure_size(fig: &Figure) -> (u32, u32, u32) {
    let (pw, ph) = panel_size(fig);
    let title_h = if fig.title.is_empty() {
        0
    } else {
        (FIG_TITLE_PX + 18.0) as u32
    };
    (
        pw * fig.grid_columns() as u32,
        ph * fig.grid_rows() as u32 + title_h,
        title_h,
    )
}

fn panel_size(fig: &Figure) -> (u32, u32) {
    (
        fig.panel_width.clamp(MIN_PANEL_SIDE, MAX_PANEL_SIDE),
        fig.panel_height.clamp(MIN_PANEL_SIDE, MAX_PANEL_SIDE),
    )
}

/// Drawing in *logical* pixels on a backend that may be `scale` times larger
/// (supersampled bitmaps); turns plotters' errors into strings.
///
/// Convention: the logical integer coordinate `k` names the pixel `[k, k+1)`,
/// so axis-aligned thin lines (frames, ticks, grids) are drawn as filled
/// rectangles and stay crisp after downsampling.
struct Canvas<'a, DB: DrawingBackend> {
    area: &'a DrawingArea<DB, Shift>,
    /// Rasterise text here (bitmap) instead of letting the backend emit it (SVG).
    raster_text: bool,
    /// Device pixels per logical pixel.
    scale: f64,
}

impl<DB: DrawingBackend> Canvas<'_, DB> {
    fn text_style(
        size: f64,
        color: RGBAColor,
        h: HPos,
        v: VPos,
        rotate: bool,
    ) -> TextStyle<'static> {
        let mut font = FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal);
        if rotate {
            font = font.transform(FontTransform::Rotate270);
        }
        TextStyle {
            font,
            color: color.to_backend_color(),
            pos: Pos::new(h, v),
        }
    }

    /// Device coordinate of the centre of logical position `p`.
    fn dev(&self, p: P) -> (i32, i32) {
        let s = self.scale;
        (
            ((p.0 + 0.5) * s - 0.5).round() as i32,
            ((p.1 + 0.5) * s - 0.5).round() as i32,
        )
    }

    /// Device coordinate of a logical pixel *edge*.
    fn edge(&self, v: f64) -> i32 {
        (v * self.scale).round() as i32
    }

    fn dev_width(&self, w: u32) -> u32 {
        ((w.max(1) as f64) * self.scale).round().max(1.0) as u32
    }

    /// Unrotated logical `(width, height)` of `text`.
    fn text_size(&self, text: &str, size: f64) -> (f64, f64) {
        if text.is_empty() {
            return (0.0, 0.0);
        }
        let m = text::measure(text, size);
        (m.width, m.height())
    }

    /// Draw `text` anchored at `p`; `rotate` turns it to read bottom-to-top.
    #[allow(clippy::too_many_arguments)]
    fn text(
        &self,
        text: &str,
        size: f64,
        color: (u8, u8, u8),
        p: P,
        h: HPos,
        v: VPos,
        rotate: bool,
    ) -> Res {
        if text.is_empty() || !p.0.is_finite() || !p.1.is_finite() {
            return Ok(());
        }
        let size = size * self.scale;
        let p = ((p.0 * self.scale).round(), (p.1 * self.scale).round());
        let m = text::measure(text, size);
        let dx = match h {
            HPos::Left => 0.0,
            HPos::Center => -m.width / 2.0,
            HPos::Right => -m.width,
        };
        let baseline = match v {
            VPos::Top => m.ascent,
            VPos::Center => m.ascent - m.height() / 2.0,
            VPos::Bottom => -m.descent,
        };
        // Unrotated offset (u along the text, d downwards) to screen; rotated
        // text reads upwards and its "down" points right.
        let to_screen = |u: f64, d: f64| {
            if rotate {
                (p.0 + d, p.1 - u)
            } else {
                (p.0 + u, p.1 + d)
            }
        };
        if !self.raster_text {
            // One <text> per run, placed so its baseline matches the bitmap
            // layout: plotters' SVG writes font-size = size / 1.24 and shifts
            // top-anchored text down by 0.76 em.
            for run in text::layout(text, size) {
                let svg_size = run.size * 1.24 / EM_PER_SIZE;
                let top = baseline - run.rise - 0.76 * run.size / EM_PER_SIZE;
                let (x, y) = to_screen(dx + run.x, top);
                let st =
                    Self::text_style(svg_size, rgba(color, 1.0), HPos::Left, VPos::Top, rotate);
                self.area
                    .draw_text(&run.text, &st, (x.round() as i32, y.round() as i32))
                    .map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        let (ox, oy) = to_screen(dx, baseline);
        let (ox, oy) = (ox.round() as i32, oy.round() as i32);
        let (w, hgt) = self.area.dim_in_pixel();
        let mut result = Ok(());
        text::rasterize(text, size, |u, d, cov| {
            if result.is_err() || cov <= 0.0 {
                return;
            }
            let (x, y) = if rotate {
                (ox + d, oy - u)
            } else {
                (ox + u, oy + d)
            };
            if x < 0 || y < 0 || x >= w as i32 || y >= hgt as i32 {
                return;
            }
            let c = RGBAColor(color.0, color.1, color.2, cov.min(1.0) as f64);
            result = self.area.draw_pixel((x, y), &c).map_err(|e| e.to_string());
        });
        result
    }

    /// A polyline; a single axis-aligned segment is drawn crisp.
    fn path(&self, pts: &[P], color: RGBAColor, width: u32) -> Res {
        if pts.len() < 2 {
            return Ok(());
        }
        if pts.len() == 2 {
            let (a, b) = (pts[0], pts[1]);
            if (a.1 - b.1).abs() < 1e-6 {
                let top = a.1 + 0.5 - width.max(1) as f64 / 2.0;
                return self.fill_rect(
                    (a.0.min(b.0), top),
                    (a.0.max(b.0) + 1.0, top + width.max(1) as f64),
                    color,
                );
            }
            if (a.0 - b.0).abs() < 1e-6 {
                let left = a.0 + 0.5 - width.max(1) as f64 / 2.0;
                return self.fill_rect(
                    (left, a.1.min(b.1)),
                    (left + width.max(1) as f64, a.1.max(b.1) + 1.0),
                    color,
                );
            }
        }
        let v: Vec<(i32, i32)> = pts.iter().map(|&p| self.dev(p)).collect();
        let style = ShapeStyle {
            color,
            filled: false,
            stroke_width: self.dev_width(width),
        };
        self.area
            .draw(&PathElement::new(v, style))
            .map_err(|e| e.to_string())
    }

    fn polygon(&self, pts: &[P], color: RGBAColor) -> Res {
        if pts.len() < 3 {
            return Ok(());
        }
        let v: Vec<(i32, i32)> = pts.iter().map(|&p| self.dev(p)).collect();
        self.area
            .draw(&Polygon::new(v, color.filled()))
            .map_err(|e| e.to_string())
    }

    /// Fill the region between logical edges `a` (top left) and `b`.
    fn fill_rect(&self, a: P, b: P, color: RGBAColor) -> Res {
        let (x0, x1) = (self.edge(a.0.min(b.0)), self.edge(a.0.max(b.0)));
        let (y0, y1) = (self.edge(a.1.min(b.1)), self.edge(a.1.max(b.1)));
        if x0 == x1 || y0 == y1 {
            return Ok(());
        }
        self.area
            .draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled()))
            .map_err(|e| e.to_string())
    }

    /// A 1-pixel outline through the pixels `a` and `b` (inclusive corners).
    fn outline(&self, a: P, b: P, color: RGBAColor) -> Res {
        let (x0, x1, y0, y1) = (a.0.min(b.0), a.0.max(b.0), a.1.min(b.1), a.1.max(b.1));
        self.path(&[(x0, y0), (x1, y0)], color, 1)?;
        self.path(&[(x0, y1), (x1, y1)], color, 1)?;
        self.path(&[(x0, y0), (x0, y1)], color, 1)?;
        self.path(&[(x1, y0), (x1, y1)], color, 1)
    }

    fn circle(&self, c: P, r: f64, color: RGBAColor, filled: bool, width: u32) -> Res {
        let style = ShapeStyle {
            color,
            filled,
            stroke_width: self.dev_width(width),
        };
        let r = (r * self.scale).round().clamp(1.0, 10_000.0) as i32;
        self.area
            .draw(&Circle::new(self.dev(c), r, style))
            .map_err(|e| e.to_string())
    }

    /// A solid or dashed polyline, already clipped.
    fn styled_path(&self, pts: &[P], color: RGBAColor, width: u32, dashed: bool) -> Res {
        if dashed {
            let w = width.max(1) as f64;
            for d in dash_polyline(pts, 4.0 + 2.5 * w, 2.0 + 2.0 * w) {
                self.path(&d, color, width)?;
            }
            Ok(())
        } else {
            self.path(pts, color, width)
        }
    }

    /// A marker centred at `c` (already known to be inside the plot).
    fn marker(&self, m: Marker, c: P, r: f64, color: (u8, u8, u8), hollow: bool) -> Res {
        let outline: Option<Vec<P>> = match m {
            Marker::Circle => None,
            Marker::Square => {
                let h = r * 0.9;
                Some(vec![
                    (c.0 - h, c.1 - h),
                    (c.0 + h, c.1 - h),
                    (c.0 + h, c.1 + h),
                    (c.0 - h, c.1 + h),
                ])
            }
            Marker::Triangle => {
                let h = r * 1.25;
                Some(vec![
                    (c.0, c.1 - h),
                    (c.0 + h * 0.866, c.1 + h * 0.5),
                    (c.0 - h * 0.866, c.1 + h * 0.5),
                ])
            }
            Marker::Diamond => {
                let h = r * 1.25;
                Some(vec![
                    (c.0, c.1 - h),
                    (c.0 + h, c.1),
                    (c.0, c.1 + h),
                    (c.0 - h, c.1),
                ])
            }
        };
        let col = rgba(color, 1.0);
        match outline {
            None => {
                if hollow {
                    self.circle(c, r, rgba((255, 255, 255), 1.0), true, 1)?;
                    self.circle(c, r, col, false, 2)
                } else {
                    self.circle(c, r, col, true, 1)
                }
            }
            Some(pts) => {
                if hollow {
                    self.polygon(&pts, rgba((255, 255, 255), 1.0))?;
                    let mut closed = pts.clone();
                    closed.push(pts[0]);
                    self.path(&closed, col, 2)
                } else {
                    self.polygon(&pts, col)
                }
            }
        }
    }
}

/// Draw the whole figure on `root` (which must already have the size given by
/// [`figure_size`]).
/// `raster_text`: draw glyphs pixel by pixel (bitmap backends) rather than as
/// backend text elements (SVG). `scale`: device pixels per figure pixel (the
/// backend must be that many times larger than [`figure_size`]).
pub(crate) fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
    raster_text: bool,
    scale: u32,
) -> Res {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let cv = Canvas {
        area: root,
        raster_text,
        scale: scale.max(1) as f64,
    };
    let (w, _, title_h) = figure_size(fig);
    if !fig.title.is_empty() {
        cv.text(
            &fig.title,
            FIG_TITLE_PX,
            TEXT,
            (w as f64 / 2.0, 10.0),
            HPos::Center,
            VPos::Top,
            false,
        )?;
    }
    let (pw, ph) = panel_size(fig);
    let cols = fig.grid_columns();
    for (i, panel) in fig.panels.iter().enumerate() {
        let (col, row) = (i % cols, i / cols);
        let origin = ((col as u32 * pw) as f64, (title_h + row as u32 * ph) as f64);
        draw_panel(&cv, panel, origin, (pw as f64, ph as f64))?;
    }
    Ok(())
}

/// One axis: scale and limits in axis space (log10 for log axes).
#[derive(Debug, Clone, Copy)]
struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
}

impl Axis {
    fn frac(&self, t: f64) -> f64 {
        (t - self.lo) / (self.hi - self.lo)
    }

    fn contains(&self, t: f64) -> bool {
        let eps = (self.hi - self.lo) * 1e-9;
        t >= self.lo - eps && t <= self.hi + eps
    }
}

/// Data-to-pixel mapping of one panel.
struct Frame {
    r: Rect,
    x: Axis,
    y: Axis,
}

impl Frame {
    fn px_x(&self, t: f64) -> f64 {
        self.r.x0 + self.x.frac(t) * self.r.width()
    }

    fn px_y(&self, t: f64) -> f64 {
        self.r.y1 - self.y.frac(t) * self.r.height()
    }

    fn data_x(&self, v: f64) -> Option<f64> {
        to_axis(self.x.scale, v).map(|t| self.px_x(t))
    }

    fn data_y(&self, v: f64) -> Option<f64> {
        to_axis(self.y.scale, v).map(|t| self.px_y(t))
    }

    fn point(&self, x: f64, y: f64) -> Option<P> {
        Some((self.data_x(x)?, self.data_y(y)?))
    }

    /// Like [`Frame::data_y`], but a non-positive value on a log axis maps far
    /// below the plot (so bands and error bars reach the bottom edge).
    fn data_y_clamped(&self, v: f64) -> Option<f64> {
        match self.y.scale {
            Scale::Log if !v.is_nan() && v <= 0.0 => Some(self.r.y1 + 10.0 * self.r.height()),
            _ => self.data_y(v),
        }
    }
}

/// Running min/max of finite values.
#[derive(Debug, Clone, Copy, Default)]
struct Ext(Option<(f64, f64)>);

impl Ext {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.0 = Some(match self.0 {
                None => (v, v),
                Some((a, b)) => (a.min(v), b.max(v)),
            });
        }
    }

    fn union(self, o: Ext) -> Ext {
        let mut e = self;
        if let Some((a, b)) = o.0 {
            e.add(Some(a));
            e.add(Some(b));
        }
        e
    }

    fn padded(self, frac: f64) -> Ext {
        Ext(self.0.map(|(a, b)| {
            let d = (b - a) * frac;
            if d.is_finite() {
                (a - d, b + d)
            } else {
                (a, b)
            }
        }))
    }
}

/// Turn a degenerate interval into a usable one.
fn widen(lo: f64, hi: f64, scale: Scale) -> (f64, f64) {
    let span = hi - lo;
    if span.is_finite() && span > 0.0 && span > 1e-12 * lo.abs().max(hi.abs()) {
        return (lo, hi);
    }
    let c = if (lo + hi).is_finite() {
        (lo + hi) / 2.0
    } else {
        0.0
    };
    let d = match scale {
        Scale::Log => 0.5,
        Scale::Linear if c == 0.0 => 0.5,
        Scale::Linear => c.abs() * 0.1,
    };
    if (c - d).is_finite() && (c + d).is_finite() && d > 0.0 {
        (c - d, c + d)
    } else {
        (0.0, 1.0)
    }
}

fn resolve(explicit: Option<(f64, f64)>, auto: Ext, scale: Scale) -> Axis {
    let (mut lo, mut hi) = auto.0.unwrap_or((0.0, 1.0));
    if let Some((a, b)) = explicit {
        if let Some(t) = to_axis(scale, a) {
            lo = t;
        }
        if let Some(t) = to_axis(scale, b) {
            hi = t;
        }
    }
    if lo > hi {
        std::mem::swap(&mut lo, &mut hi);
    }
    let (lo, hi) = widen(lo, hi, scale);
    Axis { scale, lo, hi }
}

/// Per-cell `(low, high)` edges in axis space from cell centres.
fn cell_edges(centres: &[f64], scale: Scale) -> Vec<Option<(f64, f64)>> {
    let c: Vec<Option<f64>> = centres.iter().map(|&v| to_axis(scale, v)).collect();
    (0..c.len())
        .map(|i| {
            let ci = c[i]?;
            let prev = if i > 0 { c[i - 1] } else { None };
            let next = c.get(i + 1).copied().flatten();
            let half = |o: Option<f64>| {
                o.map(|o| (ci - o).abs() / 2.0)
                    .filter(|h| *h > 0.0 && h.is_finite())
            };
            let (hl, hr) = match (half(prev), half(next)) {
                (Some(a), Some(b)) => (a, b),
                (Some(a), None) => (a, a),
                (None, Some(b)) => (b, b),
                (None, None) => (0.5, 0.5),
            };
            Some((ci - hl, ci + hr))
        })
        .collect()
}

fn edges_ext(edges: &[Option<(f64, f64)>]) -> Ext {
    let mut e = Ext::default();
    for &(a, b) in edges.iter().flatten() {
        e.add(Some(a));
        e.add(Some(b));
    }
    e
}

fn series_len(s: &Series) -> usize {
    s.x.len().min(s.y.len())
}

fn at(v: &[f64], i: usize) -> f64 {
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn compute_axes(p: &Panel) -> (Axis, Axis) {
    let heat_x = p
        .heatmap
        .as_ref()
        .map(|h| edges_ext(&cell_edges(&h.x, p.x_scale)))
        .unwrap_or_default();
    let heat_y = p
        .heatmap
        .as_ref()
        .map(|h| edges_ext(&cell_edges(&h.y, p.y_scale)))
        .unwrap_or_default();
    let pad = if p.heatmap.is_some() { 0.0 } else { 0.04 };

    let mut ex = Ext::default();
    for s in &p.series {
        for i in 0..series_len(s) {
            let y_ok = to_axis(p.y_scale, s.y[i]).is_some()
                || s.band.as_ref().is_some_and(|(l, u)| {
                    to_axis(p.y_scale, at(l, i))
                        .or(to_axis(p.y_scale, at(u, i)))
                        .is_some()
                });
            if y_ok {
                ex.add(to_axis(p.x_scale, s.x[i]));
            }
        }
    }
    for l in &p.vlines {
        ex.add(to_axis(p.x_scale, l.value));
    }
    let x = resolve(p.x_range, ex.padded(pad).union(heat_x), p.x_scale);

    let x_filter = p.x_range.is_some();
    let mut ey = Ext::default();
    for s in &p.series {
        for i in 0..series_len(s) {
            let Some(tx) = to_axis(p.x_scale, s.x[i]) else {
                continue;
            };
            if x_filter && !x.contains(tx) {
                continue;
            }
            ey.add(to_axis(p.y_scale, s.y[i]));
            for (l, u) in s.band.iter().chain(s.y_err.iter()) {
                ey.add(to_axis(p.y_scale, at(l, i)));
                ey.add(to_axis(p.y_scale, at(u, i)));
            }
        }
    }
    for l in &p.hlines {
        ey.add(to_axis(p.y_scale, l.value));
    }
    let y = resolve(p.y_range, ey.padded(pad).union(heat_y), p.y_scale);
    (x, y)
}

fn series_color(i: usize, style: &Style) -> (u8, u8, u8) {
    palette_color(style.color.unwrap_or(i))
}

fn ref_color(style: &Style) -> (u8, u8, u8) {
    style.color.map(palette_color).unwrap_or(REFLINE)
}

fn max_width<DB: DrawingBackend>(cv: &Canvas<DB>, t: &Ticks, size: f64) -> f64 {
    t.major
        .iter()
        .map(|k| cv.text_size(&k.label, size).0)
        .fold(0.0, f64::max)
}

/// Finite colour-scale limits of a heat map.
fn z_limits(h: &Heatmap) -> (f64, f64) {
    let mut e = Ext::default();
    for row in &h.z {
        for &v in row {
            e.add(Some(v));
        }
    }
    let (mut lo, mut hi) = e.0.unwrap_or((0.0, 1.0));
    if let Some((a, b)) = h.z_range {
        if a.is_finite() {
            lo = a;
        }
        if b.is_finite() {
            hi = b;
        }
    }
    if lo > hi {
        std::mem::swap(&mut lo, &mut hi);
    }
    widen(lo, hi, Scale::Linear)
}

struct ColorbarLayout {
    ticks: Ticks,
    label_w: f64,
    z: (f64, f64),
}

const CB_GAP: f64 = 14.0;
const CB_WIDTH: f64 = 16.0;

fn draw_panel<DB: DrawingBackend>(cv: &Canvas<DB>, p: &Panel, (ox, oy): P, (pw, ph): P) -> Res {
    let (x_axis, y_axis) = compute_axes(p);
    let tick_h = cv.text_size("0123456789", TICK_PX).1;
    let label_h = cv.text_size("Xg", LABEL_PX).1;

    // Vertical layout.
    let title_h = if p.title.is_empty() {
        0.0
    } else {
        cv.text_size(&p.title, PANEL_TITLE_PX).1 + 12.0
    };
    let top = PAD + title_h.max(tick_h / 2.0);
    let xlab_h = if p.x_label.is_empty() {
        0.0
    } else {
        label_h + 8.0
    };
    let bottom = PAD + xlab_h + tick_h + TICK_LEN + 5.0;
    let plot_h = ph - top - bottom;

    // Horizontal layout (needs the y tick labels).
    let y_target = ((plot_h / 50.0) as usize).clamp(2, 10);
    let yt = ticks(y_axis.scale, y_axis.lo, y_axis.hi, y_target, plot_h);
    let ytick_w = max_width(cv, &yt, TICK_PX);
    let ylab_w = if p.y_label.is_empty() {
        0.0
    } else {
        label_h + 10.0
    };
    let left = PAD + ylab_w + ytick_w + TICK_LEN + 5.0;

    let cb = p.heatmap.as_ref().map(|h| {
        let z = z_limits(h);
        let t = linear_ticks(z.0, z.1, y_target);
        ColorbarLayout {
            label_w: max_width(cv, &t, TICK_PX),
            ticks: t,
            z,
        }
    });
    let mut right = PAD + 8.0;
    if let (Some(h), Some(c)) = (&p.heatmap, &cb) {
        right += CB_GAP + CB_WIDTH + TICK_LEN + 4.0 + c.label_w;
        if !h.colorbar_label.is_empty() {
            right += 10.0 + label_h;
        }
    }
    let plot_w = pw - left - right;
    if plot_w < 20.0 || plot_h < 20.0 {
        let title_x = ox + pw / 2.0;
        return cv.text(
            &p.title,
            PANEL_TITLE_PX,
            TEXT,
            (title_x, oy + PAD),
            HPos::Center,
            VPos::Top,
            false,
        );
    }

    let mut r = Rect {
        x0: (ox + left).round(),
        y0: (oy + top).round(),
        x1: (ox + pw - right).round(),
        y1: (oy + ph - bottom).round(),
    };
    let mut yt = yt;
    if p.equal_aspect && r.width() > 0.0 && r.height() > 0.0 {
        let (ux, uy) = (
            r.width() / (x_axis.hi - x_axis.lo),
            r.height() / (y_axis.hi - y_axis.lo),
        );
        if ux > uy {
            // Narrower: centre horizontally.
            let w = (uy * (x_axis.hi - x_axis.lo)).round();
            r.x0 += ((r.width() - w) / 2.0).round();
            r.x1 = r.x0 + w;
        } else if uy > ux {
            // Shorter: keep the top (under the title).
            r.y1 = r.y0 + (ux * (y_axis.hi - y_axis.lo)).round();
            let target = ((r.height() / 50.0) as usize).clamp(2, 10);
            yt = ticks(y_axis.scale, y_axis.lo, y_axis.hi, target, r.height());
        }
    }
    let plot_w = r.width();
    cv.text(
        &p.title,
        PANEL_TITLE_PX,
        TEXT,
        ((r.x0 + r.x1) / 2.0, oy + PAD),
        HPos::Center,
        VPos::Top,
        false,
    )?;
    let frame = Frame {
        r,
        x: x_axis,
        y: y_axis,
    };

    // X ticks: fewer until the labels do not collide.
    let mut x_target = ((plot_w / 60.0) as usize).clamp(2, 10);
    let xt = if !p.x_tick_labels.is_empty() {
        Ticks {
            major: p
                .x_tick_labels
                .iter()
                .filter_map(|(v, label)| to_axis(x_axis.scale, *v).map(|pos| Tick { pos, label: label.clone() }))
                .collect(),
            minor: Vec::new(),
        }
    } else {
        loop {
        let t = ticks(x_axis.scale, x_axis.lo, x_axis.hi, x_target, plot_w);
        let total: f64 = t
            .major
            .iter()
            .map(|k| cv.text_size(&k.label, TICK_PX).0 + 14.0)
            .sum();
        if total <= plot_w || x_target <= 2 {
            break t;
        }
        x_target -= 1;
        }
    };

    // Grid.
    if p.heatmap.is_none() {
        let gc = rgba(GRID, GRID_ALPHA);
        for t in xt.major.iter().filter(|t| x_axis.contains(t.pos)) {
            let x = frame.px_x(t.pos).round();
            cv.path(&[(x, r.y0), (x, r.y1)], gc, 1)?;
        }
        for t in yt.major.iter().filter(|t| y_axis.contains(t.pos)) {
            let y = frame.px_y(t.pos).round();
            cv.path(&[(r.x0, y), (r.x1, y)], gc, 1)?;
        }
    }

    if let (Some(h), Some(c)) = (&p.heatmap, &cb) {
        draw_heatmap(cv, &frame, h, c.z)?;
    }

    // Bands first so that every line lies on top of every band.
    for (i, s) in p.series.iter().enumerate() {
        draw_band(cv, &frame, s, series_color(i, &s.style))?;
    }
    for l in &p.hlines {
        if let Some(y) = frame
            .data_y(l.value)
            .filter(|y| *y >= r.y0 - 0.5 && *y <= r.y1 + 0.5)
        {
            let c = rgba(ref_color(&l.style), 1.0);
            cv.styled_path(
                &[(r.x0, y), (r.x1, y)],
                c,
                l.style.width,
                l.style.kind == StyleKind::Dashed,
            )?;
        }
    }
    for l in &p.vlines {
        if let Some(x) = frame
            .data_x(l.value)
            .filter(|x| *x >= r.x0 - 0.5 && *x <= r.x1 + 0.5)
        {
            let c = rgba(ref_color(&l.style), 1.0);
            cv.styled_path(
                &[(x, r.y0), (x, r.y1)],
                c,
                l.style.width,
                l.style.kind == StyleKind::Dashed,
            )?;
        }
    }
    for (i, s) in p.series.iter().enumerate() {
        draw_lines(cv, &frame, s, series_color(i, &s.style))?;
    }
    for (i, s) in p.series.iter().enumerate() {
        draw_error_bars(cv, &frame, s, series_color(i, &s.style))?;
    }
    for (i, s) in p.series.iter().enumerate() {
        if s.style.kind.has_markers() {
            let color = series_color(i, &s.style);
            for (k, pt) in series_points(&frame, s).into_iter().enumerate() {
                if let Some(pt) = pt.filter(|&q| r.contains(q, 0.5)) {
                    let hollow = s.markers_hollow.get(k).copied().unwrap_or(false);
                    cv.marker(
                        s.style.marker,
                        pt,
                        s.style.marker_size.max(1) as f64,
                        color,
                        hollow,
                    )?;
                }
            }
        }
    }

    // Frame, ticks, tick labels.
    let black = rgba((0, 0, 0), 1.0);
    cv.outline((r.x0, r.y0), (r.x1, r.y1), black)?;
    for &m in xt.minor.iter().filter(|&&m| x_axis.contains(m)) {
        let x = frame.px_x(m).round();
        cv.path(&[(x, r.y1), (x, r.y1 + MINOR_TICK_LEN)], black, 1)?;
    }
    for &m in yt.minor.iter().filter(|&&m| y_axis.contains(m)) {
        let y = frame.px_y(m).round();
        cv.path(&[(r.x0 - MINOR_TICK_LEN, y), (r.x0, y)], black, 1)?;
    }
    for t in xt.major.iter().filter(|t| x_axis.contains(t.pos)) {
        let x = frame.px_x(t.pos).round();
        cv.path(&[(x, r.y1), (x, r.y1 + TICK_LEN)], black, 1)?;
        cv.text(
            &t.label,
            TICK_PX,
            TICK_TEXT,
            (x, r.y1 + TICK_LEN + 4.0),
            HPos::Center,
            VPos::Top,
            false,
        )?;
    }
    for t in yt.major.iter().filter(|t| y_axis.contains(t.pos)) {
        let y = frame.px_y(t.pos).round();
        cv.path(&[(r.x0 - TICK_LEN, y), (r.x0, y)], black, 1)?;
        cv.text(
            &t.label,
            TICK_PX,
            TICK_TEXT,
            (r.x0 - TICK_LEN - 4.0, y),
            HPos::Right,
            VPos::Center,
            false,
        )?;
    }

    // Axis labels.
    let xlab_y = r.y1 + TICK_LEN + 5.0 + tick_h + 8.0;
    cv.text(
        &p.x_label,
        LABEL_PX,
        TEXT,
        ((r.x0 + r.x1) / 2.0, xlab_y),
        HPos::Center,
        VPos::Top,
        false,
    )?;
    let ylab_x = r.x0 - TICK_LEN - 5.0 - ytick_w - 10.0 - label_h / 2.0;
    cv.text(
        &p.y_label,
        LABEL_PX,
        TEXT,
        (ylab_x, (r.y0 + r.y1) / 2.0),
        HPos::Center,
        VPos::Center,
        true,
    )?;

    draw_legend(cv, &frame, p)?;

    if let (Some(h), Some(c)) = (&p.heatmap, &cb) {
        draw_colorbar(cv, &frame, h, c, label_h)?;
    }
    Ok(())
}

fn series_points(f: &Frame, s: &Series) -> Vec<Option<P>> {
    (0..series_len(s))
        .map(|i| f.point(s.x[i], s.y[i]))
        .collect()
}

/// Maximal runs of consecutive `Some` values.
fn runs<T: Copy>(v: &[Option<T>]) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for x in v {
        match x {
            Some(x) => cur.push(*x),
            None => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn draw_lines<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    f: &Frame,
    s: &Series,
    color: (u8, u8, u8),
) -> Res {
    if !s.style.kind.has_line() {
        return Ok(());
    }
    let col = rgba(color, 1.0);
    let dashed = s.style.kind == StyleKind::Dashed;
    for run in runs(&series_points(f, s)) {
        for piece in clip_polyline(&run, &f.r) {
            cv.styled_path(&piece, col, s.style.width, dashed)?;
        }
    }
    Ok(())
}

fn draw_band<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    f: &Frame,
    s: &Series,
    color: (u8, u8, u8),
) -> Res {
    let Some((lo, hi)) = &s.band else {
        return Ok(());
    };
    let n = s.x.len().min(lo.len()).min(hi.len());
    let pts: Vec<Option<(f64, f64, f64)>> = (0..n)
        .map(|i| {
            Some((
                f.data_x(s.x[i])?,
                f.data_y_clamped(lo[i])?,
                f.data_y_clamped(hi[i])?,
            ))
        })
        .collect();
    let fill = rgba(color, BAND_ALPHA);
    for run in runs(&pts) {
        if run.len() < 2 {
            continue;
        }
        let mut poly: Vec<P> = run.iter().map(|&(x, _, h)| (x, h)).collect();
        poly.extend(run.iter().rev().map(|&(x, l, _)| (x, l)));
        cv.polygon(&clip_polygon(&poly, &f.r), fill)?;
    }
    Ok(())
}

fn draw_error_bars<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    f: &Frame,
    s: &Series,
    color: (u8, u8, u8),
) -> Res {
    let Some((lo, hi)) = &s.y_err else {
        return Ok(());
    };
    let col = rgba(color, 1.0);
    let width = if s.style.width <= 2 {
        1
    } else {
        s.style.width - 1
    };
    let cap = (s.style.marker_size as f64).clamp(3.0, 8.0);
    let n = s.x.len().min(lo.len()).min(hi.len());
    for i in 0..n {
        let (Some(x), Some(a), Some(b)) = (
            f.data_x(s.x[i]),
            f.data_y_clamped(lo[i]),
            f.data_y_clamped(hi[i]),
        ) else {
            continue;
        };
        let Some((p, q)) = clip_segment((x, a), (x, b), &f.r) else {
            continue;
        };
        cv.path(&[p, q], col, width)?;
        for (end, clipped) in [(a, p), (b, q)] {
            // A cap only where the bar really ends inside the plot.
            if (end - clipped.1).abs() < 0.5
                && let Some((c0, c1)) = clip_segment((x - cap, end), (x + cap, end), &f.r)
            {
                cv.path(&[c0, c1], col, width)?;
            }
        }
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    f: &Frame,
    h: &Heatmap,
    (zlo, zhi): (f64, f64),
) -> Res {
    let ex = cell_edges(&h.x, f.x.scale);
    let ey = cell_edges(&h.y, f.y.scale);
    // Positions are pixel indices; a cell edge lies at the centre of its pixel.
    let clip_x = |v: f64| v.clamp(f.r.x0, f.r.x1) + 0.5;
    let clip_y = |v: f64| v.clamp(f.r.y0, f.r.y1) + 0.5;
    for (j, row) in h.z.iter().enumerate() {
        let Some(Some((y0, y1))) = ey.get(j) else {
            continue;
        };
        let (pa, pb) = (clip_y(f.px_y(*y1)), clip_y(f.px_y(*y0)));
        if (pa - pb).abs() < 1e-9 {
            continue;
        }
        for (i, &z) in row.iter().enumerate() {
            let Some(Some((x0, x1))) = ex.get(i) else {
                continue;
            };
            if !z.is_finite() {
                continue;
            }
            let (qa, qb) = (clip_x(f.px_x(*x0)), clip_x(f.px_x(*x1)));
            if (qa - qb).abs() < 1e-9 {
                continue;
            }
            let c = rgba(viridis((z - zlo) / (zhi - zlo)), 1.0);
            cv.fill_rect((qa, pa), (qb, pb), c)?;
        }
    }
    if !h.contour_levels.is_empty() {
        let xs: Vec<Option<f64>> = h.x.iter().map(|&v| f.data_x(v)).collect();
        let ys: Vec<Option<f64>> = h.y.iter().map(|&v| f.data_y(v)).collect();
        let col = rgba((255, 255, 255), 0.9);
        for &level in &h.contour_levels {
            for (a, b) in contour_segments(&xs, &ys, &h.z, level) {
                if let Some((a, b)) = clip_segment(a, b, &f.r) {
                    cv.path(&[a, b], col, 1)?;
                }
            }
        }
    }
    Ok(())
}

fn draw_colorbar<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    f: &Frame,
    h: &Heatmap,
    c: &ColorbarLayout,
    label_h: f64,
) -> Res {
    let (zlo, zhi) = c.z;
    let bx0 = f.r.x1 + CB_GAP;
    let bx1 = bx0 + CB_WIDTH;
    let (y0, y1) = (f.r.y0, f.r.y1);
    let steps = ((y1 - y0) as usize).clamp(1, 128);
    for k in 0..steps {
        let ya = y1 - (y1 - y0) * k as f64 / steps as f64;
        let yb = y1 - (y1 - y0) * (k + 1) as f64 / steps as f64;
        let col = rgba(viridis((k as f64 + 0.5) / steps as f64), 1.0);
        cv.fill_rect((bx0 + 0.5, yb + 0.5), (bx1 + 0.5, ya + 0.5), col)?;
    }
    let black = rgba((0, 0, 0), 1.0);
    let zy = |z: f64| y1 - (z - zlo) / (zhi - zlo) * (y1 - y0);
    for &level in h.contour_levels.iter().filter(|l| **l >= zlo && **l <= zhi) {
        let y = zy(level).round();
        cv.path(&[(bx0, y), (bx1, y)], rgba((255, 255, 255), 0.9), 1)?;
    }
    cv.outline((bx0, y0), (bx1, y1), black)?;
    for t in c
        .ticks
        .major
        .iter()
        .filter(|t| t.pos >= zlo - 1e-9 * (zhi - zlo) && t.pos <= zhi + 1e-9 * (zhi - zlo))
    {
        let y = zy(t.pos).round();
        cv.path(&[(bx1, y), (bx1 + TICK_LEN, y)], black, 1)?;
        cv.text(
            &t.label,
            TICK_PX,
            TICK_TEXT,
            (bx1 + TICK_LEN + 4.0, y),
            HPos::Left,
            VPos::Center,
            false,
        )?;
    }
    let lx = bx1 + TICK_LEN + 4.0 + c.label_w + 10.0 + label_h / 2.0;
    cv.text(
        &h.colorbar_label,
        LABEL_PX,
        TEXT,
        (lx, (y0 + y1) / 2.0),
        HPos::Center,
        VPos::Center,
        true,
    )?;
    Ok(())
}

/// One legend row.
struct Entry<'a> {
    label: &'a str,
    color: (u8, u8, u8),
    style: Style,
    band: bool,
    line: bool,
}

fn legend_entries(p: &Panel) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for (i, s) in p.series.iter().enumerate() {
        if !s.label.is_empty() {
            out.push(Entry {
                label: &s.label,
                color: series_color(i, &s.style),
                style: s.style,
                band: s.band.is_some(),
                line: s.style.kind.has_line(),
            });
        }
    }
    let shown = |v: f64, scale: Scale| to_axis(scale, v).is_some();
    let refs = p
        .hlines
        .iter()
        .map(|l| (l, p.y_scale))
        .chain(p.vlines.iter().map(|l| (l, p.x_scale)));
    for (l, scale) in refs {
        if !l.label.is_empty() && shown(l.value, scale) {
            out.push(Entry {
                label: &l.label,
                color: ref_color(&l.style),
                style: l.style,
                band: false,
                line: true,
            });
        }
    }
    out
}

/// Pixel samples of everything drawn, to find the emptiest legend corner.
fn samples(f: &Frame, p: &Panel) -> Vec<P> {
    let mut out = Vec::new();
    let add_run = |run: &[P], out: &mut Vec<P>| {
        for w in run.windows(2) {
            let d = ((w[1].0 - w[0].0).powi(2) + (w[1].1 - w[0].1).powi(2)).sqrt();
            let n = (d / 6.0).ceil().clamp(1.0, 200.0) as usize;
            for k in 0..n {
                let t = k as f64 / n as f64;
                out.push((
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                ));
            }
        }
        if let Some(l) = run.last() {
            out.push(*l);
        }
    };
    for s in &p.series {
        let pts = series_points(f, s);
        if s.style.kind.has_line() {
            for run in runs(&pts) {
                add_run(&run, &mut out);
            }
        } else {
            out.extend(pts.iter().flatten());
        }
        for (lo, hi) in s.band.iter().chain(s.y_err.iter()) {
            for v in [lo, hi] {
                let n = s.x.len().min(v.len());
                let curve: Vec<Option<P>> = (0..n)
                    .map(|i| Some((f.data_x(s.x[i])?, f.data_y(v[i])?)))
                    .collect();
                for run in runs(&curve) {
                    add_run(&run, &mut out);
                }
            }
        }
    }
    out
}

fn draw_legend<DB: DrawingBackend>(cv: &Canvas<DB>, f: &Frame, p: &Panel) -> Res {
    if p.legend == LegendPos::Hidden {
        return Ok(());
    }
    let entries = legend_entries(p);
    if entries.is_empty() {
        return Ok(());
    }
    let text_h = cv.text_size("Xg", LEGEND_PX).1;
    let row_h = text_h.max(12.0) + 7.0;
    let swatch = 30.0;
    let inner = 8.0;
    let text_w = entries
        .iter()
        .map(|e| cv.text_size(e.label, LEGEND_PX).0)
        .fold(0.0, f64::max);
    let w = inner + swatch + 8.0 + text_w + inner;
    let h = 2.0 * inner - 7.0 + row_h * entries.len() as f64;
    let m = 8.0;
    let r = &f.r;
    let at = |pos: LegendPos| -> Rect {
        let (x0, y0) = match pos {
            LegendPos::UpperLeft => (r.x0 + m, r.y0 + m),
            LegendPos::LowerLeft => (r.x0 + m, r.y1 - m - h),
            LegendPos::LowerRight => (r.x1 - m - w, r.y1 - m - h),
            _ => (r.x1 - m - w, r.y0 + m),
        };
        Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + h,
        }
    };
    let rect = match p.legend {
        LegendPos::Best => {
            let pts = samples(f, p);
            let order = [
                LegendPos::UpperRight,
                LegendPos::UpperLeft,
                LegendPos::LowerLeft,
                LegendPos::LowerRight,
            ];
            let mut best = (usize::MAX, LegendPos::UpperRight);
            for pos in order {
                let b = at(pos);
                let n = pts.iter().filter(|&&q| b.contains(q, 4.0)).count();
                if n < best.0 {
                    best = (n, pos);
                }
            }
            at(best.1)
        }
        pos => at(pos),
    };
    cv.fill_rect(
        (rect.x0, rect.y0),
        (rect.x1 + 1.0, rect.y1 + 1.0),
        rgba((255, 255, 255), 0.85),
    )?;
    cv.outline(
        (rect.x0, rect.y0),
        (rect.x1, rect.y1),
        rgba((160, 160, 160), 1.0),
    )?;
    for (k, e) in entries.iter().enumerate() {
        let cy = rect.y0 + inner + row_h * k as f64 + (row_h - 7.0) / 2.0;
        let sx0 = rect.x0 + inner;
        let sx1 = sx0 + swatch;
        let col = rgba(e.color, 1.0);
        if e.band {
            cv.fill_rect(
                (sx0, cy - 5.5),
                (sx1 + 1.0, cy + 6.5),
                rgba(e.color, BAND_ALPHA),
            )?;
        }
        if e.line {
            cv.styled_path(
                &[(sx0, cy), (sx1, cy)],
                col,
                e.style.width,
                e.style.kind == StyleKind::Dashed,
            )?;
        }
        if e.style.kind.has_markers() {
            cv.marker(
                e.style.marker,
                ((sx0 + sx1) / 2.0, cy),
                e.style.marker_size.max(1) as f64,
                e.color,
                false,
            )?;
        }
        cv.text(
            e.label,
            LEGEND_PX,
            TEXT,
            (sx1 + 8.0, cy),
            HPos::Left,
            VPos::Center,
            false,
        )?;
    }
    Ok(())
}
