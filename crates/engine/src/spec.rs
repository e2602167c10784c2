//! The YAML pipeline file, parsed strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::check::CheckSpec;
use crate::error::EngineError;
use crate::resources::Resources;

/// A pipeline file as written: stages, profiles and checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Short name, used in cache indices and messages.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The profile `cargo xtask figure N` uses when none is given.
    #[serde(default)]
    pub default_profile: Option<String>,
    pub stages: BTreeMap<String, StageDecl>,
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileDecl>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Tables compared with committed baselines by the regression checks.
    #[serde(default)]
    pub regression: Vec<crate::regress::RegressionSpec>,
}

/// One stage as declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    /// Registered stage kind, e.g. `mcm.psgd`.
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params: Mapping,
    /// Named upstream stages: `input_name: stage_name`.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Seed of every stochastic computation in the stage.
    #[serde(default)]
    pub seed: u64,
    /// Params whose list of values expands into one stage instance per value
    /// (the cartesian product when several are given).
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<Value>>,
    /// Where to copy the stage's files (figures) after a run: a path stem
    /// relative to the project root, e.g. `figures/fig2`.
    #[serde(default)]
    pub publish: Option<String>,
    /// What a job computing one instance asks of a batch scheduler (over the
    /// kind's defaults); not part of the cache key.
    #[serde(default)]
    pub resources: Resources,
}

/// A named set of overrides, e.g. `ci` or `paper`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDecl {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub stages: BTreeMap<String, StageOverride>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOverride {
    #[serde(default)]
    pub params: Mapping,
    #[serde(default)]
    pub sweep: Option<BTreeMap<String, Vec<Value>>>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Publish elsewhere (or nowhere, with `null`) under this profile.
    #[serde(default, deserialize_with = "some_option")]
    pub publish: Option<Option<String>>,
    /// Replaces the fields it sets of the stage's `resources`.
    #[serde(default)]
    pub resources: Resources,
}

/// The key named by serde_yaml's `duplicate entry with key "k"` message.
fn duplicate_key_name(message: &str) -> Option<String> {
    let quoted = message.split("duplicate entry with key ").nth(1)?;
    serde_json::from_str::<String>(quoted.trim()).ok()
}

/// Applies YAML merge keys (`<<: *anchor`). serde_yaml's `apply_merge` resolves
/// one level per call, so a mapping that merges a mapping which itself merges
/// another kept a literal `<<` key (an "unknown field" error); it is applied
/// until no `<<` is left. Its errors carry no position: on error, the key path
/// of the first malformed `<<` (not a mapping or a list of mappings) is returned.
fn apply_merges(value: &mut Value) -> Result<(), (serde_yaml::Error, Vec<String>)> {
    let mut bad = Vec::new();
    if !find_bad_merge(value, &mut bad) {
        bad.clear();
    }
    // Each pass resolves one more link of every merge chain; 64 links is plenty.
    for _ in 0..64 {
        value.apply_merge().map_err(|e| (e, bad.clone()))?;
        if !has_merge_key(value) {
            break;
        }
    }
    Ok(())
}

fn is_merge_key(k: &Value) -> bool {
    k.as_str() == Some("<<")
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| is_merge_key(k) || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// Pushes onto `at` the path to the first `<<` whose value cannot be merged.
fn find_bad_merge(v: &Value, at: &mut Vec<String>) -> bool {
    let child = |name: String, v: &Value, at: &mut Vec<String>| {
        at.push(name);
        let found = find_bad_merge(v, at);
        if !found {
            at.pop();
        }
        found
    };
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| {
            let mergeable = match v {
                Value::Mapping(_) => true,
                Value::Sequence(s) => s.iter().all(Value::is_mapping),
                _ => false,
            };
            if is_merge_key(k) && !mergeable {
                at.push("<<".into());
                return true;
            }
            let name = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).map(|s| s.trim_end().to_string()).unwrap_or_default(),
            };
            child(name, v, at)
        }),
        Value::Sequence(s) => s.iter().enumerate().any(|(i, v)| child(i.to_string(), v, at)),
        Value::Tagged(t) => find_bad_merge(&t.value, at),
        _ => false,
    }
}

/// The 1-based position where flow collections (`[`, `{`) first nest deeper
/// than `max`, if they do. Quoted scalars and comments are skipped; a quote
/// opens a scalar only where a scalar can start (after `[{,:-`, a space or
/// at the start of a line), so `don't` in a plain scalar is no quote.
fn too_deep(source: &str, max: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    for (i, line) in source.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut chars = line.char_indices().peekable();
        while let Some((col, c)) = chars.next() {
            match quote {
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev.is_whitespace() => break,
                    '\'' | '"' if prev.is_whitespace() || "[{,:-".contains(prev) => quote = Some(c),
                    '[' | '{' => {
                        depth += 1;
                        if depth > max {
                            return Some((i + 1, col + 1));
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

fn some_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A parsed pipeline file together with its source, for located errors.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub path: PathBuf,
    pub source: String,
    pub file: PipelineFile,
}

impl PipelineSpec {
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let source = std::fs::read_to_string(path)
            .map_err(|source| EngineError::ReadPipeline { path: path.to_path_buf(), source })?;
        Self::parse(path, source)
    }

    pub fn parse(path: &Path, source: String) -> Result<Self, EngineError> {
        // Deep nesting is refused before the YAML parser sees it: its time grows
        // with the square of the depth there (200 KB of `[` took 30 s).
        if let Some((line, col)) = too_deep(&source, crate::limits::MAX_YAML_DEPTH) {
            return Err(EngineError::located(
                path,
                (line, col),
                "",
                format!("collections nested more than {} deep", crate::limits::MAX_YAML_DEPTH),
            ));
        }
        // Syntax first (serde_yaml locates those), then YAML merge keys (`<<: *anchor`),
        // then the typed structure, located through the path of the failing field.
        let mut value: Value = serde_yaml::from_str(&source).map_err(|e| {
            let (line, col) = e.location().map_or_else(
                // serde_yaml gives no position for a second document: point at its `---`.
                || crate::locate::second_document(&source).unwrap_or((1, 1)),
                |l| (l.line(), l.column()),
            );
            // serde_yaml writes " at line L column C" into the message; the location is
            // printed already. Only that one is removed: a libyaml context's own
            // location (`, while parsing a flow mapping at line 5 column 9`, where an
            // unclosed mapping began) is kept; it used to be the one cut off.
            let message = e.to_string().replacen(&format!(" at line {line} column {col}"), "", 1);
            // serde_yaml places a duplicate key at the start of its mapping; point at the duplicate.
            let (line, col) = duplicate_key_name(&message)
                .and_then(|key| crate::locate::duplicate_key(&source, (line, col), &key))
                .unwrap_or((line, col));
            EngineError::located(path, (line, col), "", message)
        })?;
        apply_merges(&mut value).map_err(|(e, at)| {
            let at: Vec<&str> = at.iter().map(String::as_str).collect();
            let pos = crate::locate::locate(&source, &at);
            EngineError::located(path, pos, at.join("."), format!("YAML merge key: {e}"))
        })?;
        let file: PipelineFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let mut field: Vec<String> = crate::registry::path_segments(&e.path().to_string());
            let message = e.inner().to_string();
            if let Some(name) = crate::registry::unknown_field_name(&message)
                && field.last().map(String::as_str) != Some(name) {
                    field.push(name.to_string());
                }
            let at: Vec<&str> = field.iter().map(String::as_str).collect();
            let pos = crate::locate::locate(&source, &at);
            EngineError::located(path, pos, field.join("."), message)
        })?;
        Ok(PipelineSpec { path: path.to_path_buf(), source, file })
    }

    /// An error located at the key path `field` (dotted, e.g. `stages.sim.params.d`).
    pub fn error_at(&self, field: &[&str], message: impl Into<String>) -> EngineError {
        let pos = crate::locate::locate(&self.source, field);
        EngineError::located(&self.path, pos, field.join("."), message)
    }

    /// Profiles declared in the file, in name order.
    pub fn profile_names(&self) -> Vec<&str> {
        self.file.profiles.keys().map(String::as_str).collect()
    }
}
