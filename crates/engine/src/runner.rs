//! Executes a plan against the cache: each stage runs iff its key is absent
//! or its entry fails verification (or when forced).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::cache::{Cache, EntryMeta, EntryStatus};
use crate::context::{StageContext, UpstreamEntry};
use crate::error::EngineError;
use crate::plan::{Plan, PlannedStage};
use crate::registry::{changed_units, Registry};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only explain what would run.
    pub dry_run: bool,
    /// Rerun every stage.
    pub force_all: bool,
    /// Rerun these declared stages (downstream keys do not change, so only
    /// these are recomputed).
    pub force: Vec<String>,
    /// Project root that `publish` paths are relative to (None: publish nothing).
    pub publish_root: Option<PathBuf>,
    /// Appended to every publish stem, e.g. `-ci` so that a profile's figures
    /// do not overwrite the default ones.
    pub publish_suffix: String,
    pub show_progress: bool,
    /// Recompute entries a user adopted from other code, and what depends on
    /// them (`cargo xtask check` vouches only for results of the current code).
    pub recompute_adopted: bool,
}

/// Why a stage runs (or not).
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutcome {
    Cached,
    /// Would run / ran, with the reason.
    Run(RunReason),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunReason {
    /// No entry and no record of an earlier run of this stage.
    Missing,
    ParamsChanged(Vec<String>),
    SeedChanged { from: u64, to: u64 },
    KindVersionChanged { from: String, to: String },
    /// The sources of these code units changed since the last run.
    CodeChanged(Vec<String>),
    /// The entry was adopted (made by other code: these units) and is not trusted here.
    Adopted(Vec<String>),
    UpstreamChanged(Vec<String>),
    /// Same key as last time, but the entry is gone (e.g. garbage-collected).
    EntryRemoved,
    Corrupt(String),
    Forced,
}

impl fmt::Display for RunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunReason::Missing => f.write_str("missing (never run)"),
            RunReason::ParamsChanged(p) => write!(f, "params changed: {}", p.join(", ")),
            RunReason::SeedChanged { from, to } => write!(f, "seed changed: {from} -> {to}"),
            RunReason::KindVersionChanged { from, to } => write!(f, "stage code version changed: {from} -> {to}"),
            RunReason::CodeChanged(units) => write!(f, "code changed ({})", units.join(", ")),
            RunReason::Adopted(units) if units.is_empty() => f.write_str("adopted entry, not trusted here"),
            RunReason::Adopted(units) => write!(f, "adopted entry made by other code ({})", units.join(", ")),
            RunReason::UpstreamChanged(i) => write!(f, "upstream changed: {}", i.join(", ")),
            RunReason::EntryRemoved => f.write_str("missing (entry removed from the cache)"),
            RunReason::Corrupt(r) => write!(f, "corrupt entry: {r}"),
            RunReason::Forced => f.write_str("forced"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub key: String,
    pub outcome: StageOutcome,
    pub seconds: f64,
    /// A cached entry that a user adopted, reused as is: the code units whose
    /// current sources differ from those that made it.
    pub adopted: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub stages: Vec<StageReport>,
    pub published: Vec<PathBuf>,
}

impl RunReport {
    pub fn ran(&self) -> usize {
        self.stages.iter().filter(|s| matches!(s.outcome, StageOutcome::Run(_))).count()
    }
}

pub struct Runner<'a> {
    pub registry: &'a Registry,
    pub cache: &'a Cache,
    pub options: RunOptions,
}

impl<'a> Runner<'a> {
    pub fn new(registry: &'a Registry, cache: &'a Cache, options: RunOptions) -> Self {
        Runner { registry, cache, options }
    }

    pub fn run(&self, plan: &Plan) -> Result<RunReport, EngineError> {
        for name in &self.options.force {
            if !plan.stages.iter().any(|s| &s.decl == name) {
                let mut known: Vec<&str> = plan.stages.iter().map(|s| s.decl.as_str()).collect();
                known.dedup();
                return Err(EngineError::UnknownStage { name: name.clone(), known: known.join(", ") });
            }
        }
        let mut report = RunReport::default();
        let mut metas: Vec<Option<EntryMeta>> = vec![None; plan.stages.len()];
        // Stages whose entry is recomputed because it, or an upstream entry, was
        // adopted (only with `recompute_adopted`): their keys do not change, so
        // their downstream must be recomputed explicitly.
        let mut untrusted = vec![false; plan.stages.len()];
        let git_commit = git_commit();
        for (i, stage) in plan.stages.iter().enumerate() {
            let forced = self.options.force_all || self.options.force.iter().any(|f| f == &stage.decl);
            let status = self.cache.status(&stage.key);
            let untrusted_inputs: Vec<String> = stage
                .inputs
                .iter()
                .filter(|(_, idx)| idx.iter().any(|&j| untrusted[j]))
                .map(|(name, _)| name.clone())
                .collect();
            let mut adopted_reused = None;
            let reason = match (&status, forced) {
                (_, true) => Some(RunReason::Forced),
                (EntryStatus::Valid(meta), false) => {
                    let other_code = changed_units(&meta.code, &stage.code);
                    let adopted = !meta.adopted.is_empty();
                    if adopted && self.options.recompute_adopted {
                        untrusted[i] = true;
                        Some(RunReason::Adopted(other_code))
                    } else if !adopted && !other_code.is_empty() {
                        // Metadata that contradicts its key: never reuse it silently.
                        Some(RunReason::CodeChanged(other_code))
                    } else if !untrusted_inputs.is_empty() {
                        untrusted[i] = true;
                        Some(RunReason::UpstreamChanged(untrusted_inputs))
                    } else {
                        adopted_reused = adopted.then_some(other_code);
                        None
                    }
                }
                (EntryStatus::Corrupt(r), false) => Some(RunReason::Corrupt(r.clone())),
                (EntryStatus::Missing, false) => Some(self.explain_missing(plan, stage)),
            };
            let Some(reason) = reason else {
                if let EntryStatus::Valid(meta) = status {
                    metas[i] = Some(*meta);
                }
                report.stages.push(StageReport {
                    name: stage.name.clone(),
                    key: stage.key.clone(),
                    outcome: StageOutcome::Cached,
                    seconds: 0.0,
                    adopted: adopted_reused,
                });
                continue;
            };
            if self.options.dry_run {
                report.stages.push(StageReport {
                    name: stage.name.clone(),
                    key: stage.key.clone(),
                    outcome: StageOutcome::Run(reason),
                    seconds: 0.0,
                    adopted: None,
                });
                continue;
            }
            if let RunReason::Corrupt(r) = &reason {
                tracing::warn!("cache entry {} of stage `{}` is corrupt ({r}); recomputing", stage.key, stage.name);
            }
            let started = Instant::now();
            // A forced or untrusted entry is replaced even if it verifies.
            let replace = forced || untrusted[i];
            let (meta, _fresh) = self.compute(plan, stage, &metas, replace, git_commit.clone())?;
            metas[i] = Some(meta);
            report.stages.push(StageReport {
                name: stage.name.clone(),
                key: stage.key.clone(),
                outcome: StageOutcome::Run(reason),
                seconds: started.elapsed().as_secs_f64(),
                adopted: None,
            });
        }
        if !self.options.dry_run
            && let Some(root) = &self.options.publish_root {
                for (stage, meta) in plan.stages.iter().zip(&metas) {
                    if let (Some(stem), Some(meta)) = (&stage.publish, meta) {
                        let stem = format!("{stem}{}", self.options.publish_suffix);
                        let target = confined_target(root, self.cache.root(), &stem)?;
                        report.published.extend(publish(self.cache, meta, &target)?);
                    }
                }
            }
        Ok(report)
    }

    /// Computes the one instance `index` of `plan`, as a job of a batch
    /// executor does: its upstream entries must already be valid in the cache
    /// (other jobs computed them). The key lock and the atomic commit make a
    /// second job for the same key, or a local run beside it, reuse the entry
    /// instead of computing it again; the report says `Cached` then.
    pub fn run_instance(&self, plan: &Plan, index: usize) -> Result<StageReport, EngineError> {
        let stage = &plan.stages[index];
        let mut metas: Vec<Option<EntryMeta>> = vec![None; plan.stages.len()];
        for &j in stage.inputs.values().flatten() {
            let up = &plan.stages[j];
            let reason = match self.cache.status(&up.key) {
                EntryStatus::Valid(meta) => {
                    metas[j] = Some(*meta);
                    continue;
                }
                EntryStatus::Missing => "it has no cache entry".to_string(),
                EntryStatus::Corrupt(r) => format!("its cache entry is corrupt ({r})"),
            };
            return Err(EngineError::UpstreamNotReady { stage: stage.name.clone(), upstream: up.name.clone(), reason });
        }
        let forced = self.options.force_all || self.options.force.iter().any(|f| f == &stage.decl);
        let mut replace = forced;
        let reason = match self.cache.status(&stage.key) {
            _ if forced => RunReason::Forced,
            // The same rules as a full run's: an entry of other code is replaced.
            EntryStatus::Valid(meta) => {
                let other_code = changed_units(&meta.code, &stage.code);
                let adopted = !meta.adopted.is_empty();
                if adopted && self.options.recompute_adopted {
                    replace = true;
                    RunReason::Adopted(other_code)
                } else if !adopted && !other_code.is_empty() {
                    replace = true;
                    RunReason::CodeChanged(other_code)
                } else {
                    return Ok(StageReport {
                        name: stage.name.clone(),
                        key: stage.key.clone(),
                        outcome: StageOutcome::Cached,
                        seconds: 0.0,
                        adopted: adopted.then_some(other_code),
                    });
                }
            }
            EntryStatus::Corrupt(r) => {
                tracing::warn!("cache entry {} of stage `{}` is corrupt ({r}); recomputing", stage.key, stage.name);
                RunReason::Corrupt(r)
            }
            EntryStatus::Missing => self.explain_missing(plan, stage),
        };
        let started = Instant::now();
        let (_meta, fresh) = self.compute(plan, stage, &metas, replace, git_commit())?;
        Ok(StageReport {
            name: stage.name.clone(),
            key: stage.key.clone(),
            outcome: if fresh { StageOutcome::Run(reason) } else { StageOutcome::Cached },
            seconds: started.elapsed().as_secs_f64(),
            adopted: None,
        })
    }

    fn explain_missing(&self, plan: &Plan, stage: &PlannedStage) -> RunReason {
        let Some(prev) = self.cache.read_index(&plan.pipeline, &plan.profile, &stage.name) else {
            return RunReason::Missing;
        };
        if prev.key == stage.key {
            return RunReason::EntryRemoved;
        }
        if prev.kind_version != stage.kind_version {
            return RunReason::KindVersionChanged { from: prev.kind_version, to: stage.kind_version.clone() };
        }
        let code = changed_units(&prev.code, &stage.code);
        if !code.is_empty() {
            return RunReason::CodeChanged(code);
        }
        let changed = diff_params(&prev.params, &stage.params);
        if !changed.is_empty() {
            return RunReason::ParamsChanged(changed);
        }
        if prev.seed != stage.seed {
            return RunReason::SeedChanged { from: prev.seed, to: stage.seed };
        }
        let now = plan.input_keys(stage);
        let inputs: Vec<String> = now
            .iter()
            .filter(|(name, keys)| prev.inputs.get(*name) != Some(keys))
            .map(|(name, _)| name.clone())
            .collect();
        if !inputs.is_empty() {
            return RunReason::UpstreamChanged(inputs);
        }
        RunReason::Missing
    }

    fn compute(
        &self,
        plan: &Plan,
        stage: &PlannedStage,
        metas: &[Option<EntryMeta>],
        replace: bool,
        git_commit: Option<String>,
    ) -> Result<(EntryMeta, bool), EngineError> {
        // Cache errors of this stage name it and its entry: with a full disk, the
        // file path alone does not tell which stage's result was lost.
        let entry_write = |source: EngineError| EngineError::EntryWrite {
            stage: stage.name.clone(),
            key: stage.key.clone(),
            source: Box::new(source),
        };
        let _lock = self.cache.lock(&stage.key).map_err(&entry_write)?;
        // Another process may have computed the key while we waited for the lock
        // (an entry we were asked to replace does not count).
        if !replace
            && let EntryStatus::Valid(meta) = self.cache.status(&stage.key)
            && meta.adopted.is_empty()
            && meta.code == stage.code
        {
            tracing::info!("{}: computed meanwhile by another run", stage.name);
            return Ok((*meta, false));
        }
        // A forced rerun keeps the old entry until the new one replaces it in one
        // step: another process may be reading it. A corrupt one goes now.
        if !matches!(self.cache.status(&stage.key), EntryStatus::Valid(_)) {
            self.cache.discard(&stage.key).map_err(&entry_write)?;
        }
        let kind = self.registry.get(&stage.kind).expect("plan only holds registered kinds");
        let pending = self.cache.begin(&stage.key).map_err(&entry_write)?.replacing();
        let inputs: BTreeMap<String, Vec<UpstreamEntry>> = stage
            .inputs
            .iter()
            .map(|(name, idx)| {
                let ups = idx
                    .iter()
                    .map(|&j| {
                        let up = &plan.stages[j];
                        UpstreamEntry {
                            stage: up.name.clone(),
                            sweep: up.sweep.clone(),
                            dir: self.cache.entry_dir(&up.key),
                            meta: metas[j].clone().expect("upstream computed first"),
                        }
                    })
                    .collect();
                (name.clone(), ups)
            })
            .collect();
        let mut ctx = StageContext {
            name: stage.name.clone(),
            seed: stage.seed,
            inputs,
            out_dir: pending.dir().to_path_buf(),
            scratch_dir: self.cache.scratch_dir(&stage.key),
            tables: BTreeMap::new(),
            info: BTreeMap::new(),
            show_progress: self.options.show_progress,
            sweep: stage.sweep.clone(),
            declared: kind.tables(),
        };
        tracing::info!("{}: running ({})", stage.name, stage.kind);
        let started_at = SystemTime::now();
        let clock = Instant::now();
        kind.run(&stage.params, &mut ctx).map_err(|source| match source.downcast::<EngineError>() {
            // The stage computed its table but the cache could not store it: not the stage's fault.
            Ok(e) if matches!(*e, EngineError::WriteTable { .. }) => entry_write(*e),
            Ok(e) => EngineError::StageFailed { stage: stage.name.clone(), source: e },
            Err(source) => EngineError::StageFailed { stage: stage.name.clone(), source },
        })?;
        let meta = EntryMeta {
            key: stage.key.clone(),
            pipeline: plan.pipeline.clone(),
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            kind_version: stage.kind_version.clone(),
            code: stage.code.clone(),
            params: stage.params.clone(),
            seed: stage.seed,
            inputs: plan.input_keys(stage),
            adopted: Vec::new(),
            crate_versions: self.registry.versions().clone(),
            git_commit,
            started: crate::time::iso8601(started_at),
            finished: crate::time::iso8601(SystemTime::now()),
            wall_seconds: clock.elapsed().as_secs_f64(),
            tables: std::mem::take(&mut ctx.tables),
            files: BTreeMap::new(),
            info: std::mem::take(&mut ctx.info),
        };
        let meta = pending.commit(meta).map_err(&entry_write)?;
        let scratch = self.cache.scratch_dir(&stage.key);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(EngineError::io(&scratch)).map_err(&entry_write)?;
        }
        self.cache.write_index(
            &plan.pipeline,
            &plan.profile,
            &stage.name,
            &plan.index_record(stage),
        )
        .map_err(&entry_write)?;
        tracing::info!("{}: done in {:.1} s", stage.name, meta.wall_seconds);
        Ok((meta, true))
    }
}

/// Top-level param names whose values differ (added or removed included).
fn diff_params(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if !x.is_object() && !x.is_array() => format!("{k} ({x} -> {y})"),
                    _ => k.clone(),
                })
                .collect()
        }
        _ if old != new => vec!["params".into()],
        _ => vec![],
    }
}

/// `root/stem`, once its folder exists and is checked to resolve (symbolic
/// links followed) inside `root/figures` and outside the cache. The planner
/// checked the stem's spelling; this catches links and a cache kept in figures/.
fn confined_target(root: &Path, cache_root: &Path, stem: &str) -> Result<PathBuf, EngineError> {
    let target = root.join(stem);
    let outside = |reason: String| EngineError::PublishOutside { path: target.clone(), reason };
    if !crate::limits::is_plain_relative_path(stem) || !stem.starts_with(&format!("{}/", crate::limits::OUTPUT_DIR)) {
        return Err(outside(format!("`{stem}` is not a path under {}/", crate::limits::OUTPUT_DIR)));
    }
    let out_dir = root.join(crate::limits::OUTPUT_DIR);
    let parent = target.parent().expect("a stem under the output folder has a parent");
    std::fs::create_dir_all(parent).map_err(EngineError::io(parent))?;
    let canonical_out = out_dir.canonicalize().map_err(EngineError::io(&out_dir))?;
    let canonical_root = root.canonicalize().map_err(EngineError::io(root))?;
    let canonical_parent = parent.canonicalize().map_err(EngineError::io(parent))?;
    if !canonical_out.starts_with(&canonical_root) {
        return Err(outside(format!("{} resolves to {}, outside the project", out_dir.display(), canonical_out.display())));
    }
    if !canonical_parent.starts_with(&canonical_out) {
        return Err(outside(format!("its folder resolves to {}, outside {}", canonical_parent.display(), canonical_out.display())));
    }
    if let Ok(cache) = cache_root.canonicalize()
        && (canonical_parent.starts_with(&cache) || cache.starts_with(&canonical_parent))
    {
        return Err(outside(format!("its folder {} holds the cache {}", canonical_parent.display(), cache.display())));
    }
    Ok(target)
}

/// Copies the entry's non-table files to `stem.<ext>` (a file named
/// `figure.<ext>`) or `stem-<name>` (any other file). Atomic per file.
fn publish(cache: &Cache, meta: &EntryMeta, stem: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let dir = cache.entry_dir(&meta.key);
    let table_files: Vec<&str> = meta.tables.values().map(|t| t.file.as_str()).collect();
    let mut out = Vec::new();
    for name in meta.files.keys() {
        if table_files.contains(&name.as_str()) {
            continue;
        }
        let from = dir.join(name);
        let file_stem = Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or(name);
        let ext = Path::new(name).extension().and_then(|s| s.to_str()).unwrap_or("");
        let to = if file_stem == "figure" {
            stem.with_extension(ext)
        } else {
            let base = stem.file_name().and_then(|s| s.to_str()).unwrap_or("out");
            stem.with_file_name(format!("{base}-{name}"))
        };
        let bytes = std::fs::read(&from).map_err(|source| EngineError::Publish { from: from.clone(), to: to.clone(), source })?;
        // Unchanged figures are not rewritten, so their mtime says when they last changed.
        if std::fs::read(&to).map(|old| old == bytes).unwrap_or(false) {
            out.push(to);
            continue;
        }
        crate::cache::write_atomic(&to, &bytes)?;
        out.push(to);
    }
    Ok(out)
}

/// The current git commit (with `-dirty` when the tree has changes), if any.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        commit.push_str("-dirty");
    }
    Some(commit)
}
