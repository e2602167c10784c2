//! Tolerant comparison of result tables with committed baselines, in the
//! spirit of polars-testing's `assert_frame_equal`: same columns in the same
//! order, same height, equal strings, numbers within atol + rtol * |expected|
//! (NaN equals NaN, infinities must match exactly).

use polars::prelude::*;
use serde::Deserialize;

use crate::table::{column_f64, column_string};

/// A table whose values are compared with a committed baseline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionSpec {
    /// Declared stage (every sweep instance is compared).
    pub stage: String,
    pub table: String,
    #[serde(default)]
    pub rtol: f64,
    #[serde(default)]
    pub atol: f64,
    /// Why the tolerance is what it is (bit-identical results need none).
    #[serde(default)]
    pub why: String,
}

/// One difference between a table and its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub column: String,
    pub row: Option<usize>,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.row {
            Some(r) => write!(f, "column `{}` row {r}: expected {}, got {}", self.column, self.expected, self.actual),
            None => write!(f, "{}: expected {}, got {}", self.column, self.expected, self.actual),
        }
    }
}

/// Differences of `actual` from `expected` (empty: equal within tolerance).
/// At most `limit` value mismatches are listed per column.
pub fn compare(actual: &DataFrame, expected: &DataFrame, rtol: f64, atol: f64, limit: usize) -> PolarsResult<Vec<Mismatch>> {
    let names = |df: &DataFrame| df.get_column_names().iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let (a_cols, e_cols) = (names(actual), names(expected));
    if a_cols != e_cols {
        return Ok(vec![Mismatch {
            column: "<schema>".into(),
            row: None,
            expected: format!("{e_cols:?}"),
            actual: format!("{a_cols:?}"),
        }]);
    }
    if actual.height() != expected.height() {
        return Ok(vec![Mismatch {
            column: "<height>".into(),
            row: None,
            expected: expected.height().to_string(),
            actual: actual.height().to_string(),
        }]);
    }
    let mut out = Vec::new();
    for name in &e_cols {
        let numeric = expected.column(name)?.dtype().is_primitive_numeric();
        let mut found = 0;
        if numeric {
            let (a, e) = (column_f64(actual, name)?, column_f64(expected, name)?);
            for (row, (x, y)) in a.iter().zip(&e).enumerate() {
                let same = if x.is_nan() || y.is_nan() {
                    x.is_nan() && y.is_nan()
                } else if x.is_infinite() || y.is_infinite() {
                    x == y
                } else {
                    (x - y).abs() <= atol + rtol * y.abs()
                };
                if !same && found < limit {
                    out.push(Mismatch { column: name.clone(), row: Some(row), expected: format!("{y:e}"), actual: format!("{x:e}") });
                    found += 1;
                }
            }
        } else {
            let (a, e) = (column_string(actual, name)?, column_string(expected, name)?);
            for (row, (x, y)) in a.iter().zip(&e).enumerate() {
                if x != y && found < limit {
                    out.push(Mismatch { column: name.clone(), row: Some(row), expected: y.clone(), actual: x.clone() });
                    found += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Largest absolute difference per numeric column (for `--bless` summaries).
pub fn max_abs_diff(actual: &DataFrame, expected: &DataFrame) -> PolarsResult<Vec<(String, f64)>> {
    let mut out = Vec::new();
    if actual.height() != expected.height() {
        return Ok(out);
    }
    for name in expected.get_column_names() {
        if expected.column(name)?.dtype().is_primitive_numeric() && actual.column(name).is_ok() {
            let (a, e) = (column_f64(actual, name)?, column_f64(expected, name)?);
            let m = a
                .iter()
                .zip(&e)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            if m > 0.0 {
                out.push((name.to_string(), m));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn df(x: Vec<f64>, s: Vec<&str>) -> DataFrame {
        DataFrame::new_infer_height(vec![Column::new("x".into(), x), Column::new("s".into(), s)]).unwrap()
    }

    #[test]
    fn equal_within_tolerance_and_nan_equals_nan() {
        let a = df(vec![1.0, f64::NAN, f64::INFINITY], vec!["a", "b", "c"]);
        let b = df(vec![1.0 + 1e-10, f64::NAN, f64::INFINITY], vec!["a", "b", "c"]);
        assert!(compare(&a, &b, 1e-9, 0.0, 5).unwrap().is_empty());
        assert_eq!(compare(&a, &b, 0.0, 0.0, 5).unwrap().len(), 1);
    }

    #[test]
    fn drift_strings_schema_and_height_are_reported() {
        let a = df(vec![1.0, 2.0], vec!["a", "b"]);
        let m = compare(&a, &df(vec![1.0, 2.5], vec!["a", "c"]), 1e-6, 1e-6, 5).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].column, "x");
        assert_eq!(m[1].column, "s");
        let short = df(vec![1.0], vec!["a"]);
        assert_eq!(compare(&a, &short, 0.0, 0.0, 5).unwrap()[0].column, "<height>");
        let other = DataFrame::new_infer_height(vec![Column::new("y".into(), vec![1.0, 2.0])]).unwrap();
        assert_eq!(compare(&a, &other, 0.0, 0.0, 5).unwrap()[0].column, "<schema>");
        assert!(compare(&a, &df(vec![1.0, f64::INFINITY], vec!["a", "b"]), 1.0, 1.0, 5).unwrap().len() == 1);
    }
}
