//! Axis transforms, tick placement and tick-label formatting.
//!
//! All positions here are in *axis space*: the raw value on a linear axis,
//! `log10(value)` on a log axis.

use crate::model::Scale;

/// A labelled major tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Position in axis space.
    pub pos: f64,
    pub label: String,
}

/// Major (labelled) and minor (unlabelled) ticks of one axis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ticks {
    pub major: Vec<Tick>,
    pub minor: Vec<f64>,
}

/// Data value to axis space; `None` when it cannot be shown on this scale.
pub fn to_axis(scale: Scale, v: f64) -> Option<f64> {
    match scale {
        Scale::Linear => v.is_finite().then_some(v),
        Scale::Log => (v.is_finite() && v > 0.0).then(|| v.log10()),
    }
}

/// Unicode superscript form of an integer, e.g. `-3` -> `⁻³`.
pub fn superscript(k: i64) -> String {
    k.to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            '9' => '⁹',
            other => other,
        })
        .collect()
}

/// Replace an ASCII hyphen used as a minus sign by the typographic minus.
fn typographic_minus(s: String) -> String {
    match s.strip_prefix('-') {
        Some(rest) => format!("\u{2212}{rest}"),
        None => s,
    }
}

/// Trim trailing zeros (and a dangling point) of a fixed-point number.
fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `m×10ᵏ` with `m` trimmed to at most `sig` significant digits.
fn sci(v: f64, sig: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = v.abs().log10().floor();
    let mut m = v / 10f64.powf(e);
    let mut e = e as i64;
    // Rounding may push the mantissa to 10.
    let digits = sig.saturating_sub(1);
    let rounded: f64 = format!("{m:.digits$}").parse().unwrap_or(m);
    if rounded.abs() >= 10.0 {
        m = rounded / 10.0;
        e += 1;
    } else {
        m = rounded;
    }
    let ms = trim_zeros(format!("{m:.digits$}"));
    let body = if ms == "1" {
        format!("10{}", superscript(e))
    } else if ms == "-1" {
        format!("-10{}", superscript(e))
    } else {
        format!("{ms}×10{}", superscript(e))
    };
    typographic_minus(body)
}

/// A compact, general-purpose number label.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        // Four significant digits at most.
        let decimals = (3 - a.log10().floor() as i64).clamp(0, 6) as usize;
        typographic_minus(trim_zeros(format!("{v:.decimals$}")))
    } else {
        sci(v, 3)
    }
}

/// Format the labels of evenly spaced linear ticks with a common precision.
fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let max_abs = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if max_abs >= 1e5 || (max_abs > 0.0 && max_abs < 1e-3) {
        let e = max_abs.log10().floor();
        let scaled_step = step / 10f64.powf(e);
        let digits = decimals_for(scaled_step) + 1;
        return values.iter().map(|&v| sci(v, digits.min(6))).collect();
    }
    let decimals = decimals_for(step);
    values
        .iter()
        .map(|&v| {
            let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
            typographic_minus(format!("{v:.decimals$}"))
        })
        .collect()
}

/// Decimals needed to print multiples of `step` exactly.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    let mut d = 0usize;
    while d < 10 {
        let scaled = step * 10f64.powi(d as i32);
        if (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0) {
            break;
        }
        d += 1;
    }
    d
}

/// Multiples of `step` inside `[lo, hi]` (bounded in number).
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let mut out = Vec::new();
    if !(step.is_finite() && step > 0.0 && lo.is_finite() && hi.is_finite()) {
        return out;
    }
    let eps = step * 1e-9;
    let first = (lo / step - 1e-9).ceil();
    let mut i = 0.0;
    while out.len() < 1000 {
        let v = (first + i) * step;
        if v > hi + eps {
            break;
        }
        out.push(if v.abs() < eps { 0.0 } else { v });
        i += 1.0;
    }
    out
}

/// Linear ticks with at most about `target` labelled ticks.
pub fn linear_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return Ticks::default();
    }
    let target = target.max(2);
    // Smallest step 1, 2, 2.5, 5 × 10ᵏ giving at most `target` ticks.
    let mag = 10f64.powf((span / target as f64).log10().floor());
    let mut chosen = (10.0 * mag, 10.0);
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        let step = m * mag;
        if multiples(lo, hi, step).len() <= target {
            chosen = (step, m);
            break;
        }
    }
    let (step, m) = chosen;
    let values = multiples(lo, hi, step);
    let labels = linear_labels(&values, step);
    let major = values
        .iter()
        .zip(labels)
        .map(|(&pos, label)| Tick { pos, label })
        .collect();
    let minor_div = if m == 2.0 { 4.0 } else { 5.0 };
    let minor = multiples(lo, hi, step / minor_div)
        .into_iter()
        .filter(|v| values.iter().all(|t| (t - v).abs() > step * 1e-6))
        .collect();
    Ticks { major, minor }
}

/// Log ticks for the axis-space interval `[lo, hi]` (decades), at most about
/// `target` labelled ticks; `px_per_decade` decides whether minor ticks fit.
pub fn log_ticks(lo: f64, hi: f64, target: usize, px_per_decade: f64) -> Ticks {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return Ticks::default();
    }
    let target = target.max(2);
    let k_lo = (lo - 1e-9).ceil() as i64;
    let k_hi = (hi + 1e-9).floor() as i64;
    let n_dec = k_hi - k_lo + 1;
    if n_dec >= 2 {
        let step = ((n_dec as f64) / (target as f64)).ceil().max(1.0) as i64;
        let mut ks: Vec<i64> = (k_lo..=k_hi).filter(|k| k.rem_euclid(step) == 0).collect();
        if ks.len() < 2 {
            ks = (0..)
                .map(|i| k_lo + i * step)
                .take_while(|&k| k <= k_hi)
                .collect();
        }
        let major = ks
            .iter()
            .map(|&k| Tick {
                pos: k as f64,
                label: format!("10{}", superscript(k)),
            })
            .collect();
        let mut minor = Vec::new();
        if step == 1 {
            if px_per_decade >= 30.0 {
                for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
                    for m in 2..=9 {
                        let p = k as f64 + (m as f64).log10();
                        if p >= lo && p <= hi {
                            minor.push(p);
                        }
                    }
                }
            }
        } else {
            minor = (k_lo..=k_hi)
                .filter(|k| !ks.contains(k))
                .map(|k| k as f64)
                .collect();
        }
        return Ticks { major, minor };
    }
    // Less than two decade marks: label mantissas 1-2-5 style.
    let sets: [&[u32]; 4] = [
        &[1, 2, 5],
        &[1, 2, 3, 5],
        &[1, 2, 3, 4, 5, 6, 8],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9],
    ];
    let in_range = |set: &[u32]| -> Vec<f64> {
        let mut v = Vec::new();
        for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
            for &m in set {
                let p = k as f64 + (m as f64).log10();
                if p >= lo - 1e-9 && p <= hi + 1e-9 {
                    v.push(p);
                }
            }
        }
        v
    };
    for set in sets {
        let pos = in_range(set);
        if pos.len() >= 3 && pos.len() <= target.max(3) {
            let major: Vec<Tick> = pos
                .iter()
                .map(|&p| Tick {
                    pos: p,
                    label: format_value(10f64.powf(p)),
                })
                .collect();
            let minor = in_range(&[1, 2, 3, 4, 5, 6, 7, 8, 9])
                .into_iter()
                .filter(|p| pos.iter().all(|q| (q - p).abs() > 1e-9))
                .collect();
            return Ticks { major, minor };
        }
    }
    // Very narrow range: linear ticks on the raw values.
    let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
    let lin = linear_ticks(a, b, target);
    Ticks {
        major: lin
            .major
            .into_iter()
            .filter(|t| t.pos > 0.0)
            .map(|t| Tick {
                pos: t.pos.log10(),
                label: t.label,
            })
            .collect(),
        minor: Vec::new(),
    }
}

/// Ticks for an axis of the given scale over the axis-space range `[lo, hi]`.
pub fn ticks(scale: Scale, lo: f64, hi: f64, target: usize, px_len: f64) -> Ticks {
    match scale {
        Scale::Linear => linear_ticks(lo, hi, target),
        Scale::Log => {
            let span = (hi - lo).max(1e-12);
            log_ticks(lo, hi, target, px_len / span)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &Ticks) -> Vec<&str> {
        t.major.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn linear_basic() {
        let t = linear_ticks(0.0, 1.0, 6);
        assert_eq!(labels(&t), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = linear_ticks(-3.0, 12.0, 6);
        assert_eq!(
            labels(&t),
            ["\u{2212}2.5", "0.0", "2.5", "5.0", "7.5", "10.0"]
        );
        let t = linear_ticks(-1.0, 1.0, 5);
        assert_eq!(labels(&t)[0], "\u{2212}1.0");
        assert!(t.major.iter().all(|k| k.pos >= -3.0 && k.pos <= 12.0));
        let t = linear_ticks(0.0, 2e6, 5);
        assert!(
            labels(&t).iter().any(|l| l.contains("×10")),
            "{:?}",
            labels(&t)
        );
    }

    #[test]
    fn log_many_decades() {
        let t = log_ticks(-6.0, 6.0, 6, 40.0);
        assert!(t.major.len() >= 2 && t.major.len() <= 7, "{:?}", labels(&t));
        assert!(labels(&t).contains(&"10⁰"));
        let t = log_ticks(0.0, 3.0, 6, 100.0);
        assert_eq!(labels(&t), ["10⁰", "10¹", "10²", "10³"]);
        assert_eq!(t.minor.len(), 24);
    }

    #[test]
    fn log_narrow() {
        let t = log_ticks(2f64.log10(), 60f64.log10(), 6, 200.0);
        assert!(t.major.len() >= 3, "{:?}", labels(&t));
        let t = log_ticks(2f64.log10(), 2.1f64.log10(), 6, 200.0);
        assert!(!t.major.is_empty());
    }

    #[test]
    fn value_format() {
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(200.0), "200");
        assert_eq!(format_value(2e-5), "2×10⁻⁵");
        assert_eq!(format_value(1e6), "10⁶");
        assert_eq!(format_value(-0.25), "\u{2212}0.25");
    }

    #[test]
    fn degenerate() {
        assert!(linear_ticks(1.0, 1.0, 5).major.is_empty());
        assert!(linear_ticks(f64::NAN, 1.0, 5).major.is_empty());
        assert!(log_ticks(0.0, f64::INFINITY, 5, 10.0).major.is_empty());
    }
}
