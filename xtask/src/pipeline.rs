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
    /// Print these tables after the run, as `stage/table` or
    /// `'instance[param=value]/table'` (repeatable).
    #[arg(long)]
    pub print: Vec<String>,
    /// Where stages run: in this process, or one Slurm job per stage instance.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// Passed to every `sbatch` (repeatable), e.g. `--slurm-arg=--account=X`;
    /// it overrides the stage's resources.
    #[arg(long = "slurm-arg", allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
    /// Allow a pipeline that is not itself committed to overwrite committed
    /// (git-tracked) figures.
    #[arg(long)]
    pub overwrite_tracked: bool,
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
    check_publish_targets(ctx, path, &spec, &plan, &publish_suffix, args.overwrite_tracked)?;
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
    outln!("pipeline {} (profile {}): {} stages", plan.pipeline, plan.profile, plan.stages.len());
    for s in &report.stages {
        let key = &s.key[..12];
        if let Some((job, seconds)) = slurm.as_ref().and_then(|o| o.computed.get(&s.name)) {
            outln!("  ran      {:<40} {key}  {seconds:>8.1} s  (Slurm job {job})", s.name);
            continue;
        }
        match (&s.outcome, args.dry_run) {
            (StageOutcome::Cached, _) => match &s.adopted {
                None => outln!("  cached   {:<40} {key}", s.name),
                Some(units) => outln!("  cached   {:<40} {key}  ({})", s.name, adopted_note(units)),
            },
            (StageOutcome::Run(reason), true) => outln!("  run      {:<40} {key}  ({reason})", s.name),
            (StageOutcome::Run(reason), false) => {
                let why = if matches!(reason, RunReason::Forced) { "forced".to_string() } else { reason.to_string() };
                outln!("  ran      {:<40} {key}  {:>8.1} s  ({why})", s.name, s.seconds)
            }
        }
    }
    for p in &report.published {
        outln!("  wrote    {}", p.strip_prefix(&ctx.root).unwrap_or(p).display());
    }
    if args.dry_run && args.executor == Executor::Slurm {
        crate::slurm::execute(ctx, path, &plan, args)?;
        return Ok(());
    }
    for spec in &args.print {
        print_table(ctx, &plan, &cache, spec)?;
    }
    outln!("done in {:.2} s", started.elapsed().as_secs_f64());
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

/// The publish targets (stems with the profile's suffix) of `plan`, by instance.
fn targets(plan: &Plan, suffix: &str) -> Vec<(String, String)> {
    plan.stages.iter().filter_map(|s| s.publish.as_ref().map(|p| (format!("{p}{suffix}"), s.name.clone()))).collect()
}

/// Refuses, before anything runs, a plan that would publish where another
/// pipeline under pipelines/ (or this one under another profile) publishes,
/// and one that would overwrite a committed figure from a pipeline that is not
/// itself committed (unless `overwrite_tracked`).
fn check_publish_targets(
    ctx: &Context,
    path: &Path,
    spec: &PipelineSpec,
    plan: &Plan,
    suffix: &str,
    overwrite_tracked: bool,
) -> anyhow::Result<()> {
    let ours = targets(plan, suffix);
    if ours.is_empty() {
        return Ok(());
    }
    let decl_of = |instance: &str| plan.stages.iter().find(|s| s.name == instance).map(|s| s.decl.clone()).unwrap_or_default();
    let this = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut files = Vec::new();
    let _ = crate::cache_cmd::collect_yaml(&ctx.root.join("pipelines"), &mut files);
    files.sort();
    if !files.iter().any(|f| f.canonicalize().is_ok_and(|f| f == this)) {
        files.push(path.to_path_buf());
    }
    for file in files {
        let same_file = file.canonicalize().is_ok_and(|f| f == this);
        // Files that do not load are reported when they are run, not here.
        let Ok(other) = PipelineSpec::load(&file) else { continue };
        let default = other.file.default_profile.clone().unwrap_or_else(|| e2h_engine::plan::DEFAULT_PROFILE.into());
        let profiles: Vec<String> =
            std::iter::once(e2h_engine::plan::DEFAULT_PROFILE.to_string()).chain(other.file.profiles.keys().cloned()).collect();
        for profile in profiles {
            if same_file && profile == plan.profile {
                continue;
            }
            let Ok(other_plan) = Plan::build(&other, &ctx.registry, Some(&profile)) else { continue };
            let other_suffix = if profile == default { String::new() } else { format!("-{profile}") };
            for (target, other_stage) in targets(&other_plan, &other_suffix) {
                if let Some((_, stage)) = ours.iter().find(|(t, _)| *t == target) {
                    let shown = file.strip_prefix(&ctx.root).unwrap_or(&file).display().to_string();
                    let decl = decl_of(stage);
                    return Err(spec
                        .error_at(
                            &["stages", &decl, "publish"],
                            format!(
                                "stage `{stage}` would publish `{target}`, which stage `{other_stage}` of pipeline `{}` \
                                 ({shown}, profile {profile}) publishes too; give it another `publish:`",
                                other_plan.pipeline
                            ),
                        )
                        .into());
                }
            }
        }
    }
    if overwrite_tracked || is_tracked(&ctx.root, path) {
        return Ok(());
    }
    for (target, stage) in &ours {
        for ext in ["png", "svg"] {
            let file = format!("{target}.{ext}");
            if is_tracked(&ctx.root, &ctx.root.join(&file)) {
                let decl = decl_of(stage);
                return Err(spec
                    .error_at(
                        &["stages", &decl, "publish"],
                        format!(
                            "stage `{stage}` would overwrite `{file}`, a committed figure, from a pipeline that is not \
                             committed; choose another `publish:` or pass --overwrite-tracked"
                        ),
                    )
                    .into());
            }
        }
    }
    Ok(())
}

/// Whether git tracks `file` in the repository at `root` (false without git).
fn is_tracked(root: &Path, file: &Path) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "--error-unmatch", "--"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn print_table(_ctx: &Context, plan: &Plan, cache: &Cache, spec: &str) -> anyhow::Result<()> {
    // The instance name may itself hold a `/` (a swept string value): the table is after the last one.
    let (stage, table) = spec.rsplit_once('/').with_context(|| format!("--print expects stage/table, got `{spec}`"))?;
    let chosen: Vec<&e2h_engine::PlannedStage> =
        plan.stages.iter().filter(|s| s.decl == stage || s.name == stage).collect();
    if chosen.is_empty() {
        let mut names: Vec<&str> = plan.stages.iter().map(|s| s.decl.as_str()).collect();
        names.dedup();
        let instances: Vec<&str> = plan.stages.iter().filter(|s| s.name != s.decl).map(|s| s.name.as_str()).collect();
        let mut message = format!("--print {spec}: no stage named `{stage}`; stages: {}", names.join(", "));
        if !instances.is_empty() {
            message += &format!("; instances: {}", instances.join(", "));
        }
        anyhow::bail!(message);
    }
    let mut found = false;
    for s in chosen {
        let e2h_engine::EntryStatus::Valid(meta) = cache.status(&s.key) else {
            anyhow::bail!("stage `{}` has not run (use it without --dry-run first)", s.name);
        };
        let t = meta.tables.get(table).with_context(|| {
            let names: Vec<&str> = meta.tables.keys().map(String::as_str).collect();
            format!("stage `{}` has no table `{table}`; its tables: {}", s.name, names.join(", "))
        })?;
        let df = e2h_engine::table::read_parquet(&cache.entry_dir(&s.key).join(&t.file))?;
        outln!("\n{} / {table}:", s.name);
        out!("{}", format_table(&df)?);
        for (c, def) in &t.columns {
            outln!("  {c}: {def}");
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
