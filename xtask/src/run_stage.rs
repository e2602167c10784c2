//! `xtask run-stage` (hidden): what one batch job runs. Computes exactly one
//! stage instance through the normal runner (key lock, atomic commit) and
//! writes its exit-status marker.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use e2h_engine::{RunOptions, Runner, StageOutcome};

use crate::pipeline::Context;
use crate::slurm::marker::{current_job_id, Marker};

#[derive(clap::Args, Debug)]
pub struct RunStageArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    #[arg(long)]
    pub profile: String,
    /// The instance name, e.g. `u[d=16]`.
    #[arg(long)]
    pub instance: String,
    /// The key the driver planned: the job refuses to compute anything else
    /// (the pipeline file or the stage code changed since submission).
    #[arg(long)]
    pub key: String,
    /// Where to write the exit-status marker.
    #[arg(long)]
    pub marker: PathBuf,
    /// Recompute even when the entry is valid.
    #[arg(long)]
    pub force: bool,
}

pub fn run(ctx: &Context, args: &RunStageArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let job = current_job_id();
    let result = compute(ctx, args);
    let marker = match &result {
        Ok(outcome) => Marker::Ok {
            instance: args.instance.clone(),
            key: args.key.clone(),
            computed: matches!(outcome, StageOutcome::Run(_)),
            seconds: started.elapsed().as_secs_f64(),
            job,
        },
        Err(e) => Marker::Failed { instance: args.instance.clone(), error: format!("{e:#}"), exit: Some(1), job },
    };
    marker.write(&args.marker).with_context(|| format!("cannot write the status marker {}", args.marker.display()))?;
    let outcome = result?;
    match outcome {
        StageOutcome::Run(reason) => outln!("{}: computed in {:.1} s ({reason})", args.instance, started.elapsed().as_secs_f64()),
        StageOutcome::Cached => outln!("{}: already in the cache", args.instance),
    }
    Ok(())
}

fn compute(ctx: &Context, args: &RunStageArgs) -> anyhow::Result<StageOutcome> {
    let (_spec, plan) = ctx.plan(&args.pipeline, Some(&args.profile))?;
    let index = plan
        .stages
        .iter()
        .position(|s| s.name == args.instance)
        .with_context(|| format!("pipeline {} (profile {}) has no stage instance `{}`", plan.pipeline, plan.profile, args.instance))?;
    let planned = &plan.stages[index].key;
    anyhow::ensure!(
        *planned == args.key,
        "stage `{}` now has key {planned}, not the submitted {}: the pipeline file or the stage code changed since submission",
        args.instance,
        args.key
    );
    let cache = ctx.cache()?;
    let options = RunOptions { force_all: args.force, show_progress: false, ..RunOptions::default() };
    let report = Runner::new(&ctx.registry, &cache, options).run_instance(&plan, index)?;
    Ok(report.outcome)
}
