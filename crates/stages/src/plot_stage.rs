//! `plot.figure`: a declarative figure over upstream tables. Panels name an
//! input, a table, row filters and columns; nothing here knows what the
//! columns mean, so a new figure or ablation needs only YAML.

use std::collections::BTreeMap;

use e2h_engine::table::{column_f64, column_string, filter_eq};
use e2h_engine::{CodeFingerprints, Footprint, InputArity, InputTables, ParamIssue, Registry, Stage, StageContext, StageError, TableDoc};
use e2h_plot::{Figure, Heatmap, LegendPos, Marker, Panel, RefLine, Scale, Series, Style, StyleKind};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

pub fn register(r: &mut Registry) {
    r.record_version("e2h-plot", env!("CARGO_PKG_VERSION"));
    r.register(PlotFigure);
}

fn default_columns() -> usize {
    3
}
fn default_width() -> u32 {
    620
}
fn default_height() -> u32 {
    460
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureParams {
    pub title: String,
    #[serde(default = "default_columns")]
    pub columns: usize,
    #[serde(default = "default_width")]
    pub panel_width: u32,
    #[serde(default = "default_height")]
    pub panel_height: u32,
    pub panels: Vec<PanelParams>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisScale {
    #[default]
    Linear,
    Log,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Legend {
    #[default]
    Best,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
    Hidden,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelParams {
    #[serde(default)]
    pub title: String,
    /// Input name (as in the stage's `inputs`).
    pub input: String,
    pub table: String,
    /// Keep rows whose columns equal these values.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// One panel per distinct value of this column (its value joins the title).
    #[serde(default)]
    pub split: Option<String>,
    /// Column on the x axis (line and point panels).
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub x_label: String,
    /// Categorical x axis: one labelled tick at each distinct value of `x`,
    /// labelled with this column's value in the first row that has it (e.g.
    /// `x: case_id` with `x_tick_labels: case`).
    #[serde(default)]
    pub x_tick_labels: Option<String>,
    #[serde(default)]
    pub y_label: String,
    #[serde(default)]
    pub x_scale: AxisScale,
    #[serde(default)]
    pub y_scale: AxisScale,
    #[serde(default)]
    pub x_range: Option<[f64; 2]>,
    #[serde(default)]
    pub y_range: Option<[f64; 2]>,
    #[serde(default)]
    pub legend: Legend,
    #[serde(default)]
    pub series: Vec<SeriesParams>,
    #[serde(default)]
    pub hlines: Vec<RefLineParams>,
    #[serde(default)]
    pub vlines: Vec<RefLineParams>,
    #[serde(default)]
    pub heatmap: Option<HeatmapParams>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesStyle {
    #[default]
    Line,
    Dashed,
    Points,
    LinePoints,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Take the series from this table (of the panel's input) instead of the
    /// panel's, e.g. to draw theory over simulations.
    #[serde(default)]
    pub table: Option<String>,
    pub y: String,
    /// Legend label; `{value}` is replaced by the `by` column's value.
    #[serde(default)]
    pub label: String,
    /// One series per distinct value of this column.
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// Columns of a shaded band (e.g. quartiles).
    #[serde(default)]
    pub band: Option<[String; 2]>,
    /// Columns of error-bar ends.
    #[serde(default)]
    pub err: Option<[String; 2]>,
    /// Boolean column: markers drawn hollow where true (e.g. censored).
    #[serde(default)]
    pub hollow: Option<String>,
    #[serde(default)]
    pub style: SeriesStyle,
    /// Palette index (default: the series' position).
    #[serde(default)]
    pub color: Option<usize>,
    /// With `by`: shift group i of n along x by (i - (n - 1) / 2) * dodge, so
    /// markers with equal values side by side stay visible.
    #[serde(default)]
    pub dodge: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefLineParams {
    /// A constant position...
    #[serde(default)]
    pub value: Option<f64>,
    /// ...or the value of this column in the first (filtered) row.
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub color: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeatmapParams {
    pub x: String,
    pub y: String,
    pub z: String,
    #[serde(default)]
    pub colorbar_label: String,
    #[serde(default)]
    pub contours: Vec<f64>,
}

/// Most panels a figure may draw, `split:` panels included.
pub const MAX_PANELS: usize = 64;
/// Most curves a panel may draw, `by:` groups included.
pub const MAX_SERIES_PER_PANEL: usize = 64;
/// Largest panel side in pixels.
pub const MAX_PANEL_SIDE: u32 = 4000;

pub struct PlotFigure;

impl Stage for PlotFigure {
    type Params = FigureParams;
    const KIND: &'static str = "plot.figure";
    // 2: series of a `by` group keep one colour per group across series; label templates.
    // 3: `dodge`.
    // 4: `x_tick_labels`.
    const VERSION: &'static str = "4";
    const INPUTS: InputArity = InputArity::AnyNonEmpty;
    const ABOUT: &'static str = "a figure (PNG and SVG) of upstream tables described in YAML: panels, series, split, by";

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        vec![
            P::new("title", "string", "", "", "figure title"),
            P::new("columns", "integer", "3", "1..=64", "panels per row"),
            P::new("panel_width", "integer", "620", "100..=4000", "pixels"),
            P::new("panel_height", "integer", "460", "100..=4000", "pixels"),
            P::new("panels", "list", "", "1 to 64 panels (split panels included)", "each: input, table, x, series [{y, by, band, err, label, style, where}], split, where, x/y_scale, x/y_range, legend, hlines, vlines, heatmap; input, table and columns are checked against the upstream kind's tables at plan time"),
        ]
    }

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if p.panels.is_empty() {
            return Err(ParamIssue::new("panels", "a figure needs at least one panel"));
        }
        if p.columns == 0 || p.columns > MAX_PANELS {
            return Err(ParamIssue::new("columns", format!("columns must lie in 1..={MAX_PANELS}, got {}", p.columns)));
        }
        if p.panels.len() > MAX_PANELS {
            return Err(ParamIssue::new("panels", format!("at most {MAX_PANELS} panels, got {}", p.panels.len())));
        }
        for (field, side) in [("panel_width", p.panel_width), ("panel_height", p.panel_height)] {
            if !(100..=MAX_PANEL_SIDE).contains(&side) {
                return Err(ParamIssue::new(field, format!("{field} must lie in 100..={MAX_PANEL_SIDE} pixels, got {side}")));
            }
        }
        for (i, panel) in p.panels.iter().enumerate() {
            for (field, range, scale) in [("x_range", panel.x_range, panel.x_scale), ("y_range", panel.y_range, panel.y_scale)] {
                if let Some([a, b]) = range
                    && !(a.is_finite() && b.is_finite() && a < b && (scale == AxisScale::Linear || a > 0.0))
                {
                    return Err(ParamIssue::new(
                        format!("panels.{i}.{field}"),
                        "a range is two finite numbers, the first smaller (and positive on a log axis)",
                    ));
                }
            }
            if panel.series.len() > MAX_SERIES_PER_PANEL {
                return Err(ParamIssue::new(format!("panels.{i}.series"), format!("at most {MAX_SERIES_PER_PANEL} series per panel")));
            }
            for (j, series) in panel.series.iter().enumerate() {
                if series.color.is_some_and(|c| c > 1000) {
                    return Err(ParamIssue::new(format!("panels.{i}.series.{j}.color"), "palette indices lie in 0..=1000"));
                }
            }
            for (j, l) in panel.hlines.iter().chain(&panel.vlines).enumerate() {
                if l.value.is_some_and(|v| !v.is_finite()) || l.color.is_some_and(|c| c > 1000) {
                    return Err(ParamIssue::new(format!("panels.{i}.hlines.{j}"), "a finite value and a palette index in 0..=1000"));
                }
            }
            if let Some(h) = &panel.heatmap
                && (h.contours.len() > 100 || h.contours.iter().any(|c| !c.is_finite()))
            {
                return Err(ParamIssue::new(format!("panels.{i}.heatmap.contours"), "at most 100 finite contour levels"));
            }
            if panel.heatmap.is_none() && (panel.x.is_none() || panel.series.is_empty()) {
                return Err(ParamIssue::new(format!("panels.{i}"), "a panel needs `x` and `series`, or a `heatmap`"));
            }
            if panel.x_tick_labels.is_some() && (panel.x.is_none() || panel.x_scale == AxisScale::Log) {
                return Err(ParamIssue::new(format!("panels.{i}.x_tick_labels"), "categorical tick labels need an `x` column on a linear axis"));
            }
            for (j, series) in panel.series.iter().enumerate() {
                if let Some(dodge) = series.dodge {
                    if series.by.is_none() {
                        return Err(ParamIssue::new(format!("panels.{i}.series.{j}.dodge"), "`dodge` shifts the groups of a `by` series: set `by`"));
                    }
                    if !dodge.is_finite() || panel.x_scale == AxisScale::Log {
                        return Err(ParamIssue::new(format!("panels.{i}.series.{j}.dodge"), "`dodge` needs a finite value and a linear x axis"));
                    }
                }
            }
            for (j, l) in panel.hlines.iter().chain(&panel.vlines).enumerate() {
                if l.value.is_some() == l.column.is_some() {
                    return Err(ParamIssue::new(format!("panels.{i}.hlines.{j}"), "a reference line needs exactly one of `value` and `column`"));
                }
            }
        }
        Ok(())
    }

    fn check_inputs(p: &Self::Params, inputs: &InputTables) -> Result<(), ParamIssue> {
        for (i, panel) in p.panels.iter().enumerate() {
            let at = |field: &str| format!("panels.{i}.{field}");
            let Some(tables) = inputs.get(&panel.input) else {
                let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
                return Err(ParamIssue::new(
                    at("input"),
                    format!("no input named `{}`; this stage's inputs: {}", panel.input, names.join(", ")),
                ));
            };
            // An upstream kind that declares no tables is checked when the figure is drawn.
            let Some(tables) = tables else { continue };
            let table = |name: &str, field: String| -> Result<&TableDoc, ParamIssue> {
                tables.iter().find(|t| t.name == name).ok_or_else(|| {
                    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                    ParamIssue::new(
                        field,
                        format!("input `{}` has no table `{name}`; its tables: {}", panel.input, names.join(", ")),
                    )
                })
            };
            let column = |t: &TableDoc, col: &str, field: String| -> Result<(), ParamIssue> {
                if t.has_column(col) {
                    return Ok(());
                }
                Err(ParamIssue::new(
                    field,
                    format!(
                        "table `{}` of input `{}` has no column `{col}`; its columns: {}",
                        t.name,
                        panel.input,
                        t.column_names().join(", ")
                    ),
                ))
            };
            let main = table(&panel.table, at("table"))?;
            for (field, col) in [("x", &panel.x), ("split", &panel.split), ("x_tick_labels", &panel.x_tick_labels)] {
                if let Some(col) = col {
                    column(main, col, at(field))?;
                }
            }
            for col in panel.filter.keys() {
                column(main, col, at(&format!("where.{col}")))?;
            }
            for (kind, lines) in [("hlines", &panel.hlines), ("vlines", &panel.vlines)] {
                for (j, l) in lines.iter().enumerate() {
                    if let Some(c) = &l.column {
                        column(main, c, at(&format!("{kind}.{j}.column")))?;
                    }
                }
            }
            if let Some(h) = &panel.heatmap {
                for (field, col) in [("x", &h.x), ("y", &h.y), ("z", &h.z)] {
                    column(main, col, at(&format!("heatmap.{field}")))?;
                }
            }
            for (j, s) in panel.series.iter().enumerate() {
                let sat = |field: &str| at(&format!("series.{j}.{field}"));
                let t = match &s.table {
                    Some(name) => table(name, sat("table"))?,
                    None => main,
                };
                if s.table.is_some() {
                    // Rows of another table are filtered by the panel's `where` as well.
                    for col in panel.filter.keys() {
                        column(t, col, at(&format!("where.{col}")))?;
                    }
                    if let Some(x) = &panel.x {
                        column(t, x, at("x"))?;
                    }
                }
                column(t, &s.y, sat("y"))?;
                for (field, col) in [("by", &s.by), ("hollow", &s.hollow)] {
                    if let Some(col) = col {
                        column(t, col, sat(field))?;
                    }
                }
                for (field, pair) in [("band", &s.band), ("err", &s.err)] {
                    if let Some(pair) = pair {
                        for (k, col) in pair.iter().enumerate() {
                            column(t, col, sat(&format!("{field}.{k}")))?;
                        }
                    }
                }
                for col in s.filter.keys() {
                    column(t, col, sat(&format!("where.{col}")))?;
                }
            }
        }
        Ok(())
    }

    fn footprint(p: &Self::Params) -> Footprint {
        // RGB image of every declared panel (`split:` can add more: bounded when drawn).
        let panels = p.panels.len() as f64;
        Footprint::new(
            panels * p.panel_width as f64 * p.panel_height as f64 * 3.0 * 2.0,
            format!("panels x panel_width x panel_height x 6 B; {} panels of {} x {}", p.panels.len(), p.panel_width, p.panel_height),
        )
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let mut panel_count = 0usize;
        let mut fig = Figure::new(p.title.clone()).columns(p.columns).panel_size(p.panel_width, p.panel_height);
        for (i, spec) in p.panels.iter().enumerate() {
            let mut df = ctx.input_table(&spec.input, &spec.table)?;
            for (col, v) in &spec.filter {
                df = filter_eq(&df, col, v)?;
            }
            let parts: Vec<(String, DataFrame)> = match &spec.split {
                None => vec![(spec.title.clone(), df)],
                Some(col) => bounded(distinct(&df, col)?, MAX_PANELS.saturating_sub(panel_count), || {
                    format!("panel {i}: `split: {col}` would draw one panel per distinct value")
                }, MAX_PANELS, "panels in a figure")?
                    .into_iter()
                    .map(|v| {
                        let part = filter_eq(&df, col, &json_of(&v))?;
                        let title = if spec.title.is_empty() { format!("{col} = {v}") } else { format!("{} ({col} = {v})", spec.title) };
                        Ok((title, part))
                    })
                    .collect::<Result<_, StageError>>()?,
            };
            panel_count += parts.len();
            if panel_count > MAX_PANELS {
                return Err(format!("the figure would have more than {MAX_PANELS} panels").into());
            }
            for (title, part) in parts {
                let load = |table: &str| -> Result<DataFrame, StageError> {
                    let mut df = ctx.input_table(&spec.input, table)?;
                    for (col, v) in &spec.filter {
                        df = filter_eq(&df, col, v)?;
                    }
                    Ok(df)
                };
                fig = fig.panel(build_panel(spec, &title, &part, &load).map_err(|e| format!("panel {i} (`{}`): {e}", spec.title))?);
            }
        }
        e2h_plot::render(&fig, &ctx.output_path("figure"))?;
        Ok(())
    }
}

/// `values`, unless there are more than `room` of them: then an error saying
/// how many there are against the documented `max`.
fn bounded(
    values: Vec<String>,
    room: usize,
    what: impl Fn() -> String,
    max: usize,
    of: &str,
) -> Result<Vec<String>, StageError> {
    if values.len() > room {
        return Err(format!("{}: {} values, but at most {max} {of} are drawn", what(), values.len()).into());
    }
    Ok(values)
}

fn json_of(v: &str) -> serde_json::Value {
    match v.parse::<f64>() {
        Ok(x) => serde_json::json!(x),
        Err(_) => serde_json::Value::String(v.to_string()),
    }
}

/// Distinct values of a column, in first-appearance order.
fn distinct(df: &DataFrame, col: &str) -> Result<Vec<String>, StageError> {
    let mut seen = Vec::new();
    for v in column_string(df, col)? {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    Ok(seen)
}

/// One tick per distinct value of column `x` (first-appearance order),
/// labelled with column `labels` of the first row that has it.
fn categorical_ticks(df: &DataFrame, x: &str, labels: &str) -> Result<Vec<(f64, String)>, StageError> {
    let mut ticks: Vec<(f64, String)> = Vec::new();
    for (v, label) in column_f64(df, x)?.into_iter().zip(column_string(df, labels)?) {
        if v.is_finite() && !ticks.iter().any(|(t, _)| *t == v) {
            ticks.push((v, label));
        }
    }
    if ticks.is_empty() {
        return Err(format!("no finite `{x}` values to label with `{labels}`").into());
    }
    Ok(ticks)
}

/// Replaces `{column}` in a label by that column's value in the first row.
fn fill_template(label: &str, df: &DataFrame) -> Result<String, StageError> {
    let mut out = label.to_string();
    for name in df.get_column_names() {
        let pattern = format!("{{{name}}}");
        if out.contains(&pattern) {
            let value = column_string(df, name)?.into_iter().next().unwrap_or_default();
            out = out.replace(&pattern, &value);
        }
    }
    Ok(out)
}

fn scale(s: AxisScale) -> Scale {
    match s {
        AxisScale::Linear => Scale::Linear,
        AxisScale::Log => Scale::Log,
    }
}

fn build_panel(
    spec: &PanelParams,
    title: &str,
    df: &DataFrame,
    load: &dyn Fn(&str) -> Result<DataFrame, StageError>,
) -> Result<Panel, StageError> {
    let mut panel = Panel::new(title)
        .labels(
            if spec.x_label.is_empty() { spec.x.clone().unwrap_or_default() } else { spec.x_label.clone() },
            spec.y_label.clone(),
        )
        .x_scale(scale(spec.x_scale))
        .y_scale(scale(spec.y_scale))
        .legend(match spec.legend {
            Legend::Best => LegendPos::Best,
            Legend::UpperLeft => LegendPos::UpperLeft,
            Legend::UpperRight => LegendPos::UpperRight,
            Legend::LowerLeft => LegendPos::LowerLeft,
            Legend::LowerRight => LegendPos::LowerRight,
            Legend::Hidden => LegendPos::Hidden,
        });
    if let Some([a, b]) = spec.x_range {
        panel = panel.x_range(a, b);
    }
    if let Some([a, b]) = spec.y_range {
        panel = panel.y_range(a, b);
    }
    if let (Some(labels), Some(x)) = (&spec.x_tick_labels, &spec.x) {
        panel = panel.x_tick_labels(categorical_ticks(df, x, labels)?);
    }
    let mut color = 0usize;
    for s in &spec.series {
        let mut rows = match &s.table {
            Some(t) => load(t)?,
            None => df.clone(),
        };
        for (col, v) in &s.filter {
            rows = filter_eq(&rows, col, v)?;
        }
        let groups: Vec<(String, DataFrame)> = match &s.by {
            None => vec![(s.label.clone(), rows)],
            Some(col) => bounded(distinct(&rows, col)?, MAX_SERIES_PER_PANEL, || format!("`by: {col}` would draw one curve per distinct value"), MAX_SERIES_PER_PANEL, "curves in a panel")?
                .into_iter()
                .map(|v| Ok((s.label.replace("{value}", &v), filter_eq(&rows, col, &json_of(&v))?)))
                .collect::<Result<_, StageError>>()?,
        };
        let grouped = s.by.is_some();
        let group_count = groups.len();
        for (group_index, (label, g)) in groups.into_iter().enumerate() {
            let label = fill_template(&label, &g)?;
            // Groups of a `by` series keep the same colours in every series of the
            // panel (points, fits and theory of one case match).
            let series_color = if grouped { s.color.unwrap_or(0) + group_index } else { s.color.unwrap_or(color) };
            let mut x = column_f64(&g, spec.x.as_deref().unwrap_or_default())?;
            if let Some(dodge) = s.dodge {
                let shift = (group_index as f64 - (group_count as f64 - 1.0) / 2.0) * dodge;
                x.iter_mut().for_each(|v| *v += shift);
            }
            let mut series = Series::new(label, x, column_f64(&g, &s.y)?).style(Style {
                kind: match s.style {
                    SeriesStyle::Line => StyleKind::Line,
                    SeriesStyle::Dashed => StyleKind::Dashed,
                    SeriesStyle::Points => StyleKind::Points,
                    SeriesStyle::LinePoints => StyleKind::LineAndPoints,
                },
                color: Some(series_color),
                marker: Marker::Circle,
                ..Style::default()
            });
            if let Some([lo, hi]) = &s.band {
                series = series.band(column_f64(&g, lo)?, column_f64(&g, hi)?);
            }
            if let Some([lo, hi]) = &s.err {
                series = series.y_err(column_f64(&g, lo)?, column_f64(&g, hi)?);
            }
            if let Some(h) = &s.hollow {
                series = series.hollow(column_f64(&g, h)?.iter().map(|v| *v != 0.0).collect());
            }
            panel = panel.series(series);
            color += 1;
        }
    }
    for (lines, horizontal) in [(&spec.hlines, true), (&spec.vlines, false)] {
        for l in lines {
            let value = match (&l.value, &l.column) {
                (Some(v), _) => *v,
                (None, Some(c)) => *column_f64(df, c)?.first().ok_or_else(|| format!("no rows for reference line `{c}`"))?,
                (None, None) => unreachable!("validated"),
            };
            let mut style = Style::dashed().width(2);
            if let Some(c) = l.color {
                style = style.color(c);
            }
            let line = RefLine::new(value).label(l.label.clone()).style(style);
            panel = if horizontal { panel.hline(line) } else { panel.vline(line) };
        }
    }
    if let Some(h) = &spec.heatmap {
        let (xs, ys, zs) = (column_f64(df, &h.x)?, column_f64(df, &h.y)?, column_f64(df, &h.z)?);
        let axis = |v: &[f64]| {
            let mut u: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            u.sort_by(f64::total_cmp);
            u.dedup();
            u
        };
        let (gx, gy) = (axis(&xs), axis(&ys));
        let mut z = vec![vec![f64::NAN; gx.len()]; gy.len()];
        for ((x, y), v) in xs.iter().zip(&ys).zip(&zs) {
            if let (Ok(i), Ok(j)) = (gx.binary_search_by(|a| a.total_cmp(x)), gy.binary_search_by(|a| a.total_cmp(y))) {
                z[j][i] = *v;
            }
        }
        let mut hm = Heatmap::new(gx, gy, z).colorbar_label(h.colorbar_label.clone());
        if !h.contours.is_empty() {
            hm = hm.contour_levels(h.contours.clone());
        }
        panel = panel.heatmap(hm);
    }
    Ok(panel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuilder;

    #[test]
    fn categorical_ticks_label_each_distinct_x_once_in_order() {
        let names = ["v", "v", "u", "coupled", "u"].map(String::from).to_vec();
        let df = FrameBuilder::new().f64("case_id", vec![2.0, 2.0, 1.0, 3.0, 1.0]).str("case", names).build().unwrap();
        let ticks = categorical_ticks(&df, "case_id", "case").unwrap();
        assert_eq!(ticks, vec![(2.0, "v".to_string()), (1.0, "u".to_string()), (3.0, "coupled".to_string())]);
        assert!(categorical_ticks(&df, "case_id", "no_such_column").is_err());
    }

    #[test]
    fn categorical_ticks_need_a_linear_x_axis() {
        let figure = |panel: serde_json::Value| -> FigureParams {
            serde_json::from_value(serde_json::json!({"title": "t", "panels": [panel]})).unwrap()
        };
        let base = serde_json::json!({"input": "a", "table": "b", "x": "case_id", "x_tick_labels": "case", "series": [{"y": "k"}]});
        assert!(PlotFigure::validate(&figure(base.clone())).is_ok());
        let mut log = base.clone();
        log["x_scale"] = serde_json::json!("log");
        let err = PlotFigure::validate(&figure(log)).unwrap_err();
        assert!(format!("{err:?}").contains("x_tick_labels"), "{err:?}");
    }
}
