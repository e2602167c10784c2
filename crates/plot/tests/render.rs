//! End-to-end rendering tests: real files, checked by decoding them.

use std::path::Path;

use e2h_plot::{
    Figure, Heatmap, LegendPos, Marker, PALETTE, Panel, PlotError, RefLine, Scale, Series, Style,
    StyleKind, figure_size, render, render_png, render_svg, render_svg_string,
};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Log-x lines with bands, a log-log scatter with error bars and hollow
/// markers, and a heat map on a disc.
fn three_panels() -> Figure {
    let t: Vec<f64> = (0..40)
        .map(|i| 10f64.powf(-3.0 + 5.0 * i as f64 / 39.0))
        .collect();
    let y: Vec<f64> = t.iter().map(|s| s / (1.0 + s)).collect();
    let lo: Vec<f64> = y.iter().map(|v| v * 0.8).collect();
    let hi: Vec<f64> = y.iter().map(|v| v * 1.2).collect();
    let lines = Panel::new("Lines")
        .labels("sigma", "error")
        .log_x()
        .series(Series::new("a", t.clone(), y.clone()).band(lo, hi))
        .series(
            Series::new("b", t.clone(), y.iter().map(|v| v * 0.5).collect()).style(Style::dashed()),
        )
        .hline(RefLine::new(0.5).label("half"));

    let n: Vec<f64> = (1..=8).map(|i| 10f64.powi(i)).collect();
    let e: Vec<f64> = n.iter().map(|v| 1.0 / v.sqrt()).collect();
    let scatter = Panel::new("Scatter")
        .labels("n", "err")
        .loglog()
        .series(
            Series::new("measured", n.clone(), e.clone())
                .y_err(
                    e.iter().map(|v| v / 2.0).collect(),
                    e.iter().map(|v| v * 2.0).collect(),
                )
                .style(Style::points().marker(Marker::Diamond))
                .hollow(vec![false, false, false, false, false, false, true, true]),
        )
        .legend(LegendPos::LowerLeft);

    let g: Vec<f64> = (0..31).map(|i| -1.0 + i as f64 / 15.0).collect();
    let z: Vec<Vec<f64>> = g
        .iter()
        .map(|&b| {
            g.iter()
                .map(|&a| {
                    if a * a + b * b <= 1.0 {
                        a * b
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect();
    let heat = Panel::new("Heat")
        .labels("x", "y")
        .equal_aspect(true)
        .heatmap(
            Heatmap::new(g.clone(), g, z)
                .colorbar_label("z")
                .contour_levels(vec![-0.2, 0.0, 0.2]),
        );
    Figure::new("Three panel test figure")
        .panel(lines)
        .panel(scatter)
        .panel(heat)
        .columns(3)
}

/// Width, height and RGB pixels of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut dec = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    let info = dec.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn three_panel_figure_writes_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let fig = three_panels();
    let stem = dir.path().join("sub").join("fig.v1");
    let paths = render(&fig, &stem).unwrap();
    assert_eq!(
        paths,
        vec![
            dir.path().join("sub/fig.v1.png"),
            dir.path().join("sub/fig.v1.svg")
        ]
    );

    let bytes = std::fs::read(&paths[0]).unwrap();
    assert_eq!(bytes[..8], PNG_SIGNATURE);
    // IHDR: width and height, big-endian, right after the chunk header.
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), figure_size(&fig));
    assert_eq!(w, 3 * 600);
    assert!(h > 450 && h < 520, "height {h}");

    let (dw, dh, rgb) = decode_png(&paths[0]);
    assert_eq!((dw, dh), (w, h));
    // The first series colour appears (lines and band), as does viridis purple.
    let count = |c: (u8, u8, u8), tol: i32| {
        rgb.chunks(3)
            .filter(|p| {
                (p[0] as i32 - c.0 as i32).abs() <= tol
                    && (p[1] as i32 - c.1 as i32).abs() <= tol
                    && (p[2] as i32 - c.2 as i32).abs() <= tol
            })
            .count()
    };
    assert!(count(PALETTE[0], 8) > 200, "series colour missing");
    // Background is white, and the title band holds dark (text) pixels.
    assert!(count((255, 255, 255), 0) > rgb.len() / 3 / 2);
    let title_dark = (0..40usize)
        .flat_map(|y| (0..w as usize).map(move |x| (y, x)))
        .filter(|&(y, x)| rgb[(y * w as usize + x) * 3] < 100)
        .count();
    assert!(
        title_dark > 50,
        "no title text rendered ({title_dark} dark pixels)"
    );

    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Three panel test figure"));
    assert!(svg.contains("Scatter"));
    assert!(svg.contains(&format!("width=\"{w}\"")));
    assert_eq!(svg, render_svg_string(&fig).unwrap());
}

#[test]
fn log_tick_labels_use_powers_of_ten() {
    let fig = Figure::new("").panel(Panel::new("").loglog().series(Series::new(
        "",
        vec![1e-6, 1e6],
        vec![1e-12, 1e12],
    )));
    let svg = render_svg_string(&fig).unwrap();
    // Exponents are separate raised text runs after a "10".
    assert!(
        svg.contains(">\n10\n</text>") || svg.contains(">10</text>"),
        "no 10^k labels"
    );
    assert!(
        svg.contains("\u{2212}12") || svg.contains("\u{2212}1"),
        "no negative exponents"
    );
}

#[test]
fn categorical_tick_labels_replace_the_automatic_ticks() {
    let panel = |labels: Vec<(f64, String)>| {
        Panel::new("")
            .x_range(0.5, 3.5)
            .series(Series::new("", vec![1.0, 2.0, 3.0], vec![20.0, 80.0, 50.0]).style(Style::points()))
            .x_tick_labels(labels)
    };
    // Text runs of the SVG are ">\nTEXT\n</text>"; the y ticks are whole numbers.
    let has_text = |svg: &str, t: &str| svg.contains(&format!(">\n{t}\n</text>"));
    let auto = render_svg_string(&Figure::new("").panel(panel(Vec::new()))).unwrap();
    assert!(has_text(&auto, "1.5") && has_text(&auto, "2.5"), "automatic x ticks expected");
    let named = vec![
        (1.0, "alpha case".to_string()),
        (2.0, "beta case".to_string()),
        (3.0, "gamma case".to_string()),
    ];
    let svg = render_svg_string(&Figure::new("").panel(panel(named))).unwrap();
    for label in ["alpha case", "beta case", "gamma case"] {
        assert!(has_text(&svg, label), "missing tick label {label}");
    }
    assert!(!has_text(&svg, "1.5") && !has_text(&svg, "2.5"), "automatic x ticks still drawn");
}

fn degenerate_panels() -> Vec<Panel> {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    vec![
        Panel::new("empty"),
        Panel::new("empty series").series(Series::new("nothing", vec![], vec![])),
        Panel::new("all NaN").series(
            Series::new("nan", vec![nan, nan], vec![nan, nan]).style(Style::line_and_points()),
        ),
        Panel::new("single point")
            .series(Series::new("one", vec![3.0], vec![4.0]).style(Style::points())),
        Panel::new("single point log")
            .loglog()
            .series(Series::new("one", vec![3.0], vec![4.0])),
        Panel::new("constant").series(Series::new(
            "flat",
            vec![1.0, 1.0, 1.0],
            vec![2.0, 2.0, 2.0],
        )),
        Panel::new("zero constant").series(Series::new("zero", vec![0.0, 0.0], vec![0.0, 0.0])),
        Panel::new("non-positive on log").loglog().series(
            Series::new("neg", vec![-1.0, 0.0, 1.0, 10.0], vec![0.0, -5.0, 1.0, 0.0])
                .band(vec![-1.0, 0.0, 0.5, nan], vec![1.0, 2.0, 2.0, 3.0])
                .y_err(vec![0.0, 0.0, -1.0, 1.0], vec![1.0, nan, 2.0, 2.0]),
        ),
        Panel::new("only negatives on log")
            .log_y()
            .series(Series::new("neg", vec![1.0, 2.0], vec![-1.0, -2.0])),
        Panel::new("mismatched lengths").series(
            Series::new("ragged", vec![1.0, 2.0, 3.0], vec![1.0])
                .band(vec![0.0], vec![])
                .y_err(vec![], vec![1.0, 2.0, 3.0, 4.0])
                .hollow(vec![true; 10]),
        ),
        Panel::new("infinities").series(Series::new(
            "inf",
            vec![1.0, inf, 3.0, -inf],
            vec![inf, 2.0, nan, 1.0],
        )),
        Panel::new("huge").series(Series::new("big", vec![-1e300, 1e300], vec![1e-300, 1e300])),
        Panel::new("tiny span").series(Series::new(
            "close",
            vec![1.0, 1.0 + 1e-15],
            vec![5.0, 5.0 + 1e-14],
        )),
        Panel::new("reversed and nan ranges")
            .x_range(10.0, -10.0)
            .y_range(nan, 5.0)
            .series(Series::new("s", vec![0.0, 100.0], vec![0.0, 100.0])),
        Panel::new("zero-width and invalid log range")
            .loglog()
            .x_range(-5.0, 0.0)
            .y_range(3.0, 3.0)
            .series(Series::new("s", vec![1.0, 10.0], vec![1.0, 10.0])),
        Panel::new("out of range data")
            .x_range(0.0, 1.0)
            .y_range(0.0, 1.0)
            .series(
                Series::new("far", vec![-5.0, 0.5, 7.0], vec![100.0, 0.5, -100.0])
                    .band(vec![-1e6, -1e6, -1e6], vec![1e6, 1e6, 1e6])
                    .y_err(vec![-10.0, -10.0, -10.0], vec![10.0, 10.0, 10.0])
                    .style(Style::line_and_points().marker(Marker::Triangle)),
            ),
        Panel::new("reflines only")
            .hline(RefLine::new(nan).label("nan"))
            .vline(RefLine::new(2.0).label("two").style(Style::line().color(3)))
            .hline(RefLine::new(-1.0)),
        Panel::new("log reflines")
            .loglog()
            .hline(RefLine::new(-3.0))
            .vline(RefLine::new(0.0))
            .vline(RefLine::new(100.0)),
        Panel::new("heatmap empty").heatmap(Heatmap::new(vec![], vec![], vec![])),
        Panel::new("heatmap all NaN").heatmap(Heatmap::new(
            vec![0.0, 1.0],
            vec![0.0, 1.0],
            vec![vec![nan; 2]; 2],
        )),
        Panel::new("heatmap single cell constant").heatmap(
            Heatmap::new(vec![5.0], vec![5.0], vec![vec![1.0]]).contour_levels(vec![1.0, nan]),
        ),
        Panel::new("heatmap ragged").heatmap(
            Heatmap::new(
                vec![0.0, 1.0, 2.0],
                vec![0.0, 1.0],
                vec![vec![1.0], vec![2.0, 3.0, 4.0, 5.0], vec![6.0]],
            )
            .z_range(nan, nan)
            .colorbar_label("ragged"),
        ),
        Panel::new("heatmap log axes with bad centres")
            .loglog()
            .heatmap(
                Heatmap::new(
                    vec![-1.0, 1.0, 10.0],
                    vec![0.0, 1.0, 100.0],
                    vec![vec![1.0, 2.0, 3.0]; 3],
                )
                .z_range(5.0, 5.0)
                .contour_levels(vec![1.5, 2.5]),
            ),
        Panel::new("unsorted heatmap").heatmap(Heatmap::new(
            vec![3.0, 1.0, 2.0],
            vec![2.0, 2.0],
            vec![vec![1.0, 2.0, 3.0]; 2],
        )),
        Panel::new("equal aspect degenerate")
            .equal_aspect(true)
            .loglog()
            .series(Series::new("", vec![1.0], vec![1.0])),
        Panel::new("many styles").series(
            Series::new("palette wraps", vec![1.0, 2.0], vec![1.0, 2.0]).style(Style {
                kind: StyleKind::LineAndPoints,
                color: Some(1000),
                width: 0,
                marker: Marker::Square,
                marker_size: 0,
            }),
        ),
    ]
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut fig = Figure::new("Degenerate <inputs> & friends").columns(4);
    fig.panels = degenerate_panels();
    render(&fig, &dir.path().join("degenerate")).unwrap();
    // Each panel on its own, with labels, in both formats.
    for (i, p) in degenerate_panels().into_iter().enumerate() {
        let p = p.labels("x label", "y label");
        let fig = Figure::new(format!("panel {i}")).panel(p);
        render(&fig, &dir.path().join(format!("p{i}")))
            .unwrap_or_else(|e| panic!("panel {i}: {e}"));
    }
    let svg = std::fs::read_to_string(dir.path().join("degenerate.svg")).unwrap();
    assert!(svg.contains("Degenerate &lt;inputs&gt; &amp; friends"));
}

#[test]
fn degenerate_figures_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let figs = [
        Figure::default(),
        Figure::new("no panels").columns(5),
        Figure::new("tiny")
            .panel(Panel::new("t").labels("x", "y"))
            .panel_size(1, 1),
        Figure::new("zero").panel(Panel::new("z")).panel_size(0, 0),
        Figure::new("more columns than panels")
            .columns(7)
            .panel(Panel::new("a"))
            .panel(Panel::new("b")),
        Figure::new("").panel(Panel::new("")),
    ];
    for (i, fig) in figs.iter().enumerate() {
        let paths = render(fig, &dir.path().join(format!("f{i}"))).unwrap();
        let bytes = std::fs::read(&paths[0]).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE);
        let (w, h) = figure_size(fig);
        assert!(w > 0 && h > 0);
        assert_eq!(decode_png(&paths[0]).0, w);
    }
}

#[test]
fn grid_layout() {
    let mut fig = Figure::new("grid").panel_size(300, 200);
    for _ in 0..5 {
        fig.panels.push(Panel::new("p"));
    }
    assert_eq!((fig.grid_columns(), fig.grid_rows()), (3, 2));
    let (w, h) = figure_size(&fig);
    assert_eq!(w, 900);
    assert!(h > 400);
    fig.columns = 2;
    assert_eq!((fig.grid_columns(), fig.grid_rows()), (2, 3));
    assert_eq!(figure_size(&fig).0, 600);
}

#[test]
fn errors_name_the_failing_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not_a_dir");
    std::fs::write(&blocker, b"x").unwrap();
    let target = blocker.join("fig.png");
    let fig = Figure::new("x").panel(Panel::new("p"));
    let err = render_png(&fig, &target).unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }));
    assert!(err.to_string().contains("not_a_dir"), "{err}");
    let err = render_svg(&fig, &blocker.join("fig.svg")).unwrap_err();
    assert!(err.to_string().contains("fig.svg"), "{err}");
    let err = render(&fig, &blocker.join("stem")).unwrap_err();
    assert!(err.to_string().contains("stem.png"), "{err}");
}

#[test]
fn scales_default_to_linear() {
    let p = Panel::new("p");
    assert_eq!((p.x_scale, p.y_scale), (Scale::Linear, Scale::Linear));
    assert_eq!(p.legend, LegendPos::Best);
    let p = p.loglog();
    assert_eq!((p.x_scale, p.y_scale), (Scale::Log, Scale::Log));
}
