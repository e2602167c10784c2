//! Careless and hostile pipeline files and command lines, through the binary.

use std::fs;
use std::process::Stdio;

use crate::util::{TestRoot, TINY_FIGURE};

/// The tiny figure's simulation and a plot of it published at `publish`.
fn plotted(name: &str, publish: &str) -> String {
    format!(
        "\
name: {name}
stages:
  sim:
    kind: mcm.trajectories
    seed: 11
    params: {{d: 16, coupling: none, delta: 0.5, n_max_over_d: 20, grid_points: 5, replicas: 2, n_test: 50}}
  figure:
    kind: plot.figure
    inputs: {{sim: sim}}
    publish: {publish}
    params:
      title: tiny
      panels:
        - {{input: sim, table: by_n, x: n_over_d, series: [{{y: abs_m_u_median}}]}}
"
    )
}

#[test]
fn publish_outside_the_figures_folder_is_refused_and_nothing_is_written() {
    let root = TestRoot::new("publish-outside");
    let parent = root.path().parent().unwrap().to_path_buf();
    for publish in ["''", ".", "..", "../escaped", "/tmp/e2h-escaped", "cache/entries/x"] {
        let file = root.write("pipelines/escape.yaml", &plotted("escape", publish));
        let run = root.xtask(&["run", file.to_str().unwrap()]).failure();
        run.stderr_has("field `stages.figure.publish`").stderr_has("must be a path under figures/");
    }
    // `publish: .` used to write `<parent>/<root name>.png`, `..` wrote into the parent's parent.
    assert!(!root.path().with_extension("png").exists());
    assert!(!parent.join("escaped.png").exists());
    assert!(!std::path::Path::new("/tmp/e2h-escaped.png").exists());
    // A pipeline named `..` is refused before any index file is written.
    let file = root.write("pipelines/dots.yaml", &plotted("'..'", "figures/dots"));
    root.xtask(&["run", file.to_str().unwrap()]).failure().stderr_has("field `name`: pipeline name `..`");
    assert!(!root.path().join("cache/index").exists() || fs::read_dir(root.path().join("cache/index")).unwrap().count() == 0);
}

#[test]
fn two_pipelines_publishing_the_same_figure_are_refused_naming_both() {
    let root = TestRoot::new("publish-collision");
    root.write("pipelines/fig7-first.yaml", &plotted("fig7-first", "figures/fig7"));
    let copy = root.write("elsewhere/ablation.yaml", &plotted("my-ablation", "figures/fig7"));
    let run = root.xtask(&["run", copy.to_str().unwrap(), "--dry-run"]).failure();
    run.stderr_has("field `stages.figure.publish`")
        .stderr_has("`figures/fig7`")
        .stderr_has("pipeline `fig7-first`")
        .stderr_has("pipelines/fig7-first.yaml");
    // Under another profile the copy publishes with a suffix: no collision.
    let with_profile = plotted("my-ablation", "figures/fig7") + "profiles:\n  ci: {}\n";
    let copy = root.write("elsewhere/ablation.yaml", &with_profile);
    root.xtask(&["run", copy.to_str().unwrap(), "--dry-run", "--profile", "ci"]).success();
}

#[test]
fn overwriting_a_committed_figure_from_an_uncommitted_pipeline_needs_a_flag() {
    let root = TestRoot::new("tracked");
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "git {args:?}");
    };
    if std::process::Command::new("git").arg("--version").output().is_err() {
        eprintln!("git not found: skipped");
        return;
    }
    git(&["init", "-q"]);
    root.write("figures/old.png", "committed");
    git(&["add", "figures/old.png"]);
    git(&["commit", "-q", "-m", "a figure"]);
    let file = root.write("scratch.yaml", &plotted("scratch", "figures/old"));
    root.xtask(&["run", file.to_str().unwrap(), "--dry-run"])
        .failure()
        .stderr_has("would overwrite `figures/old.png`, a committed figure")
        .stderr_has("--overwrite-tracked");
    root.xtask(&["run", file.to_str().unwrap(), "--dry-run", "--overwrite-tracked"]).success();
}

#[test]
fn size_params_beyond_their_range_or_the_budget_are_refused_even_in_a_dry_run() {
    let root = TestRoot::with_tiny_figure("bounds");
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("d: 16", "d: 1000000000000")], "field `stages.sim.params.d`"),
        (&[("replicas: 2", "replicas: 1000000000")], "field `stages.sim.params.replicas`"),
        (&[("d: 16", "d: 1000000"), ("replicas: 2", "replicas: 1000")], "budget of 8.0 GiB per stage"),
        (&[("grid_points: 5", "grid_points: 10000000")], "field `stages.sim.params.grid_points`"),
        (&[("delta: 0.5", "delta: 1.0e7")], "field `stages.sim.params.delta`"),
        (&[("n_max_over_d: 20", "n_max_over_d: 1.0e300")], "field `stages.sim.params.n_max_over_d`"),
        (&[("n_test: 50", "n_test: 1000000000")], "field `stages.sim.params.n_test`"),
    ];
    for (edits, expected) in cases {
        let yaml = edits.iter().fold(TINY_FIGURE.to_string(), |y, (from, to)| y.replace(from, to));
        root.write("pipelines/fig9-tiny.yaml", &yaml);
        let run = root.xtask(&["figure", "9", "--profile", "ci", "--dry-run"]).failure();
        run.stderr_has(expected);
        assert!(!run.stderr.contains("panicked"), "{run}");
    }
    // Three sweeps of 1,000 values: refused at once, with the count.
    let values = (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let swept = TINY_FIGURE.replace(
        "    seed: 11\n",
        &format!("    seed: 11\n    sweep:\n      d: [{values}]\n      replicas: [{values}]\n      n_test: [{values}]\n"),
    );
    root.write("pipelines/fig9-tiny.yaml", &swept);
    root.xtask(&["figure", "9", "--dry-run"]).failure().stderr_has("1000000000 stage instances");
}

#[test]
fn a_split_over_a_continuous_column_is_refused_with_the_count() {
    let root = TestRoot::new("split");
    let yaml = plotted("split", "figures/split").replace(
        "{input: sim, table: by_n, x: n_over_d,",
        "{input: sim, table: trajectory, split: m_u, x: n_over_d,",
    ).replace("y: abs_m_u_median", "y: m_v").replace("grid_points: 5, replicas: 2", "grid_points: 40, replicas: 4");
    let file = root.write("pipelines/split.yaml", &yaml);
    root.xtask(&["run", file.to_str().unwrap()])
        .failure()
        .stderr_has("`split: m_u` would draw one panel per distinct value: ")
        .stderr_has("values, but at most 64 panels in a figure are drawn");
}

#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    let root = TestRoot::with_tiny_figure("pipe");
    root.xtask(&["figure", "9", "--profile", "ci"]).success();
    let mut cmd = root.command(&["figure", "9", "--profile", "ci", "--print", "sim/trajectory"]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The reader goes away before the program writes (`| head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0) | Some(141)), "{:?}\n{stderr}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn force_stage_and_print_name_what_exists() {
    let root = TestRoot::with_tiny_figure("names");
    root.xtask(&["figure", "9", "--profile", "ci", "--force-stage", "smi"])
        .failure()
        .stderr_has("no stage named `smi` in this pipeline; its stages: sim");
    let swept = TINY_FIGURE.replace("    seed: 11\n", "    seed: 11\n    sweep: {beta_v: [3, 5]}\n");
    root.write("pipelines/fig9-tiny.yaml", &swept);
    let run = root.xtask(&["figure", "9", "--profile", "ci", "--print", "sim[beta_v=5]/summary"]).success();
    run.stdout_has("sim[beta_v=5] / summary:");
    assert!(!run.stdout.contains("sim[beta_v=3] / summary"), "{run}");
    root.xtask(&["figure", "9", "--profile", "ci", "--print", "sim[beta_v=5]/sumary"])
        .failure()
        .stderr_has("has no table `sumary`; its tables: by_n, summary, theory, trajectory");
    root.xtask(&["figure", "9", "--profile", "ci", "--print", "sim[beta_v=4]/summary"])
        .failure()
        .stderr_has("instances: sim[beta_v=3], sim[beta_v=5]");
}

#[test]
fn cache_verify_reports_leftovers_and_entries_that_are_not_directories_and_fix_repairs_them() {
    let root = TestRoot::with_tiny_figure("recovery");
    let figure = root.xtask(&["figure", "9", "--profile", "ci"]).success();
    let key = root.entry_key(&figure.printed_key("sim"));
    let leftover = root.cache().join("tmp").join(format!("{key}.99999.0"));
    fs::create_dir_all(&leftover).unwrap();
    let entry = root.cache().join("entries").join(&key);
    fs::remove_dir_all(&entry).unwrap();
    fs::write(&entry, "a file where an entry was").unwrap();
    root.xtask(&["cache", "verify"])
        .failure()
        .stdout_has(&format!("corrupt {key}: {}: not a directory", entry.display()))
        .stdout_has(&format!("leftover temporary {}", leftover.display()))
        .stdout_has("0 valid, 1 corrupt, 1 leftover temporary");
    root.xtask(&["cache", "verify", "--fix"]).success();
    root.xtask(&["cache", "verify"]).success().stdout_has("0 valid, 0 corrupt, 0 leftover temporary");
    // The runner also recovers by itself.
    fs::write(&entry, "again").unwrap();
    root.xtask(&["figure", "9", "--profile", "ci"]).success().stdout_has("(corrupt entry: ");
    root.xtask(&["cache", "verify"]).success().stdout_has("1 valid, 0 corrupt, 0 leftover temporary");
}

#[test]
fn logs_have_no_colour_codes_when_not_at_a_terminal() {
    let root = TestRoot::with_tiny_figure("colour");
    let mut cmd = root.command(&["figure", "9", "--profile", "ci"]);
    cmd.env_remove("NO_COLOR").env("E2H_LOG", "info");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("running"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn plot_columns_are_checked_against_the_upstream_kind_at_plan_time() {
    let root = TestRoot::new("plot-columns");
    let typo = plotted("typo", "figures/typo").replace("y: abs_m_u_median", "y: abs_m_w_median");
    let file = root.write("pipelines/typo.yaml", &typo);
    let run = root.xtask(&["run", file.to_str().unwrap(), "--dry-run"]).failure();
    run.stderr_has("typo.yaml:14:")
        .stderr_has("field `stages.figure.params.panels.0.series.0.y`")
        .stderr_has("table `by_n` of input `sim` has no column `abs_m_w_median`; its columns: n, n_over_d, abs_m_u_q25");
    let table = plotted("table", "figures/table").replace("table: by_n", "table: by_m");
    let file = root.write("pipelines/table.yaml", &table);
    root.xtask(&["run", file.to_str().unwrap(), "--dry-run"])
        .failure()
        .stderr_has("input `sim` has no table `by_m`; its tables: trajectory, by_n, by_role, theory, summary");
    let input = plotted("input", "figures/input").replace("{input: sim,", "{input: simm,");
    let file = root.write("pipelines/input.yaml", &input);
    root.xtask(&["run", file.to_str().unwrap(), "--dry-run"]).failure().stderr_has("no input named `simm`; this stage's inputs: sim");
    // A swept param is a column of the upstream's tables: `by` and `split` may name it.
    let by = plotted("by", "figures/by")
        .replace("    seed: 11\n", "    seed: 11\n    sweep: {beta_v: [3, 5]}\n")
        .replace("y: abs_m_u_median}", "y: abs_m_u_median, by: beta_v}");
    let file = root.write("pipelines/by.yaml", &by);
    root.xtask(&["run", file.to_str().unwrap(), "--dry-run"]).success();
}

#[test]
fn kinds_lists_every_kind_and_a_kind_s_params_and_columns() {
    let root = TestRoot::new("kinds");
    let all = root.xtask(&["kinds"]).success();
    for kind in ["mcm.trajectories", "mcm.recovery", "mcm.scaling_fit", "mcm.population", "plot.figure"] {
        all.stdout_has(kind);
    }
    let one = root.xtask(&["kinds", "mcm.trajectories"]).success();
    one.stdout_has("delta")
        .stdout_has("(0, 1000]")
        .stdout_has("replicas")
        .stdout_has("default 16")
        .stdout_has("  by_n:")
        .stdout_has("abs_m_v_median");
    root.xtask(&["kinds", "mcm.trajectory"]).failure().stderr_has("no stage kind `mcm.trajectory`; known kinds: ");
}

#[test]
fn every_column_is_defined_and_swept_params_are_columns() {
    let root = TestRoot::with_tiny_figure("columns");
    let swept = TINY_FIGURE.replace("    seed: 11\n", "    seed: 11\n    sweep: {beta_v: [3, 5]}\n");
    root.write("pipelines/fig9-tiny.yaml", &swept);
    root.xtask(&["figure", "9", "--profile", "ci"]).success();
    for key in root.cache_listing("entries") {
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(root.cache().join("entries").join(&key).join("meta.json")).unwrap()).unwrap();
        for (table, t) in meta["tables"].as_object().unwrap() {
            let file = root.cache().join("entries").join(&key).join(t["file"].as_str().unwrap());
            let df = e2h_engine::table::read_parquet(&file).unwrap();
            let names: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
            assert!(names.iter().any(|c| c == "beta_v"), "{table}: {names:?}");
            for c in &names {
                assert!(t["columns"][c].is_string(), "table {table}: column {c} has no definition");
            }
            // The definitions are in each Arrow field's metadata too (what pyarrow shows).
            use polars::prelude::SerReader;
            let schema = polars::prelude::ParquetReader::new(fs::File::open(&file).unwrap()).schema().unwrap();
            for field in schema.iter_values() {
                let description = field.metadata.as_ref().and_then(|m| m.get("description").map(|d| d.to_string()));
                assert_eq!(description.as_deref(), t["columns"][field.name.as_str()].as_str(), "{table}.{}", field.name);
            }
        }
    }
}

#[test]
fn two_forced_runs_at_once_both_succeed() {
    let root = TestRoot::new("forced");
    root.write("pipelines/fig8-plotted.yaml", &plotted("fig8-plotted", "figures/fig8"));
    root.xtask(&["figure", "8"]).success();
    for _ in 0..3 {
        let children: Vec<_> = (0..2)
            .map(|_| root.command(&["figure", "8", "--force"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    root.xtask(&["cache", "verify"]).success().stdout_has("2 valid, 0 corrupt, 0 leftover temporary");
}
