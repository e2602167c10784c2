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
    /// What the cache's index remembers of `stage`'s last run, to explain reruns.
    pub fn index_record(&self, stage: &PlannedStage) -> crate::cache::IndexRecord {
        crate::cache::IndexRecord {
            key: stage.key.clone(),
            kind: stage.kind.clone(),
            kind_version: stage.kind_version.clone(),
            code: stage.code.clone(),
            params: stage.params.clone(),
            seed: stage.seed,
            inputs: self.input_keys(stage),
        }
    }

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
        check_names(spec)?;
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
        count_instances(spec, overrides, &profile)?;
        // Publish target -> (instance name, where it was declared), for collisions.
        let mut targets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
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
            let (publish, publish_origin) = match ov.and_then(|o| o.publish.clone()) {
                Some(p) => (p, vec!["profiles".into(), profile.clone(), "stages".into(), name.into(), "publish".into()]),
                None => (decl.publish.clone(), vec!["stages".into(), name.into(), "publish".into()]),
            };
            let declared_resources = match ov {
                Some(ov) => decl.resources.overlay(&ov.resources),
                None => decl.resources.clone(),
            };
            if let Some(stem) = &publish {
                crate::limits::check_publish_stem(stem).map_err(|why| spec.error_at(&as_strs(&publish_origin), why))?;
            }

            let mut idx = Vec::new();
            // Cache key -> (instance name, sweep point) of this stage's instances.
            let mut seen: BTreeMap<String, (String, Vec<(String, Value)>)> = BTreeMap::new();
            for point in sweep_points(&sweep) {
                let mut p = params.clone();
                for (k, v) in &point {
                    p.insert(Value::String(k.clone()), v.clone());
                }
                let locate_issue = |issue: crate::registry::ParamIssue| {
                    let top = issue.field.split('.').next().unwrap_or_default().to_string();
                    let mut at = origin
                        .get(&top)
                        .cloned()
                        .unwrap_or_else(|| vec!["stages".into(), name.into(), "params".into()]);
                    at.extend(issue.field.split('.').filter(|s| !s.is_empty()).map(String::from));
                    spec.error_at(&as_strs(&at), issue.message)
                };
                let (canonical, footprint) = kind.canonicalize(Value::Mapping(p)).map_err(&locate_issue)?;
                // What the inputs will hold, as their kinds declare it: checked now,
                // not after the upstream simulations ran.
                let mut input_tables = crate::registry::InputTables::new();
                for (input, upstream) in &decl.inputs {
                    let up_kind = registry.get(&file.stages[upstream].kind).expect("checked above");
                    let mut tables = up_kind.tables();
                    if tables.is_empty() {
                        input_tables.insert(input.clone(), None);
                        continue;
                    }
                    let swept: BTreeSet<&String> =
                        instances[upstream.as_str()].iter().flat_map(|&i| stages[i].sweep.keys()).collect();
                    for t in &mut tables {
                        for param in &swept {
                            if !t.has_column(param) {
                                t.columns.push(((*param).clone(), format!("swept parameter `{param}`")));
                            }
                        }
                    }
                    input_tables.insert(input.clone(), Some(tables));
                }
                kind.check_inputs(&canonical, &input_tables).map_err(&locate_issue)?;
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
                if footprint.bytes > crate::limits::STAGE_MEMORY_BUDGET || footprint.bytes.is_nan() {
                    let at = if sweep.is_empty() {
                        vec!["stages".into(), name.into(), "params".into()]
                    } else {
                        sweep_origin.clone()
                    };
                    return Err(spec.error_at(
                        &as_strs(&at),
                        format!(
                            "stage `{instance_name}` would allocate about {} ({}), more than the budget of {} per stage; \
                             reduce its size params",
                            human_bytes(footprint.bytes),
                            footprint.what,
                            human_bytes(crate::limits::STAGE_MEMORY_BUDGET)
                        ),
                    ));
                }
                // A swept stage publishes one file per instance, named after its sweep point.
                let publish = publish.as_ref().map(|stem| {
                    if point.is_empty() {
                        stem.clone()
                    } else {
                        let suffix = instance_name[name.len()..].trim_start_matches('[').trim_end_matches(']');
                        format!("{stem}-{}", crate::limits::file_name_component(suffix))
                    }
                });
                if let Some(target) = &publish {
                    if let Some((other, _)) = targets.get(target) {
                        return Err(spec.error_at(
                            &as_strs(&publish_origin),
                            format!(
                                "stages `{other}` and `{instance_name}` would both publish `{target}`; give one of them another `publish:`"
                            ),
                        ));
                    }
                    targets.insert(target.clone(), (instance_name.clone(), publish_origin.clone()));
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
                    publish,
                    resources,
                });
            }
            instances.insert(name, idx);
        }
        Ok(Plan { pipeline: file.name.clone(), profile, stages })
    }
}

/// Pipeline, profile and stage names become file names (cache index, baselines,
/// published figures): they must be plain names.
fn check_names(spec: &PipelineSpec) -> Result<(), EngineError> {
    let file = &spec.file;
    crate::limits::check_name(&file.name)
        .map_err(|why| spec.error_at(&["name"], format!("pipeline name `{}` {why}", file.name.escape_default())))?;
    for p in file.profiles.keys() {
        crate::limits::check_name(p)
            .map_err(|why| spec.error_at(&["profiles", p], format!("profile name `{}` {why}", p.escape_default())))?;
    }
    if let Some(p) = &file.default_profile {
        crate::limits::check_name(p).map_err(|why| {
            spec.error_at(&["default_profile"], format!("profile name `{}` {why}", p.escape_default()))
        })?;
    }
    for s in file.stages.keys() {
        crate::limits::check_name(s)
            .map_err(|why| spec.error_at(&["stages", s], format!("stage name `{}` {why}", s.escape_default())))?;
    }
    Ok(())
}

/// Refuses a plan of more than [`crate::limits::MAX_INSTANCES`] instances
/// before building any (three sweeps of 1,000 values are 10^9 instances).
fn count_instances(
    spec: &PipelineSpec,
    overrides: Option<&crate::spec::ProfileDecl>,
    profile: &str,
) -> Result<(), EngineError> {
    let limit = crate::limits::MAX_INSTANCES;
    let mut total: u64 = 0;
    let mut largest: Option<(&str, u64, bool)> = None;
    for (name, decl) in &spec.file.stages {
        let ov = overrides.and_then(|p| p.stages.get(name)).and_then(|o| o.sweep.as_ref());
        let sweep = ov.unwrap_or(&decl.sweep);
        let count = sweep.values().try_fold(1u64, |acc, v| acc.checked_mul(v.len() as u64)).unwrap_or(u64::MAX);
        total = total.saturating_add(count);
        if largest.is_none_or(|(_, c, _)| count > c) {
            largest = Some((name, count, ov.is_some()));
        }
    }
    if total <= limit {
        return Ok(());
    }
    let (name, count, overridden) = largest.expect("a plan over the limit has stages");
    let at: Vec<&str> =
        if overridden { vec!["profiles", profile, "stages", name, "sweep"] } else { vec!["stages", name, "sweep"] };
    let show = |n: u64| if n == u64::MAX { "more than 10^19".to_string() } else { n.to_string() };
    Err(spec.error_at(
        &at,
        format!(
            "the sweeps expand to {} stage instances ({} of them from stage `{name}`), more than the limit of {limit}",
            show(total),
            show(count)
        ),
    ))
}

fn human_bytes(b: f64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if b >= 1024.0 * GIB {
        format!("{:.3e} bytes", b)
    } else if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
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
