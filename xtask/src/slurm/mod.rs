//! `--executor slurm`: every stage instance whose entry is missing becomes one
//! Slurm job (the instances of a sweep one job array) that runs `xtask
//! run-stage` on the cluster, in DAG order through `afterok` dependencies.
//! The cache on the shared file system is the contract: jobs read their
//! upstream entries from it and commit their own into it under the per-key
//! locks, so duplicate jobs, restarted drivers and local runs beside them
//! never compute a key twice. The driver learns outcomes from the status
//! markers the jobs write and from the cache; Slurm's view is only a hint.

pub mod marker;
mod scheduler;
pub mod script;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use e2h_engine::{Plan, RunOptions, Runner, StageOutcome};

use crate::pipeline::{Context, RunArgs};
use marker::Marker;
use script::{JobSpec, Paths};

/// How long a job may be gone from Slurm's queue without a marker before
/// the driver decides it ended without one (markers written on another node
/// can take a moment to show on a network file system).
const MARKER_GRACE: Duration = Duration::from_secs(10);

/// The state of one stage instance, as the driver sees it.
#[derive(Debug, Clone, PartialEq)]
enum TaskState {
    Queued,
    Running,
    Done { computed: bool, seconds: f64 },
    Failed(String),
    Cancelled(String),
}

impl TaskState {
    fn is_final(&self) -> bool {
        matches!(self, TaskState::Done { .. } | TaskState::Failed(_) | TaskState::Cancelled(_))
    }
}

struct Task {
    /// Index into `Plan::stages`.
    stage: usize,
    job: usize,
    index: usize,
    state: TaskState,
    /// When the driver first saw the job gone from Slurm without a marker.
    gone_since: Option<Instant>,
}

/// What the Slurm run did, for the driver's report.
pub struct SlurmOutcome {
    /// Instance name -> (job id, seconds) of the instances a job computed.
    pub computed: BTreeMap<String, (String, f64)>,
}

/// Submits the missing instances of `plan`, waits for them, and returns once
/// every one has a valid entry (or fails naming the stages, jobs and logs).
/// With `--dry-run`, prints the job scripts instead.
pub fn execute(ctx: &Context, pipeline_file: &Path, plan: &Plan, args: &RunArgs) -> anyhow::Result<SlurmOutcome> {
    let cache = ctx.cache()?;
    let options = RunOptions { dry_run: true, force_all: args.force, force: args.force_stage.clone(), ..RunOptions::default() };
    let todo = Runner::new(&ctx.registry, &cache, options).run(plan)?;
    let forced: BTreeSet<&str> = todo
        .stages
        .iter()
        .filter(|s| matches!(&s.outcome, StageOutcome::Run(e2h_engine::runner::RunReason::Forced)))
        .map(|s| s.name.as_str())
        .collect();
    let missing: BTreeSet<&str> =
        todo.stages.iter().filter(|s| matches!(s.outcome, StageOutcome::Run(_))).map(|s| s.name.as_str()).collect();
    let jobs = group_jobs(plan, &missing, &forced);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()));
    let paths = Paths {
        binary: std::env::current_exe().context("cannot locate the xtask binary for the jobs")?,
        root: absolute(&ctx.root)?,
        cache: absolute(cache.root())?,
        pipeline_file: absolute(pipeline_file)?,
        run_dir: absolute(&cache.root().join("slurm").join(format!(
            "{}-{}-{stamp}-{}",
            clean(&plan.pipeline),
            clean(&plan.profile),
            std::process::id()
        )))?,
    };
    let dependencies = job_dependencies(plan, &jobs);
    let tasks: usize = jobs.iter().map(|j| j.tasks.len()).sum();

    if args.dry_run {
        for (j, job) in jobs.iter().enumerate() {
            let after: Vec<&str> = dependencies[j].iter().map(|&u| jobs[u].stage.as_str()).collect();
            outln!("\n# job {} of {}: {}", j + 1, jobs.len(), job.script_path(&paths).display());
            let mut line = "# sbatch --parsable".to_string();
            if !after.is_empty() {
                line += &format!(" --dependency=afterok:<jobs of {}>", after.join(", "));
            }
            for extra in &args.slurm_arg {
                line += &format!(" {}", script::quote(extra));
            }
            outln!("{line} {}", job.script_path(&paths).display());
            out!("{}", job.render(&paths));
        }
        outln!("\n{} job{} ({tasks} stage instances) would be submitted", jobs.len(), plural(jobs.len()));
        return Ok(SlurmOutcome { computed: BTreeMap::new() });
    }
    if jobs.is_empty() {
        outln!("slurm: every stage is cached, nothing to submit");
        return Ok(SlurmOutcome { computed: BTreeMap::new() });
    }

    std::fs::create_dir_all(&paths.run_dir).with_context(|| format!("cannot create {}", paths.run_dir.display()))?;
    for job in &jobs {
        let path = job.script_path(&paths);
        std::fs::write(&path, job.render(&paths)).with_context(|| format!("cannot write {}", path.display()))?;
    }

    // Ctrl-C (or SIGTERM) cancels the jobs this driver submitted, and only
    // those; a second one exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupted))?;
        signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
    }

    let mut ids: Vec<String> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let after: Vec<String> = dependencies[j].iter().map(|&u| ids[u].clone()).collect();
        let submitted = scheduler::submit(&job.script_path(&paths), &after, &args.slurm_arg);
        let id = match submitted {
            Ok(id) => id,
            Err(e) => {
                scheduler::cancel(&ids);
                return Err(e.context(format!("submitting stage `{}`; cancelled the {} job(s) submitted before", job.stage, ids.len())));
            }
        };
        let what = if job.is_array() { format!("array job {id} ({} tasks)", job.tasks.len()) } else { format!("job {id}") };
        let after_names: Vec<String> = dependencies[j].iter().map(|&u| format!("{} ({})", jobs[u].stage, ids[u])).collect();
        let after_text = if after_names.is_empty() { String::new() } else { format!(", after {}", after_names.join(", ")) };
        outln!("  submitted {:<28} as {what}{after_text}", job.stage);
        ids.push(id);
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
    }
    outln!("slurm: {} job{} ({tasks} stage instances); logs and status markers in {}", ids.len(), plural(ids.len()), paths.run_dir.display());

    let mut tasks_state: Vec<Task> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| {
            job.tasks.iter().enumerate().map(move |(index, (name, _, _))| Task {
                stage: plan.stages.iter().position(|s| &s.name == name).expect("planned"),
                job: j,
                index,
                state: TaskState::Queued,
                gone_since: None,
            })
        })
        .collect();
    let downstream = downstream_jobs(&dependencies);
    let poll = poll_interval();
    let mut last_progress = String::new();
    loop {
        if interrupted.load(Ordering::SeqCst) || ids.len() < jobs.len() {
            let live: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| tasks_state.iter().any(|t| t.job == *j && !t.state.is_final()))
                .map(|(_, id)| id.clone())
                .collect();
            scheduler::cancel(&live);
            anyhow::bail!("interrupted: cancelled this run's Slurm jobs {}", if live.is_empty() { "(none left)".into() } else { live.join(" ") });
        }
        let views = scheduler::query(&ids)?;
        let mut newly_failed: Vec<usize> = Vec::new();
        for t in tasks_state.iter_mut().filter(|t| !t.state.is_final()) {
            let job = &jobs[t.job];
            let task_id = job.task_id(&ids[t.job], t.index);
            if let Some(m) = Marker::read(&job.marker_path(&paths, t.index)) {
                t.state = match m {
                    Marker::Ok { computed, seconds, .. } => TaskState::Done { computed, seconds },
                    Marker::Failed { error, exit, .. } => {
                        newly_failed.push(t.job);
                        let why = if error.is_empty() { format!("exit status {}", exit.unwrap_or(-1)) } else { error };
                        TaskState::Failed(why)
                    }
                };
                continue;
            }
            let Some(views) = &views else { continue };
            match views.get(&task_id).or_else(|| views.get(&ids[t.job])) {
                Some(v) if v.is_pending() => t.state = TaskState::Queued,
                Some(v) if v.is_running() => t.state = TaskState::Running,
                // Ended, or forgotten by Slurm, and no marker (yet).
                ended => {
                    let since = *t.gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < MARKER_GRACE {
                        continue;
                    }
                    let name = &plan.stages[t.stage];
                    if matches!(cache.status(&name.key), e2h_engine::EntryStatus::Valid(_)) {
                        t.state = TaskState::Done { computed: false, seconds: 0.0 };
                    } else if ended.is_some_and(|v| v.reason == "DependencyNeverSatisfied") {
                        t.state = TaskState::Cancelled("an upstream job failed".into());
                    } else {
                        let how = ended.map_or("is no longer known to Slurm".to_string(), |v| format!("ended {} ({})", v.state, v.reason));
                        t.state = TaskState::Failed(format!("the job {how} without writing its status marker"));
                        newly_failed.push(t.job);
                    }
                }
            }
        }
        // Dependants of a failed job can never run: cancel them now rather
        // than leave them pending (Slurm does too, with --kill-on-invalid-dep).
        for failed_job in newly_failed {
            let doomed: Vec<usize> = downstream[failed_job].iter().copied().collect();
            let upstream = &jobs[failed_job].stage;
            let mut cancel = Vec::new();
            for t in tasks_state.iter_mut().filter(|t| doomed.contains(&t.job) && !t.state.is_final()) {
                t.state = TaskState::Cancelled(format!("upstream `{upstream}` failed"));
                cancel.push(ids[t.job].clone());
            }
            cancel.sort();
            cancel.dedup();
            scheduler::cancel(&cancel);
        }
        let progress = progress_line(&tasks_state);
        if progress != last_progress {
            outln!("slurm: {progress}");
            last_progress = progress;
        }
        if tasks_state.iter().all(|t| t.state.is_final()) {
            break;
        }
        std::thread::sleep(poll);
    }

    let mut failures = Vec::new();
    let mut computed = BTreeMap::new();
    for t in &tasks_state {
        let job = &jobs[t.job];
        let name = &plan.stages[t.stage].name;
        let task_id = job.task_id(&ids[t.job], t.index);
        match &t.state {
            TaskState::Failed(why) => failures.push(format!(
                "stage `{name}` failed in Slurm job {task_id}: {why}\n  log: {}",
                job.log_path(&paths, t.index).display()
            )),
            TaskState::Cancelled(why) => failures.push(format!("stage `{name}` (Slurm job {task_id}) cancelled: {why}")),
            TaskState::Done { computed: true, seconds } => {
                computed.insert(name.clone(), (task_id, *seconds));
            }
            _ => {}
        }
    }
    if !failures.is_empty() {
        let failed = tasks_state.iter().filter(|t| matches!(t.state, TaskState::Failed(_))).count();
        anyhow::bail!(
            "{failed} of {tasks} stage instance{} failed on Slurm (rerun the same command to resubmit only what is missing):\n{}",
            plural(tasks),
            failures.join("\n")
        );
    }
    Ok(SlurmOutcome { computed })
}

/// The missing instances, one job per declared stage and resource set, in
/// plan (topological) order.
fn group_jobs(plan: &Plan, missing: &BTreeSet<&str>, forced: &BTreeSet<&str>) -> Vec<JobSpec> {
    let mut jobs: Vec<JobSpec> = Vec::new();
    for stage in plan.stages.iter().filter(|s| missing.contains(s.name.as_str())) {
        let task = (stage.name.clone(), stage.key.clone(), forced.contains(stage.name.as_str()));
        match jobs.iter_mut().find(|j| j.stage == stage.decl && j.resources == stage.resources) {
            Some(job) => job.tasks.push(task),
            None => {
                let same_stage = jobs.iter().filter(|j| j.stage == stage.decl).count();
                let stem = if same_stage == 0 { clean(&stage.decl) } else { format!("{}-{same_stage}", clean(&stage.decl)) };
                jobs.push(JobSpec {
                    stage: stage.decl.clone(),
                    stem,
                    pipeline: plan.pipeline.clone(),
                    profile: plan.profile.clone(),
                    tasks: vec![task],
                    resources: stage.resources.clone(),
                });
            }
        }
    }
    jobs
}

/// For each job, the earlier jobs holding one of its instances' direct inputs.
fn job_dependencies(plan: &Plan, jobs: &[JobSpec]) -> Vec<BTreeSet<usize>> {
    let job_of: BTreeMap<&str, usize> =
        jobs.iter().enumerate().flat_map(|(j, job)| job.tasks.iter().map(move |t| (t.0.as_str(), j))).collect();
    jobs.iter()
        .map(|job| {
            job.tasks
                .iter()
                .flat_map(|t| {
                    let stage = plan.stages.iter().find(|s| s.name == t.0).expect("planned");
                    stage.inputs.values().flatten().filter_map(|&i| job_of.get(plan.stages[i].name.as_str()).copied())
                })
                .collect()
        })
        .collect()
}

/// For each job, every job that (transitively) waits for it.
fn downstream_jobs(dependencies: &[BTreeSet<usize>]) -> Vec<BTreeSet<usize>> {
    let mut down: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); dependencies.len()];
    // Jobs are in topological order: a job's dependants come after it.
    for j in (0..dependencies.len()).rev() {
        for (k, deps) in dependencies.iter().enumerate() {
            if deps.contains(&j) {
                let further = down[k].clone();
                down[j].insert(k);
                down[j].extend(further);
            }
        }
    }
    down
}

fn progress_line(tasks: &[Task]) -> String {
    let count = |f: fn(&TaskState) -> bool| tasks.iter().filter(|t| f(&t.state)).count();
    format!(
        "{} queued, {} running, {} done, {} failed, {} cancelled (of {})",
        count(|s| *s == TaskState::Queued),
        count(|s| *s == TaskState::Running),
        count(|s| matches!(s, TaskState::Done { .. })),
        count(|s| matches!(s, TaskState::Failed(_))),
        count(|s| matches!(s, TaskState::Cancelled(_))),
        tasks.len()
    )
}

/// Seconds between looks at the markers and the queue (`E2H_SLURM_POLL`, default 2).
fn poll_interval() -> Duration {
    let seconds = std::env::var("E2H_SLURM_POLL").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0 && s.is_finite());
    Duration::from_secs_f64(seconds.unwrap_or(2.0))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}
