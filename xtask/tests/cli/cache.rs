//! `cargo xtask cache ls|verify|gc`.

use std::fs;

use crate::util::TestRoot;

/// A pipeline outside `pipelines/`: its entry is referenced by no current pipeline.
const ORPHAN: &str = "\
name: orphan
stages:
  sim:
    kind: mcm.trajectories
    seed: 12
    params: {d: 16, coupling: none, delta: 0.5, n_max_over_d: 20, grid_points: 5, replicas: 2, n_test: 50}
";

#[test]
fn ls_verify_and_gc_report_and_clean_the_cache() {
    let root = TestRoot::with_tiny_figure("cache");
    let figure = root.xtask(&["figure", "9", "--profile", "ci"]).success();
    let figure_key = root.entry_key(&figure.printed_key("sim"));
    let orphan_file = root.write("elsewhere/orphan.yaml", ORPHAN);
    let orphan = root.xtask(&["run", orphan_file.to_str().unwrap()]).success();
    let orphan_key = root.entry_key(&orphan.printed_key("sim"));

    // ls: one line per entry, with its pipeline and stage.
    let ls = root.xtask(&["cache", "ls"]).success();
    for (key, pipeline) in [(&figure_key, "fig9-tiny"), (&orphan_key, "orphan")] {
        let line = ls.stdout.lines().find(|l| l.starts_with(&key[..12])).unwrap_or_else(|| panic!("{key} not listed\n{ls}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1..3], [pipeline, "sim"], "{line}");
    }
    ls.stdout_has("total ");
    root.xtask(&["cache", "verify"]).success().stdout_has("2 valid, 0 corrupt");

    // One flipped byte in a table: verify names the entry and the file, and fails.
    let table = root.cache().join("entries").join(&figure_key).join("by_n.parquet");
    let mut bytes = fs::read(&table).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&table, bytes).unwrap();
    let expected = format!("corrupt {figure_key}: {}: content hash mismatch", table.display());
    root.xtask(&["cache", "verify"]).failure().stdout_has(&expected).stdout_has("1 valid, 1 corrupt").stderr_has(
        "error: 1 corrupt cache entries (rerun with --fix to remove them)",
    );
    root.xtask(&["cache", "ls"]).success().stdout_has(&format!("{}  CORRUPT: {}", &figure_key[..12], table.display()));

    // The next run warns, naming the entry, and recomputes it.
    root.xtask(&["figure", "9", "--profile", "ci"])
        .success()
        .stderr_has(&format!("cache entry {figure_key} of stage `sim` is corrupt"))
        .stdout_has("(corrupt entry: ");
    root.xtask(&["cache", "verify"]).success().stdout_has("2 valid, 0 corrupt");

    // gc keeps what pipelines/ references and removes the orphan.
    let dry = root.xtask(&["cache", "gc", "--dry-run"]).success();
    dry.stdout_has(&format!("would remove {orphan_key}"));
    assert!(!dry.stdout.contains(&figure_key), "{dry}");
    assert_eq!(root.cache_listing("entries").len(), 2, "a dry run removed something");
    root.xtask(&["cache", "gc"]).success().stdout_has("removed 1 entries");
    assert_eq!(root.cache_listing("entries"), std::slice::from_ref(&figure_key));
    assert!(root.cache_listing("tmp").is_empty(), "{:?}", root.cache_listing("tmp"));
    root.xtask(&["cache", "verify"]).success().stdout_has("1 valid, 0 corrupt");
    root.xtask(&["figure", "9", "--profile", "ci"]).success().stdout_has("cached   sim");
}

#[test]
fn verify_fix_removes_a_truncated_entry() {
    let root = TestRoot::with_tiny_figure("verify-fix");
    let figure = root.xtask(&["figure", "9", "--profile", "ci"]).success();
    let key = root.entry_key(&figure.printed_key("sim"));
    let table = root.cache().join("entries").join(&key).join("summary.parquet");
    let len = fs::metadata(&table).unwrap().len();
    fs::OpenOptions::new().write(true).open(&table).unwrap().set_len(len / 2).unwrap();
    root.xtask(&["cache", "verify", "--fix"])
        .success()
        .stdout_has(&format!("corrupt {key}: {}: {} bytes, expected {len}", table.display(), len / 2))
        .stdout_has("  removed");
    assert!(root.cache_listing("entries").is_empty());
    root.xtask(&["figure", "9", "--profile", "ci"]).success().stdout_has("ran      sim");
    root.xtask(&["cache", "verify"]).success().stdout_has("1 valid, 0 corrupt");
}
