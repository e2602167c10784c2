//! The declarative figure model: plain data, no drawing.
//!
//! Every type has public fields and a few chainable builder methods; build a
//! [`Figure`] however is convenient and hand it to [`crate::render`].

/// Default width of one panel in pixels.
pub const DEFAULT_PANEL_WIDTH: u32 = 600;
/// Default height of one panel in pixels.
pub const DEFAULT_PANEL_HEIGHT: u32 = 450;

/// A figure: a title above a grid of panels.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Figure title drawn centred above the grid; empty for none.
    pub title: String,
    /// The panels, laid out row by row.
    pub panels: Vec<Panel>,
    /// Number of grid columns; `0` means automatic (`min(panels, 3)`).
    pub columns: usize,
    /// Width of one panel in pixels (clamped to 120..=8000 when rendering).
    pub panel_width: u32,
    /// Height of one panel in pixels (clamped to 120..=8000 when rendering).
    pub panel_height: u32,
}

impl Default for Figure {
    fn default() -> Self {
        Self {
            title: String::new(),
            panels: Vec::new(),
            columns: 0,
            panel_width: DEFAULT_PANEL_WIDTH,
            panel_height: DEFAULT_PANEL_HEIGHT,
        }
    }
}

impl Figure {
    /// An empty figure with the given title and default panel size.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Append a panel.
    pub fn panel(mut self, panel: Panel) -> Self {
        self.panels.push(panel);
        self
    }

    /// Set the number of grid columns (`0` = automatic).
    pub fn columns(mut self, columns: usize) -> Self {
        self.columns = columns;
        self
    }

    /// Set the size of each panel in pixels.
    pub fn panel_size(mut self, width: u32, height: u32) -> Self {
        self.panel_width = width;
        self.panel_height = height;
        self
    }

    /// Number of columns actually used by the layout (at least 1).
    pub fn grid_columns(&self) -> usize {
        let n = self.panels.len().max(1);
        if self.columns == 0 {
            n.min(3)
        } else {
            self.columns.min(n).max(1)
        }
    }

    /// Number of grid rows actually used by the layout (at least 1).
    pub fn grid_rows(&self) -> usize {
        let n = self.panels.len().max(1);
        n.div_ceil(self.grid_columns())
    }
}

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    #[default]
    Linear,
    /// Base-10 logarithmic; non-positive values are not drawn.
    Log,
}

/// Where the legend goes inside the plotting area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegendPos {
    /// The corner that covers the fewest data.
    #[default]
    Best,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
    /// No legend.
    Hidden,
}

/// One panel (a set of axes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    /// Explicit x limits; `None` (or a NaN bound) means automatic.
    pub x_range: Option<(f64, f64)>,
    /// Explicit y limits; `None` (or a NaN bound) means automatic.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
    /// Horizontal reference lines `y = value`.
    pub hlines: Vec<RefLine>,
    /// Vertical reference lines `x = value`.
    pub vlines: Vec<RefLine>,
    pub heatmap: Option<Heatmap>,
    pub legend: LegendPos,
    /// Same pixels per unit on both axes (per decade on log axes), e.g. for
    /// maps on a disc; the plot area shrinks in one direction to achieve it.
    pub equal_aspect: bool,
    /// Labelled x ticks `(value, label)` replacing the automatic ones (e.g.
    /// the names of categorical cases drawn at x = 1, 2, 3); empty: automatic.
    pub x_tick_labels: Vec<(f64, String)>,
}

impl Panel {
    /// An empty linear-linear panel with the given title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// Set both axis labels.
    pub fn labels(self, x: impl Into<String>, y: impl Into<String>) -> Self {
        self.x_label(x).y_label(y)
    }

    pub fn x_scale(mut self, scale: Scale) -> Self {
        self.x_scale = scale;
        self
    }

    pub fn y_scale(mut self, scale: Scale) -> Self {
        self.y_scale = scale;
        self
    }

    /// Logarithmic x axis.
    pub fn log_x(self) -> Self {
        self.x_scale(Scale::Log)
    }

    /// Logarithmic y axis.
    pub fn log_y(self) -> Self {
        self.y_scale(Scale::Log)
    }

    /// Logarithmic x and y axes.
    pub fn loglog(self) -> Self {
        self.log_x().log_y()
    }

    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Append a data series.
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Append a horizontal reference line.
    pub fn hline(mut self, line: RefLine) -> Self {
        self.hlines.push(line);
        self
    }

    /// Append a vertical reference line.
    pub fn vline(mut self, line: RefLine) -> Self {
        self.vlines.push(line);
        self
    }

    pub fn heatmap(mut self, heatmap: Heatmap) -> Self {
        self.heatmap = Some(heatmap);
        self
    }

    pub fn legend(mut self, pos: LegendPos) -> Self {
        self.legend = pos;
        self
    }

    pub fn equal_aspect(mut self, on: bool) -> Self {
        self.equal_aspect = on;
        self
    }

    /// Labelled x ticks at the given data values, replacing the automatic ticks.
    pub fn x_tick_labels(mut self, ticks: Vec<(f64, String)>) -> Self {
        self.x_tick_labels = ticks;
        self
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StyleKind {
    /// Solid line through the points.
    #[default]
    Line,
    /// Dashed line through the points.
    Dashed,
    /// Markers only.
    Points,
    /// Solid line with markers.
    LineAndPoints,
}

impl StyleKind {
    /// Whether a line connects the points.
    pub fn has_line(self) -> bool {
        matches!(
            self,
            StyleKind::Line | StyleKind::Dashed | StyleKind::LineAndPoints
        )
    }

    /// Whether markers are drawn at the points.
    pub fn has_markers(self) -> bool {
        matches!(self, StyleKind::Points | StyleKind::LineAndPoints)
    }
}

/// Marker shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Marker {
    #[default]
    Circle,
    Square,
    Triangle,
    Diamond,
}

/// Line / marker style.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    pub kind: StyleKind,
    /// Palette index (see [`crate::PALETTE`]); `None` = the series index
    /// (for reference lines: dark grey).
    pub color: Option<usize>,
    /// Line width in pixels.
    pub width: u32,
    pub marker: Marker,
    /// Marker radius in pixels.
    pub marker_size: u32,
}

impl Default for Style {
    fn default() -> Self {
        Self {
            kind: StyleKind::Line,
            color: None,
            width: 2,
            marker: Marker::Circle,
            marker_size: 4,
        }
    }
}

impl Style {
    pub fn line() -> Self {
        Self::default()
    }

    pub fn dashed() -> Self {
        Self {
            kind: StyleKind::Dashed,
            ..Self::default()
        }
    }

    pub fn points() -> Self {
        Self {
            kind: StyleKind::Points,
            ..Self::default()
        }
    }

    pub fn line_and_points() -> Self {
        Self {
            kind: StyleKind::LineAndPoints,
            ..Self::default()
        }
    }

    pub fn kind(mut self, kind: StyleKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn color(mut self, palette_index: usize) -> Self {
        self.color = Some(palette_index);
        self
    }

    pub fn width(mut self, width: u32) -> Self {
        self.width = width;
        self
    }

    pub fn marker(mut self, marker: Marker) -> Self {
        self.marker = marker;
        self
    }

    pub fn marker_size(mut self, radius: u32) -> Self {
        self.marker_size = radius;
        self
    }
}

/// A data series: `y` against `x`, optionally with a shaded band and error bars.
///
/// Points where a coordinate is NaN/infinite (or non-positive on a log axis)
/// are skipped and break the line. If vectors differ in length the shortest wins.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Legend label; empty = not listed in the legend.
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Shaded interval `(lower, upper)` per point (absolute y values),
    /// drawn semi-transparent in the series colour.
    pub band: Option<(Vec<f64>, Vec<f64>)>,
    /// Error bars `(lower, upper)` per point, as absolute y values of the bar
    /// ends (not offsets from `y`).
    pub y_err: Option<(Vec<f64>, Vec<f64>)>,
    pub style: Style,
    /// Per point: draw the marker hollow (e.g. censored values). Empty or
    /// shorter than the data = filled for the missing entries.
    pub markers_hollow: Vec<bool>,
}

impl Series {
    pub fn new(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Self {
            label: label.into(),
            x,
            y,
            ..Self::default()
        }
    }

    pub fn band(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.band = Some((lower, upper));
        self
    }

    pub fn y_err(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.y_err = Some((lower, upper));
        self
    }

    pub fn style(mut self, style: Style) -> Self {
        self.style = style;
        self
    }

    pub fn kind(mut self, kind: StyleKind) -> Self {
        self.style.kind = kind;
        self
    }

    pub fn color(mut self, palette_index: usize) -> Self {
        self.style.color = Some(palette_index);
        self
    }

    pub fn width(mut self, width: u32) -> Self {
        self.style.width = width;
        self
    }

    pub fn marker(mut self, marker: Marker) -> Self {
        self.style.marker = marker;
        self
    }

    pub fn hollow(mut self, markers_hollow: Vec<bool>) -> Self {
        self.markers_hollow = markers_hollow;
        self
    }
}

/// A horizontal or vertical reference line across the whole panel.
#[derive(Debug, Clone, PartialEq)]
pub struct RefLine {
    pub value: f64,
    /// Legend label; empty = not listed in the legend.
    pub label: String,
    /// Only `kind` (Line or Dashed; markers are ignored), `color` and `width`
    /// are used.
    pub style: Style,
}

impl RefLine {
    /// A thin dashed dark-grey line.
    pub fn new(value: f64) -> Self {
        Self {
            value,
            label: String::new(),
            style: Style::dashed().width(1),
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn style(mut self, style: Style) -> Self {
        self.style = style;
        self
    }
}

/// A colour-coded grid of values with a colour bar.
///
/// `z[j][i]` is the value of the cell centred at `(x[i], y[j])`; NaN cells are
/// not drawn (e.g. outside a disc). Cell edges lie half-way between centres.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heatmap {
    /// Cell centres along x.
    pub x: Vec<f64>,
    /// Cell centres along y.
    pub y: Vec<f64>,
    /// Values, one row per `y`.
    pub z: Vec<Vec<f64>>,
    pub colorbar_label: String,
    /// Iso-lines drawn on top of the cells; empty = none.
    pub contour_levels: Vec<f64>,
    /// Colour scale limits; `None` = min/max of the finite values.
    pub z_range: Option<(f64, f64)>,
}

impl Heatmap {
    pub fn new(x: Vec<f64>, y: Vec<f64>, z: Vec<Vec<f64>>) -> Self {
        Self {
            x,
            y,
            z,
            ..Self::default()
        }
    }

    pub fn colorbar_label(mut self, label: impl Into<String>) -> Self {
        self.colorbar_label = label.into();
        self
    }

    pub fn contour_levels(mut self, levels: Vec<f64>) -> Self {
        self.contour_levels = levels;
        self
    }

    pub fn z_range(mut self, lo: f64, hi: f64) -> Self {
        self.z_range = Some((lo, hi));
        self
    }
}
