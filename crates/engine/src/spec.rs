//! The YAML pipeline file, parsed strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::check::CheckSpec;
use crate::error::EngineError;

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
        // Syntax first (serde_yaml locates those), then YAML merge keys (`<<: *anchor`),
        // then the typed structure, located through the path of the failing field.
        let mut value: Value = serde_yaml::from_str(&source).map_err(|e| {
            let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let message = e.to_string();
            // serde_yaml appends " at line L column C"; the location is printed already.
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            EngineError::located(path, (line, col), "", message)
        })?;
        value.apply_merge().map_err(|e| EngineError::located(path, (1, 1), "", format!("YAML merge key: {e}")))?;
        let file: PipelineFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let mut field: Vec<String> = crate::registry::path_segments(&e.path().to_string());
            let message = e.inner().to_string();
            if let Some(name) = crate::registry::unknown_field_name(&message) {
                if field.last().map(String::as_str) != Some(name) {
                    field.push(name.to_string());
                }
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
