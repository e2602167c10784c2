//! `--executor slurm` against a real cluster (`.ci/run` starts a local one-node
//! cluster from ../shared/slurm/). Each test skips with a message where no
//! cluster answers, and fails instead under CI.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{slurm_cluster, Run, TestRoot};

const FIG3: &str = include_str!("../../../pipelines/fig3-sample-complexity.yaml");

/// A sweep of `sim` over d feeding a plot, and an independent `other`.
/// `{NAME}` and `{BUDGET}` (n_max_over_d: the seconds each instance takes) are filled in.
const DAG: &str = "\
name: {NAME}
stages:
  sim:
    kind: mcm.trajectories
    seed: 11
    sweep: {d: [12, 16, 20]}
    params: {d: 16, coupling: none, delta: 0.5, n_max_over_d: {BUDGET}, grid_points: 5, replicas: 2, n_test: 50}
  other:
    kind: mcm.trajectories
    seed: 12
    params: {d: 16, coupling: none, delta: 0.5, n_max_over_d: 20, grid_points: 5, replicas: 2, n_test: 50}
  figure:
    kind: plot.figure
    inputs: {sim: sim}
    params:
      title: overlaps
      panels:
        - {title: u, input: sim, table: by_n, x: n_over_d, series: [{y: abs_m_u_median, by: d, label: 'd = {value}'}]}
";

/// n_max_over_d that makes one `sim` instance take a few seconds on one core.
const SLOW_BUDGET: &str = "300000";

fn dag(name: &str, budget: &str) -> String {
    DAG.replace("{NAME}", name).replace("{BUDGET}", budget)
}

/// `xtask` with the cluster executor's poll interval shortened for tests.
fn slurm_command(root: &TestRoot, args: &[&str]) -> Command {
    let mut cmd = root.command(args);
    cmd.env("E2H_SLURM_POLL", "0.3");
    cmd
}

fn xtask_slurm(root: &TestRoot, args: &[&str]) -> Run {
    Run::of(args.join(" "), slurm_command(root, args).output().expect("run the xtask binary"))
}

/// (stage, job id, array tasks) of each `submitted` line.
fn submissions(run: &Run) -> Vec<(String, String, usize)> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("submitted ")?;
            let (stage, rest) = rest.split_once(" as ")?;
            let words: Vec<&str> = rest.split([' ', ',', '(', ')']).filter(|w| !w.is_empty()).collect();
            let (id, tasks) = match words.as_slice() {
                ["array", "job", id, n, "tasks", ..] => (id.to_string(), n.parse().ok()?),
                ["job", id, ..] => (id.to_string(), 1),
                _ => return None,
            };
            Some((stage.trim().to_string(), id, tasks))
        })
        .collect()
}

fn submitted_stages(run: &Run) -> Vec<(String, usize)> {
    submissions(run).into_iter().map(|(s, _, n)| (s, n)).collect()
}

/// Slurm's state of each task of these jobs (`id` or `id_task`).
fn slurm_states(ids: &[&str]) -> BTreeMap<String, String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--array", "--format=%i %T", "--jobs", &ids.join(",")])
        .output()
        .expect("run squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.trim().to_string())))
        .collect()
}

/// Every status marker the jobs wrote, across runs: (instance, computed, raw).
fn markers(root: &TestRoot) -> Vec<(String, bool, String)> {
    let mut found = Vec::new();
    for run in fs::read_dir(root.cache().join("slurm")).into_iter().flatten().flatten() {
        for f in fs::read_dir(run.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "status") {
                let raw = fs::read_to_string(f.path()).unwrap();
                let v: serde_json::Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
                let instance = v["instance"].as_str().unwrap_or_default().to_string();
                found.push((instance, v["computed"].as_bool().unwrap_or(false), raw));
            }
        }
    }
    found
}

/// The files (name -> blake3) of every cache entry, by key.
fn entry_files(root: &TestRoot) -> BTreeMap<String, serde_json::Value> {
    root.cache_listing("entries")
        .into_iter()
        .map(|key| {
            let meta: serde_json::Value =
                serde_json::from_slice(&fs::read(root.cache().join("entries").join(&key).join("meta.json")).unwrap()).unwrap();
            (key, meta["files"].clone())
        })
        .collect()
}

/// The key prefix of the `ran` line of `stage`.
#[track_caller]
fn ran_key(run: &Run, stage: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() >= 3 && words[0] == "ran" && words[1] == stage).then(|| words[2].to_string())
        })
        .unwrap_or_else(|| panic!("no `ran` line for `{stage}`\n{run}"))
}

fn meta(root: &TestRoot, key_prefix: &str) -> serde_json::Value {
    let key = root.entry_key(key_prefix);
    serde_json::from_slice(&fs::read(root.cache().join("entries").join(key).join("meta.json")).unwrap()).unwrap()
}

/// Waits until `done` holds, at most `limit`.
#[track_caller]
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no job of this pipeline is queued or running.
fn wait_for_jobs_of(pipeline: &str) {
    let names = format!("e2h-{pipeline}-sim,e2h-{pipeline}-figure,e2h-{pipeline}-other");
    wait_for("the jobs to end", Duration::from_secs(120), || {
        let out = Command::new("squeue").args(["--noheader", "--states=pending,running", "--name", &names]).output().unwrap();
        out.status.success() && out.stdout.is_empty()
    });
}

fn finish(child: Child, what: &str) -> Run {
    Run::of(what.into(), child.wait_with_output().expect("wait for xtask"))
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start xtask")
}

#[test]
fn figure_3_ci_through_slurm_is_bit_identical_to_the_local_run_and_a_rerun_submits_nothing() {
    if !slurm_cluster("figure_3_ci_through_slurm") {
        return;
    }
    let local = TestRoot::new("fig3-local");
    let cluster = TestRoot::new("fig3-slurm");
    for root in [&local, &cluster] {
        root.write("pipelines/fig3-sample-complexity.yaml", FIG3);
    }
    let args = ["figure", "3", "--profile", "ci"];
    let started = Instant::now();
    local.xtask(&args).success();
    let local_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let run = xtask_slurm(&cluster, &[&args[..], &["--executor", "slurm"]].concat()).success();
    eprintln!("figure 3 --profile ci: local {local_seconds:.1} s, slurm {:.1} s", started.elapsed().as_secs_f64());

    // The four sweeps as arrays, then the fit, then the figure.
    let jobs = submitted_stages(&run);
    assert_eq!(
        jobs,
        [
            ("u".to_string(), 4),
            ("u_full".into(), 2),
            ("v_coupled".into(), 4),
            ("v_independent".into(), 4),
            ("fit".into(), 1),
            ("figure".into(), 1)
        ],
        "{run}"
    );
    run.stdout_has("(Slurm job ");
    let files = entry_files(&cluster);
    assert_eq!(files.len(), 16, "{files:#?}");
    assert_eq!(files, entry_files(&local), "the Slurm run's entries differ from the local run's");
    assert_eq!(
        fs::read(cluster.path().join("figures/fig3-ci.png")).unwrap(),
        fs::read(local.path().join("figures/fig3-ci.png")).unwrap(),
        "published figures differ"
    );

    let again = xtask_slurm(&cluster, &[&args[..], &["--executor", "slurm"]].concat()).success();
    again.stdout_has("nothing to submit");
    assert!(submissions(&again).is_empty(), "{again}");
}

#[test]
fn a_sweep_is_one_job_array_and_its_downstream_waits_for_all_of_it() {
    if !slurm_cluster("a_sweep_is_one_job_array") {
        return;
    }
    let root = TestRoot::new("slurm-array");
    let file = root.write("pipelines/dag.yaml", &dag("slurm-array", "20"));
    let file = file.to_str().unwrap();

    // The dry run prints the scripts and submits nothing.
    let dry = xtask_slurm(&root, &["run", file, "--executor", "slurm", "--dry-run", "--slurm-arg=--comment=e2h-test"]).success();
    dry.stdout_has("#SBATCH --array=0-2")
        .stdout_has("#SBATCH --kill-on-invalid-dep=yes")
        .stdout_has("#SBATCH --cpus-per-task=2")
        .stdout_has("instances=('sim[d=12]' 'sim[d=16]' 'sim[d=20]')")
        .stdout_has("--dependency=afterok:<jobs of sim>")
        .stdout_has("--comment=e2h-test")
        .stdout_has("3 jobs (5 stage instances) would be submitted");
    assert!(root.cache_listing("entries").is_empty());
    assert!(root.cache_listing("slurm").is_empty(), "a dry run wrote job files");

    let run = xtask_slurm(&root, &["run", file, "--executor", "slurm", "--slurm-arg=--comment=e2h-test"]).success();
    let jobs = submissions(&run);
    let stages: Vec<(&str, usize)> = jobs.iter().map(|(s, _, n)| (s.as_str(), *n)).collect();
    assert_eq!(stages, [("other", 1), ("sim", 3), ("figure", 1)], "{run}");
    let (sim, figure) = (&jobs[1].1, &jobs[2].1);
    run.stdout_has(&format!("as job {figure}, after sim ({sim})"));
    let states = slurm_states(&[sim, figure]);
    let tasks: Vec<&String> = states.keys().filter(|k| k.starts_with(&format!("{sim}_"))).collect();
    assert_eq!(tasks.len(), 3, "{states:?}");
    assert!(states.values().all(|s| s == "COMPLETED"), "{states:?}");

    // The plot started after every instance of the sweep had finished.
    let started = meta(&root, &ran_key(&run, "figure"))["started"].as_str().unwrap().to_string();
    for d in [12, 16, 20] {
        let sim = meta(&root, &ran_key(&run, &format!("sim[d={d}]")));
        assert!(sim["finished"].as_str().unwrap() <= started.as_str(), "figure started {started} before sim[d={d}] finished: {sim}");
    }
    let published = markers(&root);
    assert_eq!(published.iter().filter(|m| m.1).count(), 5, "{published:?}");
}

#[test]
fn a_failed_stage_cancels_its_dependants_and_a_rerun_submits_only_what_is_missing() {
    if !slurm_cluster("a_failed_stage_cancels_its_dependants") {
        return;
    }
    let root = TestRoot::new("slurm-failure");
    let file = root.write("pipelines/dag.yaml", &dag("slurm-failure", "20"));
    let file = file.to_str().unwrap();
    let dry = xtask_slurm(&root, &["run", file, "--executor", "slurm", "--dry-run"]).success();
    let lines: Vec<&str> = dry.stdout.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("instances=('sim[d=12]'")).expect("the sim job's instances");
    let keys_line = lines[at + 1].strip_prefix("keys=(").and_then(|l| l.strip_suffix(')')).expect("the sim job's keys");
    let key = keys_line.split(' ').next().unwrap().to_string();
    assert_eq!(key.len(), 64, "{keys_line}");

    // The fault: the lock file of sim[d=12]'s key is a directory, so that job
    // cannot take its lock; nothing else is affected.
    let lock = root.cache().join("locks").join(format!("{key}.lock"));
    fs::create_dir_all(&lock).unwrap();
    let failed = xtask_slurm(&root, &["run", file, "--executor", "slurm"]).failure();
    let jobs = submissions(&failed);
    let (sim, figure) = (jobs[1].1.clone(), jobs[2].1.clone());
    failed
        .stderr_has(&format!("stage `sim[d=12]` failed in Slurm job {sim}_0: "))
        .stderr_has(&format!("stage `figure` (Slurm job {figure}) cancelled: upstream `sim` failed"))
        .stderr_has("rerun the same command to resubmit only what is missing");
    let log = failed.stderr.lines().find_map(|l| l.trim().strip_prefix("log: ")).map(PathBuf::from).expect("a log path");
    let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(text.contains(&lock.display().to_string()), "the log does not name the lock file:\n{text}");
    // Cancelled, not left pending.
    wait_for("the plot's job to be cancelled", Duration::from_secs(10), || {
        slurm_states(&[&figure]).get(&figure).is_some_and(|s| s == "CANCELLED")
    });
    assert_eq!(root.cache_listing("entries").len(), 3, "sim[d=16], sim[d=20] and other should be cached");

    fs::remove_dir(&lock).unwrap();
    let rerun = xtask_slurm(&root, &["run", file, "--executor", "slurm"]).success();
    assert_eq!(submitted_stages(&rerun), [("sim".to_string(), 1), ("figure".to_string(), 1)], "{rerun}");
    rerun.stdout_has("instances)").stdout_has(&format!("cached   {:<40}", "sim[d=16]"));
    assert_eq!(root.cache_listing("entries").len(), 5);
}

#[test]
fn a_driver_killed_mid_run_and_restarted_computes_each_key_once() {
    if !slurm_cluster("a_driver_killed_mid_run") {
        return;
    }
    let name = "slurm-restart";
    let root = TestRoot::new(name);
    let file = root.write("pipelines/dag.yaml", &dag(name, SLOW_BUDGET));
    let file = file.to_str().unwrap();
    let mut first = spawn(slurm_command(&root, &["run", file, "--executor", "slurm"]));
    // Kill it once a sim job is computing (its log exists) and nothing is in the cache yet.
    wait_for("a sim job to start", Duration::from_secs(60), || {
        fs::read_dir(root.cache().join("slurm"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("sim.0.log").exists())
    });
    first.kill().unwrap();
    let first = finish(first, "first driver (killed)");
    assert_eq!(first.code, None, "{first}");
    assert!(root.cache_listing("entries").len() < 5, "the run finished before the driver was killed");

    let second = xtask_slurm(&root, &["run", file, "--executor", "slurm"]).success();
    assert!(!submissions(&second).is_empty(), "{second}");
    wait_for_jobs_of(name);
    assert_each_key_computed_once(&root, &[], 5);
}

#[test]
fn a_local_run_beside_a_slurm_run_computes_each_key_once() {
    if !slurm_cluster("a_local_run_beside_a_slurm_run") {
        return;
    }
    let name = "slurm-beside-local";
    let root = TestRoot::new(name);
    let file = root.write("pipelines/dag.yaml", &dag(name, SLOW_BUDGET));
    let file = file.to_str().unwrap();
    let cluster = spawn(slurm_command(&root, &["run", file, "--executor", "slurm"]));
    let mut local = root.command(&["run", file]);
    local.env("E2H_LOG", "info");
    let local = finish(spawn(local), "local run").success();
    let cluster = finish(cluster, "slurm run").success();
    let computed_locally: Vec<String> = local
        .stderr
        .lines()
        .filter_map(|l| l.split_once(": running (").map(|(name, _)| name.trim().rsplit(' ').next().unwrap().to_string()))
        .collect();
    eprintln!("computed locally: {computed_locally:?}\n{cluster}");
    wait_for_jobs_of(name);
    assert_each_key_computed_once(&root, &computed_locally, 5);
}

/// Every planned instance computed exactly once, by a job (its marker says
/// `computed`) or by the local run; every entry verified, no temporary left.
#[track_caller]
fn assert_each_key_computed_once(root: &TestRoot, computed_locally: &[String], instances: usize) {
    let markers = markers(root);
    assert!(markers.iter().all(|m| m.2.contains("\"status\":\"ok\"")), "a job failed: {markers:#?}");
    let mut computed: BTreeMap<String, usize> = BTreeMap::new();
    for name in markers.iter().filter(|m| m.1).map(|m| &m.0).chain(computed_locally) {
        *computed.entry(name.clone()).or_default() += 1;
    }
    assert_eq!(computed.len(), instances, "{computed:?}");
    assert!(computed.values().all(|&n| n == 1), "a key was computed twice: {computed:?}\n{markers:#?}");
    assert_eq!(root.cache_listing("entries").len(), instances);
    assert!(root.cache_listing("tmp").is_empty(), "partial entries: {:?}", root.cache_listing("tmp"));
    root.xtask(&["cache", "verify"]).success().stdout_has(&format!("{instances} valid, 0 corrupt"));
}

#[test]
fn ctrl_c_cancels_the_drivers_jobs_and_only_those() {
    if !slurm_cluster("ctrl_c_cancels_the_drivers_jobs") {
        return;
    }
    let name = "slurm-interrupt";
    let root = TestRoot::new(name);
    let file = root.write("pipelines/dag.yaml", &dag(name, SLOW_BUDGET));
    let bystander = Command::new("sbatch")
        .args(["--parsable", "--job-name=e2h-test-bystander", "--output=/dev/null", "--wrap", "sleep 120"])
        .output()
        .unwrap();
    assert!(bystander.status.success(), "{}", String::from_utf8_lossy(&bystander.stderr));
    let bystander = String::from_utf8_lossy(&bystander.stdout).trim().split(';').next().unwrap().to_string();

    let driver = spawn(slurm_command(&root, &["run", file.to_str().unwrap(), "--executor", "slurm"]));
    // The plot's job is submitted last.
    let figure_job = format!("e2h-{name}-figure");
    wait_for("the jobs to be submitted", Duration::from_secs(60), || {
        let out = Command::new("squeue").args(["--noheader", "--states=pending,running", "--format=%i", "--name", &figure_job]).output().unwrap();
        !out.stdout.is_empty()
    });
    let status = Command::new("kill").args(["-INT", &driver.id().to_string()]).status().unwrap();
    assert!(status.success());
    let run = finish(driver, "interrupted driver").failure();
    run.stderr_has("interrupted: cancelled this run's Slurm jobs ");
    let ids: Vec<String> = submissions(&run).into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), 3, "{run}");
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for("the driver's jobs to end", Duration::from_secs(30), || {
        let states = slurm_states(&id_refs);
        !states.is_empty() && states.values().all(|s| s == "CANCELLED" || s == "COMPLETED")
    });
    let states = slurm_states(&id_refs);
    assert!(states.values().any(|s| s == "CANCELLED"), "nothing was cancelled: {states:?}");
    let other = slurm_states(&[&bystander]);
    let _ = Command::new("scancel").arg(&bystander).status();
    assert!(
        other.get(&bystander).is_some_and(|s| s == "RUNNING" || s == "PENDING"),
        "a job the driver did not submit was touched: {other:?}"
    );
}

#[test]
fn a_job_killed_outside_the_driver_is_reported_from_slurms_view_and_the_cache() {
    if !slurm_cluster("a_job_killed_outside_the_driver") {
        return;
    }
    let name = "slurm-killed-job";
    let root = TestRoot::new(name);
    let file = root.write("pipelines/dag.yaml", &dag(name, SLOW_BUDGET));
    let driver = spawn(slurm_command(&root, &["run", file.to_str().unwrap(), "--executor", "slurm"]));
    // Someone else cancels one array task while it computes: it leaves no
    // marker of its own, and Slurm's record is all the driver has.
    let sim_job = format!("e2h-{name}-sim");
    let mut task = String::new();
    wait_for("sim[d=12] to run", Duration::from_secs(60), || {
        let out = Command::new("squeue")
            .args(["--noheader", "--array", "--states=running", "--format=%i", "--name", &sim_job])
            .output()
            .unwrap();
        task = String::from_utf8_lossy(&out.stdout).lines().map(str::trim).find(|t| t.ends_with("_0")).unwrap_or_default().to_string();
        !task.is_empty()
    });
    assert!(Command::new("scancel").arg(&task).status().unwrap().success());
    let run = finish(driver, "driver").failure();
    run.stderr_has(&format!("stage `sim[d=12]` failed in Slurm job {task}: "))
        .stderr_has("stage `figure` (Slurm job ")
        .stderr_has("cancelled: upstream `sim` failed");
    // The other instances finished and are cached; the killed one left at
    // most a temporary directory, never an entry. The rerun submits the rest
    // and clears that leftover when it takes the key's lock.
    wait_for_jobs_of(name);
    assert_eq!(root.cache_listing("entries").len(), 3, "{run}");
    let rerun = xtask_slurm(&root, &["run", file.to_str().unwrap(), "--executor", "slurm"]).success();
    assert_eq!(submitted_stages(&rerun), [("sim".to_string(), 1), ("figure".to_string(), 1)], "{rerun}");
    assert!(root.cache_listing("tmp").is_empty(), "leftovers: {:?}", root.cache_listing("tmp"));
    root.xtask(&["cache", "verify"]).success().stdout_has("5 valid, 0 corrupt");
}
