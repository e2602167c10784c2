//! Building polars frames from plain vectors, and order statistics.

use polars::prelude::*;

/// Columns added one by one, then turned into a frame.
#[derive(Default)]
pub struct FrameBuilder {
    columns: Vec<Column>,
}

impl FrameBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn f64(mut self, name: &str, v: Vec<f64>) -> Self {
        self.columns.push(Column::new(name.into(), v));
        self
    }
    pub fn u64(mut self, name: &str, v: Vec<u64>) -> Self {
        self.columns.push(Column::new(name.into(), v));
        self
    }
    /// A nullable column (None: null, e.g. "never happened").
    pub fn opt_u64(mut self, name: &str, v: Vec<Option<u64>>) -> Self {
        self.columns.push(Column::new(name.into(), v));
        self
    }
    pub fn bool(mut self, name: &str, v: Vec<bool>) -> Self {
        self.columns.push(Column::new(name.into(), v));
        self
    }
    pub fn str(mut self, name: &str, v: Vec<String>) -> Self {
        self.columns.push(Column::new(name.into(), v));
        self
    }
    pub fn build(self) -> PolarsResult<DataFrame> {
        DataFrame::new_infer_height(self.columns)
    }
}

/// Linear-interpolation quantile of already sorted data (NaN when empty).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// (q25, median, q75) of `values`, NaNs ignored.
pub fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    (quantile_sorted(&v, 0.25), quantile_sorted(&v, 0.5), quantile_sorted(&v, 0.75))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        assert_eq!(quartiles(&[4.0, 1.0, 3.0, 2.0, 5.0]), (2.0, 3.0, 4.0));
        assert_eq!(quartiles(&[1.0, 2.0]), (1.25, 1.5, 1.75));
        assert!(quartiles(&[]).1.is_nan());
    }
}
