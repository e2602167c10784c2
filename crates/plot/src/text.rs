//! Text measurement and rasterisation with the embedded font.
//!
//! plotters 0.3.7's `ab_glyph` text path places every glyph bitmap at the pen
//! position without its side bearing, which visibly breaks letter spacing
//! ("hal f", "compl exity"). Bitmap text is therefore rasterised here with
//! ab_glyph directly; SVG text is still emitted by plotters as `<text>`.
//! Both use the same measurements, so the layout is identical.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

/// DejaVu Sans 2.37 (Bitstream Vera / Arev licence, see `fonts/LICENSE-DejaVu.txt`).
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
}

/// Horizontal extent and vertical metrics of a line of text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Metrics {
    /// Advance width in pixels.
    pub width: f64,
    /// Distance from the top of the line box to the baseline (positive).
    pub ascent: f64,
    /// Distance from the baseline to the bottom of the line box (positive).
    pub descent: f64,
}

impl Metrics {
    pub fn height(&self) -> f64 {
        self.ascent + self.descent
    }
}

/// Relative size of superscripts.
const SUP_SCALE: f64 = 0.72;
/// Baseline rise of superscripts, as a fraction of the font size.
const SUP_RISE: f64 = 0.40;

/// A piece of text at one size and baseline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub text: String,
    /// Font size in pixels.
    pub size: f64,
    /// Pen offset from the start of the line.
    pub x: f64,
    /// Baseline offset upwards (positive = raised).
    pub rise: f64,
}

/// ASCII form of a Unicode superscript character, if it is one we typeset.
fn unsuper(c: char) -> Option<char> {
    Some(match c {
        '⁰' => '0',
        '¹' => '1',
        '²' => '2',
        '³' => '3',
        '⁴' => '4',
        '⁵' => '5',
        '⁶' => '6',
        '⁷' => '7',
        '⁸' => '8',
        '⁹' => '9',
        '⁻' => '\u{2212}',
        '⁺' => '+',
        '⁽' => '(',
        '⁾' => ')',
        'ⁿ' => 'n',
        'ⁱ' => 'i',
        _ => return None,
    })
}

fn advance(text: &str, size: f64) -> f64 {
    let Some(f) = font() else {
        return 0.6 * size * text.chars().count() as f64;
    };
    let sf = f.as_scaled(PxScale::from(size as f32));
    let mut width = 0.0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            width += sf.kern(p, id);
        }
        width += sf.h_advance(id);
        prev = Some(id);
    }
    width as f64
}

/// Split `text` into runs: Unicode superscripts (`10⁻³`) become raised,
/// smaller ASCII runs so exponents stay legible.
pub(crate) fn layout(text: &str, size: f64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut x = 0.0;
    let mut cur = String::new();
    let mut cur_sup = false;
    let flush = |cur: &mut String, sup: bool, x: &mut f64, runs: &mut Vec<Run>| {
        if cur.is_empty() {
            return;
        }
        let (sz, rise) = if sup {
            (size * SUP_SCALE, size * SUP_RISE)
        } else {
            (size, 0.0)
        };
        let w = advance(cur, sz);
        runs.push(Run {
            text: std::mem::take(cur),
            size: sz,
            x: *x,
            rise,
        });
        *x += w;
    };
    for c in text.chars() {
        let (ch, sup) = match unsuper(c) {
            Some(a) => (a, true),
            None => (c, false),
        };
        if sup != cur_sup {
            flush(&mut cur, cur_sup, &mut x, &mut runs);
            cur_sup = sup;
        }
        cur.push(ch);
    }
    flush(&mut cur, cur_sup, &mut x, &mut runs);
    runs
}

/// Metrics of `text` at pixel size `size` (the ascent-to-descent height of the
/// font). Raised superscripts do not count towards the ascent, so labels with
/// and without exponents align on the same baseline.
pub(crate) fn measure(text: &str, size: f64) -> Metrics {
    let runs = layout(text, size);
    let width = runs
        .last()
        .map(|r| r.x + advance(&r.text, r.size))
        .unwrap_or(0.0);
    let (ascent, descent) = match font() {
        Some(f) => {
            let sf = f.as_scaled(PxScale::from(size as f32));
            (sf.ascent() as f64, -sf.descent() as f64)
        }
        None => (0.8 * size, 0.2 * size),
    };
    Metrics {
        width,
        ascent,
        descent,
    }
}

/// Rasterise `text` with the pen starting at `(0, 0)` on the baseline; `put`
/// receives pixel offsets and coverage in `[0, 1]`.
pub(crate) fn rasterize(text: &str, size: f64, mut put: impl FnMut(i32, i32, f32)) {
    let Some(f) = font() else { return };
    for run in layout(text, size) {
        let scale = PxScale::from(run.size as f32);
        let sf = f.as_scaled(scale);
        let mut pen = run.x as f32;
        let base = -run.rise as f32;
        let mut prev = None;
        for c in run.text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                pen += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(pen, base));
            if let Some(outline) = f.outline_glyph(glyph) {
                let b = outline.px_bounds();
                let (bx, by) = (b.min.x as i32, b.min.y as i32);
                outline.draw(|x, y, cov| put(bx + x as i32, by + y as i32, cov));
            }
            pen += sf.h_advance(id);
            prev = Some(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn font_loads_and_measures() {
        assert!(font().is_some());
        let m = measure("Hello", 16.0);
        assert!(m.width > 20.0 && m.width < 60.0, "{m:?}");
        assert!((m.height() - 16.0).abs() < 1.0, "{m:?}");
        assert_eq!(measure("", 16.0).width, 0.0);
        let mut n = 0;
        rasterize("A", 16.0, |_, _, c| n += (c > 0.5) as usize);
        assert!(n > 10);
    }

    #[test]
    fn superscripts_become_raised_runs() {
        let runs = layout("10⁻³ s", 20.0);
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].text, "10");
        assert_eq!(runs[1].text, "\u{2212}3");
        assert!(runs[1].rise > 0.0 && runs[1].size < 20.0);
        assert!(runs[2].x > runs[1].x);
        assert!(layout("", 10.0).is_empty());
    }
}
