//! `cargo xtask check`: every figure's `ci` profile, its declared claims, and
//! its tables against the baselines committed under `baselines/`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use e2h_engine::regress::{compare, max_abs_diff};
use e2h_engine::runner::RunReason;
use e2h_engine::{EntryStatus, Plan, RunOptions, Runner, StageOutcome};

use crate::pipeline::Context;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Rewrite the baselines from this run and summarise what changed.
    #[arg(long)]
    pub bless: bool,
    /// Only this figure (repeatable).
    #[arg(long)]
    pub figure: Vec<u32>,
    /// Profile to check.
    #[arg(long, default_value = "ci")]
    pub profile: String,
    /// Baseline directory (default: <root>/baselines).
    #[arg(long)]
    pub baselines: Option<PathBuf>,
}

pub fn run(ctx: &Context, args: &CheckArgs) -> anyhow::Result<()> {
    let pipelines = if args.figure.is_empty() {
        crate::figure::all_figure_pipelines(ctx)?
    } else {
        args.figure.iter().map(|&n| crate::figure::pipeline_of(ctx, n)).collect::<anyhow::Result<_>>()?
    };
    let baselines = args.baselines.clone().unwrap_or_else(|| ctx.root.join("baselines"));
    let cache = ctx.cache()?;
    let mut failures = 0usize;
    let mut total = 0usize;
    for path in pipelines {
        let (spec, plan) = ctx.plan(&path, Some(&args.profile))?;
        outln!("== {} (profile {})", plan.pipeline, plan.profile);
        // Only results of the code that runs now are checked: entries of other
        // code have other keys, and adopted ones are recomputed.
        let options = RunOptions { show_progress: true, recompute_adopted: true, ..RunOptions::default() };
        let report = Runner::new(&ctx.registry, &cache, options)
            .run(&plan)
            .with_context(|| format!("running {}", path.display()))?;
        // Why a stage ran, except on a cold cache, where everything runs.
        for stage in &report.stages {
            if let StageOutcome::Run(reason) = &stage.outcome
                && !matches!(reason, RunReason::Missing)
            {
                outln!("ran  {} ({reason})", stage.name);
            }
        }
        for check in spec.file.checks.iter().filter(|c| c.applies_to(&plan.profile)) {
            let result = check.evaluate(&plan, &cache);
            total += 1;
            if !result.passed {
                failures += 1;
            }
            outln!("{result}");
        }
        for reg in &spec.file.regression {
            for stage in plan.instances_of(&reg.stage) {
                total += 1;
                let file = baseline_path(&baselines, &plan, &stage.name, &reg.table);
                let actual = read_table(&cache, &stage.key, &stage.name, &reg.table)?;
                if args.bless {
                    bless(&file, actual, &stage.name, &reg.table)?;
                    continue;
                }
                let label = format!("[{} / {}] table {}/{} matches its baseline", plan.pipeline, plan.profile, stage.name, reg.table);
                if !file.exists() {
                    failures += 1;
                    outln!("FAIL {label}: no baseline at {} (run `cargo xtask check --bless`)", rel(ctx, &file));
                    continue;
                }
                let expected = e2h_engine::table::read_parquet(&file).with_context(|| format!("reading {}", file.display()))?;
                let mismatches = compare(&actual, &expected, reg.rtol, reg.atol, 3)?;
                if mismatches.is_empty() {
                    outln!("ok   {label} (rtol {}, atol {})", reg.rtol, reg.atol);
                } else {
                    failures += 1;
                    outln!("FAIL {label} (rtol {}, atol {}):", reg.rtol, reg.atol);
                    for m in mismatches.iter().take(12) {
                        outln!("       {m}");
                    }
                }
            }
        }
    }
    if args.bless {
        outln!("baselines written under {}", rel(ctx, &baselines));
        return Ok(());
    }
    outln!("{} passed, {failures} failed", total - failures);
    anyhow::ensure!(failures == 0, "{failures} of {total} checks failed");
    Ok(())
}

fn rel(ctx: &Context, p: &Path) -> String {
    p.strip_prefix(&ctx.root).unwrap_or(p).display().to_string()
}

/// `baselines/<pipeline>/<profile>/<stage instance>/<table>.parquet`.
fn baseline_path(root: &Path, plan: &Plan, stage: &str, table: &str) -> PathBuf {
    // Plain file names: a table named `..` must not lead out of the baselines.
    let clean = e2h_engine::limits::file_name_component;
    root.join(clean(&plan.pipeline)).join(clean(&plan.profile)).join(clean(stage)).join(format!("{}.parquet", clean(table)))
}

fn read_table(cache: &e2h_engine::Cache, key: &str, stage: &str, table: &str) -> anyhow::Result<polars::prelude::DataFrame> {
    let EntryStatus::Valid(meta) = cache.status(key) else {
        anyhow::bail!("stage `{stage}` has no valid cache entry after running");
    };
    let t = meta.tables.get(table).with_context(|| format!("stage `{stage}` has no table `{table}`"))?;
    Ok(e2h_engine::table::read_parquet(&cache.entry_dir(key).join(&t.file))?)
}

fn bless(file: &Path, mut actual: polars::prelude::DataFrame, stage: &str, table: &str) -> anyhow::Result<()> {
    let summary = if file.exists() {
        let old = e2h_engine::table::read_parquet(file)?;
        let diffs = max_abs_diff(&actual, &old)?;
        if old.height() != actual.height() || old.get_column_names() != actual.get_column_names() {
            format!("changed shape: {} -> {} rows", old.height(), actual.height())
        } else if diffs.is_empty() {
            "unchanged".to_string()
        } else {
            let parts: Vec<String> = diffs.iter().map(|(c, d)| format!("{c} (max |diff| {d:.3e})")).collect();
            format!("changed: {}", parts.join(", "))
        }
    } else {
        "new".to_string()
    };
    std::fs::create_dir_all(file.parent().expect("baseline has a parent"))?;
    e2h_engine::table::write_parquet(&mut actual, file, &[])?;
    outln!("bless {stage}/{table}: {summary}");
    Ok(())
}
