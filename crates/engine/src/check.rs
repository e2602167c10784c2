//! Claims declared in a pipeline's `checks:` section, evaluated on its tables.
//!
//! A check selects rows of one table of one stage, reduces one column to a
//! number and compares it with bounds. Anything more scientific (fits,
//! crossings, standard errors) is computed by a stage into a table first.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::cache::{Cache, EntryStatus};
use crate::error::EngineError;
use crate::plan::Plan;
use crate::table;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// What the check asserts, in words.
    pub name: String,
    /// Declared stage name (all its sweep instances are stacked).
    pub stage: String,
    pub table: String,
    /// Keep rows whose columns equal these values.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, serde_json::Value>,
    pub column: String,
    #[serde(default)]
    pub reduce: Reduce,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Profiles the check applies to (all when empty).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Why the bounds are what they are.
    #[serde(default)]
    pub why: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    /// Exactly one row must remain.
    #[default]
    Only,
    Min,
    Max,
    Mean,
    Median,
    Count,
    /// Fraction of the rows whose value is non-zero (for boolean columns).
    FractionTrue,
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub pipeline: String,
    pub profile: String,
    pub name: String,
    pub expected: String,
    pub measured: Option<f64>,
    pub passed: bool,
    pub detail: String,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.passed { "ok  " } else { "FAIL" };
        let measured = self.measured.map_or("n/a".to_string(), |m| format!("{m:.6}"));
        write!(
            f,
            "{status} [{} / {}] {}: expected {}, measured {measured}",
            self.pipeline, self.profile, self.name, self.expected
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl CheckSpec {
    pub fn applies_to(&self, profile: &str) -> bool {
        self.profiles.is_empty() || self.profiles.iter().any(|p| p == profile)
    }

    fn expected(&self) -> String {
        let what = match self.reduce {
            Reduce::Only => self.column.clone(),
            other => format!("{other:?}({})", self.column).to_lowercase(),
        };
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("{what} in [{a}, {b}]"),
            (Some(a), None) => format!("{what} >= {a}"),
            (None, Some(b)) => format!("{what} <= {b}"),
            (None, None) => format!("{what} finite"),
        }
    }

    /// Evaluates the check on the cached outputs of `plan` (which must have run).
    pub fn evaluate(&self, plan: &Plan, cache: &Cache) -> CheckResult {
        let mut result = CheckResult {
            pipeline: plan.pipeline.clone(),
            profile: plan.profile.clone(),
            name: self.name.clone(),
            expected: self.expected(),
            measured: None,
            passed: false,
            detail: String::new(),
        };
        match self.measure(plan, cache) {
            Ok(value) => {
                result.measured = Some(value);
                result.passed = value.is_finite()
                    && self.min.is_none_or(|m| value >= m)
                    && self.max.is_none_or(|m| value <= m);
            }
            Err(e) => result.detail = e,
        }
        result
    }

    fn measure(&self, plan: &Plan, cache: &Cache) -> Result<f64, String> {
        let mut frames = Vec::new();
        for stage in plan.instances_of(&self.stage) {
            let EntryStatus::Valid(meta) = cache.status(&stage.key) else {
                return Err(format!("stage `{}` has no valid cache entry", stage.name));
            };
            let t = meta.tables.get(&self.table).ok_or_else(|| format!("stage `{}` has no table `{}`", stage.name, self.table))?;
            let path = cache.entry_dir(&stage.key).join(&t.file);
            frames.push(table::read_parquet(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if frames.is_empty() {
            return Err(format!("no stage named `{}`", self.stage));
        }
        let mut df = table::concat(frames).map_err(|e| e.to_string())?;
        for (col, value) in &self.filter {
            df = table::filter_eq(&df, col, value).map_err(|e| format!("filter on `{col}`: {e}"))?;
        }
        let values = table::column_f64(&df, &self.column).map_err(|e| format!("column `{}`: {e}", self.column))?;
        reduce(self.reduce, &values)
    }
}

fn reduce(how: Reduce, values: &[f64]) -> Result<f64, String> {
    if values.is_empty() && how != Reduce::Count {
        return Err("no rows match".into());
    }
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(match how {
        Reduce::Only if values.len() == 1 => values[0],
        Reduce::Only => return Err(format!("{} rows match, expected exactly one", values.len())),
        Reduce::Min => sorted[0],
        Reduce::Max => sorted[sorted.len() - 1],
        Reduce::Mean => values.iter().sum::<f64>() / values.len() as f64,
        Reduce::Median => {
            let n = sorted.len();
            if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) }
        }
        Reduce::Count => values.len() as f64,
        Reduce::FractionTrue => values.iter().filter(|v| **v != 0.0).count() as f64 / values.len() as f64,
    })
}

/// Checks of a pipeline whose `stage` names no declared stage, as located errors.
pub fn validate_checks(spec: &crate::spec::PipelineSpec) -> Result<(), EngineError> {
    for (i, c) in spec.file.checks.iter().enumerate() {
        if !spec.file.stages.contains_key(&c.stage) {
            let idx = i.to_string();
            return Err(spec.error_at(&["checks", &idx, "stage"], format!("check `{}` names unknown stage `{}`", c.name, c.stage)));
        }
        for p in &c.profiles {
            if p != crate::plan::DEFAULT_PROFILE && !spec.file.profiles.contains_key(p) {
                let idx = i.to_string();
                return Err(spec.error_at(&["checks", &idx, "profiles"], format!("check `{}` names unknown profile `{p}`", c.name)));
            }
        }
        if c.min.zip(c.max).is_some_and(|(a, b)| a > b) {
            let idx = i.to_string();
            return Err(spec.error_at(&["checks", &idx, "min"], format!("check `{}`: min > max", c.name)));
        }
    }
    for (i, r) in spec.file.regression.iter().enumerate() {
        let idx = i.to_string();
        if !spec.file.stages.contains_key(&r.stage) {
            return Err(spec.error_at(&["regression", &idx, "stage"], format!("regression table names unknown stage `{}`", r.stage)));
        }
        if !(r.rtol >= 0.0 && r.atol >= 0.0) {
            return Err(spec.error_at(&["regression", &idx, "rtol"], "tolerances must be >= 0"));
        }
    }
    Ok(())
}
