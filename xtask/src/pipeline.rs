//! Running one pipeline file: plan, execute (or explain), publish, print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use e2h_engine::runner::RunReason;
use e2h_engine::{Cache, Plan, PipelineSpec, Registry, RunOptions, Runner, StageOutcome};

/// Where things live.
pub struct Context {
    pub root: PathBuf,
    pub cache_dir: PathBuf,
    pub registry: Registry,
}

impl Context {
    pub fn new(root: Option<PathBuf>, cache: Option<PathBuf>) -> anyhow::Result<Self> {
        let (root, _) = crate::root::find(root)?;
        let cache_dir = cache.unwrap_or_else(|| root.join("cache"));
        Ok(Context { root, cache_dir, registry: e2h_stages::registry() })
    }

    pub fn cache(&self) -> anyhow::Result<Cache> {
        Cache::open(&self.cache_dir).with_context(|| format!("cannot open the cache at {}", self.cache_dir.display()))
    }

    /// Loads and plans a pipeline; errors are located in the file.
    pub fn plan(&self, path: &Path, profile: Option<&str>) -> anyhow::Result<(PipelineSpec, Plan)> {
        let spec = PipelineSpec::load(path)?;
        e2h_engine::check::validate_checks(&spec)?;
        let plan = Plan::build(&spec, &self.registry, profile)?;
        Ok((spec, plan))
    }
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Profile to run (e.g. ci, paper; default: the file's default_profile).
    #[arg(long, short)]
    pub profile: Option<String>,
    /// Explain which stages would run and why, without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Rerun every stage even when cached.
    #[arg(long)]
    pub force: bool,
    /// Rerun this declared stage even when cached (repeatable).
    #[arg(long = "force-stage")]
    pub force_stage: Vec<String>,
    /// Print these tables after the run, as `stage/table` (repeatable).
    #[arg(long)]
    pub print: Vec<String>,
    /// Where stages run: in this process, or one Slurm job per stage instance.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// Passed to every `sbatch` (repeatable), e.g. `--slurm-arg=--account=X`;
    /// it overrides the stage's resources.
    #[arg(long = "slurm-arg", allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Executor {
    #[default]
    Local,
    Slurm,
}

pub fn run(ctx: &Context, path: &Path, args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (spec, plan) = ctx.plan(path, args.profile.as_deref())?;
    // The file's own default profile publishes to the declared paths; any other
    // profile gets a suffix (figures/fig2-ci.png) so it never overwrites them.
    let default = spec.file.default_profile.as_deref().unwrap_or(e2h_engine::plan::DEFAULT_PROFILE);
    let publish_suffix = if plan.profile == default { String::new() } else { format!("-{}", plan.profile) };
    if args.executor == Executor::Local {
        anyhow::ensure!(args.slurm_arg.is_empty(), "--slurm-arg needs --executor slurm");
    }
    // A dry run lists what would run first, then the job scripts.
    let slurm = match args.executor {
        Executor::Slurm if !args.dry_run => Some(crate::slurm::execute(ctx, path, &plan, args)?),
        _ => None,
    };
    let cache = ctx.cache()?;
    if slurm.is_some() {
        // The jobs are done: every entry must be valid now, and nothing may
        // be computed here behind the cluster's back.
        let check = Runner::new(&ctx.registry, &cache, RunOptions { dry_run: true, ..RunOptions::default() }).run(&plan)?;
        let missing: Vec<&str> =
            check.stages.iter().filter(|s| matches!(s.outcome, StageOutcome::Run(_))).map(|s| s.name.as_str()).collect();
        anyhow::ensure!(missing.is_empty(), "after the Slurm jobs, these stages still have no valid cache entry: {}", missing.join(", "));
    }
    let runner = Runner::new(
        &ctx.registry,
        &cache,
        RunOptions {
            dry_run: args.dry_run,
            // Forced stages ran on the cluster already.
            force_all: args.force && slurm.is_none(),
            force: if slurm.is_none() { args.force_stage.clone() } else { Vec::new() },
            publish_root: Some(ctx.root.clone()),
            publish_suffix,
            show_progress: true,
            recompute_adopted: false,
        },
    );
    let report = runner.run(&plan)?;
    println!("pipeline {} (profile {}): {} stages", plan.pipeline, plan.profile, plan.stages.len());
    for s in &report.stages {
        let key = &s.key[..12];
        if let Some((job, seconds)) = slurm.as_ref().and_then(|o| o.computed.get(&s.name)) {
            println!("  ran      {:<40} {key}  {seconds:>8.1} s  (Slurm job {job})", s.name);
            continue;
        }
        match (&s.outcome, args.dry_run) {
            (StageOutcome::Cached, _) => match &s.adopted {
                None => println!("  cached   {:<40} {key}", s.name),
                Some(units) => println!("  cached   {:<40} {key}  ({})", s.name, adopted_note(units)),
            },
            (StageOutcome::Run(reason), true) => println!("  run      {:<40} {key}  ({reason})", s.name),
            (StageOutcome::Run(reason), false) => {
                let why = if matches!(reason, RunReason::Forced) { "forced".to_string() } else { reason.to_string() };
                println!("  ran      {:<40} {key}  {:>8.1} s  ({why})", s.name, s.seconds)
            }
        }
    }
    for p in &report.published {
        println!("  wrote    {}", p.strip_prefix(&ctx.root).unwrap_or(p).display());
    }
    if args.dry_run && args.executor == Executor::Slurm {
        crate::slurm::execute(ctx, path, &plan, args)?;
        return Ok(());
    }
    for spec in &args.print {
        print_table(ctx, &plan, &cache, spec)?;
    }
    println!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// How a reused adopted entry is flagged: it was not made by the code that runs now.
pub fn adopted_note(units: &[String]) -> String {
    if units.is_empty() {
        "adopted".to_string()
    } else {
        format!("adopted: made by other code ({})", units.join(", "))
    }
}

fn print_table(_ctx: &Context, plan: &Plan, cache: &Cache, spec: &str) -> anyhow::Result<()> {
    let (stage, table) = spec.split_once('/').with_context(|| format!("--print expects stage/table, got `{spec}`"))?;
    let mut found = false;
    for s in plan.instances_of(stage) {
        let e2h_engine::EntryStatus::Valid(meta) = cache.status(&s.key) else {
            anyhow::bail!("stage `{}` has not run (use it without --dry-run first)", s.name);
        };
        let t = meta.tables.get(table).with_context(|| format!("stage `{}` has no table `{table}`", s.name))?;
        let df = e2h_engine::table::read_parquet(&cache.entry_dir(&s.key).join(&t.file))?;
        println!("\n{} / {table}:", s.name);
        print!("{}", format_table(&df)?);
        for (c, def) in &t.columns {
            println!("  {c}: {def}");
        }
        found = true;
    }
    anyhow::ensure!(found, "no stage named `{stage}`");
    Ok(())
}

/// Every row and column, aligned (polars' own display elides both).
fn format_table(df: &polars::prelude::DataFrame) -> anyhow::Result<String> {
    let names: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
    let mut cells: Vec<Vec<String>> = Vec::new();
    for name in &names {
        let col = df.column(name)?.as_materialized_series();
        let rendered: Vec<String> = match col.cast(&polars::prelude::DataType::Float64) {
            Ok(f) if col.dtype().is_primitive_numeric() => f
                .f64()?
                .iter()
                .map(|v| v.map_or("null".into(), |x| if x.fract() == 0.0 && x.abs() < 1e15 { format!("{x:.0}") } else { format!("{x:.6}") }))
                .collect(),
            _ => e2h_engine::table::column_string(df, name)?,
        };
        cells.push(rendered);
    }
    let widths: Vec<usize> = names
        .iter()
        .zip(&cells)
        .map(|(n, c)| c.iter().map(String::len).chain([n.len()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let line = |row: Vec<&str>| -> String {
        row.iter().zip(&widths).map(|(v, w)| format!("{v:>w$}")).collect::<Vec<_>>().join("  ") + "\n"
    };
    out += &line(names.iter().map(String::as_str).collect());
    for r in 0..df.height() {
        out += &line(cells.iter().map(|c| c[r].as_str()).collect());
    }
    Ok(out)
}
