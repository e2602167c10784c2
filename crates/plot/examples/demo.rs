//! Render a three-panel demo figure.
//!
//! `cargo run -p e2h-plot --example demo -- out/demo` writes `out/demo.png`
//! and `out/demo.svg`.

use std::path::PathBuf;

use e2h_plot::{Figure, Heatmap, LegendPos, Marker, Panel, RefLine, Series, Style, render};

/// The demo figure (also used by the integration tests).
fn demo_figure() -> Figure {
    // Panel 1: log-x lines with interquartile bands.
    let t: Vec<f64> = (0..60)
        .map(|i| 10f64.powf(-3.0 + 5.0 * i as f64 / 59.0))
        .collect();
    let mut lines = Panel::new("Error vs. noise level")
        .labels("noise level σ", "relative error")
        .log_x();
    for (k, (name, rate)) in [("d = 2", 0.6), ("d = 8", 1.0), ("d = 32", 1.6)]
        .into_iter()
        .enumerate()
    {
        let y: Vec<f64> = t
            .iter()
            .map(|s| 1.0 / (1.0 + (rate / s).powf(0.8)))
            .collect();
        let lo: Vec<f64> = y.iter().map(|v| v * 0.85).collect();
        let hi: Vec<f64> = y.iter().map(|v| (v * 1.15).min(1.05)).collect();
        let style = if k == 2 {
            Style::dashed()
        } else {
            Style::line()
        };
        lines = lines.series(Series::new(name, t.clone(), y).band(lo, hi).style(style));
    }
    lines = lines.hline(RefLine::new(0.5).label("half error"));

    // Panel 2: log-log scatter with error bars, hollow (censored) markers and a fit.
    let n: Vec<f64> = (0..9).map(|i| 10f64.powi(i + 1)).collect();
    let err: Vec<f64> = n.iter().map(|v| 3.0 / v.sqrt()).collect();
    let lo: Vec<f64> = err.iter().map(|e| e / 1.6).collect();
    let hi: Vec<f64> = err.iter().map(|e| e * 1.6).collect();
    let hollow: Vec<bool> = (0..9).map(|i| i >= 7).collect();
    let fit_x = vec![5.0, 2e9];
    let fit_y: Vec<f64> = fit_x.iter().map(|v: &f64| 3.0 / v.sqrt()).collect();
    let scatter = Panel::new("Sample complexity")
        .labels("training samples n", "test error")
        .loglog()
        .series(
            Series::new("measured", n.clone(), err)
                .y_err(lo, hi)
                .style(Style::points().marker(Marker::Circle))
                .hollow(hollow),
        )
        .series(Series::new("n^(-1/2) fit", fit_x, fit_y).style(Style::dashed().color(1)))
        .vline(RefLine::new(1e7).label("censoring limit"))
        .legend(LegendPos::UpperRight);

    // Panel 3: heat map on a disc with contours.
    let m = 81;
    let g: Vec<f64> = (0..m)
        .map(|i| -1.0 + 2.0 * i as f64 / (m - 1) as f64)
        .collect();
    let z: Vec<Vec<f64>> = g
        .iter()
        .map(|&y| {
            g.iter()
                .map(|&x| {
                    if x * x + y * y <= 1.0 {
                        (-(x - 0.3).powi(2) * 4.0 - (y + 0.2).powi(2) * 6.0).exp()
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect();
    let heat = Panel::new("Density on the unit disc")
        .labels("x₁", "x₂")
        .equal_aspect(true)
        .heatmap(
            Heatmap::new(g.clone(), g, z)
                .colorbar_label("p(x)")
                .contour_levels(vec![0.25, 0.5, 0.75]),
        );

    Figure::new("e2h-plot demo")
        .panel(lines)
        .panel(scatter)
        .panel(heat)
        .columns(3)
}

fn main() {
    let stem = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("demo"));
    match render(&demo_figure(), &stem) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
