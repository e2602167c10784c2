//! The project root is found when xtask runs (issue: a binary shared between
//! clones through one CARGO_TARGET_DIR wrote into the clone it was built in).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{Run, TestRoot, TINY_FIGURE_FILE};

/// The tiny figure plus a plot stage that publishes, in a folder that looks
/// like a project (a workspace manifest beside pipelines/).
fn tiny_project(name: &str) -> TestRoot {
    let root = TestRoot::new(name);
    root.write("Cargo.toml", "[workspace]\nmembers = []\n");
    root.write(
        TINY_FIGURE_FILE,
        "\
name: fig9-tiny
stages:
  sim:
    kind: mcm.trajectories
    seed: 11
    params: {d: 16, coupling: none, delta: 0.5, n_max_over_d: 20, grid_points: 5, replicas: 2, n_test: 50}
  figure:
    kind: plot.figure
    inputs: {sim: sim}
    publish: figures/fig9
    params:
      title: tiny
      panels:
        - {title: overlaps, input: sim, table: by_n, x: n_over_d, series: [{y: abs_m_u_median}]}
profiles:
  ci: {}
",
    );
    root
}

/// xtask without --root, E2H_ROOT or E2H_CACHE, run in `cwd`; `manifest_dir`
/// stands for the CARGO_MANIFEST_DIR that `cargo run` would set (none: unset,
/// as when the binary is started by hand).
fn xtask_in(cwd: &Path, manifest_dir: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("E2H_ROOT")
        .env_remove("E2H_CACHE")
        .env("E2H_LOG", "warn")
        .env("NO_COLOR", "1");
    match manifest_dir {
        Some(dir) => cmd.env("CARGO_MANIFEST_DIR", dir),
        None => cmd.env_remove("CARGO_MANIFEST_DIR"),
    };
    Run::of(args.join(" "), cmd.output().expect("run the xtask binary"))
}

fn assert_outputs_in(project: &TestRoot) {
    let entries = project.cache_listing("entries");
    assert_eq!(entries.len(), 2, "both stages cached in the copy: {entries:?}");
    assert!(project.path().join("figures/fig9-ci.png").is_file(), "the figure is published in the copy");
}

#[test]
fn the_root_is_the_project_above_the_working_directory() {
    let project = tiny_project("cwd");
    let sub = project.path().join("pipelines");
    xtask_in(&sub, None, &["figure", "9", "--profile", "ci"]).success();
    assert_outputs_in(&project);
}

#[test]
fn the_root_is_the_parent_of_the_run_time_manifest_dir() {
    let project = tiny_project("manifest");
    let elsewhere = tempfile::tempdir().unwrap();
    xtask_in(elsewhere.path(), Some(&project.path().join("xtask")), &["figure", "9", "--profile", "ci"]).success();
    assert_outputs_in(&project);
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing written where it ran");
}

#[test]
fn a_manifest_dir_outside_any_project_is_ignored_for_the_working_directory() {
    let project = tiny_project("foreign-manifest");
    let foreign = tempfile::tempdir().unwrap();
    xtask_in(project.path(), Some(&foreign.path().join("some-crate")), &["figure", "9", "--profile", "ci"]).success();
    assert_outputs_in(&project);
}

#[test]
fn outside_any_project_the_error_says_how_to_point_at_one() {
    let nowhere = tempfile::tempdir().unwrap();
    let run = xtask_in(nowhere.path(), None, &["figure", "9"]).failure();
    run.stderr_has("cannot find the project").stderr_has("--root").stderr_has("E2H_ROOT");
}
