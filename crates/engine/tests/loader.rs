//! The pipeline loader on bad input: a corpus of broken pipelines with the
//! exact error each must produce, and a bounded deterministic fuzzer.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::*;
use e2h_engine::{EngineError, Located, Plan, Registry};
use rand::{Rng, SeedableRng};

/// What a corpus file expects, from its header comments:
/// `# expect: LINE:COL FIELD`, `# message: SUBSTRING`, optionally `# profile: NAME`.
#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    field: String,
    message: String,
    profile: Option<String>,
}

fn expected(path: &Path, text: &str) -> Expected {
    let header =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# {name}:"))).map(|v| v.trim().to_string());
    let expect = header("expect").unwrap_or_else(|| panic!("{}: no `# expect: LINE:COL FIELD` header", path.display()));
    let (pos, field) = expect.split_once(' ').unwrap_or((&expect, ""));
    let (line, column) = pos.split_once(':').expect("LINE:COL");
    Expected {
        line: line.parse().expect("line"),
        column: column.parse().expect("column"),
        field: field.trim().to_string(),
        message: header("message").unwrap_or_else(|| panic!("{}: no `# message:` header", path.display())),
        profile: header("profile"),
    }
}

/// Parse, validate checks, plan: never a panic, and the error must be located.
fn load(
    path: &Path,
    text: String,
    registry: &Registry,
    profile: Option<&str>,
) -> Result<Plan, Result<Located, String>> {
    match catch_unwind(AssertUnwindSafe(|| load_plan(path, text, registry, profile))) {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(EngineError::Pipeline(l))) => Err(Ok(*l)),
        Ok(Err(other)) => Err(Err(format!("not a located error: {other}"))),
        Err(_) => Err(Err("PANIC".to_string())),
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = manifest_dir().join("tests/data/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_pipeline_fails_with_a_located_error() {
    let sb = Sandbox::new();
    let files = corpus();
    assert!(files.len() >= 30, "only {} bad pipelines", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let want = expected(path, &text);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let got = match load(path, text, &sb.registry, want.profile.as_deref()) {
            Ok(_) => {
                failures.push(format!("{name}: loaded without error"));
                continue;
            }
            Err(Err(e)) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
            Err(Ok(l)) => l,
        };
        assert_eq!(got.file, *path);
        eprintln!("{name}: {}:{} `{}`: {}", got.line, got.column, got.field, got.message);
        let ok = got.line == want.line
            && got.column == want.column
            && got.field == want.field
            && got.message.contains(&want.message);
        if !ok {
            failures.push(format!(
                "{name}:\n    want {}:{} `{}` ~ {:?}\n    got  {}:{} `{}`   {:?}",
                want.line, want.column, want.field, want.message, got.line, got.column, got.field, got.message
            ));
        }
        assert!(
            !got.message.contains(&format!("at line {} column {}", got.line, got.column)),
            "{name}: the location is repeated in the message: {}",
            got.message
        );
        // The rendered error starts with `file:line:column: `.
        let shown = EngineError::Pipeline(Box::new(got.clone())).to_string();
        assert!(shown.starts_with(&format!("{}:{}:{}: ", path.display(), got.line, got.column)), "{shown}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad pipelines misreported:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// A valid pipeline using most of the syntax: anchors, merges, flow and block
/// mappings, sweeps, profiles, checks, comments and a block scalar.
const VALID: &str = "\
# A valid pipeline, mutated by the fuzzer.
name: fuzzed
description: >
  Folded text: with a colon, and stages: inside.
default_profile: ci
stages:
  nums:
    kind: toy.numbers
    seed: 3
    params: &p
      n: 4
      scale: 0.5
      window: {lo: 0, hi: 1}
    sweep:
      label: [a, b]
  more:
    kind: toy.numbers
    params:
      <<: *p
      n: 2
  total:
    kind: toy.sum
    inputs: {xs: nums}
    params: {column: x}
    publish: figures/total
  all:
    kind: toy.collect
    inputs:
      first: nums
      second: more
profiles:
  ci:
    description: \"small\"
    stages:
      nums:
        params: {n: 2}
        seed: 4
        sweep: {scale: [0.25, 1]}
      total:
        publish: null
  paper: {}
checks:
  - name: total is positive
    stage: total
    table: sum
    column: total
    min: 0
    profiles: [ci]
  - name: rows
    stage: nums
    table: numbers
    where: {i: 1}
    column: x
    reduce: count
    max: 10
";

const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "*p",
    "<<: ",
    "<<: *p",
    "\t",
    "\n",
    "  ",
    "    ",
    "#",
    " #",
    "'",
    "\"",
    "!!str ",
    "!!int ",
    "!tag ",
    "~",
    "null",
    "-1",
    "1e999",
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "? ",
    "|",
    ">",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "&",
    "*",
    "!",
    "kind: ",
    "seed: ",
    "params: ",
    "sweep: ",
    "inputs: ",
    "profiles: ",
    "stages: ",
    "checks: ",
    "n: ",
    "scale: ",
    "toy.sum",
    "toy.numbers",
    "nums",
    "total",
    "ci",
    "\u{feff}",
    "é",
    "\r\n",
    "\\",
    "%",
    "@",
    "`",
    "[]",
    "{}",
    "18446744073709551616",
    "-0",
    "true",
    "0.0",
];

fn mutate(text: &str, rng: &mut impl Rng) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        let pick_line = |rng: &mut dyn rand::RngCore| rng.next_u64() as usize % lines.len().max(1);
        bytes = match rng.random_range(0..6) {
            0 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                let mut b = bytes.clone();
                b[i] ^= 1 << rng.random_range(0..8);
                b
            }
            1 if !lines.is_empty() => {
                let i = pick_line(rng);
                lines.iter().enumerate().filter(|&(j, _)| j != i).flat_map(|(_, l)| l.iter().copied()).collect()
            }
            2 if !lines.is_empty() => {
                let i = pick_line(rng);
                let mut out = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    out.extend_from_slice(l);
                    if j == i {
                        out.extend_from_slice(l);
                    }
                }
                out
            }
            3 if lines.len() > 1 => {
                let (i, j) = (pick_line(rng), pick_line(rng));
                let mut ls = lines.clone();
                ls.swap(i, j);
                ls.concat()
            }
            4 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                let n = rng.random_range(1..=8).min(bytes.len() - i);
                let mut b = bytes.clone();
                b.drain(i..i + n);
                b
            }
            _ => {
                let i = rng.random_range(0..=bytes.len());
                let tok = TOKENS[rng.random_range(0..TOKENS.len())];
                let mut b = bytes.clone();
                b.splice(i..i, tok.bytes());
                b
            }
        };
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn fuzzed_pipelines_never_panic_and_errors_are_located() {
    let sb = Sandbox::new();
    let path = Path::new("fuzzed.yaml");
    // The seed text itself is valid under every profile.
    for profile in [None, Some("default"), Some("ci"), Some("paper")] {
        load(path, VALID.to_string(), &sb.registry, profile).unwrap_or_else(|e| panic!("{profile:?}: {e:?}"));
    }
    let real = manifest_dir().join("../../pipelines/fig2-mcm-easy-to-hard.yaml");
    let real = std::fs::read_to_string(real).unwrap_or_default();

    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0x5eed_e2b0);
    let (mut ok, mut located) = (0usize, 0usize);
    let mut problems = Vec::new();
    let started = std::time::Instant::now();
    for case in 0..8_000 {
        let base = if case % 4 == 3 && !real.is_empty() { real.as_str() } else { VALID };
        let text = mutate(base, &mut rng);
        let profile = [None, Some("ci"), Some("paper")][case % 3];
        match load(path, text.clone(), &sb.registry, profile) {
            Ok(plan) => {
                ok += 1;
                // A valid pipeline plans deterministically.
                let again = load(path, text.clone(), &sb.registry, profile).expect("valid once, valid twice");
                let keys = |p: &Plan| p.stages.iter().map(|s| (s.name.clone(), s.key.clone())).collect::<Vec<_>>();
                if keys(&plan) != keys(&again) {
                    problems.push(format!("case {case}: keys differ between two plans\n{text}"));
                }
            }
            Err(Ok(l)) => {
                located += 1;
                let lines = text.lines().count().max(1);
                if l.line < 1 || l.column < 1 || l.line > lines + 1 || l.message.is_empty() {
                    problems.push(format!("case {case}: bad location {}:{} ({})\n{text}", l.line, l.column, l.message));
                }
            }
            Err(Err(e)) => problems.push(format!("case {case}: {e}\n{text}")),
        }
        if problems.len() >= 3 {
            break;
        }
    }
    eprintln!("fuzz: {ok} valid, {located} located errors in {:?}", started.elapsed());
    assert!(problems.is_empty(), "{}", problems.join("\n-----\n"));
    // Both outcomes occur: the mutations are neither all fatal nor all harmless.
    assert!(ok > 200 && located > 2000, "ok {ok}, errors {located}");
    assert!(started.elapsed().as_secs() < 30, "fuzzing took {:?}", started.elapsed());
}

/// This crate's folder, as `cargo test` sets it when the test runs (not when it
/// was compiled: one test binary may serve another clone through a shared target).
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
