//! `cargo xtask check`: claims and baselines, failing when a result drifts.

use std::path::Path;

use e2h_engine::table::{column_f64, read_parquet, write_parquet};
use polars::prelude::*;

use crate::util::{TINY_FIGURE, TINY_FIGURE_FILE, TestRoot};

const BASELINE: &str = "baselines/fig9-tiny/ci/sim/by_n.parquet";
const COLUMN: &str = "abs_m_u_median";
const ROW: usize = 3;

/// Rewrites one value of a baseline table: `value -> value * (1 + relative)`.
/// Returns the old and the new value.
fn perturb(path: &Path, relative: f64) -> (f64, f64) {
    let mut df = read_parquet(path).unwrap();
    let mut values = column_f64(&df, COLUMN).unwrap();
    let old = values[ROW];
    values[ROW] = old * (1.0 + relative);
    assert_ne!(values[ROW], old, "the perturbation is lost in rounding");
    let new = values[ROW];
    df.with_column(Column::new(COLUMN.into(), values)).unwrap();
    write_parquet(&mut df, path, &[]).unwrap();
    (old, new)
}

#[test]
fn check_passes_on_its_baseline_and_fails_when_the_baseline_drifts() {
    let root = TestRoot::with_tiny_figure("check");
    let baseline = root.path().join(BASELINE);

    // No baseline yet: the check says how to make one.
    root.xtask(&["check"])
        .failure()
        .stdout_has("FAIL [fig9-tiny / ci] table sim/by_n matches its baseline: no baseline at baselines/fig9-tiny/ci/sim/by_n.parquet");
    root.xtask(&["check", "--bless"]).success().stdout_has("bless sim/by_n: new");
    assert!(baseline.is_file());

    let passing = root.xtask(&["check"]).success();
    passing
        .stdout_has("ok   [fig9-tiny / ci] the learned threshold is the one asked for: expected learned_threshold in [0.5, 0.5], measured 0.500000")
        .stdout_has("ok   [fig9-tiny / ci] table sim/by_n matches its baseline (rtol 0.000000000001, atol 0)")
        .stdout_has("2 passed, 0 failed");

    // Drift below the declared tolerance passes...
    perturb(&baseline, 1e-14);
    root.xtask(&["check"]).success().stdout_has("2 passed, 0 failed");

    // ...and above it fails, naming the figure, the table, the value expected and the one measured.
    root.xtask(&["check", "--bless"]).success();
    let (measured, expected) = perturb(&baseline, 1e-6);
    root.xtask(&["check"])
        .failure()
        .stdout_has("FAIL [fig9-tiny / ci] table sim/by_n matches its baseline (rtol 0.000000000001, atol 0):")
        .stdout_has(&format!("column `{COLUMN}` row {ROW}: expected {expected:e}, got {measured:e}"))
        .stdout_has("1 passed, 1 failed")
        .stderr_has("error: 1 of 2 checks failed");

    // --bless rewrites the baseline from the run and says what changed.
    root.xtask(&["check", "--bless"]).success().stdout_has(&format!("bless sim/by_n: changed: {COLUMN} (max |diff| "));
    assert_eq!(column_f64(&read_parquet(&baseline).unwrap(), COLUMN).unwrap()[ROW].to_bits(), measured.to_bits());
    root.xtask(&["check"]).success().stdout_has("2 passed, 0 failed");
    root.xtask(&["check", "--bless"]).success().stdout_has("bless sim/by_n: unchanged");
}

#[test]
fn check_fails_when_a_declared_claim_does_not_hold() {
    let root = TestRoot::with_tiny_figure("claim");
    root.xtask(&["check", "--bless"]).success();
    // Claims are not part of any stage's key: the run is reused, only the verdict changes.
    root.write(TINY_FIGURE_FILE, &TINY_FIGURE.replace("min: 0.5\n    max: 0.5", "min: 0.1\n    max: 0.4"));
    root.xtask(&["check"])
        .failure()
        .stdout_has("FAIL [fig9-tiny / ci] the learned threshold is the one asked for: expected learned_threshold in [0.1, 0.4], measured 0.500000")
        .stdout_has("1 passed, 1 failed")
        .stderr_has("error: 1 of 2 checks failed");
    assert_eq!(root.cache_listing("entries").len(), 1, "the stage ran again");
}
