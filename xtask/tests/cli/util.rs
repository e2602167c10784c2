//! A throwaway project root and a way to run the xtask binary in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A figure whose only stage is a few hundred pSGD steps in dimension 16
/// (a tenth of a second), with one claim and one regression table.
pub const TINY_FIGURE: &str = "\
name: fig9-tiny
description: a test figure
stages:
  sim:
    kind: mcm.trajectories
    seed: 11
    params: {d: 16, coupling: none, delta: 0.5, n_max_over_d: 20, grid_points: 5, replicas: 2, n_test: 50}
profiles:
  ci: {}
checks:
  - name: the learned threshold is the one asked for
    stage: sim
    table: summary
    column: learned_threshold
    min: 0.5
    max: 0.5
regression:
  - stage: sim
    table: by_n
    rtol: 1.0e-12
    why: bit-identical for a fixed seed; the tolerance only lets a test perturb below it
";

/// The pipeline file of the tiny figure, where `cargo xtask figure 9` finds it.
pub const TINY_FIGURE_FILE: &str = "pipelines/fig9-tiny.yaml";

/// A project root under the system temp dir, removed on drop (kept when the
/// test failed, for a look).
pub struct TestRoot {
    path: PathBuf,
}

impl TestRoot {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("e2h-xtask-test-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("pipelines")).expect("create the test root");
        TestRoot { path }
    }

    /// A root holding the tiny figure.
    pub fn with_tiny_figure(name: &str) -> Self {
        let root = TestRoot::new(name);
        root.write(TINY_FIGURE_FILE, TINY_FIGURE);
        root
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn cache(&self) -> PathBuf {
        self.path.join("cache")
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let p = self.path.join(relative);
        fs::create_dir_all(p.parent().expect("a file has a parent")).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }

    /// `xtask --root <root> --cache <root>/cache <args>`, run in the root.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        self.configure(&mut cmd, args);
        cmd
    }

    /// Adds the root, cache and `args` to `cmd` (which runs xtask, perhaps through a shell).
    pub fn configure(&self, cmd: &mut Command, args: &[&str]) {
        cmd.arg("--root")
            .arg(&self.path)
            .arg("--cache")
            .arg(self.cache())
            .args(args)
            .current_dir(&self.path)
            .env_remove("E2H_ROOT")
            .env_remove("E2H_CACHE")
            .env("E2H_LOG", "warn")
            .env("NO_COLOR", "1");
    }

    pub fn xtask(&self, args: &[&str]) -> Run {
        Run::of(args.join(" "), self.command(args).output().expect("run the xtask binary"))
    }

    /// Names under `<cache>/<sub>/`, sorted.
    pub fn cache_listing(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.cache().join(sub))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The full key of the only entry whose key starts with `prefix`.
    #[track_caller]
    pub fn entry_key(&self, prefix: &str) -> String {
        let keys: Vec<String> = self.cache_listing("entries").into_iter().filter(|k| k.starts_with(prefix)).collect();
        assert_eq!(keys.len(), 1, "entries starting with {prefix}: {keys:?}");
        keys[0].clone()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test root kept at {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The outcome of one xtask invocation.
pub struct Run {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(args: String, out: Output) -> Self {
        Run {
            args,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit 0.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "`xtask {}` failed\n{self}", self.args);
        self
    }

    /// Asserts exit 1 (an error reported by xtask, not a crash or a signal).
    #[track_caller]
    pub fn failure(self) -> Self {
        assert_eq!(self.code, Some(1), "`xtask {}` should fail with exit 1\n{self}", self.args);
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "`xtask {}`: stdout lacks `{text}`\n{self}", self.args);
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "`xtask {}`: stderr lacks `{text}`\n{self}", self.args);
        self
    }

    /// The 12-character key prefix `run`/`figure` prints for `stage`.
    pub fn printed_key(&self, stage: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                (words.len() >= 3 && words[1] == stage).then(|| words[2].to_string())
            })
            .unwrap_or_else(|| panic!("no line for stage `{stage}`\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit: {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Whether a Slurm cluster answers (`sinfo` lists a partition that is up).
/// Where none does, a test that needs one fails under CI (`CI` set, as
/// `.ci/run` does after starting the local cluster) and is skipped elsewhere.
pub fn slurm_cluster(test: &str) -> bool {
    // Asked once: with Slurm installed but no controller, `sinfo` retries for a minute.
    static UP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let up = *UP.get_or_init(|| {
        Command::new("sinfo")
            .args(["--noheader", "--format=%a"])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "up"))
    });
    if up {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{test}: no Slurm cluster answers `sinfo`, and CI is set (.ci/run starts one with ../shared/slurm/start-local-slurm.sh)");
    eprintln!("skipping {test}: no Slurm cluster answers `sinfo` (start one with shared/slurm/start-local-slurm.sh, as root)");
    false
}
