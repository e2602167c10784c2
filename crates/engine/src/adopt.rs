//! Adoption: a user vouches that an entry made by other code is still right
//! (a refactor, a comment), and it is re-keyed under the current code instead
//! of being recomputed. The only way an entry is reused across a code change,
//! and it is recorded in the entry's metadata.

use std::collections::BTreeMap;
use std::fs;
use std::time::SystemTime;

use crate::cache::{Adoption, Cache, EntryMeta, EntryStatus};
use crate::error::EngineError;
use crate::plan::{Plan, PlannedStage};
use crate::registry::changed_units;

/// What [`adopt`] did for one stage instance.
#[derive(Debug, Clone, PartialEq)]
pub enum AdoptOutcome {
    /// The entry of `from_key` now also lives under the stage's current key.
    Adopted {
        from_key: String,
        /// Code units whose sources differ from those the entry was keyed under.
        changed: Vec<String>,
        /// The adoption as recorded in the new entry's `meta.json`.
        record: Adoption,
    },
    /// The current key already has a valid entry (`adopted`: by an earlier adoption).
    AlreadyCurrent { adopted: bool },
}

/// Re-keys under the current key of `plan.stages[index]` the most recent valid
/// entry of the same kind, kind version, params and seed whose upstream
/// entries are the current ones (the same keys, entries adopted from them, or
/// entries with the same bytes). The files are kept byte for byte; `by` and the
/// time are recorded in `meta.json`. Adopt upstream stages first.
pub fn adopt(cache: &Cache, plan: &Plan, index: usize, by: &str) -> Result<AdoptOutcome, EngineError> {
    let stage = &plan.stages[index];
    let failed = |reason: String| EngineError::Adopt { stage: stage.name.clone(), reason };
    let _lock = cache.lock(&stage.key)?;
    match cache.status(&stage.key) {
        EntryStatus::Valid(meta) => return Ok(AdoptOutcome::AlreadyCurrent { adopted: !meta.adopted.is_empty() }),
        EntryStatus::Corrupt(reason) => return Err(failed(format!("its current entry is corrupt ({reason}); run the pipeline"))),
        EntryStatus::Missing => {}
    }
    let mut candidates: Vec<EntryMeta> = Vec::new();
    let mut same_kind = 0usize;
    for key in cache.keys()? {
        let Some(meta) = cache.read_meta(&key) else { continue };
        if meta.kind != stage.kind || meta.key != key {
            continue;
        }
        same_kind += 1;
        if meta.kind_version == stage.kind_version
            && meta.params == stage.params
            && meta.seed == stage.seed
            && same_upstream(cache, plan, stage, &meta.inputs)
        {
            candidates.push(meta);
        }
    }
    // The most recent first; the first that still verifies is adopted.
    candidates.sort_by(|a, b| b.finished.cmp(&a.finished));
    let Some(old) = candidates.into_iter().find(|m| matches!(cache.status(&m.key), EntryStatus::Valid(_))) else {
        return Err(failed(format!(
            "no valid entry of kind `{}` (version {}) with the same params and seed, made from the current upstream \
             entries ({same_kind} entries of this kind differ); adopt its upstream stages first, or run the pipeline",
            stage.kind, stage.kind_version
        )));
    };
    let _old_lock = cache.lock(&old.key)?;

    let from_code = old.adopted.last().map_or_else(|| old.code.clone(), |a| a.to_code.clone());
    let record = Adoption {
        by: by.to_string(),
        at: crate::time::iso8601(SystemTime::now()),
        from_key: old.key.clone(),
        from_code: from_code.clone(),
        to_code: stage.code.clone(),
    };
    let pending = cache.begin(&stage.key)?;
    let from_dir = cache.entry_dir(&old.key);
    for name in old.files.keys() {
        let (from, to) = (from_dir.join(name), pending.dir().join(name));
        // Entries are never modified in place, so a hard link keeps the bytes
        // without copying a large checkpoint; a copy where links are not possible.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(EngineError::io(&to))?;
        }
    }
    let mut meta = old.clone();
    meta.key = stage.key.clone();
    meta.pipeline = plan.pipeline.clone();
    meta.stage = stage.name.clone();
    meta.inputs = plan.input_keys(stage);
    meta.adopted.push(record.clone());
    let committed = pending.commit(meta)?;
    if committed.files != old.files {
        return Err(failed(format!("the files of entry {} changed while they were being adopted", old.key)));
    }
    cache.write_index(
        &plan.pipeline,
        &plan.profile,
        &stage.name,
        &plan.index_record(stage),
    )?;
    Ok(AdoptOutcome::Adopted { from_key: old.key, changed: changed_units(&from_code, &stage.code), record })
}

/// Whether `inputs` (of an old entry) name the current upstream entries of
/// `stage`: the same keys, or entries the current ones were adopted from or
/// hold the same bytes as.
fn same_upstream(cache: &Cache, plan: &Plan, stage: &PlannedStage, inputs: &BTreeMap<String, Vec<String>>) -> bool {
    let current = plan.input_keys(stage);
    if current.keys().ne(inputs.keys()) {
        return false;
    }
    current.iter().all(|(name, keys)| {
        let old = &inputs[name];
        old.len() == keys.len()
            && keys.iter().zip(old).all(|(now, then)| {
                if now == then {
                    return true;
                }
                let Some(now_meta) = cache.read_meta(now) else { return false };
                now_meta.adopted.iter().any(|a| &a.from_key == then)
                    || cache.read_meta(then).is_some_and(|then_meta| then_meta.files == now_meta.files)
            })
    })
}
