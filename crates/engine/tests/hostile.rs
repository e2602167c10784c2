//! Careless and hostile pipelines: nothing escapes the project, nothing
//! exhausts the machine, and the cache recovers from what interrupted runs
//! and hands leave behind.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use e2h_engine::runner::RunOptions;
use e2h_engine::{EngineError, EntryStatus, Footprint, ParamIssue, Registry, Runner, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

/// Plans `yaml` and returns the error, which must be a located one.
#[track_caller]
fn plan_error(sb: &Sandbox, registry: &Registry, yaml: &str) -> e2h_engine::Located {
    let path = sb.write("pipeline.yaml", yaml);
    match load_plan(&path, yaml.to_string(), registry, None) {
        Ok(_) => panic!("planned, but should not:\n{yaml}"),
        Err(e) => e.location().cloned().unwrap_or_else(|| panic!("not a located error: {e}")),
    }
}

fn with_publish(publish: &str) -> String {
    format!("name: p\nstages:\n  nums:\n    kind: toy.numbers\n    params: {{n: 2}}\n  total:\n    kind: toy.sum\n    inputs: {{xs: nums}}\n    publish: {publish}\n")
}

#[test]
fn publish_stems_outside_the_figures_folder_are_located_errors() {
    let sb = Sandbox::new();
    for publish in ["''", ".", "..", "../x", "figures/../../x", "/tmp/e2h-escape", "cache/entries/x", "figures", "figures/", "pipelines/x", "figures/a/./b"] {
        let err = plan_error(&sb, &sb.registry, &with_publish(publish));
        assert_eq!(err.field, "stages.total.publish", "{publish}: {err}");
        assert_eq!(err.line, 9, "{publish}: {err}");
        assert!(err.message.contains("figures/"), "{publish}: {err}");
    }
    sb.plan(&with_publish("figures/sub/total"), None);
    // A profile's publish is checked too, and located there.
    let yaml = format!("{}profiles:\n  ci:\n    stages:\n      total: {{publish: ../../ci}}\n", with_publish("figures/t"));
    let path = sb.write("pipeline.yaml", &yaml);
    let err = load_plan(&path, yaml.clone(), &sb.registry, Some("ci")).unwrap_err();
    assert_eq!(err.location().unwrap().field, "profiles.ci.stages.total.publish", "{err}");
}

#[test]
fn names_that_become_file_names_are_checked() {
    let sb = Sandbox::new();
    let base = with_publish("figures/t");
    let err = plan_error(&sb, &sb.registry, &base.replace("name: p", "name: '..'"));
    assert_eq!(err.field, "name", "{err}");
    let err = plan_error(&sb, &sb.registry, &format!("{base}profiles:\n  \"ci/../..\": {{}}\n"));
    assert_eq!(err.field, "profiles.ci/../..", "{err}");
    let long = "s".repeat(300);
    let err = plan_error(&sb, &sb.registry, &base.replace("  nums:", &format!("  {long}:")).replace("xs: nums", &format!("xs: {long}")));
    assert!(err.message.contains("300 characters"), "{err}");
}

#[test]
fn publish_collisions_name_both_stages_and_sweeps_publish_one_file_per_instance() {
    let sb = Sandbox::new();
    let yaml = "name: c\nstages:\n  a:\n    kind: toy.numbers\n    params: {n: 2}\n  s1:\n    kind: toy.sum\n    inputs: {xs: a}\n    publish: figures/same\n  s2:\n    kind: toy.sum\n    inputs: {xs: a}\n    publish: figures/same\n";
    let err = plan_error(&sb, &sb.registry, yaml);
    assert!(err.message.contains("`s1`") && err.message.contains("`s2`") && err.message.contains("figures/same"), "{err}");
    assert_eq!(err.field, "stages.s2.publish");

    // A swept stage that publishes: one file per instance, the sweep point in its name.
    let swept = "name: w\nstages:\n  a:\n    kind: toy.numbers\n    params: {n: 2}\n  s:\n    kind: toy.sum\n    inputs: {xs: a}\n    sweep: {column: [x, i]}\n    publish: figures/sum\n";
    let plan = sb.plan(swept, None);
    let targets: Vec<&str> = plan.stages.iter().filter_map(|s| s.publish.as_deref()).collect();
    assert_eq!(targets, ["figures/sum-column=x", "figures/sum-column=i"]);
    let root = sb.path().join("project");
    let report = sb.run_opts(&sb.registry, &plan, RunOptions { publish_root: Some(root.clone()), ..Default::default() });
    assert_eq!(report.published, [root.join("figures/sum-column=x.txt"), root.join("figures/sum-column=i.txt")]);
}

#[cfg(unix)]
#[test]
fn a_figures_folder_linked_elsewhere_is_refused_at_publish() {
    let sb = Sandbox::new();
    let plan = sb.plan(&with_publish("figures/total"), None);
    let root = sb.path().join("project");
    let elsewhere = sb.path().join("elsewhere");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("figures")).unwrap();
    let err = Runner::new(&sb.registry, &sb.cache, RunOptions { publish_root: Some(root.clone()), ..Default::default() })
        .run(&plan)
        .unwrap_err();
    assert!(matches!(err, EngineError::PublishOutside { .. }), "{err}");
    assert!(list(&elsewhere).is_empty(), "{:?}", list(&elsewhere));

    // A cache kept inside figures/ is never published into.
    let root2 = sb.path().join("project2");
    fs::create_dir_all(root2.join("figures")).unwrap();
    let cache = e2h_engine::Cache::open(root2.join("figures")).unwrap();
    let err = Runner::new(&sb.registry, &cache, RunOptions { publish_root: Some(root2.clone()), ..Default::default() })
        .run(&plan)
        .unwrap_err();
    assert!(matches!(err, EngineError::PublishOutside { .. }), "{err}");
}

#[test]
fn instances_are_counted_before_they_are_built() {
    let sb = Sandbox::new();
    let values = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    // 30 x 30 x 30 = 27,000 instances: over the limit of 10,000.
    let yaml = format!(
        "name: big\nstages:\n  nums:\n    kind: toy.numbers\n    params: {{n: 1}}\n    sweep:\n      n: [{}]\n      scale: [{}]\n      label: [{}]\n",
        values(30),
        values(30).replace(", ", ", -"),
        values(30)
    );
    let err = plan_error(&sb, &sb.registry, &yaml);
    assert_eq!(err.field, "stages.nums.sweep", "{err}");
    assert!(err.message.contains("27000 stage instances") && err.message.contains("10000"), "{err}");
    // 10^9 (three lists of 1,000) is refused as quickly: nothing is built.
    let yaml = format!(
        "name: big\nstages:\n  nums:\n    kind: toy.numbers\n    params: {{n: 1}}\n    sweep:\n      n: [{}]\n      scale: [{}]\n      label: [{}]\n",
        values(1000),
        values(1000),
        values(1000)
    );
    let err = plan_error(&sb, &sb.registry, &yaml);
    assert!(err.message.contains("1000000000 stage instances"), "{err}");
}

// A kind that declares its allocation from a param.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocParams {
    bytes: f64,
}

struct Alloc;

impl Stage for Alloc {
    type Params = AllocParams;
    const KIND: &'static str = "toy.alloc";
    const VERSION: &'static str = "1";

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if p.bytes < 0.0 {
            return Err(ParamIssue::new("bytes", "must be >= 0"));
        }
        Ok(())
    }

    fn footprint(p: &Self::Params) -> Footprint {
        Footprint::new(p.bytes, "bytes")
    }

    fn run(&self, _p: Self::Params, _ctx: &mut StageContext) -> Result<(), StageError> {
        panic!("a stage over the budget must never run");
    }
}

#[test]
fn a_stage_over_the_memory_budget_is_refused_at_plan_time() {
    let sb = Sandbox::new();
    let mut registry = toy_registry(&sb.log, 1.0);
    registry.register(Alloc);
    let err = plan_error(&sb, &registry, "name: m\nstages:\n  big:\n    kind: toy.alloc\n    params: {bytes: 1.0e13}\n");
    assert_eq!(err.field, "stages.big.params", "{err}");
    assert!(err.message.contains("9313.2 GiB") || err.message.contains("1.000e13"), "{err}");
    assert!(err.message.contains("budget of 8.0 GiB"), "{err}");
    // Located at the sweep when a swept value is what grows.
    let err = plan_error(&sb, &registry, "name: m\nstages:\n  big:\n    kind: toy.alloc\n    params: {bytes: 1}\n    sweep: {bytes: [1, 1.0e20]}\n");
    assert_eq!(err.field, "stages.big.sweep", "{err}");
    assert!(err.message.contains("`big[bytes="), "{err}");
}

#[test]
fn forcing_an_unknown_stage_is_an_error() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    let err = Runner::new(&sb.registry, &sb.cache, RunOptions { force: vec!["nmus".into()], ..Default::default() })
        .run(&plan)
        .unwrap_err();
    assert!(err.to_string().contains("no stage named `nmus`") && err.to_string().contains("nums"), "{err}");
    assert!(sb.executions().is_empty(), "nothing runs");
}

#[test]
fn a_forced_rerun_never_leaves_readers_without_the_entry() {
    let sb = Sandbox::new();
    let plan = sb.plan("name: f\nstages:\n  slow:\n    kind: toy.slow\n    params: {millis: 30}\n", None);
    sb.run(&plan);
    let key = plan.stages[0].key.clone();
    let table = sb.cache.entry_dir(&key).join("done.parquet");
    // A file opened before the rerun stays readable after it.
    let mut held = fs::File::open(&table).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, misses, table) = (stop.clone(), misses.clone(), table.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::read(&table).is_err() {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for _ in 0..5 {
        sb.run_opts(&sb.registry, &plan, RunOptions { force_all: true, ..Default::default() });
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(misses.load(Ordering::Relaxed), 0, "a reader found the entry missing during a forced rerun");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut bytes).unwrap();
    assert!(!bytes.is_empty());
    assert!(matches!(sb.cache.status(&key), EntryStatus::Valid(_)));
    assert!(sb.tmp_dirs().is_empty(), "{:?}", sb.tmp_dirs());
}

#[test]
fn an_entry_that_is_not_a_directory_is_reported_and_recomputed() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    sb.run(&plan);
    let key = plan.stages.iter().find(|s| s.name == "nums").unwrap().key.clone();
    let dir = sb.cache.entry_dir(&key);
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"not an entry").unwrap();
    match sb.cache.status(&key) {
        EntryStatus::Corrupt(reason) => assert!(reason.contains("not a directory"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let report = sb.run(&plan);
    assert_eq!(report.ran(), 1);
    assert!(matches!(sb.cache.status(&key), EntryStatus::Valid(_)));
    // gc removes one too.
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"not an entry").unwrap();
    sb.cache.gc(&Default::default()).unwrap();
    assert!(sb.entry_dirs().is_empty(), "{:?}", sb.entry_dirs());
}

fn leave_tmp(sb: &Sandbox, name: &str) {
    let p = sb.cache.root().join("tmp").join(name);
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("half.parquet"), b"half").unwrap();
}

#[test]
fn temporary_folders_of_killed_runs_are_listed_and_cleaned() {
    let sb = Sandbox::new();
    let plan = sb.plan(BASIC, None);
    let key = plan.stages[0].key.clone();
    leave_tmp(&sb, &format!("{key}.4242.0"));
    leave_tmp(&sb, "0123abcd.4242.1");
    let stale = sb.cache.stale_tmp().unwrap();
    assert_eq!(stale.len(), 2, "{stale:?}");
    // A run owns a key's folders while it holds the key's lock (taking it
    // removes the key's leftovers): not stale then.
    {
        let _lock = sb.cache.lock("0123abcd").unwrap();
        leave_tmp(&sb, "0123abcd.4242.2");
        let stale = sb.cache.stale_tmp().unwrap();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(stale[0].ends_with(format!("{key}.4242.0")), "{stale:?}");
    }
    assert_eq!(sb.cache.remove_stale_tmp_all().unwrap().len(), 2);
    leave_tmp(&sb, "0123abcd.4242.3");
    sb.cache.gc(&Default::default()).unwrap();
    assert!(sb.tmp_dirs().is_empty(), "{:?}", sb.tmp_dirs());
}

#[test]
fn a_long_sweep_value_gets_an_index_file_of_bounded_name() {
    let sb = Sandbox::new();
    let long = "x".repeat(400);
    let plan = sb.plan(&format!("name: l\nstages:\n  nums:\n    kind: toy.numbers\n    params: {{n: 1}}\n    sweep: {{label: [{long}, y]}}\n"), None);
    sb.run(&plan);
    let name = &plan.stages[0].name;
    assert!(name.len() > 400);
    assert!(sb.cache.read_index("l", "default", name).is_some(), "the index of a long instance name is written and read back");
    assert_eq!(sb.run(&plan).ran(), 0);
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing() {
    let sb = Sandbox::new();
    let deep = format!("name: d\nstages: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let err = plan_error(&sb, &sb.registry, &deep);
    assert!(err.message.contains("nested more than 64"), "{err}");
    assert_eq!((err.line, err.column), (2, 9 + 64), "{err}");
    let mapping = format!("name: d\nstages: {}\n", "{a: ".repeat(1000));
    assert!(plan_error(&sb, &sb.registry, &mapping).message.contains("nested more than 64"));
    // Brackets inside quotes and comments do not count.
    let quoted = format!("name: d\ndescription: '{}' # {}\nstages: {{}}\n", "[".repeat(100), "{".repeat(100));
    let path = sb.write("quoted.yaml", &quoted);
    let err = load_plan(&path, quoted.clone(), &sb.registry, None).err();
    assert!(err.as_ref().is_none_or(|e| !e.to_string().contains("nested")), "{err:?}");
}

// A kind that declares one table but writes another column than declared.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredParams {
    #[serde(default)]
    extra: bool,
}

struct Declared;

impl Stage for Declared {
    type Params = DeclaredParams;
    const KIND: &'static str = "toy.declared";
    const VERSION: &'static str = "1";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        vec![e2h_engine::TableDoc::new("t", &[("a", "the a column"), ("b", "the b column")])]
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        use polars::prelude::*;
        let mut columns = vec![Column::new("a".into(), vec![1.0]), Column::new("b".into(), vec![2.0])];
        if p.extra {
            columns.push(Column::new("c".into(), vec![3.0]));
        }
        let mut df = DataFrame::new_infer_height(columns)?;
        // Only `a` is defined here: `b` takes its declared definition.
        ctx.put_table("t", &mut df, &[("a", "a, defined where written")])?;
        Ok(())
    }
}

#[test]
fn declared_tables_are_enforced_and_fill_in_definitions() {
    let sb = Sandbox::new();
    let mut registry = toy_registry(&sb.log, 1.0);
    registry.register(Declared);
    let plan = sb.plan_with(&registry, "name: d\nstages:\n  s:\n    kind: toy.declared\n", None);
    sb.run_opts(&registry, &plan, RunOptions::default());
    let EntryStatus::Valid(meta) = sb.cache.status(&plan.stages[0].key) else { panic!("no entry") };
    let columns = &meta.tables["t"].columns;
    assert_eq!(columns["a"], "a, defined where written");
    assert_eq!(columns["b"], "the b column");

    let plan = sb.plan_with(&registry, "name: d\nstages:\n  s:\n    kind: toy.declared\n    params: {extra: true}\n", None);
    let err = Runner::new(&registry, &sb.cache, RunOptions::default()).run(&plan).unwrap_err();
    assert!(err.to_string().contains("undeclared [c]"), "{err}");
}
