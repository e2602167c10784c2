//! Stage kinds: what a YAML `kind:` names. Registered from outside the engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::StageContext;
use crate::error::StageError;
use crate::resources::Resources;

/// A parameter that does not pass a kind's own checks (range, consistency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamIssue {
    /// Dotted path inside `params`, e.g. `d` or `panels.0.x`.
    pub field: String,
    pub message: String,
}

impl ParamIssue {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ParamIssue { field: field.into(), message: message.into() }
    }
}

/// Fingerprints of the source code a stage kind's results depend on: a unit
/// (a crate, a module) by name -> a hash of its sources. Part of every key, so a
/// cached result is reused only if the code that made it is the code that runs
/// now. How units are chosen and hashed is the registering crate's business.
pub type CodeFingerprints = BTreeMap<String, String>;

/// The units whose fingerprints differ between `old` and `new` (added and
/// removed units included), sorted.
pub fn changed_units(old: &CodeFingerprints, new: &CodeFingerprints) -> Vec<String> {
    let mut units: Vec<String> = old
        .iter()
        .filter(|(unit, fp)| new.get(*unit) != Some(fp))
        .map(|(unit, _)| unit.clone())
        .chain(new.keys().filter(|unit| !old.contains_key(*unit)).cloned())
        .collect();
    units.sort();
    units
}

/// What one stage instance will allocate, estimated from its params before it
/// runs, so that the planner can refuse a pipeline beyond the budget
/// ([`crate::limits::STAGE_MEMORY_BUDGET`]) before anything is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    /// Estimated peak bytes (f64: estimates of absurd params must not overflow).
    pub bytes: f64,
    /// How the estimate was made, in terms of the params, e.g.
    /// `d x replicas x neurons x 8 B + replicas x grid_points x 200 B`.
    pub what: String,
}

impl Footprint {
    pub fn new(bytes: f64, what: impl Into<String>) -> Self {
        Footprint { bytes, what: what.into() }
    }

    /// A kind whose allocation does not grow with its params.
    pub fn small() -> Self {
        Footprint { bytes: 0.0, what: String::new() }
    }
}

/// One parameter of a kind, for `cargo xtask kinds`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDoc {
    pub name: &'static str,
    /// e.g. `integer`, `number`, `string`, `tanh2 | relu | linear`.
    pub ty: &'static str,
    /// The default as written in YAML; empty when the param is required.
    pub default: &'static str,
    /// Accepted values, e.g. `2..=1048576`, `(0, 1000]`.
    pub range: &'static str,
    pub meaning: &'static str,
}

impl ParamDoc {
    pub const fn new(
        name: &'static str,
        ty: &'static str,
        default: &'static str,
        range: &'static str,
        meaning: &'static str,
    ) -> Self {
        ParamDoc { name, ty, default, range, meaning }
    }
}

/// A table a kind writes, with the definition (and unit) of every column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableDoc {
    pub name: String,
    pub columns: Vec<(String, String)>,
}

impl TableDoc {
    pub fn new(name: &str, columns: &[(&str, &str)]) -> Self {
        TableDoc { name: name.into(), columns: columns.iter().map(|(c, d)| (c.to_string(), d.to_string())).collect() }
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|(c, _)| c.as_str()).collect()
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|(c, _)| c == name)
    }
}

/// The tables each input of a stage instance will see, as its upstream kind
/// declares them (swept params of the upstream included as columns); `None`
/// for an input whose kind declares no tables.
pub type InputTables = BTreeMap<String, Option<Vec<TableDoc>>>;

/// Everything `cargo xtask kinds KIND` prints.
#[derive(Debug, Clone)]
pub struct KindDoc {
    pub kind: &'static str,
    pub version: &'static str,
    pub about: &'static str,
    pub inputs: InputArity,
    pub params: Vec<ParamDoc>,
    pub tables: Vec<TableDoc>,
}

/// Which upstream inputs a kind accepts.
#[derive(Debug, Clone, Copy)]
pub enum InputArity {
    None,
    /// Exactly these input names.
    Exactly(&'static [&'static str]),
    /// Any names, at least one (e.g. plots).
    AnyNonEmpty,
}

/// A stage kind with typed parameters.
///
/// `Params` is deserialized strictly from the YAML (`#[serde(deny_unknown_fields)]`
/// on the struct) and re-serialized canonically for the cache key, so defaults
/// filled in by serde are part of the key.
pub trait Stage: Send + Sync + 'static {
    type Params: DeserializeOwned + Serialize;
    /// The name used in YAML, e.g. `mcm.psgd`.
    const KIND: &'static str;
    /// Part of every cache key. A semantic marker: bump it when the stage's
    /// output changes meaning (any edit of the code already changes [`Stage::code`]).
    const VERSION: &'static str;
    const INPUTS: InputArity = InputArity::None;

    /// The code this kind's results depend on (see [`CodeFingerprints`]); called
    /// once, at registration. Empty: only `VERSION` marks code changes.
    fn code(&self) -> CodeFingerprints {
        CodeFingerprints::new()
    }

    /// One line on what the kind computes.
    const ABOUT: &'static str = "";

    /// Its params (name, type, default, range, meaning), for `cargo xtask kinds`.
    fn param_docs() -> Vec<ParamDoc> {
        Vec::new()
    }

    /// The tables it writes with every column's definition. A kind that
    /// declares them gets its columns checked when it stores a table, and its
    /// downstream stages checked against them at plan time.
    fn tables() -> Vec<TableDoc> {
        Vec::new()
    }

    /// Checks the params against what the inputs will hold (table and column
    /// names), at plan time, before anything runs.
    fn check_inputs(_params: &Self::Params, _inputs: &InputTables) -> Result<(), ParamIssue> {
        Ok(())
    }

    /// Checks beyond types: ranges and consistency.
    fn validate(_params: &Self::Params) -> Result<(), ParamIssue> {
        Ok(())
    }

    /// What a job computing one instance asks of a batch scheduler unless the
    /// pipeline says otherwise (e.g. a GPU for a training on `cuda`).
    fn resources(_params: &Self::Params) -> Resources {
        Resources::default()
    }

    /// What an instance with these params will allocate (checked against the
    /// budget at plan time, `--dry-run` included). Kinds whose memory grows with
    /// their params must say so.
    fn footprint(_params: &Self::Params) -> Footprint {
        Footprint::small()
    }

    fn run(&self, params: Self::Params, ctx: &mut StageContext) -> Result<(), StageError>;
}

/// Object-safe face of [`Stage`].
pub(crate) trait DynStage: Send + Sync {
    fn version(&self) -> &'static str;
    fn code(&self) -> &CodeFingerprints;
    fn inputs(&self) -> InputArity;
    fn canonicalize(&self, params: serde_yaml::Value) -> Result<(serde_json::Value, Footprint), ParamIssue>;
    fn resources(&self, params: &serde_json::Value) -> Resources;
    fn run(&self, params: &serde_json::Value, ctx: &mut StageContext) -> Result<(), StageError>;
    fn tables(&self) -> Vec<TableDoc>;
    fn check_inputs(&self, params: &serde_json::Value, inputs: &InputTables) -> Result<(), ParamIssue>;
    fn doc(&self) -> KindDoc;
}

struct Typed<S: Stage> {
    stage: S,
    code: CodeFingerprints,
}

impl<S: Stage> DynStage for Typed<S> {
    fn version(&self) -> &'static str {
        S::VERSION
    }
    fn code(&self) -> &CodeFingerprints {
        &self.code
    }
    fn inputs(&self) -> InputArity {
        S::INPUTS
    }
    fn canonicalize(&self, params: serde_yaml::Value) -> Result<(serde_json::Value, Footprint), ParamIssue> {
        let typed: S::Params = serde_path_to_error::deserialize(params).map_err(|e| {
            let mut field = path_segments(&e.path().to_string());
            let message = e.inner().to_string();
            // Point at the unknown key itself, not at its parent mapping.
            if let Some(name) = unknown_field_name(&message)
                && field.last().map(String::as_str) != Some(name) {
                    field.push(name.to_string());
                }
            ParamIssue { field: field.join("."), message }
        })?;
        S::validate(&typed)?;
        // JSON has no NaN or infinity: serde_json would write them as null, so that
        // `.nan` and `-.inf` shared a cache key and the stage was handed a null.
        // (Found through YAML, which keeps them; a type YAML cannot represent is
        // not checked.)
        let mut at = Vec::new();
        if serde_yaml::to_value(&typed).is_ok_and(|yaml| non_finite(&yaml, &mut at)) {
            return Err(ParamIssue::new(at.join("."), "must be a finite number (NaN and infinities cannot be cached)"));
        }
        let json = serde_json::to_value(&typed)
            .map_err(|e| ParamIssue::new("", format!("parameters do not serialize: {e}")))?;
        Ok((sort_keys(json), S::footprint(&typed)))
    }
    fn resources(&self, params: &serde_json::Value) -> Resources {
        // Canonical params always deserialize (they were serialized from this type).
        serde_json::from_value::<S::Params>(params.clone()).map(|p| S::resources(&p)).unwrap_or_default()
    }
    fn run(&self, params: &serde_json::Value, ctx: &mut StageContext) -> Result<(), StageError> {
        let typed: S::Params = serde_json::from_value(params.clone())?;
        self.stage.run(typed, ctx)
    }
    fn tables(&self) -> Vec<TableDoc> {
        S::tables()
    }
    fn check_inputs(&self, params: &serde_json::Value, inputs: &InputTables) -> Result<(), ParamIssue> {
        let typed: S::Params =
            serde_json::from_value(params.clone()).map_err(|e| ParamIssue::new("", format!("params: {e}")))?;
        S::check_inputs(&typed, inputs)
    }
    fn doc(&self) -> KindDoc {
        KindDoc {
            kind: S::KIND,
            version: S::VERSION,
            about: S::ABOUT,
            inputs: S::INPUTS,
            params: S::param_docs(),
            tables: S::tables(),
        }
    }
}

/// Pushes onto `at` the path to the first NaN or infinite number in `v`.
fn non_finite(v: &serde_yaml::Value, at: &mut Vec<String>) -> bool {
    let child = |name: String, v: &serde_yaml::Value, at: &mut Vec<String>| {
        at.push(name);
        let found = non_finite(v, at);
        if !found {
            at.pop();
        }
        found
    };
    match v {
        serde_yaml::Value::Number(n) => n.as_f64().is_some_and(|x| !x.is_finite()),
        serde_yaml::Value::Sequence(s) => s.iter().enumerate().any(|(i, v)| child(i.to_string(), v, at)),
        serde_yaml::Value::Mapping(m) => {
            m.iter().any(|(k, v)| child(k.as_str().map_or_else(|| format!("{k:?}"), String::from), v, at))
        }
        serde_yaml::Value::Tagged(t) => non_finite(&t.value, at),
        _ => false,
    }
}

/// `panels[0].x` -> [`panels`, `0`, `x`]; serde_path_to_error writes `.` for the root.
pub(crate) fn path_segments(p: &str) -> Vec<String> {
    p.replace('[', ".").replace(']', "").split('.').filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The key named by serde's "unknown field `x`" message.
pub(crate) fn unknown_field_name(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
}

/// Canonical JSON: object keys sorted at every level (whatever serde_json's map is).
pub(crate) fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// The stage kinds a pipeline may name, and versions recorded in metadata.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn DynStage>>,
    versions: BTreeMap<String, String>,
}

impl Registry {
    pub fn new() -> Self {
        let mut r = Registry::default();
        r.versions.insert("e2h-engine".into(), env!("CARGO_PKG_VERSION").into());
        r
    }

    pub fn register<S: Stage>(&mut self, stage: S) -> &mut Self {
        let code = stage.code();
        let previous = self.kinds.insert(S::KIND, Arc::new(Typed { stage, code }));
        assert!(previous.is_none(), "stage kind `{}` registered twice", S::KIND);
        self
    }

    /// Records a crate version in every entry's metadata.
    pub fn record_version(&mut self, krate: &str, version: &str) -> &mut Self {
        self.versions.insert(krate.into(), version.into());
        self
    }

    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The code fingerprints of a registered kind.
    pub fn code_of(&self, kind: &str) -> Option<&CodeFingerprints> {
        self.kinds.get(kind).map(|k| k.code())
    }

    /// What `cargo xtask kinds` prints about `kind`.
    pub fn describe(&self, kind: &str) -> Option<KindDoc> {
        self.kinds.get(kind).map(|k| k.doc())
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn DynStage>> {
        self.kinds.get(kind)
    }

    pub(crate) fn versions(&self) -> &BTreeMap<String, String> {
        &self.versions
    }
}
