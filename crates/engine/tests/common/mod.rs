//! Toy stage kinds and isolated sandboxes for the engine's tests.
//!
//! The kinds are deliberately tiny, but they use only the public API a real
//! stage crate uses: `Registry::register`, the `Stage` trait, typed params
//! with `deny_unknown_fields`, `validate`, and `StageContext::put_table`.
//! Every kind appends one line to an execution log when it runs, so tests can
//! count executions, also across processes (appends of one short line are atomic).

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2h_engine::plan::Plan;
use e2h_engine::runner::RunOptions;
use e2h_engine::{
    Cache, CodeFingerprints, EngineError, InputArity, ParamIssue, PipelineSpec, Registry, RunReport, Runner, Stage,
    StageContext, StageError,
};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// Appends `line` to the execution log.
fn log_line(log: &Path, line: &str) {
    let mut f = OpenOptions::new().create(true).append(true).open(log).expect("open execution log");
    f.write_all(format!("{line}\n").as_bytes()).expect("append to execution log");
}

// ---------------------------------------------------------------------------
// toy.numbers: a table of `n` rows, x = scale * i + (seed mod 1000).

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersParams {
    pub n: i64,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub label: String,
    /// A nested parameter, to exercise dotted error paths (`window.hi`).
    #[serde(default)]
    pub window: Option<Window>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub lo: f64,
    pub hi: f64,
}

fn one() -> f64 {
    1.0
}

pub struct Numbers {
    pub log: PathBuf,
}

impl Stage for Numbers {
    type Params = NumbersParams;
    const KIND: &'static str = "toy.numbers";
    const VERSION: &'static str = "1";

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if p.n < 0 {
            return Err(ParamIssue::new("n", format!("n must be >= 0, got {}", p.n)));
        }
        if p.n > 10_000 {
            return Err(ParamIssue::new("n", format!("n must be <= 10000, got {}", p.n)));
        }
        if p.scale > 1.0 {
            return Err(ParamIssue::new("scale", format!("scale must be <= 1, got {}", p.scale)));
        }
        if let Some(w) = &p.window
            && w.lo > w.hi
        {
            return Err(ParamIssue::new("window.hi", format!("window.hi ({}) must be >= window.lo ({})", w.hi, w.lo)));
        }
        Ok(())
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("run toy.numbers {} seed={}", ctx.name(), ctx.seed()));
        numbers_table(&p, ctx)
    }
}

fn numbers_table(p: &NumbersParams, ctx: &mut StageContext) -> Result<(), StageError> {
    let i: Vec<u64> = (0..p.n as u64).collect();
    let offset = (ctx.seed() % 1000) as f64;
    let x: Vec<f64> = i.iter().map(|&i| p.scale * i as f64 + offset).collect();
    let mut df = DataFrame::new_infer_height(vec![Column::new("i".into(), i), Column::new("x".into(), x)])?;
    ctx.put_table("numbers", &mut df, &[("i", "row index"), ("x", "scale * i + seed mod 1000")])?;
    ctx.record("label", p.label.clone());
    Ok(())
}

/// The same kind at another code version, for `KindVersionChanged`.
pub struct NumbersV2 {
    pub log: PathBuf,
}

impl Stage for NumbersV2 {
    type Params = NumbersParams;
    const KIND: &'static str = "toy.numbers";
    const VERSION: &'static str = "2";

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        Numbers::validate(p)
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("run toy.numbers@2 {} seed={}", ctx.name(), ctx.seed()));
        numbers_table(&p, ctx)
    }
}

// ---------------------------------------------------------------------------
// toy.sum: stacks input `xs` (all sweep instances) and sums one column.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumParams {
    #[serde(default = "x_column")]
    pub column: String,
}

fn x_column() -> String {
    "x".into()
}

pub struct Sum {
    pub log: PathBuf,
}

impl Stage for Sum {
    type Params = SumParams;
    const KIND: &'static str = "toy.sum";
    const VERSION: &'static str = "1";
    const INPUTS: InputArity = InputArity::Exactly(&["xs"]);

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("run toy.sum {}", ctx.name()));
        let mut stacked = ctx.input_table("xs", "numbers")?;
        let values = e2h_engine::table::column_f64(&stacked, &p.column)?;
        let total: f64 = values.iter().sum();
        let instances = ctx.input("xs")?.len() as u64;
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("total".into(), vec![total]),
            Column::new("rows".into(), vec![values.len() as u64]),
            Column::new("instances".into(), vec![instances]),
        ])?;
        ctx.put_table("sum", &mut df, &[("total", "sum of the column"), ("rows", "count"), ("instances", "count")])?;
        ctx.put_table("stacked", &mut stacked, &[])?;
        fs::write(ctx.output_path("figure.txt"), format!("total = {total}\n"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// toy.slow: spins in small steps (writing a partial file), for kill tests.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowParams {
    pub millis: u64,
    #[serde(default)]
    pub tag: String,
}

pub struct Slow {
    pub log: PathBuf,
    /// Multiplies `millis` (not part of the key): a rerun after a kill can be fast.
    pub time_scale: f64,
}

impl Stage for Slow {
    type Params = SlowParams;
    const KIND: &'static str = "toy.slow";
    const VERSION: &'static str = "1";

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("start toy.slow {}", ctx.name()));
        let total = Duration::from_secs_f64(p.millis as f64 * self.time_scale / 1000.0);
        let clock = Instant::now();
        let mut partial = fs::File::create(ctx.output_path("partial.bin"))?;
        let mut steps = 0u64;
        while clock.elapsed() < total {
            partial.write_all(&steps.to_le_bytes())?;
            steps += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(partial);
        let mut df = DataFrame::new_infer_height(vec![Column::new("steps".into(), vec![steps])])?;
        ctx.put_table("done", &mut df, &[("steps", "count")])?;
        log_line(&self.log, &format!("end toy.slow {}", ctx.name()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// toy.fail: writes a file, then fails.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    #[serde(default = "boom")]
    pub message: String,
}

fn boom() -> String {
    "boom".into()
}

pub struct Fail {
    pub log: PathBuf,
}

impl Stage for Fail {
    type Params = FailParams;
    const KIND: &'static str = "toy.fail";
    const VERSION: &'static str = "1";
    const INPUTS: InputArity = InputArity::AnyNonEmpty;

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("run toy.fail {}", ctx.name()));
        fs::write(ctx.output_path("half-written.txt"), "not finished")?;
        Err(p.message.into())
    }
}

// ---------------------------------------------------------------------------
// toy.collect: any non-empty set of inputs; counts their instances.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectParams {}

pub struct Collect {
    pub log: PathBuf,
}

impl Stage for Collect {
    type Params = CollectParams;
    const KIND: &'static str = "toy.collect";
    const VERSION: &'static str = "1";
    const INPUTS: InputArity = InputArity::AnyNonEmpty;

    fn run(&self, _p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        log_line(&self.log, &format!("run toy.collect {}", ctx.name()));
        let names: Vec<String> = ctx.input_names().iter().map(|s| s.to_string()).collect();
        let counts: Vec<u64> = names.iter().map(|n| ctx.input(n).map(|i| i.len() as u64)).collect::<Result<_, _>>()?;
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("input".into(), names),
            Column::new("instances".into(), counts),
        ])?;
        ctx.put_table("inputs", &mut df, &[("input", "input name"), ("instances", "count")])?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------

/// The toy registry; every kind logs its executions to `log`.
pub fn toy_registry(log: &Path, slow_time_scale: f64) -> Registry {
    let mut r = Registry::new();
    r.register(Numbers { log: log.to_path_buf() })
        .register(Sum { log: log.to_path_buf() })
        .register(Slow { log: log.to_path_buf(), time_scale: slow_time_scale })
        .register(Fail { log: log.to_path_buf() })
        .register(Collect { log: log.to_path_buf() });
    r
}

/// The toy registry with `toy.numbers` at version 2.
pub fn toy_registry_v2(log: &Path) -> Registry {
    let mut r = Registry::new();
    r.register(NumbersV2 { log: log.to_path_buf() })
        .register(Sum { log: log.to_path_buf() })
        .register(Slow { log: log.to_path_buf(), time_scale: 1.0 })
        .register(Fail { log: log.to_path_buf() })
        .register(Collect { log: log.to_path_buf() });
    r
}

/// A toy kind that declares the code it depends on: `units` as (name, fingerprint).
pub struct WithCode<S> {
    pub inner: S,
    pub units: Vec<(&'static str, String)>,
}

impl<S: Stage> Stage for WithCode<S> {
    type Params = S::Params;
    const KIND: &'static str = S::KIND;
    const VERSION: &'static str = S::VERSION;
    const INPUTS: InputArity = S::INPUTS;

    fn code(&self) -> CodeFingerprints {
        self.units.iter().map(|(unit, fp)| (unit.to_string(), fp.clone())).collect()
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        S::validate(p)
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        self.inner.run(p, ctx)
    }
}

/// The toy registry where `toy.numbers` depends on the code unit `toy-science`
/// and `toy.sum` on `toy-plot`, at the given fingerprints.
pub fn toy_registry_with_code(log: &Path, science: &str, plot: &str) -> Registry {
    let mut r = Registry::new();
    r.register(WithCode { inner: Numbers { log: log.to_path_buf() }, units: vec![("toy-science", science.into())] })
        .register(WithCode { inner: Sum { log: log.to_path_buf() }, units: vec![("toy-plot", plot.into())] })
        .register(Slow { log: log.to_path_buf(), time_scale: 1.0 })
        .register(Fail { log: log.to_path_buf() })
        .register(Collect { log: log.to_path_buf() });
    r
}

/// Parses, validates the checks, and plans: what `cargo xtask` does before running.
pub fn load_plan(path: &Path, source: String, registry: &Registry, profile: Option<&str>) -> Result<Plan, EngineError> {
    let spec = PipelineSpec::parse(path, source)?;
    e2h_engine::check::validate_checks(&spec)?;
    Plan::build(&spec, registry, profile)
}

/// An isolated temporary directory holding a cache, pipeline files and an execution log.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub cache: Cache,
    pub log: PathBuf,
    pub registry: Registry,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("e2h-engine-test-").tempdir().expect("temp dir");
        let cache = Cache::open(dir.path().join("cache")).expect("open cache");
        let log = dir.path().join("executions.log");
        let registry = toy_registry(&log, 1.0);
        Sandbox { dir, cache, log, registry }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a pipeline file into the sandbox.
    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join(name);
        fs::write(&p, yaml).expect("write pipeline");
        p
    }

    pub fn plan(&self, yaml: &str, profile: Option<&str>) -> Plan {
        self.plan_with(&self.registry, yaml, profile)
    }

    pub fn plan_with(&self, registry: &Registry, yaml: &str, profile: Option<&str>) -> Plan {
        let path = self.write("pipeline.yaml", yaml);
        match load_plan(&path, yaml.to_string(), registry, profile) {
            Ok(plan) => plan,
            Err(e) => panic!("pipeline does not plan: {e}\n{yaml}"),
        }
    }

    pub fn run(&self, plan: &Plan) -> RunReport {
        self.run_opts(&self.registry, plan, RunOptions::default())
    }

    pub fn dry_run(&self, plan: &Plan) -> RunReport {
        self.run_opts(&self.registry, plan, RunOptions { dry_run: true, ..RunOptions::default() })
    }

    pub fn run_opts(&self, registry: &Registry, plan: &Plan, options: RunOptions) -> RunReport {
        Runner::new(registry, &self.cache, options).run(plan).unwrap_or_else(|e| panic!("run failed: {e}"))
    }

    /// Lines of the execution log (`run <kind> <instance> ...`).
    pub fn executions(&self) -> Vec<String> {
        read_log(&self.log)
    }

    /// Directories under `entries/`.
    pub fn entry_dirs(&self) -> Vec<String> {
        list(&self.cache.root().join("entries"))
    }

    /// Everything under `tmp/`.
    pub fn tmp_dirs(&self) -> Vec<String> {
        list(&self.cache.root().join("tmp"))
    }
}

pub fn read_log(log: &Path) -> Vec<String> {
    fs::read_to_string(log).map(|s| s.lines().map(String::from).collect()).unwrap_or_default()
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A small pipeline: `nums` (toy.numbers) feeding `total` (toy.sum), and an
/// independent `other`.
pub const BASIC: &str = "\
name: basic
stages:
  nums:
    kind: toy.numbers
    seed: 7
    params:
      n: 4
      scale: 0.5
  total:
    kind: toy.sum
    inputs: {xs: nums}
  other:
    kind: toy.numbers
    params: {n: 2}
";
