//! Results of other code: `--dry-run` says which code changed, `cache ls`
//! flags them, `cache adopt` reuses one on purpose, `check` recomputes them.

use std::fs;

use e2h_engine::table::{column_f64, read_parquet, write_parquet};
use e2h_engine::{Cache, EntryStatus};
use polars::prelude::*;

use crate::util::TestRoot;

const TABLE: &str = "by_n.parquet";
const COLUMN: &str = "abs_m_u_median";

/// Turns the entry of `key` into what an older `e2h-mcm` would have left: the
/// same stage under another key, made by other code, with a different
/// `by_n` table (so that a check that vouched for it would fail), and the
/// index recording that key as the last run. Returns the old key.
fn as_if_made_by_older_code(root: &TestRoot, key: &str) -> String {
    let cache = Cache::open(root.cache()).unwrap();
    let EntryStatus::Valid(meta) = cache.status(key) else { panic!("entry {key} is not valid") };
    let mut meta = *meta;
    let old_key: String = key.chars().rev().collect();
    let old_mcm = "0".repeat(64);
    meta.key = old_key.clone();
    meta.code.insert("e2h-mcm".into(), old_mcm.clone());
    let pending = cache.begin(&old_key).unwrap();
    for name in meta.files.keys() {
        fs::copy(cache.entry_dir(key).join(name), pending.dir().join(name)).unwrap();
    }
    let table = pending.dir().join(TABLE);
    let mut df = read_parquet(&table).unwrap();
    let values: Vec<f64> = column_f64(&df, COLUMN).unwrap().iter().map(|v| v * 1.5 + 0.01).collect();
    df.with_column(Column::new(COLUMN.into(), values)).unwrap();
    write_parquet(&mut df, &table, &[]).unwrap();
    pending.commit(meta).unwrap();
    cache.discard(key).unwrap();
    let mut index = cache.read_index("fig9-tiny", "ci", "sim").expect("an index record of the run");
    index.key = old_key.clone();
    index.code.insert("e2h-mcm".into(), old_mcm);
    cache.write_index("fig9-tiny", "ci", "sim", &index).unwrap();
    old_key
}

fn ls_line(root: &TestRoot, key: &str) -> String {
    let ls = root.xtask(&["cache", "ls"]).success();
    ls.stdout.lines().find(|l| l.starts_with(&key[..12])).unwrap_or_else(|| panic!("{key} not listed\n{ls}")).to_string()
}

#[test]
fn a_result_of_other_code_is_explained_flagged_and_never_checked() {
    let root = TestRoot::with_tiny_figure("stale");
    root.xtask(&["check", "--bless"]).success();
    let key = root.entry_key("");
    assert!(!ls_line(&root, &key).contains("other code"), "{}", ls_line(&root, &key));
    let old_key = as_if_made_by_older_code(&root, &key);

    root.xtask(&["figure", "9", "--profile", "ci", "--dry-run"])
        .success()
        .stdout_has(&format!("  run      {:<40} {}  (code changed (e2h-mcm))", "sim", &key[..12]));
    assert!(ls_line(&root, &old_key).ends_with("  made by other code (e2h-mcm)"), "{}", ls_line(&root, &old_key));

    // The stale table would fail the baseline: check recomputes it instead.
    root.xtask(&["check"]).success().stdout_has("ran  sim (code changed (e2h-mcm))").stdout_has("2 passed, 0 failed");
    assert!(!ls_line(&root, &key).contains("other code"), "{}", ls_line(&root, &key));
}

#[test]
fn adopt_reuses_a_result_of_other_code_on_purpose_and_check_still_recomputes_it() {
    let root = TestRoot::with_tiny_figure("adopt");
    root.xtask(&["check", "--bless"]).success();
    let key = root.entry_key("");
    let old_key = as_if_made_by_older_code(&root, &key);

    root.xtask(&["cache", "adopt", "nope", "--figure", "9", "--profile", "ci"])
        .failure()
        .stderr_has("no stage `nope` in ");
    root.xtask(&["cache", "adopt", "sim", "--figure", "9", "--profile", "ci", "--by", "A. Tester"])
        .success()
        .stdout_has(&format!("adopted  {:<40} {} -> {}  (code changed (e2h-mcm); by A. Tester at ", "sim", &old_key[..12], &key[..12]))
        .stdout_has("recorded in its meta.json");
    let dir = |k: &str| root.cache().join("entries").join(k);
    assert_eq!(fs::read(dir(&key).join(TABLE)).unwrap(), fs::read(dir(&old_key).join(TABLE)).unwrap(), "bytes kept");
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir(&key).join("meta.json")).unwrap()).unwrap();
    let record = &meta["adopted"][0];
    assert_eq!(record["by"], "A. Tester");
    assert_eq!(record["from_key"], old_key.as_str());
    assert_eq!(record["from_code"]["e2h-mcm"], "0".repeat(64).as_str());
    assert_ne!(record["to_code"]["e2h-mcm"], record["from_code"]["e2h-mcm"]);
    assert_eq!(meta["code"]["e2h-mcm"], "0".repeat(64).as_str(), "the entry says which code made it");
    root.xtask(&["cache", "adopt", "sim", "--figure", "9", "--profile", "ci"])
        .success()
        .stdout_has("current  sim")
        .stdout_has("(adopted earlier; nothing to adopt)");

    // Reused, and said so; flagged by ls.
    root.xtask(&["figure", "9", "--profile", "ci"])
        .success()
        .stdout_has(&format!("  cached   {:<40} {}  (adopted: made by other code (e2h-mcm))", "sim", &key[..12]));
    assert!(ls_line(&root, &key).ends_with("  adopted; made by other code (e2h-mcm)"), "{}", ls_line(&root, &key));

    // check does not vouch for it: it recomputes (the adopted table would fail the baseline).
    root.xtask(&["check"])
        .success()
        .stdout_has("ran  sim (adopted entry made by other code (e2h-mcm))")
        .stdout_has("2 passed, 0 failed");
    assert!(!ls_line(&root, &key).contains("adopted"), "{}", ls_line(&root, &key));
    let again = root.xtask(&["check"]).success();
    assert!(!again.stdout.contains("ran  sim"), "{again}");
}
