//! Code fingerprints in keys: a result is reused only if the code that made it
//! is the code that runs now, unless a user adopts it explicitly.

mod common;

use std::fs;

use common::*;
use e2h_engine::adopt::{adopt, AdoptOutcome};
use e2h_engine::plan::Plan;
use e2h_engine::runner::{RunOptions, RunReason};
use e2h_engine::{EngineError, EntryStatus, Registry, RunReport, StageOutcome};

fn index(plan: &Plan, name: &str) -> usize {
    plan.stages.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no stage instance `{name}`"))
}

fn key(plan: &Plan, name: &str) -> String {
    plan.stages[index(plan, name)].key.clone()
}

fn report_of<'a>(report: &'a RunReport, name: &str) -> &'a e2h_engine::runner::StageReport {
    report.stages.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no report for `{name}`"))
}

fn reason(report: &RunReport, name: &str) -> RunReason {
    match &report_of(report, name).outcome {
        StageOutcome::Run(r) => r.clone(),
        StageOutcome::Cached => panic!("`{name}` is cached, expected it to run"),
    }
}

fn meta(sb: &Sandbox, key: &str) -> e2h_engine::cache::EntryMeta {
    match sb.cache.status(key) {
        EntryStatus::Valid(m) => *m,
        other => panic!("entry {key} is not valid: {other:?}"),
    }
}

fn dry(sb: &Sandbox, registry: &Registry, plan: &Plan) -> RunReport {
    sb.run_opts(registry, plan, RunOptions { dry_run: true, ..RunOptions::default() })
}

#[test]
fn keys_change_with_exactly_the_code_their_kinds_depend_on() {
    let sb = Sandbox::new();
    let base = sb.plan_with(&toy_registry_with_code(&sb.log, "a", "a"), BASIC, None);
    let changed = |science: &str, plot: &str| -> Vec<&'static str> {
        let plan = sb.plan_with(&toy_registry_with_code(&sb.log, science, plot), BASIC, None);
        ["nums", "other", "total"].into_iter().filter(|n| key(&base, n) != key(&plan, n)).collect()
    };
    assert_eq!(changed("a", "a"), Vec::<&str>::new());
    // The science code: both numbers stages, and the sum downstream of one of them.
    assert_eq!(changed("b", "a"), ["nums", "other", "total"]);
    // The plotting code: the sum only.
    assert_eq!(changed("a", "b"), ["total"]);
    // Declared code is part of the key.
    let plain = sb.plan(BASIC, None);
    assert_ne!(key(&plain, "nums"), key(&base, "nums"));
    assert_eq!(base.stages[index(&base, "nums")].code.get("toy-science").map(String::as_str), Some("a"));
}

#[test]
fn dry_run_says_which_code_changed_and_a_run_recomputes_only_that() {
    let sb = Sandbox::new();
    let old = toy_registry_with_code(&sb.log, "a", "a");
    let plan = sb.plan_with(&old, BASIC, None);
    sb.run_opts(&old, &plan, RunOptions::default());
    assert_eq!(meta(&sb, &key(&plan, "nums")).code.get("toy-science").map(String::as_str), Some("a"));

    let science = toy_registry_with_code(&sb.log, "b", "a");
    let plan_b = sb.plan_with(&science, BASIC, None);
    let report = dry(&sb, &science, &plan_b);
    assert_eq!(reason(&report, "nums"), RunReason::CodeChanged(vec!["toy-science".into()]));
    assert_eq!(reason(&report, "nums").to_string(), "code changed (toy-science)");
    assert_eq!(reason(&report, "other"), RunReason::CodeChanged(vec!["toy-science".into()]));
    assert_eq!(reason(&report, "total"), RunReason::UpstreamChanged(vec!["xs".into()]));

    let plot = toy_registry_with_code(&sb.log, "a", "b");
    let plan_p = sb.plan_with(&plot, BASIC, None);
    let report = dry(&sb, &plot, &plan_p);
    assert_eq!(report_of(&report, "nums").outcome, StageOutcome::Cached);
    assert_eq!(report_of(&report, "other").outcome, StageOutcome::Cached);
    assert_eq!(reason(&report, "total").to_string(), "code changed (toy-plot)");

    let before = sb.executions().len();
    assert_eq!(sb.run_opts(&plot, &plan_p, RunOptions::default()).ran(), 1);
    assert_eq!(sb.executions()[before..], ["run toy.sum total"]);
    assert_eq!(dry(&sb, &plot, &plan_p).ran(), 0);
}

#[test]
fn adopt_keeps_the_bytes_and_records_who_when_and_from_which_code() {
    let sb = Sandbox::new();
    let old = toy_registry_with_code(&sb.log, "a", "a");
    let plan = sb.plan_with(&old, BASIC, None);
    sb.run_opts(&old, &plan, RunOptions::default());
    let old_key = key(&plan, "nums");
    let old_meta = meta(&sb, &old_key);

    let new = toy_registry_with_code(&sb.log, "b", "a");
    let plan_b = sb.plan_with(&new, BASIC, None);
    let new_key = key(&plan_b, "nums");
    let outcome = adopt(&sb.cache, &plan_b, index(&plan_b, "nums"), "A. Tester").unwrap();
    let AdoptOutcome::Adopted { from_key, changed, record } = outcome else { panic!("not adopted: {outcome:?}") };
    assert_eq!((from_key.as_str(), changed.as_slice()), (old_key.as_str(), ["toy-science".to_string()].as_slice()));

    let adopted = meta(&sb, &new_key);
    assert_eq!(adopted.files, old_meta.files, "the files changed");
    for name in old_meta.files.keys() {
        let bytes = |k: &str| fs::read(sb.cache.entry_dir(k).join(name)).unwrap();
        assert_eq!(bytes(&new_key), bytes(&old_key), "{name}");
    }
    assert_eq!(adopted.code, old_meta.code, "the entry must say which code made it");
    assert_eq!(adopted.adopted, std::slice::from_ref(&record));
    assert_eq!(record.by, "A. Tester");
    assert_eq!(record.from_key, old_key);
    assert_eq!(record.from_code.get("toy-science").map(String::as_str), Some("a"));
    assert_eq!(record.to_code.get("toy-science").map(String::as_str), Some("b"));
    assert!(record.at.starts_with("20") && record.at.ends_with('Z'), "{}", record.at);
    let on_disk = fs::read_to_string(sb.cache.entry_dir(&new_key).join("meta.json")).unwrap();
    assert!(on_disk.contains("\"adopted\"") && on_disk.contains("A. Tester"), "{on_disk}");
    assert!(matches!(sb.cache.status(&old_key), EntryStatus::Valid(_)), "the adopted entry is kept");

    // `other` was not adopted and reruns; `nums` is reused, flagged as adopted;
    // `total` is computed by the current code from the adopted table.
    let before = sb.executions().len();
    let report = sb.run_opts(&new, &plan_b, RunOptions::default());
    assert_eq!(report_of(&report, "nums").outcome, StageOutcome::Cached);
    assert_eq!(report_of(&report, "nums").adopted, Some(vec!["toy-science".to_string()]));
    assert_eq!(reason(&report, "other"), RunReason::CodeChanged(vec!["toy-science".into()]));
    let mut ran = sb.executions()[before..].to_vec();
    ran.sort();
    assert_eq!(ran, ["run toy.numbers other seed=0", "run toy.sum total"]);

    // Adopting again finds the current entry.
    assert_eq!(
        adopt(&sb.cache, &plan_b, index(&plan_b, "nums"), "A. Tester").unwrap(),
        AdoptOutcome::AlreadyCurrent { adopted: true }
    );
    assert_eq!(
        adopt(&sb.cache, &plan_b, index(&plan_b, "other"), "A. Tester").unwrap(),
        AdoptOutcome::AlreadyCurrent { adopted: false }
    );
    // Nothing was ever computed with these params: nothing to adopt.
    let n5 = sb.plan_with(&new, &BASIC.replace("n: 4", "n: 5"), None);
    let err = adopt(&sb.cache, &n5, index(&n5, "nums"), "A. Tester").unwrap_err();
    assert!(matches!(&err, EngineError::Adopt { stage, .. } if stage == "nums"), "{err}");
    assert!(err.to_string().contains("no valid entry of kind `toy.numbers`"), "{err}");
}

#[test]
fn downstream_entries_are_adopted_after_their_upstream() {
    let sb = Sandbox::new();
    let old = toy_registry_with_code(&sb.log, "a", "a");
    let plan = sb.plan_with(&old, BASIC, None);
    sb.run_opts(&old, &plan, RunOptions::default());
    let new = toy_registry_with_code(&sb.log, "b", "a");
    let plan_b = sb.plan_with(&new, BASIC, None);

    // `total`'s own code did not change, but it was made from the old `nums`.
    let err = adopt(&sb.cache, &plan_b, index(&plan_b, "total"), "me").unwrap_err();
    assert!(err.to_string().contains("adopt its upstream stages first"), "{err}");
    adopt(&sb.cache, &plan_b, index(&plan_b, "nums"), "me").unwrap();
    let outcome = adopt(&sb.cache, &plan_b, index(&plan_b, "total"), "me").unwrap();
    assert!(matches!(&outcome, AdoptOutcome::Adopted { changed, .. } if changed.is_empty()), "{outcome:?}");
    let total = meta(&sb, &key(&plan_b, "total"));
    assert_eq!(total.inputs["xs"], [key(&plan_b, "nums")]);
    let before = sb.executions().len();
    sb.run_opts(&new, &plan_b, RunOptions::default());
    assert_eq!(sb.executions()[before..], ["run toy.numbers other seed=0"]);
}

#[test]
fn recompute_adopted_replaces_adopted_entries_and_what_was_made_from_them() {
    let sb = Sandbox::new();
    let old = toy_registry_with_code(&sb.log, "a", "a");
    let plan = sb.plan_with(&old, BASIC, None);
    sb.run_opts(&old, &plan, RunOptions::default());
    let new = toy_registry_with_code(&sb.log, "b", "a");
    let plan_b = sb.plan_with(&new, BASIC, None);
    adopt(&sb.cache, &plan_b, index(&plan_b, "nums"), "me").unwrap();
    // A normal run trusts the adoption; `total` is made from the adopted table.
    sb.run_opts(&new, &plan_b, RunOptions::default());
    assert!(meta(&sb, &key(&plan_b, "total")).adopted.is_empty());

    // What `check` does: the adopted entry is recomputed, and `total`, whose key
    // does not change, with it.
    let strict = RunOptions { recompute_adopted: true, ..RunOptions::default() };
    let before = sb.executions().len();
    let report = sb.run_opts(&new, &plan_b, strict.clone());
    assert_eq!(reason(&report, "nums"), RunReason::Adopted(vec!["toy-science".into()]));
    assert_eq!(reason(&report, "nums").to_string(), "adopted entry made by other code (toy-science)");
    assert_eq!(reason(&report, "total"), RunReason::UpstreamChanged(vec!["xs".into()]));
    assert_eq!(report_of(&report, "other").outcome, StageOutcome::Cached);
    assert_eq!(sb.executions()[before..], ["run toy.numbers nums seed=7", "run toy.sum total"]);
    let nums = meta(&sb, &key(&plan_b, "nums"));
    assert!(nums.adopted.is_empty());
    assert_eq!(nums.code.get("toy-science").map(String::as_str), Some("b"));
    assert_eq!(sb.run_opts(&new, &plan_b, strict).ran(), 0);
}
