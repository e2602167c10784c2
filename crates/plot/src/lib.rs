//! `e2h-plot`: a small declarative figure model rendered by plotters.
//!
//! Build a [`Figure`] from plain Rust data (panels of line/scatter series with
//! bands and error bars, reference lines, heat maps) and write it with
//! [`render`] to `<stem>.png` and `<stem>.svg`. The crate knows nothing about
//! where the data come from.
//!
//! ```no_run
//! use e2h_plot::{Figure, Panel, Series, Style, render};
//! let fig = Figure::new("Demo").panel(
//!     Panel::new("decay")
//!         .labels("t", "error")
//!         .loglog()
//!         .series(Series::new("model", vec![1.0, 10.0, 100.0], vec![1.0, 0.1, 0.01]).style(Style::line_and_points())),
//! );
//! let written = render(&fig, std::path::Path::new("out/demo")).unwrap();
//! assert_eq!(written.len(), 2);
//! ```
//!
//! Rendering never panics on empty series, NaN values, single points or
//! constant data; values that cannot be shown (NaN, infinities, non-positive
//! values on a log axis) are skipped. Text uses an embedded DejaVu Sans font,
//! so no system fonts are needed.

mod colors;
mod geom;
mod model;
mod render;
mod text;
mod ticks;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::{BitMapBackend, IntoDrawingArea, SVGBackend};

pub use colors::{PALETTE, palette_color, viridis};
pub use model::{
    DEFAULT_PANEL_HEIGHT, DEFAULT_PANEL_WIDTH, Figure, Heatmap, LegendPos, Marker, Panel, RefLine,
    Scale, Series, Style, StyleKind,
};
pub use ticks::format_value;

/// Errors from rendering; each names the file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render {path}: {message}")]
    Render { path: PathBuf, message: String },
    #[error("cannot render {path}: embedded font rejected: {message}")]
    Font { path: PathBuf, message: String },
}

/// Register the embedded font with plotters (once per process) as
/// `sans-serif`, so that any plotters text path finds it.
fn ensure_font(path: &Path) -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                text::FONT_BYTES,
            )
            .map_err(|_| "not a valid TrueType font".to_string())
        })
        .clone()
        .map_err(|message| PlotError::Font {
            path: path.to_path_buf(),
            message,
        })
}

fn create_parent(path: &Path) -> Result<(), PlotError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| PlotError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// `<stem>.<ext>`, appended (a dot inside the stem is kept).
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s: OsString = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Pixel size `(width, height)` the figure renders at.
pub fn figure_size(fig: &Figure) -> (u32, u32) {
    let (w, h, _) = render::figure_size(fig);
    (w, h)
}

/// Write `<path_stem>.png` and `<path_stem>.svg`; returns both paths.
/// Missing parent directories are created.
pub fn render(fig: &Figure, path_stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let png = with_suffix(path_stem, "png");
    let svg = with_suffix(path_stem, "svg");
    render_png(fig, &png)?;
    render_svg(fig, &svg)?;
    Ok(vec![png, svg])
}

/// Supersampling factor of PNG output (rendered this many times larger in
/// each direction, then box-filtered down): anti-aliases lines and markers.
const PNG_SUPERSAMPLE: u32 = 2;

/// Write the figure as a PNG image to `path`.
pub fn render_png(fig: &Figure, path: &Path) -> Result<(), PlotError> {
    ensure_font(path)?;
    create_parent(path)?;
    let render_err = |message: String| PlotError::Render {
        path: path.to_path_buf(),
        message,
    };
    let (w, h) = figure_size(fig);
    let s = PNG_SUPERSAMPLE;
    let (sw, sh) = (w * s, h * s);
    let mut big = vec![0u8; sw as usize * sh as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut big, (sw, sh)).into_drawing_area();
        render::draw_figure(&root, fig, true, s).map_err(render_err)?;
        root.present().map_err(|e| render_err(e.to_string()))?;
    }
    let rgb = downsample(&big, w as usize, h as usize, s as usize);
    let file = std::fs::File::create(path).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    write_png(std::io::BufWriter::new(file), &rgb, w, h).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Average `s`×`s` blocks of an RGB image `s` times larger than `w`×`h`.
fn downsample(big: &[u8], w: usize, h: usize, s: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h * 3];
    let bw = w * s;
    let n = (s * s) as u32;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..s {
                    let row = (y * s + dy) * bw;
                    for dx in 0..s {
                        sum += big[(row + x * s + dx) * 3 + c] as u32;
                    }
                }
                out[(y * w + x) * 3 + c] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    out
}

fn write_png<W: std::io::Write>(out: W, rgb: &[u8], w: u32, h: u32) -> std::io::Result<()> {
    let mut enc = png::Encoder::new(out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(rgb)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

/// The figure as an SVG document.
pub fn render_svg_string(fig: &Figure) -> Result<String, PlotError> {
    svg_string(fig, Path::new("<svg>"))
}

fn svg_string(fig: &Figure, path: &Path) -> Result<String, PlotError> {
    ensure_font(path)?;
    let render_err = |message: String| PlotError::Render {
        path: path.to_path_buf(),
        message,
    };
    let (w, h) = figure_size(fig);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        render::draw_figure(&root, fig, false, 1).map_err(render_err)?;
        root.present().map_err(|e| render_err(e.to_string()))?;
    }
    Ok(out)
}

/// Write the figure as an SVG document to `path`.
pub fn render_svg(fig: &Figure, path: &Path) -> Result<(), PlotError> {
    let svg = svg_string(fig, path)?;
    create_parent(path)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}
