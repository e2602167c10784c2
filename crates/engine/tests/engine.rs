//! Behaviour of the engine with toy stage kinds: cache keys, reruns,
//! verification, dry-run reasons, sweeps, profiles, crashes and concurrency.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use e2h_engine::cache::META_FILE;
use e2h_engine::plan::Plan;
use e2h_engine::runner::{RunOptions, RunReason};
use e2h_engine::{Cache, EngineError, EntryStatus, PipelineSpec, Runner, StageOutcome};
use rand::{Rng, SeedableRng};

fn key(plan: &Plan, name: &str) -> String {
    plan.stages.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no stage instance `{name}`")).key.clone()
}

fn outcome<'a>(report: &'a e2h_engine::RunReport, name: &str) -> &'a StageOutcome {
    &report.stages.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no report for `{name}`")).outcome
}

fn reason(report: &e2h_engine::RunReport, name: &str) -> RunReason {
    match outcome(report, name) {
        StageOutcome::Run(r) => r.clone(),
        StageOutcome::Cached => panic!("`{name}` is cached, expected it to run"),
    }
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn keys_are_stable_across_runs_and_yaml_spelling() {
    let sb = Sandbox::new();
    let a = sb.plan(BASIC, None);
    let b = sb.plan(BASIC, None);
    let names: Vec<&str> = a.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nums", "other", "total"], "topological order, ties broken by name");
    for s in &a.stages {
        assert_eq!(s.key.len(), 64);
        assert!(s.key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(s.key, key(&b, &s.name));
    }

    // Same content, other spelling: keys reordered at every level, flow and
    // block mappings swapped, defaults written out, 0.5 as 5e-1, another
    // pipeline name. The key is a function of the content only.
    let respelled = "\
name: renamed
stages:
  total:
    params: {column: x}
    inputs:
      xs: nums
    kind: toy.sum
  other:
    params:
      scale: 1
      n: 2
    kind: toy.numbers
  nums:
    params: {label: '', window: null, scale: 5e-1, n: 4}
    seed: 7
    kind: toy.numbers
";
    let c = sb.plan(respelled, None);
    for name in ["nums", "other", "total"] {
        assert_eq!(key(&a, name), key(&c, name), "key of `{name}` depends on spelling");
    }
    // Distinct stages with equal content share their key.
    let twin = BASIC.replace(
        "  other:\n    kind: toy.numbers\n    params: {n: 2}\n",
        "  other:\n    kind: toy.numbers\n    seed: 7\n    params: {n: 4, scale: 0.5}\n",
    );
    let t = sb.plan(&twin, None);
    assert_eq!(key(&t, "nums"), key(&t, "other"));
}

#[test]
fn keys_change_with_params_seed_upstream_and_kind_version() {
    let sb = Sandbox::new();
    let base = sb.plan(BASIC, None);
    let changed = |yaml: &str| sb.plan(yaml, None);
    let diff = |p: &Plan| -> Vec<&str> {
        ["nums", "other", "total"].into_iter().filter(|n| key(&base, n) != key(p, n)).collect()
    };

    assert_eq!(diff(&changed(&BASIC.replace("n: 4", "n: 5"))), ["nums", "total"]);
    assert_eq!(diff(&changed(&BASIC.replace("scale: 0.5", "scale: 0.25"))), ["nums", "total"]);
    assert_eq!(diff(&changed(&BASIC.replace("seed: 7", "seed: 8"))), ["nums", "total"]);
    assert_eq!(diff(&changed(&BASIC.replace("seed: 7", "seed: 7\n    description: words only"))), Vec::<&str>::new());
    assert_eq!(
        diff(&changed(&BASIC.replace("inputs: {xs: nums}", "inputs: {xs: nums}\n    params: {column: i}"))),
        ["total"]
    );
    assert_eq!(diff(&changed(&BASIC.replace("params: {n: 2}", "params: {n: 3}"))), ["other"]);
    // Rewiring the input to another upstream changes the downstream key only.
    assert_eq!(diff(&changed(&BASIC.replace("inputs: {xs: nums}", "inputs: {xs: other}"))), ["total"]);
    // A new code version of the kind changes its stages and everything downstream.
    let v2 = toy_registry_v2(&sb.log);
    assert_eq!(diff(&sb.plan_with(&v2, BASIC, None)), ["nums", "other", "total"]);
}

#[test]
fn repeated_run_recomputes_nothing() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    let first = sb.run(&plan);
    assert_eq!(first.ran(), 3);
    assert_eq!(sb.executions().len(), 3);
    assert_eq!(sb.entry_dirs().len(), 3);

    let second = sb.run(&plan);
    assert_eq!(second.ran(), 0);
    assert!(second.stages.iter().all(|s| s.outcome == StageOutcome::Cached));
    // A fresh plan and a fresh handle on the same cache (a new process) agree.
    let cache = Cache::open(sb.cache.root()).unwrap();
    let plan = sb.plan(BASIC, None);
    let third = Runner::new(&sb.registry, &cache, RunOptions::default()).run(&plan).unwrap();
    assert_eq!(third.ran(), 0);
    assert_eq!(sb.executions().len(), 3, "nothing ran again: {:?}", sb.executions());
    assert!(sb.tmp_dirs().is_empty(), "tmp/ not cleaned: {:?}", sb.tmp_dirs());
}

#[test]
fn entry_metadata_and_index_record_what_was_computed() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    sb.run(&plan);
    let nums_key = key(&plan, "nums");
    let EntryStatus::Valid(meta) = sb.cache.status(&nums_key) else { panic!("nums entry not valid") };
    assert_eq!(meta.key, nums_key);
    assert_eq!(meta.pipeline, "basic");
    assert_eq!((meta.stage.as_str(), meta.kind.as_str(), meta.kind_version.as_str()), ("nums", "toy.numbers", "1"));
    assert_eq!(meta.params, serde_json::json!({"label": "", "n": 4, "scale": 0.5, "window": null}));
    assert_eq!(meta.seed, 7);
    assert!(meta.inputs.is_empty());
    assert_eq!(meta.crate_versions.get("e2h-engine").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(meta.info.get("label"), Some(&serde_json::json!("")));
    let t = &meta.tables["numbers"];
    assert_eq!((t.file.as_str(), t.rows), ("numbers.parquet", 4));
    assert_eq!(t.columns.keys().collect::<Vec<_>>(), ["i", "x"]);
    let f = &meta.files["numbers.parquet"];
    assert_eq!(f.bytes, fs::metadata(sb.cache.entry_dir(&nums_key).join("numbers.parquet")).unwrap().len());
    assert!(!meta.files.contains_key(META_FILE));
    let df = e2h_engine::table::read_parquet(&sb.cache.entry_dir(&nums_key).join("numbers.parquet")).unwrap();
    assert_eq!(e2h_engine::table::column_f64(&df, "x").unwrap(), [7.0, 7.5, 8.0, 8.5]);

    let EntryStatus::Valid(total) = sb.cache.status(&key(&plan, "total")) else { panic!("total entry not valid") };
    assert_eq!(total.inputs["xs"], std::slice::from_ref(&nums_key));
    assert!(total.files.contains_key("figure.txt"));
    let rec = sb.cache.read_index("basic", "default", "nums").expect("index record");
    assert_eq!(rec.key, nums_key);
    assert_eq!(rec.params, meta.params);
}

/// The ways an entry can be damaged, with the file its reason must name.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipByte,
    Truncate,
    DeleteTable,
    GarbageMeta,
    DeleteMeta,
    WrongKeyInMeta,
    EmptyDir,
}

fn damage(dir: &Path, how: Damage) -> &'static str {
    let table = dir.join("numbers.parquet");
    let meta = dir.join(META_FILE);
    match how {
        Damage::FlipByte => {
            let mut bytes = fs::read(&table).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(&table, bytes).unwrap();
            "numbers.parquet: content hash mismatch"
        }
        Damage::Truncate => {
            let len = fs::metadata(&table).unwrap().len();
            fs::OpenOptions::new().write(true).open(&table).unwrap().set_len(len - 1).unwrap();
            "numbers.parquet"
        }
        Damage::DeleteTable => {
            fs::remove_file(&table).unwrap();
            "numbers.parquet"
        }
        Damage::GarbageMeta => {
            fs::write(&meta, b"{\"key\": [garbage").unwrap();
            "meta.json: unreadable metadata"
        }
        Damage::DeleteMeta => {
            fs::remove_file(&meta).unwrap();
            "meta.json"
        }
        Damage::WrongKeyInMeta => {
            let text = fs::read_to_string(&meta).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["key"] = serde_json::json!("0".repeat(64));
            fs::write(&meta, serde_json::to_vec(&v).unwrap()).unwrap();
            "meta.json: records key"
        }
        Damage::EmptyDir => {
            fs::remove_dir_all(dir).unwrap();
            fs::create_dir(dir).unwrap();
            "meta.json"
        }
    }
}

#[test]
fn corrupted_entries_are_detected_reported_and_recomputed() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    sb.run(&plan);
    let nums = key(&plan, "nums");
    let dir = sb.cache.entry_dir(&nums);
    let original = e2h_engine::table::read_parquet(&dir.join("numbers.parquet")).unwrap();
    let EntryStatus::Valid(original_meta) = sb.cache.status(&nums) else { panic!() };

    for (round, how) in [
        Damage::FlipByte,
        Damage::Truncate,
        Damage::DeleteTable,
        Damage::GarbageMeta,
        Damage::DeleteMeta,
        Damage::WrongKeyInMeta,
        Damage::EmptyDir,
    ]
    .into_iter()
    .enumerate()
    {
        let names = damage(&dir, how);
        match sb.cache.status(&nums) {
            EntryStatus::Corrupt(reason) => {
                assert!(reason.contains(names), "{how:?}: reason `{reason}` does not name `{names}`")
            }
            other => panic!("{how:?}: damage not detected: {other:?}"),
        }
        // Reported by a dry run, which changes nothing...
        let dry = sb.dry_run(&plan);
        match reason(&dry, "nums") {
            RunReason::Corrupt(r) => assert!(r.contains(names), "{how:?}: {r}"),
            r => panic!("{how:?}: expected a corrupt reason, got {r:?}"),
        }
        assert_eq!(*outcome(&dry, "total"), StageOutcome::Cached, "downstream keys do not change");
        assert!(reason(&dry, "nums").to_string().starts_with("corrupt entry: "));
        // ...and repaired by the next run, which recomputes only the damaged stage.
        let before = sb.executions().len();
        let report = sb.run(&plan);
        assert_eq!(report.ran(), 1, "{how:?}");
        assert_eq!(sb.executions().len(), before + 1);
        assert_eq!(sb.executions().last().unwrap(), "run toy.numbers nums seed=7");
        let EntryStatus::Valid(meta) = sb.cache.status(&nums) else { panic!("{how:?}: not repaired") };
        assert_eq!(meta.tables, original_meta.tables);
        let again = e2h_engine::table::read_parquet(&dir.join("numbers.parquet")).unwrap();
        assert!(again.equals(&original), "{how:?}: recomputed table differs");
        assert_eq!(sb.run(&plan).ran(), 0, "{how:?}: round {round} left something to do");
    }
    assert!(sb.tmp_dirs().is_empty(), "{:?}", sb.tmp_dirs());
}

#[test]
fn dry_run_explains_every_reason() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);

    let dry = sb.dry_run(&plan);
    for s in ["nums", "other", "total"] {
        assert_eq!(reason(&dry, s), RunReason::Missing);
    }
    assert!(sb.executions().is_empty() && sb.entry_dirs().is_empty(), "a dry run computed something");
    assert!(sb.cache.read_index("basic", "default", "nums").is_none(), "a dry run wrote the index");

    sb.run(&plan);
    assert_eq!(sb.dry_run(&plan).ran(), 0);

    let n5 = sb.plan(&BASIC.replace("n: 4", "n: 5"), None);
    let dry = sb.dry_run(&n5);
    assert_eq!(reason(&dry, "nums"), RunReason::ParamsChanged(vec!["n (4 -> 5)".into()]));
    assert_eq!(reason(&dry, "total"), RunReason::UpstreamChanged(vec!["xs".into()]));
    assert_eq!(*outcome(&dry, "other"), StageOutcome::Cached);
    assert_eq!(reason(&dry, "nums").to_string(), "params changed: n (4 -> 5)");

    let both = sb.plan(&BASIC.replace("n: 4", "n: 5").replace("scale: 0.5", "scale: 0.25"), None);
    assert_eq!(
        reason(&sb.dry_run(&both), "nums"),
        RunReason::ParamsChanged(vec!["n (4 -> 5)".into(), "scale (0.5 -> 0.25)".into()])
    );
    let labelled = sb.plan(&BASIC.replace("n: 4", "n: 4\n      label: hi"), None);
    assert_eq!(reason(&sb.dry_run(&labelled), "nums"), RunReason::ParamsChanged(vec!["label (\"\" -> \"hi\")".into()]));

    let seed = sb.plan(&BASIC.replace("seed: 7", "seed: 8"), None);
    let dry = sb.dry_run(&seed);
    assert_eq!(reason(&dry, "nums"), RunReason::SeedChanged { from: 7, to: 8 });
    assert_eq!(reason(&dry, "total"), RunReason::UpstreamChanged(vec!["xs".into()]));

    let v2 = toy_registry_v2(&sb.log);
    let plan_v2 = sb.plan_with(&v2, BASIC, None);
    let dry = sb.run_opts(&v2, &plan_v2, RunOptions { dry_run: true, ..Default::default() });
    let bumped = RunReason::KindVersionChanged { from: "1".into(), to: "2".into() };
    assert_eq!(reason(&dry, "nums"), bumped);
    assert_eq!(reason(&dry, "other"), bumped);
    assert_eq!(reason(&dry, "total"), RunReason::UpstreamChanged(vec!["xs".into()]));

    // Corrupt: flip one byte of `other`'s table.
    let other_dir = sb.cache.entry_dir(&key(&plan, "other"));
    damage(&other_dir, Damage::FlipByte);
    assert!(matches!(reason(&sb.dry_run(&plan), "other"), RunReason::Corrupt(r) if r.contains("numbers.parquet")));
    sb.run(&plan);

    // EntryRemoved: garbage-collected although the index still has its key.
    let keep: BTreeSet<String> = ["nums", "other"].iter().map(|s| key(&plan, s)).collect();
    assert_eq!(sb.cache.gc(&keep).unwrap(), [key(&plan, "total")]);
    let dry = sb.dry_run(&plan);
    assert_eq!(reason(&dry, "total"), RunReason::EntryRemoved);
    assert_eq!(dry.ran(), 1);
    sb.run(&plan);

    let forced = RunOptions { dry_run: true, force: vec!["nums".into()], ..Default::default() };
    let dry = sb.run_opts(&sb.registry, &plan, forced);
    assert_eq!(reason(&dry, "nums"), RunReason::Forced);
    assert_eq!(dry.ran(), 1);
    let all = RunOptions { dry_run: true, force_all: true, ..Default::default() };
    assert_eq!(sb.run_opts(&sb.registry, &plan, all).ran(), 3);
}

#[test]
fn forcing_reruns_only_the_named_stage() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    sb.run(&plan);
    let report = sb.run_opts(&sb.registry, &plan, RunOptions { force: vec!["nums".into()], ..Default::default() });
    assert_eq!(report.ran(), 1);
    assert_eq!(count(&sb.executions(), "run toy.numbers nums"), 2);
    assert!(matches!(sb.cache.status(&key(&plan, "nums")), EntryStatus::Valid(_)));
    assert_eq!(sb.run(&plan).ran(), 0);
    let report = sb.run_opts(&sb.registry, &plan, RunOptions { force_all: true, ..Default::default() });
    assert_eq!(report.ran(), 3);
    assert_eq!(sb.executions().len(), 3 + 1 + 3);
    assert!(sb.tmp_dirs().is_empty());
}

const SWEEP: &str = "\
name: sweep
stages:
  nums:
    kind: toy.numbers
    params: {n: 9, scale: 0.5, label: swept}
    sweep:
      scale: [0.25, 1.0]
      n: [2, 3]
  total:
    kind: toy.sum
    inputs: {xs: nums}
";

#[test]
fn sweeps_expand_to_instances_and_downstream_stacks_them() {
    let sb = Sandbox::new();
    let plan = sb.plan(SWEEP, None);
    let names: Vec<&str> = plan.instances_of("nums").map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nums[n=2,scale=0.25]", "nums[n=2,scale=1.0]", "nums[n=3,scale=0.25]", "nums[n=3,scale=1.0]"]);
    let keys: BTreeSet<&str> = plan.instances_of("nums").map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), 4);
    let third = plan.instances_of("nums").nth(2).unwrap();
    assert_eq!(third.decl, "nums");
    assert_eq!(third.params["n"], 3);
    assert_eq!(third.params["scale"], 0.25);
    assert_eq!(third.params["label"], "swept", "non-swept params are kept");
    assert_eq!(
        third.sweep,
        std::collections::BTreeMap::from([
            ("n".to_string(), serde_json::json!(3)),
            ("scale".to_string(), serde_json::json!(0.25))
        ])
    );
    // A sweep instance has the key of the same stage written without a sweep.
    let single = sb
        .plan("name: one\nstages:\n  s:\n    kind: toy.numbers\n    params: {n: 3, scale: 0.25, label: swept}\n", None);
    assert_eq!(third.key, key(&single, "s"));

    let total = plan.instances_of("total").next().unwrap();
    assert_eq!(total.name, "total");
    assert_eq!(total.inputs["xs"].len(), 4);

    let report = sb.run(&plan);
    assert_eq!(report.ran(), 5);
    let dir = sb.cache.entry_dir(&total.key);
    let sum = e2h_engine::table::read_parquet(&dir.join("sum.parquet")).unwrap();
    assert_eq!(e2h_engine::table::column_f64(&sum, "instances").unwrap(), [4.0]);
    assert_eq!(e2h_engine::table::column_f64(&sum, "rows").unwrap(), [10.0]);
    // x = scale * i: (0.25 + 1.0) * (0 + 1) + (0.25 + 1.0) * (0 + 1 + 2)
    assert_eq!(e2h_engine::table::column_f64(&sum, "total").unwrap(), [5.0]);
    let stacked = e2h_engine::table::read_parquet(&dir.join("stacked.parquet")).unwrap();
    let columns: Vec<&str> = stacked.get_column_names().iter().map(|c| c.as_str()).collect();
    assert_eq!(columns, ["i", "x", "n", "scale"], "sweep values become columns");
    assert_eq!(e2h_engine::table::column_f64(&stacked, "n").unwrap(), [2., 2., 2., 2., 3., 3., 3., 3., 3., 3.]);
    let n3 = e2h_engine::table::filter_eq(&stacked, "n", &serde_json::json!(3)).unwrap();
    assert_eq!(n3.height(), 6);

    // String sweep values are written bare in instance names and as string columns.
    let labels = sb.plan(
        "name: labels\nstages:\n  nums:\n    kind: toy.numbers\n    params: {n: 1}\n    sweep: {label: [a, 'b c']}\n  total:\n    kind: toy.sum\n    inputs: {xs: nums}\n",
        None,
    );
    let names: Vec<&str> = labels.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nums[label=a]", "nums[label=b c]", "total"]);
    sb.run(&labels);
    let stacked =
        e2h_engine::table::read_parquet(&sb.cache.entry_dir(&key(&labels, "total")).join("stacked.parquet")).unwrap();
    assert_eq!(e2h_engine::table::column_string(&stacked, "label").unwrap(), ["a", "b c"]);
}

const PROFILED: &str = "\
name: profiled
stages:
  nums:
    kind: toy.numbers
    seed: 1
    params: {n: 4, scale: 0.5}
    sweep: {label: [a, b]}
    publish: figures/nums
  total:
    kind: toy.sum
    inputs: {xs: nums}
    publish: figures/total
profiles:
  ci:
    description: smaller
    stages:
      nums:
        params: {n: 2}
        seed: 9
        sweep: {n: [1, 2, 3]}
      total:
        publish: null
  paper:
    stages:
      nums:
        params: {n: 4}
";

#[test]
fn profiles_override_params_seed_sweep_and_publish() {
    let sb = Sandbox::new();
    let default = sb.plan(PROFILED, None);
    assert_eq!(default.profile, "default");
    assert_eq!(default.pipeline, "profiled");
    let names: Vec<&str> = default.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nums[label=a]", "nums[label=b]", "total"]);
    assert!(default.instances_of("nums").all(|s| s.seed == 1 && s.params["n"] == 4));
    assert_eq!(default.stages[2].publish.as_deref(), Some("figures/total"));

    let ci = sb.plan(PROFILED, Some("ci"));
    assert_eq!(ci.profile, "ci");
    let names: Vec<&str> = ci.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nums[n=1]", "nums[n=2]", "nums[n=3]", "total"], "the profile's sweep replaces the stage's");
    for (s, n) in ci.instances_of("nums").zip(1..) {
        assert_eq!(s.seed, 9);
        assert_eq!(s.params["n"], n);
        assert_eq!(s.params["scale"], 0.5, "params not overridden are kept");
        assert_eq!(s.params["label"], "", "the stage's sweep is replaced, not merged");
        assert_eq!(s.publish, Some(format!("figures/nums-n={n}")), "a swept stage publishes one file per instance");
    }
    assert_eq!(ci.stages[3].publish, None, "`publish: null` in a profile publishes nothing");

    // A profile that restates the defaults yields the same keys: the cache is shared.
    let paper = sb.plan(PROFILED, Some("paper"));
    for (a, b) in default.stages.iter().zip(&paper.stages) {
        assert_eq!((a.name.as_str(), &a.key), (b.name.as_str(), &b.key));
    }
    sb.run(&default);
    let report = sb.run(&paper);
    assert_eq!(report.ran(), 0, "another profile with the same content reuses the entries");
    // The index is per profile: a first run under `paper` has no history to explain.
    assert!(sb.cache.read_index("profiled", "paper", "total").is_none());

    // `default_profile` applies when no profile is given; an explicit one wins.
    let with_default = PROFILED.replace("profiles:\n", "default_profile: ci\nprofiles:\n");
    assert_eq!(sb.plan(&with_default, None).profile, "ci");
    assert_eq!(sb.plan(&with_default, Some("paper")).profile, "paper");
    assert_eq!(sb.plan(&with_default, Some("default")).profile, "default");
}

#[test]
fn publish_copies_figures_next_to_the_project() {
    let sb = Sandbox::new();
    let plan = sb.plan(PROFILED, Some("paper"));
    let root = sb.path().join("project");
    let opts = RunOptions { publish_root: Some(root.clone()), publish_suffix: "-paper".into(), ..Default::default() };
    let report = sb.run_opts(&sb.registry, &plan, opts.clone());
    let expected = root.join("figures/total-paper.txt");
    assert_eq!(report.published, std::slice::from_ref(&expected), "tables are not published, figures are");
    let text = fs::read_to_string(&expected).unwrap();
    assert!(text.starts_with("total = "), "{text}");
    // Unchanged figures are not rewritten.
    let mtime = fs::metadata(&expected).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let again = sb.run_opts(&sb.registry, &plan, opts);
    assert_eq!(again.published, std::slice::from_ref(&expected));
    assert_eq!(fs::metadata(&expected).unwrap().modified().unwrap(), mtime);
    // A dry run publishes nothing.
    let dry = sb.run_opts(
        &sb.registry,
        &plan,
        RunOptions { dry_run: true, publish_root: Some(sb.path().join("elsewhere")), ..Default::default() },
    );
    assert!(dry.published.is_empty() && !sb.path().join("elsewhere").exists());
}

#[test]
fn checks_evaluate_on_cached_tables() {
    let sb = Sandbox::new();
    let yaml = format!(
        "{BASIC}checks:
  - name: total in range
    stage: total
    table: sum
    column: total
    min: 30
    max: 32
  - name: too strict
    stage: total
    table: sum
    column: total
    max: 1
  - name: one row has i = 1
    stage: nums
    table: numbers
    where: {{i: 1}}
    column: x
    reduce: count
    min: 1
    max: 1
  - name: mean of x
    stage: nums
    table: numbers
    column: x
    reduce: mean
    min: 7.75
    max: 7.75
  - name: only rows
    stage: nums
    table: numbers
    column: x
    profiles: [ci]
  - name: no such table
    stage: nums
    table: nope
    column: x
profiles:
  ci: {{}}
"
    );
    let path = sb.write("checks.yaml", &yaml);
    let spec = PipelineSpec::load(&path).unwrap();
    e2h_engine::check::validate_checks(&spec).unwrap();
    let plan = Plan::build(&spec, &sb.registry, None).unwrap();
    let checks = &spec.file.checks;
    let before = checks[0].evaluate(&plan, &sb.cache);
    assert!(!before.passed && before.detail.contains("no valid cache entry"), "{before}");

    sb.run(&plan);
    let results: Vec<_> = checks.iter().map(|c| c.evaluate(&plan, &sb.cache)).collect();
    // x = 0.5 i + 7 for i < 4: total 31, mean 7.75.
    assert!(results[0].passed, "{}", results[0]);
    assert_eq!(results[0].measured, Some(31.0));
    assert!(!results[1].passed && results[1].measured == Some(31.0), "{}", results[1]);
    assert!(results[1].to_string().starts_with("FAIL"));
    assert!(results[2].passed, "{}", results[2]);
    assert!(results[3].passed, "{}", results[3]);
    assert!(!checks[4].applies_to("default") && checks[4].applies_to("ci"));
    assert!(!results[4].passed && results[4].detail.contains("4 rows match"), "{}", results[4]);
    assert!(!results[5].passed && results[5].detail.contains("no table `nope`"), "{}", results[5]);
}

#[test]
fn yaml_merge_keys_are_applied_even_when_chained() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "\
name: merges
stages:
  a:
    kind: toy.numbers
    params: &base {n: 3, scale: 0.5}
  b:
    kind: toy.numbers
    params: &mid
      <<: *base
      n: 4
  c:
    kind: toy.numbers
    params:
      <<: *mid
      label: c
  d:
    kind: toy.numbers
    params:
      <<: [{label: d}, *mid]
      scale: 0.25
",
        None,
    );
    let params = |n: &str| plan.stages.iter().find(|s| s.name == n).unwrap().params.clone();
    assert_eq!(params("a"), serde_json::json!({"label": "", "n": 3, "scale": 0.5, "window": null}));
    assert_eq!(params("b"), serde_json::json!({"label": "", "n": 4, "scale": 0.5, "window": null}));
    assert_eq!(params("c"), serde_json::json!({"label": "c", "n": 4, "scale": 0.5, "window": null}));
    assert_eq!(params("d"), serde_json::json!({"label": "d", "n": 4, "scale": 0.25, "window": null}));
}

#[test]
fn stage_error_leaves_no_entry_and_no_tmp() {
    let sb = Sandbox::new();
    let yaml = "\
name: failing
stages:
  nums: {kind: toy.numbers, params: {n: 3}}
  broken:
    kind: toy.fail
    inputs: {xs: nums}
    params: {message: deliberate failure}
";
    let plan = sb.plan(yaml, None);
    for attempt in 1..=2 {
        let err = Runner::new(&sb.registry, &sb.cache, RunOptions::default()).run(&plan).unwrap_err();
        match &err {
            EngineError::StageFailed { stage, source } => {
                assert_eq!(stage, "broken");
                assert_eq!(source.to_string(), "deliberate failure");
            }
            other => panic!("expected StageFailed, got {other:?}"),
        }
        assert_eq!(err.to_string(), "stage `broken` failed: deliberate failure");
        assert_eq!(sb.entry_dirs(), [key(&plan, "nums")], "attempt {attempt}");
        assert!(sb.tmp_dirs().is_empty(), "attempt {attempt}: {:?}", sb.tmp_dirs());
        assert!(matches!(sb.cache.status(&key(&plan, "broken")), EntryStatus::Missing));
        assert!(sb.cache.read_index("failing", "default", "broken").is_none());
        assert_eq!(count(&sb.executions(), "run toy.fail broken"), attempt);
        assert_eq!(count(&sb.executions(), "run toy.numbers nums"), 1, "the upstream stays cached");
    }
}

#[test]
fn gc_keeps_referenced_keys_and_removes_the_rest() {
    let sb = Sandbox::new();
    let old = sb.plan(BASIC, None);
    sb.run(&old);
    let new = sb.plan(&BASIC.replace("n: 4", "n: 5"), None);
    sb.run(&new);
    assert_eq!(sb.entry_dirs().len(), 5);
    let keep: BTreeSet<String> = new.stages.iter().map(|s| s.key.clone()).collect();
    let stale: BTreeSet<String> = [key(&old, "nums"), key(&old, "total")].into();

    let root = sb.cache.root();
    let fake = "f".repeat(64);
    let kept_key = key(&new, "total");
    fs::create_dir_all(root.join("tmp").join(format!("{fake}.999999.0"))).unwrap();
    fs::create_dir_all(root.join("tmp").join(format!("{kept_key}.999999.0"))).unwrap();
    fs::create_dir_all(sb.cache.scratch_dir(&key(&old, "nums"))).unwrap();
    fs::create_dir_all(sb.cache.scratch_dir(&kept_key)).unwrap();
    // A live run of an unreferenced key: its lock is held and its tmp dir must survive.
    let live = "e".repeat(64);
    let held = sb.cache.lock(&live).unwrap();
    let live_tmp = root.join("tmp").join(format!("{live}.1.0"));
    fs::create_dir_all(&live_tmp).unwrap();

    let removed: BTreeSet<String> = sb.cache.gc(&keep).unwrap().into_iter().collect();
    assert_eq!(removed, stale);
    assert_eq!(sb.entry_dirs().into_iter().collect::<BTreeSet<_>>(), keep);
    for k in &keep {
        assert!(matches!(sb.cache.status(k), EntryStatus::Valid(_)), "gc damaged a kept entry");
    }
    assert!(!root.join("tmp").join(format!("{fake}.999999.0")).exists(), "stray tmp dir kept");
    // No run holds the kept key's lock: its tmp dir is a killed run's leftover
    // (its scratch dir, resumable state, is what is kept).
    assert!(!root.join("tmp").join(format!("{kept_key}.999999.0")).exists(), "leftover tmp dir of a kept key kept");
    assert!(!sb.cache.scratch_dir(&key(&old, "nums")).exists());
    assert!(sb.cache.scratch_dir(&kept_key).exists());
    assert!(live_tmp.exists(), "gc removed the tmp dir of a run holding its lock");
    drop(held);
    assert_eq!(sb.run(&new).ran(), 0);
    assert_eq!(sb.cache.gc(&keep).unwrap(), Vec::<String>::new());
    assert!(!live_tmp.exists(), "unlocked stray tmp dir kept");
}

/// `gc` deletes the lock files of unreferenced keys (holding each while it does).
/// A run that opened such a file just before and then obtained its lock holds a
/// lock on a deleted file, which excludes no one: `Cache::lock` must notice and
/// take the lock again on the file now at that path.
#[test]
fn a_lock_on_a_lock_file_deleted_by_gc_is_not_trusted() {
    use std::sync::mpsc;
    let sb = Sandbox::new();
    let k = "a".repeat(64);
    let path = sb.cache.root().join("locks").join(format!("{k}.lock"));
    // Play gc: hold the lock file's lock, as gc's try_lock does.
    let gc_handle = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
    gc_handle.lock().unwrap();
    let (cache, k) = (&sb.cache, k.as_str());
    std::thread::scope(|s| {
        let (first_tx, first_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        s.spawn(move || {
            // Opens the file now, then blocks on its lock.
            let lock = cache.lock(k).unwrap();
            first_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
            drop(lock);
        });
        std::thread::sleep(Duration::from_millis(150)); // let the run block on the lock
        fs::remove_file(&path).unwrap(); // gc deletes the file while holding its lock...
        drop(gc_handle); // ...and releases it: the run now locks a deleted file
        first_rx.recv_timeout(Duration::from_secs(10)).expect("the first run never got the lock");

        let (second_tx, second_rx) = mpsc::channel();
        s.spawn(move || {
            let lock = cache.lock(k).unwrap();
            second_tx.send(()).unwrap();
            drop(lock);
        });
        let overlapped = second_rx.recv_timeout(Duration::from_millis(300)).is_ok();
        release_tx.send(()).unwrap();
        assert!(!overlapped, "two runs held the lock of the same key at once");
        second_rx.recv_timeout(Duration::from_secs(10)).expect("the second run never got the lock");
    });
}

// ---------------------------------------------------------------------------
// Child processes: the test binary re-executes itself to run `child_runner`.

const CHILD_ENV: &str = "E2H_ENGINE_TEST_CHILD";

/// Not a test: the body of the child processes spawned below. Inert unless
/// the parent sets the environment.
#[test]
#[ignore = "helper of the kill and concurrency tests, run in a child process"]
fn child_runner() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let dir = Path::new(&dir);
    let time_scale: f64 = std::env::var("E2H_ENGINE_TEST_TIME_SCALE").map_or(1.0, |s| s.parse().unwrap());
    let registry = toy_registry(&dir.join("executions.log"), time_scale);
    let path = dir.join("pipeline.yaml");
    let plan = load_plan(&path, fs::read_to_string(&path).unwrap(), &registry, None).unwrap();
    let cache = Cache::open(dir.join("cache")).unwrap();
    // Report a failed run as `cargo xtask` does: the message and a non-zero exit.
    if let Err(e) = Runner::new(&registry, &cache, RunOptions::default()).run(&plan) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn spawn_child(sb: &Sandbox, quiet: bool) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["child_runner", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, sb.path())
        .stdin(Stdio::null());
    if quiet {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    cmd.spawn().expect("spawn the test binary")
}

/// Waits until the execution log has `n` lines starting with `prefix`.
fn wait_for_log(sb: &Sandbox, prefix: &str, n: usize, children: &mut [&mut Child]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&sb.executions(), prefix) < n {
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("child exited early ({status}) before `{prefix}` x{n}");
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for `{prefix}` x{n}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const SLOW: &str = "name: slow\nstages:\n  crawl:\n    kind: toy.slow\n    params: {millis: 4000}\n";

#[test]
fn killed_run_leaves_no_entry_and_a_rerun_completes() {
    let sb = Sandbox::new();
    sb.write("pipeline.yaml", SLOW);
    let plan = sb.plan(SLOW, None);
    let key = key(&plan, "crawl");
    let seed: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    for round in 1..=3 {
        let mut child = spawn_child(&sb, true);
        wait_for_log(&sb, "start toy.slow crawl", round, &mut [&mut child]);
        let delay = rng.random_range(0..300);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL: no destructor, no cleanup
        child.wait().unwrap();
        let ctx = format!("round {round}, killed {delay} ms into the stage (rng seed {seed})");

        assert!(!sb.cache.entry_dir(&key).exists(), "{ctx}: an entry appeared");
        assert!(sb.entry_dirs().is_empty(), "{ctx}: entries/ = {:?}", sb.entry_dirs());
        assert!(matches!(sb.cache.status(&key), EntryStatus::Missing), "{ctx}");
        assert!(sb.cache.keys().unwrap().is_empty(), "{ctx}");
        assert_eq!(count(&sb.executions(), "end toy.slow"), 0, "{ctx}: the stage finished before the kill");
        // The partial output is left in tmp/ only, never where readers look.
        let tmp = sb.tmp_dirs();
        assert!(tmp.len() <= 1 && tmp.iter().all(|t| t.starts_with(&format!("{key}."))), "{ctx}: {tmp:?}");
        for t in &tmp {
            assert!(!sb.cache.root().join("tmp").join(t).join(META_FILE).exists(), "{ctx}");
        }
        assert_eq!(reason(&sb.dry_run(&plan), "crawl"), RunReason::Missing, "{ctx}");
    }
    // The lock died with the process; a rerun (fast: time does not enter the key) completes.
    let fast = toy_registry(&sb.log, 0.0);
    let report = sb.run_opts(&fast, &plan, RunOptions::default());
    assert_eq!(report.ran(), 1);
    assert!(matches!(sb.cache.status(&key), EntryStatus::Valid(_)));
    assert!(sb.tmp_dirs().is_empty(), "stale tmp dirs of the key are removed: {:?}", sb.tmp_dirs());
    assert_eq!(count(&sb.executions(), "end toy.slow"), 1);
    assert_eq!(sb.run_opts(&fast, &plan, RunOptions::default()).ran(), 0);
}

#[test]
fn concurrent_runs_compute_each_stage_once() {
    let sb = Sandbox::new();
    let yaml = "\
name: concurrent
stages:
  crawl:
    kind: toy.slow
    params: {millis: 600}
  nums:
    kind: toy.numbers
    params: {n: 5}
  total:
    kind: toy.sum
    inputs: {xs: nums}
";
    sb.write("pipeline.yaml", yaml);
    let plan = sb.plan(yaml, None);
    let mut a = spawn_child(&sb, false);
    let mut b = spawn_child(&sb, false);
    wait_for_log(&sb, "start toy.slow crawl", 1, &mut [&mut a, &mut b]);
    // Both processes are alive while the stage is computed: they overlap.
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent run failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = sb.executions();
    assert_eq!(count(&log, "start toy.slow crawl"), 1, "{log:?}");
    assert_eq!(count(&log, "run toy.numbers nums"), 1, "{log:?}");
    assert_eq!(count(&log, "run toy.sum total"), 1, "{log:?}");
    for s in &plan.stages {
        assert!(matches!(sb.cache.status(&s.key), EntryStatus::Valid(_)), "{}", s.name);
    }
    assert!(sb.tmp_dirs().is_empty(), "{:?}", sb.tmp_dirs());
    assert_eq!(sb.run(&plan).ran(), 0);
}

#[test]
fn concurrent_threads_compute_each_stage_once() {
    let sb = Sandbox::new();
    let yaml = "name: threads\nstages:\n  crawl:\n    kind: toy.slow\n    params: {millis: 300}\n";
    let plan = sb.plan(yaml, None);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Runner::new(&sb.registry, &sb.cache, RunOptions::default()).run(&plan).map(|_| ())))
            .collect();
        for r in runs {
            r.join().unwrap().unwrap();
        }
    });
    assert_eq!(count(&sb.executions(), "start toy.slow crawl"), 1, "{:?}", sb.executions());
    assert!(matches!(sb.cache.status(&key(&plan, "crawl")), EntryStatus::Valid(_)));
}

// ---------------------------------------------------------------------------
// A full disk, unprivileged: the child runs under a file size limit
// (RLIMIT_FSIZE), so a write() past it fails with EFBIG where a full disk fails
// with ENOSPC. The engine's own write paths (a table, `meta.json`) must fail
// with an error naming the stage and entry, and leave the cache consistent.

/// The child's largest file: 32 blocks of 512 bytes (POSIX `ulimit -f` units).
const FILE_SIZE_LIMIT_BLOCKS: u64 = 32;
const FILE_SIZE_LIMIT_BYTES: u64 = FILE_SIZE_LIMIT_BLOCKS * 512;

/// Runs `child_runner` on the sandbox's pipeline under the file size limit.
#[cfg(unix)]
fn run_child_with_file_size_limit(sb: &Sandbox) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    // SIGXFSZ would kill the child at the limit; ignored (which survives exec),
    // write() returns EFBIG instead, and that error is what the engine must handle.
    let script = r#"trap '' XFSZ; ulimit -f "$1" && exec "$0" child_runner --exact --ignored --nocapture --test-threads 1"#;
    Command::new("sh")
        .args(["-c", script])
        .arg(exe)
        .arg(FILE_SIZE_LIMIT_BLOCKS.to_string())
        .env(CHILD_ENV, sb.path())
        .stdin(Stdio::null())
        .output()
        .expect("spawn sh")
}

/// Every entry present verifies (what `cargo xtask cache verify` checks).
fn assert_cache_verifies(sb: &Sandbox) {
    for k in sb.cache.keys().unwrap() {
        if let EntryStatus::Corrupt(reason) = sb.cache.status(&k) {
            panic!("entry {k} is corrupt: {reason}");
        }
    }
}

/// Size of every file of the entry of `key`.
fn entry_file_sizes(sb: &Sandbox, key: &str) -> Vec<(String, u64)> {
    let dir = sb.cache.entry_dir(key);
    list(&dir).into_iter().map(|f| (f.clone(), fs::metadata(dir.join(&f)).unwrap().len())).collect()
}

/// Runs the pipeline in a child under the file size limit, expects `failing` to
/// fail with a message containing `expected`, checks the cache is left
/// consistent with exactly `committed` entries, and reruns without the limit.
#[cfg(unix)]
fn full_disk_case(yaml: &str, failing: &str, committed: &[&str], expected: &[String]) {
    let sb = Sandbox::new();
    sb.write("pipeline.yaml", yaml);
    let plan = sb.plan(yaml, None);
    let out = run_child_with_file_size_limit(&sb);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a reported error and exit 1, got {}:\n{stderr}", out.status);
    let message = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    eprintln!("{failing} under a {FILE_SIZE_LIMIT_BYTES} B file size limit: {message}");
    for part in expected {
        assert!(message.contains(part.as_str()), "`{part}` missing from the error:\n{message}");
    }

    // Consistent: the entries committed before the failure and nothing else, no
    // temporary directory, and the failed stage simply missing.
    let mut want: Vec<String> = committed.iter().map(|s| key(&plan, s)).collect();
    want.sort();
    assert_eq!(sb.entry_dirs(), want, "{message}");
    assert_cache_verifies(&sb);
    assert!(sb.tmp_dirs().is_empty(), "left in tmp/: {:?}", sb.tmp_dirs());
    assert!(matches!(sb.cache.status(&key(&plan, failing)), EntryStatus::Missing));
    assert!(sb.cache.read_index(&plan.pipeline, &plan.profile, failing).is_none());
    assert_eq!(reason(&sb.dry_run(&plan), failing), RunReason::Missing);

    // With space again, a rerun computes what is missing and only that.
    let report = sb.run(&plan);
    assert_eq!(report.ran(), plan.stages.len() - committed.len());
    // Execution log lines read `run <kind> <instance> ...`.
    let runs_of = |name: &str| sb.executions().iter().filter(|l| l.split_whitespace().nth(2) == Some(name)).count();
    for s in &plan.stages {
        assert!(matches!(sb.cache.status(&s.key), EntryStatus::Valid(_)), "{}", s.name);
    }
    assert_eq!(runs_of(failing), 2, "the failed stage runs again: {:?}", sb.executions());
    for s in committed {
        // Committed entries are reused, and the limit did not touch them.
        assert!(matches!(outcome(&report, s), StageOutcome::Cached), "{s}");
        assert_eq!(runs_of(s), 1, "{s}: {:?}", sb.executions());
        for (file, bytes) in entry_file_sizes(&sb, &key(&plan, s)) {
            assert!(bytes < FILE_SIZE_LIMIT_BYTES, "{s}/{file} ({bytes} B) is over the limit: the case is not what it claims");
        }
    }
    assert!(sb.tmp_dirs().is_empty(), "{:?}", sb.tmp_dirs());
    assert_cache_verifies(&sb);
}

#[cfg(unix)]
#[test]
fn full_disk_while_writing_a_table_fails_cleanly_and_a_rerun_completes() {
    let yaml = "\
name: full-disk
stages:
  small: {kind: toy.numbers, params: {n: 3}}
  total: {kind: toy.sum, inputs: {xs: small}}
  wide: {kind: toy.numbers, params: {n: 10000}}
";
    let plan = Sandbox::new().plan(yaml, None);
    let wide = key(&plan, "wide");
    full_disk_case(
        yaml,
        "wide",
        &["small", "total"],
        &[
            format!("stage `wide`: cannot write cache entry {wide}"),
            "cannot write table `numbers`".into(),
            "numbers.parquet: File too large".into(),
        ],
    );
}

#[cfg(unix)]
#[test]
fn full_disk_while_writing_entry_metadata_fails_cleanly_and_a_rerun_completes() {
    // A long label: the table stays small, but `meta.json` (params, recorded info) exceeds the limit.
    let label = "x".repeat(2 * FILE_SIZE_LIMIT_BYTES as usize);
    let yaml = format!(
        "name: full-disk-meta\nstages:\n  nums: {{kind: toy.numbers, params: {{n: 3}}}}\n  verbose: {{kind: toy.numbers, params: {{n: 3, label: {label}}}}}\n"
    );
    let plan = Sandbox::new().plan(&yaml, None);
    let verbose = key(&plan, "verbose");
    full_disk_case(
        &yaml,
        "verbose",
        &["nums"],
        &[format!("stage `verbose`: cannot write cache entry {verbose}"), META_FILE.into(), "File too large".into()],
    );
}

#[test]
fn the_real_pipeline_file_parses() {
    let path = manifest_dir().join("../../pipelines/fig2-mcm-easy-to-hard.yaml");
    let spec = PipelineSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
    e2h_engine::check::validate_checks(&spec).unwrap_or_else(|e| panic!("{e}"));
    assert!(!spec.file.stages.is_empty());
    for (name, stage) in &spec.file.stages {
        assert!(stage.kind.contains('.'), "stage `{name}` has kind `{}`", stage.kind);
        assert!(!stage.params.contains_key("<<"), "merge key of `{name}` not applied");
    }
}

/// This crate's folder, as `cargo test` sets it when the test runs (not when it
/// was compiled: one test binary may serve another clone through a shared target).
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}

#[test]
fn resources_resolve_stage_then_profile_and_never_change_keys() {
    let sb = Sandbox::new();
    let with = BASIC.replace("    params: {n: 2}\n", "    params: {n: 2}\n    resources: {cpus: 2, mem: 4G, partition: short}\n")
        + "profiles:\n  big:\n    stages: {other: {resources: {cpus: 8, time: '1-00:00:00'}}}\n";
    let plain = sb.plan(BASIC, None);
    let small = sb.plan(&with, None);
    let big = sb.plan(&with, Some("big"));
    for s in &plain.stages {
        assert_eq!(s.key, key(&small, &s.name), "resources changed the key of `{}`", s.name);
        assert_eq!(s.key, key(&big, &s.name), "a profile's resources changed the key of `{}`", s.name);
    }
    let of = |plan: &Plan, name: &str| plan.stages.iter().find(|s| s.name == name).unwrap().resources.clone();
    assert!(of(&plain, "other").is_empty());
    assert_eq!(
        of(&small, "other"),
        e2h_engine::Resources { cpus: Some(2), mem: Some("4G".into()), partition: Some("short".into()), ..Default::default() }
    );
    assert_eq!(
        of(&big, "other"),
        e2h_engine::Resources {
            cpus: Some(8),
            mem: Some("4G".into()),
            time: Some("1-00:00:00".into()),
            partition: Some("short".into()),
            ..Default::default()
        }
    );
    assert!(of(&big, "nums").is_empty(), "another stage's resources leaked");
}

#[test]
fn one_instance_runs_alone_once_its_upstream_is_cached() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    let runner = Runner::new(&sb.registry, &sb.cache, RunOptions::default());
    let index = |name: &str| plan.stages.iter().position(|s| s.name == name).unwrap();

    // Downstream first: refused, naming the upstream, and nothing computed.
    let err = runner.run_instance(&plan, index("total")).unwrap_err();
    assert!(matches!(err, EngineError::UpstreamNotReady { .. }), "{err}");
    assert_eq!(err.to_string(), "stage `total` cannot run: its upstream `nums` is not ready: it has no cache entry");
    assert!(sb.executions().is_empty(), "{:?}", sb.executions());

    let up = runner.run_instance(&plan, index("nums")).unwrap();
    assert_eq!(up.outcome, StageOutcome::Run(RunReason::Missing));
    let down = runner.run_instance(&plan, index("total")).unwrap();
    assert!(matches!(down.outcome, StageOutcome::Run(_)), "{:?}", down.outcome);
    // A second job for the same key reuses the entry.
    assert_eq!(runner.run_instance(&plan, index("nums")).unwrap().outcome, StageOutcome::Cached);
    assert_eq!(sb.executions().len(), 2, "{:?}", sb.executions());
    assert_eq!(count(&sb.executions(), "run toy.numbers nums"), 1);
    // `other` was never asked for; the whole plan now only computes it.
    let report = sb.run(&plan);
    assert_eq!(report.ran(), 1);
    assert!(matches!(outcome(&report, "other"), StageOutcome::Run(_)));
}
