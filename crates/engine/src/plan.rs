//! From a pipeline file and a profile to an ordered list of stage instances
//! with their cache keys.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::{Mapping, Value};

use crate::error::EngineError;
use crate::registry::{CodeFingerprints, InputArity, Registry};
use crate::resources::Resources;
use crate::spec::PipelineSpec;

/// The profile that applies no overrides.
pub const DEFAULT_PROFILE: &str = "default";

/// One stage instance, ready to run.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Instance name: the declared name, plus `[param=value,...]` for sweeps.
    pub name: String,
    /// The declared stage name.
    pub decl: String,
    pub kind: String,
    pub kind_version: String,
    /// Fingerprints of the code the kind's results depend on.
    pub code: CodeFingerprints,
    /// Canonical parameters (defaults filled in, keys sorted).
    pub params: serde_json::Value,
    pub seed: u64,
    pub sweep: BTreeMap<String, serde_json::Value>,
    /// Input name -> indices (into `Plan::stages`) of the upstream instances.
    pub inputs: BTreeMap<String, Vec<usize>>,
    pub key: String,
    pub publish: Option<String>,
    /// What a job computing this instance asks of a batch scheduler: the
    /// kind's defaults, then the stage's `resources`, then the profile's.
    pub resources: Resources,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline: String,
    pub profile: String,
    /// Topological order: every stage after its inputs.
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    pub fn input_keys(&self, stage: &PlannedStage) -> BTreeMap<String, Vec<String>> {
        stage
            .inputs
            .iter()
            .map(|(name, idx)| (name.clone(), idx.iter().map(|&i| self.stages[i].key.clone()).collect()))
            .collect()
    }

    /// Instances of a declared stage.
    pub fn instances_of<'a>(&'a self, decl: &'a str) -> impl Iterator<Item = &'a PlannedStage> + 'a {
        self.stages.iter().filter(move |s| s.decl == decl)
    }

    /// Resolves `profile` (None: the file's `default_profile`, else `default`)
    /// and builds the plan. Every error is located in the pipeline file.
    pub fn build(spec: &PipelineSpec, registry: &Registry, profile: Option<&str>) -> Result<Plan, EngineError> {
        let file = &spec.file;
        let profile = profile.or(file.default_profile.as_deref()).unwrap_or(DEFAULT_PROFILE).to_string();
        let overrides = match file.profiles.get(&profile) {
            Some(p) => Some(p),
            None if profile == DEFAULT_PROFILE => None,
            None => {
                let known: Vec<&str> =
                    std::iter::once(DEFAULT_PROFILE).chain(file.profiles.keys().map(String::as_str)).collect();
                let at: &[&str] = if file.default_profile.as_deref() == Some(profile.as_str()) {
                    &["default_profile"]
                } else {
                    &["profiles"]
                };
                return Err(spec.error_at(at, format!("unknown profile `{profile}`; known: {}", known.join(", "))));
            }
        };
        if let Some(p) = overrides {
            for name in p.stages.keys() {
                if !file.stages.contains_key(name) {
                    return Err(spec.error_at(
                        &["profiles", &profile, "stages", name],
                        format!("profile `{profile}` overrides unknown stage `{name}`"),
                    ));
                }
            }
        }

        // Kinds and inputs.
        for (name, decl) in &file.stages {
            let Some(kind) = registry.get(&decl.kind) else {
                return Err(spec.error_at(
                    &["stages", name, "kind"],
                    format!("unknown stage kind `{}`; known kinds: {}", decl.kind, registry.kind_names().join(", ")),
                ));
            };
            for (input, upstream) in &decl.inputs {
                if !file.stages.contains_key(upstream) {
                    return Err(spec.error_at(
                        &["stages", name, "inputs", input],
                        format!("input `{input}` names unknown stage `{upstream}`"),
                    ));
                }
            }
            let names: BTreeSet<&str> = decl.inputs.keys().map(String::as_str).collect();
            let arity_error = match kind.inputs() {
                InputArity::None if !names.is_empty() => Some(format!("kind `{}` takes no inputs", decl.kind)),
                InputArity::Exactly(expected) if names != expected.iter().copied().collect() => Some(format!(
                    "kind `{}` needs exactly the inputs [{}]",
                    decl.kind,
                    expected.join(", ")
                )),
                InputArity::AnyNonEmpty if names.is_empty() => Some(format!("kind `{}` needs at least one input", decl.kind)),
                _ => None,
            };
            if let Some(message) = arity_error {
                return Err(spec.error_at(&["stages", name, "inputs"], message));
            }
        }

        // Resources are checked in every profile, not only the one planned: a
        // typo in `paper` should not wait for the cluster run to show up.
        for (name, decl) in &file.stages {
            if let Err((field, message)) = decl.resources.validate() {
                return Err(spec.error_at(&["stages", name, "resources", field], message));
            }
        }
        for (profile_name, p) in &file.profiles {
            for (name, ov) in &p.stages {
                if let Err((field, message)) = ov.resources.validate() {
                    return Err(spec.error_at(&["profiles", profile_name, "stages", name, "resources", field], message));
                }
            }
        }

        let order = topological_order(spec)?;

        let mut stages: Vec<PlannedStage> = Vec::new();
        let mut instances: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for name in order {
            let decl = &file.stages[name];
            let ov = overrides.and_then(|p| p.stages.get(name));
            let kind = registry.get(&decl.kind).expect("checked above");

            // Merge: top-level params of the profile replace the stage's.
            let mut params = decl.params.clone();
            let mut origin: BTreeMap<String, Vec<String>> = BTreeMap::new();
            if let Some(ov) = ov {
                for (k, v) in &ov.params {
                    params.insert(k.clone(), v.clone());
                    if let Some(k) = k.as_str() {
                        origin.insert(
                            k.to_string(),
                            vec!["profiles".into(), profile.clone(), "stages".into(), name.into(), "params".into()],
                        );
                    }
                }
            }
            let sweep = ov.and_then(|o| o.sweep.clone()).unwrap_or_else(|| decl.sweep.clone());
            let sweep_origin: Vec<String> = if ov.and_then(|o| o.sweep.as_ref()).is_some() {
                vec!["profiles".into(), profile.clone(), "stages".into(), name.into(), "sweep".into()]
            } else {
                vec!["stages".into(), name.into(), "sweep".into()]
            };
            for (param, values) in &sweep {
                if values.is_empty() {
                    let mut at = sweep_origin.clone();
                    at.push(param.clone());
                    return Err(spec.error_at(&as_strs(&at), format!("sweep over `{param}` has no values")));
                }
                origin.insert(param.clone(), sweep_origin.clone());
            }
            let seed = ov.and_then(|o| o.seed).unwrap_or(decl.seed);
            let publish = match ov.and_then(|o| o.publish.clone()) {
                Some(p) => p,
                None => decl.publish.clone(),
            };
            let declared_resources = match ov {
                Some(ov) => decl.resources.overlay(&ov.resources),
                None => decl.resources.clone(),
            };

            let mut idx = Vec::new();
            // Cache key -> (instance name, sweep point) of this stage's instances.
            let mut seen: BTreeMap<String, (String, Vec<(String, Value)>)> = BTreeMap::new();
            for point in sweep_points(&sweep) {
                let mut p = params.clone();
                for (k, v) in &point {
                    p.insert(Value::String(k.clone()), v.clone());
                }
                let canonical = kind.canonicalize(Value::Mapping(p)).map_err(|issue| {
                    let top = issue.field.split('.').next().unwrap_or_default().to_string();
                    let mut at = origin
                        .get(&top)
                        .cloned()
                        .unwrap_or_else(|| vec!["stages".into(), name.into(), "params".into()]);
                    at.extend(issue.field.split('.').filter(|s| !s.is_empty()).map(String::from));
                    spec.error_at(&as_strs(&at), issue.message)
                })?;
                let sweep_json: BTreeMap<String, serde_json::Value> = point
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
                    .collect();
                let instance_name = if sweep_json.is_empty() {
                    name.to_string()
                } else {
                    let parts: Vec<String> = sweep_json
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
                        .collect();
                    format!("{name}[{}]", parts.join(","))
                };
                let inputs: BTreeMap<String, Vec<usize>> = decl
                    .inputs
                    .iter()
                    .map(|(input, upstream)| (input.clone(), instances[upstream.as_str()].clone()))
                    .collect();
                let input_keys: BTreeMap<String, Vec<String>> = inputs
                    .iter()
                    .map(|(n, ix)| (n.clone(), ix.iter().map(|&i| stages[i].key.clone()).collect()))
                    .collect();
                let key = stage_key(&decl.kind, kind.version(), kind.code(), &canonical, seed, &input_keys);
                let resources = kind.resources(&canonical).overlay(&declared_resources);
                // Two instances with the same parameters (a value listed twice, or
                // `1` and `1.0` for a float) would be stacked twice downstream.
                if let Some((other, other_point)) = seen.get(&key) {
                    let param = point
                        .iter()
                        .zip(other_point)
                        .find(|((_, a), (_, b))| a != b)
                        .map(|((p, _), _)| p.clone())
                        .or_else(|| {
                            sweep
                                .iter()
                                .find(|(_, vs)| vs.iter().enumerate().any(|(i, v)| vs[..i].contains(v)))
                                .map(|(p, _)| p.clone())
                        })
                        .unwrap_or_default();
                    let mut at = sweep_origin.clone();
                    at.push(param.clone());
                    return Err(spec.error_at(
                        &as_strs(&at),
                        format!("sweep over `{param}` repeats a value: `{other}` and `{instance_name}` have the same parameters"),
                    ));
                }
                seen.insert(key.clone(), (instance_name.clone(), point.clone()));
                idx.push(stages.len());
                stages.push(PlannedStage {
                    name: instance_name,
                    decl: name.to_string(),
                    kind: decl.kind.clone(),
                    kind_version: kind.version().to_string(),
                    code: kind.code().clone(),
                    params: canonical,
                    seed,
                    sweep: sweep_json,
                    inputs,
                    key,
                    publish: publish.clone(),
                    resources,
                });
            }
            instances.insert(name, idx);
        }
        Ok(Plan { pipeline: file.name.clone(), profile, stages })
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The cartesian product of the sweep lists (one empty point when no sweep).
fn sweep_points(sweep: &BTreeMap<String, Vec<Value>>) -> Vec<Vec<(String, Value)>> {
    let mut points = vec![Vec::new()];
    for (param, values) in sweep {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((param.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    points
}

/// Kahn's algorithm over declared stages; ties broken by name for a stable order.
fn topological_order(spec: &PipelineSpec) -> Result<Vec<&str>, EngineError> {
    let stages = &spec.file.stages;
    let mut indegree: BTreeMap<&str, usize> = stages.keys().map(|k| (k.as_str(), 0)).collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, decl) in stages {
        let ups: BTreeSet<&str> = decl.inputs.values().map(String::as_str).collect();
        for up in ups {
            *indegree.get_mut(name.as_str()).expect("known") += 1;
            dependents.entry(up).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = indegree.iter().filter(|&(_, &d)| d == 0).map(|(&k, _)| k).collect();
    let mut order = Vec::new();
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &dep in dependents.get(next).into_iter().flatten() {
            let d = indegree.get_mut(dep).expect("known");
            *d -= 1;
            if *d == 0 {
                ready.insert(dep);
            }
        }
    }
    if order.len() < stages.len() {
        let blocked: BTreeSet<&str> = indegree.iter().filter(|&(_, &d)| d > 0).map(|(&k, _)| k).collect();
        let cycle = find_cycle(spec, &blocked);
        let first = cycle.first().copied().unwrap_or_default();
        return Err(spec.error_at(
            &["stages", first, "inputs"],
            format!("the stages form a cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(order)
}

/// A concrete cycle among `blocked` stages, for the message.
fn find_cycle<'a>(spec: &'a PipelineSpec, blocked: &BTreeSet<&'a str>) -> Vec<&'a str> {
    let Some(&start) = blocked.first() else { return Vec::new() };
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = spec.file.stages[current]
            .inputs
            .values()
            .map(String::as_str)
            .find(|u| blocked.contains(u))
            .expect("a blocked stage has a blocked input");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

/// blake3 of (kind, kind version, code fingerprints, canonical params, seed, upstream keys).
pub fn stage_key(
    kind: &str,
    version: &str,
    code: &CodeFingerprints,
    params: &serde_json::Value,
    seed: u64,
    inputs: &BTreeMap<String, Vec<String>>,
) -> String {
    let material = serde_json::json!({
        "kind": kind,
        "version": version,
        "code": code,
        "params": params,
        "seed": seed,
        "inputs": inputs,
    });
    let mut h = blake3::Hasher::new();
    h.update(b"e2h-stage-key-v2\n");
    h.update(serde_json::to_string(&crate::registry::sort_keys(material)).expect("json").as_bytes());
    h.finalize().to_hex().to_string()
}

/// A mapping from YAML key to value, for callers building params in code.
pub fn mapping<const N: usize>(pairs: [(&str, Value); N]) -> Mapping {
    pairs.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect()
}
