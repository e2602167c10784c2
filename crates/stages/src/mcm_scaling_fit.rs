//! Figure 3's fit: per-d medians of the weak-recovery times of `mcm.recovery`
//! inputs and the log-log slope against d (a module of its own, so that its code
//! fingerprint is not the simulations').

use std::collections::BTreeMap;

use e2h_engine::{CodeFingerprints, InputArity, ParamIssue, Registry, Stage, StageContext, StageError};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::frame::{quantile_sorted, quartiles, FrameBuilder};
use crate::mcm_common::count_in;

pub fn register(r: &mut Registry) {
    r.register(ScalingFit);
}

fn default_bootstrap() -> usize {
    1000
}

/// `mcm.scaling_fit`: per-d medians of n* and the log-log slope against d.
/// Each input is one case (its name labels the rows); its sweep instances are
/// the values of d.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingFitParams {
    /// Bootstrap resamples (over runs, within each d) for the slope interval.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// Per case, the smallest d that enters the slope and the flatness ratio
    /// (smaller d are still tabulated and drawn): where the random start is
    /// already close to the threshold, n* is not yet in its scaling regime.
    #[serde(default)]
    pub fit_d_min: BTreeMap<String, f64>,
}

pub struct ScalingFit;

impl Stage for ScalingFit {
    type Params = ScalingFitParams;
    const KIND: &'static str = "mcm.scaling_fit";
    // 2: n_over_theory, fit_d_min.
    const VERSION: &'static str = "2";
    const ABOUT: &'static str = "per-d medians of n* from mcm.recovery inputs (one per case) and the log-log slope against d";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::mcm_tables::scaling_fit()
    }

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        vec![
            e2h_engine::ParamDoc::new("bootstrap", "integer", "1000", "10..=1000000", "bootstrap resamples for the slope interval"),
            e2h_engine::ParamDoc::new(
                "fit_d_min",
                "map case -> number",
                "{}",
                "",
                "per case, the smallest d in the slope and the flatness ratio (smaller d are still tabulated)",
            ),
        ]
    }

    const INPUTS: InputArity = InputArity::AnyNonEmpty;

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if p.bootstrap < 10 {
            return Err(ParamIssue::new("bootstrap", "use at least 10 bootstrap resamples"));
        }
        count_in("bootstrap", p.bootstrap as u64, 10, 1_000_000)
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        use e2h_engine::table::{column_f64, column_string};
        let mut med = Medians::default();
        let mut fits = Fits::default();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(ctx.seed());
        let names: Vec<String> = ctx.input_names().into_iter().map(String::from).collect();
        if let Some(unknown) = p.fit_d_min.keys().find(|k| !names.contains(k)) {
            return Err(format!("fit_d_min names `{unknown}`, which is not an input of this stage (inputs: {})", names.join(", ")).into());
        }
        for case in &names {
            let df = ctx.input_table(case, "recovery")?;
            let ds = column_f64(&df, "d")?;
            let ns = column_f64(&df, "n_star")?;
            let cens: Vec<bool> = column_string(&df, "censored")?.iter().map(|s| s == "true").collect();
            let theory = column_f64(&df, "n_star_theory")?;
            let mut dvals: Vec<f64> = ds.clone();
            dvals.sort_by(f64::total_cmp);
            dvals.dedup();
            // Runs per d.
            let groups: Vec<(f64, Vec<f64>, Vec<bool>, f64)> = dvals
                .iter()
                .map(|&d| {
                    let idx: Vec<usize> = (0..ds.len()).filter(|&i| ds[i] == d).collect();
                    (d, idx.iter().map(|&i| ns[i]).collect(), idx.iter().map(|&i| cens[i]).collect(), theory[idx[0]])
                })
                .collect();
            let mut fit_x = Vec::new();
            let mut fit_y = Vec::new();
            let d_min = p.fit_d_min.get(case.as_str()).copied().unwrap_or(f64::NEG_INFINITY);
            for (d, n, c, th) in &groups {
                let (q25, m, q75) = quartiles(n);
                let cf = c.iter().filter(|x| **x).count() as f64 / c.len() as f64;
                med.push(case, *d, m, q25, q75, cf, *th);
                if cf < 0.5 && *d >= d_min {
                    fit_x.push(d.ln());
                    fit_y.push(m.ln());
                }
            }
            let (slope, intercept) = least_squares(&fit_x, &fit_y);
            // Bootstrap over runs within each d.
            let mut slopes = Vec::with_capacity(p.bootstrap);
            for _ in 0..p.bootstrap {
                let mut bx = Vec::new();
                let mut by = Vec::new();
                for (d, n, c, _) in &groups {
                    let sample: Vec<usize> = (0..n.len()).map(|_| rng.random_range(0..n.len())).collect();
                    let cf = sample.iter().filter(|&&i| c[i]).count() as f64 / n.len() as f64;
                    if cf < 0.5 && *d >= d_min {
                        let mut v: Vec<f64> = sample.iter().map(|&i| n[i]).collect();
                        v.sort_by(f64::total_cmp);
                        bx.push(d.ln());
                        by.push(quantile_sorted(&v, 0.5).ln());
                    }
                }
                let (s, _) = least_squares(&bx, &by);
                if s.is_finite() {
                    slopes.push(s);
                }
            }
            slopes.sort_by(f64::total_cmp);
            let (lo, hi) = (quantile_sorted(&slopes, 0.025), quantile_sorted(&slopes, 0.975));
            // n*/(d ln d) flatness over the fitted range.
            let ratios: Vec<f64> = groups
                .iter()
                .filter(|(d, _, c, _)| *d >= d_min && c.iter().filter(|x| **x).count() * 2 < c.len())
                .map(|(d, n, _, _)| quartiles(n).1 / (d * d.ln()))
                .collect();
            let flat = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / ratios.iter().cloned().fold(f64::INFINITY, f64::min);
            let legend = format!("{case}: slope {slope:.2} [{lo:.2}, {hi:.2}]");
            fits.push(case, slope, lo, hi, intercept, flat, fit_x.len() as u64, legend.clone());
            for &d in &dvals {
                med.line(case, d, (intercept + slope * d.ln()).exp(), &legend);
            }
        }
        let mut medians = med.frame()?;
        ctx.put_table("medians", &mut medians, &[])?;
        let mut fit = fits.frame()?;
        ctx.put_table("fit", &mut fit, &[])?;
        Ok(())
    }
}

fn least_squares(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.len() < 2 {
        return (f64::NAN, f64::NAN);
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let slope = sxy / sxx;
    (slope, my - slope * mx)
}

#[derive(Default)]
struct Medians {
    case: Vec<String>,
    d: Vec<f64>,
    n_median: Vec<f64>,
    n_q25: Vec<f64>,
    n_q75: Vec<f64>,
    censored_fraction: Vec<f64>,
    n_theory: Vec<f64>,
    n_fit: Vec<f64>,
    legend: Vec<String>,
}

impl Medians {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, case: &str, d: f64, m: f64, q25: f64, q75: f64, cf: f64, th: f64) {
        self.case.push(case.into());
        self.d.push(d);
        self.n_median.push(m);
        self.n_q25.push(q25);
        self.n_q75.push(q75);
        self.censored_fraction.push(cf);
        self.n_theory.push(th);
    }
    fn line(&mut self, _case: &str, _d: f64, fit: f64, legend: &str) {
        self.n_fit.push(fit);
        self.legend.push(legend.into());
    }
    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        // Reference curves through each case's first median.
        let mut d_log_d = Vec::new();
        let mut d_cubed = Vec::new();
        for (i, case) in self.case.iter().enumerate() {
            let first = self.case.iter().position(|c| c == case).unwrap_or(i);
            let (d0, n0) = (self.d[first], self.n_median[first]);
            let d = self.d[i];
            d_log_d.push(n0 * (d * d.ln()) / (d0 * d0.ln()));
            d_cubed.push(n0 * (d / d0).powi(3));
        }
        let ratio: Vec<f64> = self.d.iter().zip(&self.n_median).map(|(d, n)| n / (d * d.ln())).collect();
        let over_theory: Vec<f64> = self.n_median.iter().zip(&self.n_theory).map(|(n, th)| n / th).collect();
        FrameBuilder::new()
            .str("case", self.case)
            .f64("d", self.d)
            .f64("n_median", self.n_median)
            .f64("n_q25", self.n_q25)
            .f64("n_q75", self.n_q75)
            .f64("censored_fraction", self.censored_fraction.clone())
            .f64("mostly_censored", self.censored_fraction.iter().map(|c| if *c >= 0.5 { 1.0 } else { 0.0 }).collect())
            .f64("n_theory", self.n_theory)
            .f64("n_over_dlogd", ratio)
            .f64("n_over_theory", over_theory)
            .f64("n_fit", self.n_fit)
            .str("legend", self.legend)
            .f64("d_log_d", d_log_d)
            .f64("d_cubed", d_cubed)
            .build()
    }
}

#[derive(Default)]
struct Fits {
    case: Vec<String>,
    slope: Vec<f64>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    intercept: Vec<f64>,
    flat: Vec<f64>,
    n_d: Vec<u64>,
    legend: Vec<String>,
}

impl Fits {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, case: &str, slope: f64, lo: f64, hi: f64, intercept: f64, flat: f64, n_d: u64, legend: String) {
        self.case.push(case.into());
        self.slope.push(slope);
        self.lo.push(lo);
        self.hi.push(hi);
        self.intercept.push(intercept);
        self.flat.push(flat);
        self.n_d.push(n_d);
        self.legend.push(legend);
    }
    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        FrameBuilder::new()
            .str("case", self.case)
            .f64("slope", self.slope)
            .f64("slope_lo", self.lo)
            .f64("slope_hi", self.hi)
            .f64("intercept", self.intercept)
            .f64("dlogd_ratio", self.flat)
            .u64("fitted_d_values", self.n_d)
            .str("legend", self.legend)
            .build()
    }
}
