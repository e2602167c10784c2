//! The content-addressed store of stage outputs.
//!
//! Layout under the cache root:
//! - `entries/<key>/`  finished entries: the stage's files plus `meta.json`;
//! - `tmp/<key>.<pid>.<n>/`  entries being written (never read); those of killed
//!   runs are removed by the next run of the key, `cache verify --fix` and `gc`;
//! - `locks/<key>.lock`  one lock file per key, held while the key is computed;
//! - `index/<pipeline>/<profile>/<stage>.json`  the key each stage had last run,
//!   used only to explain why a stage must run again;
//! - `scratch/<key>/`  resumable state (checkpoints) of unfinished stages.
//!
//! Invariant: a directory appears under `entries/` only by an atomic rename of
//! a complete temporary directory, so readers never see partial entries; and
//! an entry is used only after every file's blake3 matches its `meta.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::registry::CodeFingerprints;

pub const META_FILE: &str = "meta.json";

/// Hash and size of one file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub blake3: String,
    pub bytes: u64,
}

/// Shape and column definitions of one table of an entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    pub file: String,
    pub rows: usize,
    /// Column name -> definition and unit.
    pub columns: BTreeMap<String, String>,
}

/// `meta.json`: everything needed to know what an entry is and to verify it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub kind_version: String,
    /// The code that computed the files (kept when the entry is adopted).
    #[serde(default)]
    pub code: CodeFingerprints,
    pub params: serde_json::Value,
    pub seed: u64,
    /// Input name -> keys of the upstream entries.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Each time a user vouched for this entry under other code, oldest first
    /// (empty: computed by the code of its key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<Adoption>,
    pub crate_versions: BTreeMap<String, String>,
    pub git_commit: Option<String>,
    pub started: String,
    pub finished: String,
    pub wall_seconds: f64,
    pub tables: BTreeMap<String, TableMeta>,
    pub files: BTreeMap<String, FileMeta>,
    /// Free-form facts a stage records (precision, device, counts).
    #[serde(default)]
    pub info: BTreeMap<String, serde_json::Value>,
}

/// A user's explicit decision to reuse an entry under other code: the entry of
/// `from_key` (keyed under `from_code`) was re-keyed under `to_code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adoption {
    pub by: String,
    /// UTC, ISO 8601.
    pub at: String,
    pub from_key: String,
    pub from_code: CodeFingerprints,
    pub to_code: CodeFingerprints,
}

/// What the cache holds for a key.
#[derive(Debug, Clone)]
pub enum EntryStatus {
    Valid(Box<EntryMeta>),
    Missing,
    /// Present but failing verification; the reason names the file.
    Corrupt(String),
}

/// Last-run record of a stage, to explain reruns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRecord {
    pub key: String,
    pub kind: String,
    pub kind_version: String,
    #[serde(default)]
    pub code: CodeFingerprints,
    pub params: serde_json::Value,
    pub seed: u64,
    pub inputs: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, EngineError> {
        let root = root.into();
        for sub in ["entries", "tmp", "locks", "index", "scratch"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(EngineError::io(&p))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    pub fn scratch_dir(&self, key: &str) -> PathBuf {
        self.root.join("scratch").join(key)
    }

    /// Reads and verifies the entry of `key`: every file listed must exist,
    /// have its recorded size and blake3, and no listed file may be missing.
    pub fn status(&self, key: &str) -> EntryStatus {
        let dir = self.entry_dir(key);
        match fs::symlink_metadata(&dir) {
            Err(_) => return EntryStatus::Missing,
            Ok(m) if !m.is_dir() => return EntryStatus::Corrupt(format!("{}: not a directory", dir.display())),
            Ok(_) => {}
        }
        match verify_entry(&dir, key) {
            Ok(meta) => EntryStatus::Valid(Box::new(meta)),
            Err(reason) => EntryStatus::Corrupt(reason),
        }
    }

    /// The metadata of `key`'s entry, unverified (for listing and searching;
    /// use [`Cache::status`] before reading its files).
    pub fn read_meta(&self, key: &str) -> Option<EntryMeta> {
        let bytes = fs::read(self.entry_dir(key).join(META_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Moves a corrupt entry out of the way (renamed first, so it vanishes atomically).
    /// (An entry path that is not a directory, a file or a link, is removed the same way.)
    pub fn discard(&self, key: &str) -> Result<(), EngineError> {
        let dir = self.entry_dir(key);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let trash = self.fresh_tmp_path(&format!("{key}.discarded"));
        fs::rename(&dir, &trash).map_err(EngineError::io(&dir))?;
        remove_any(&trash)
    }

    /// Temporary folders (and stray files) under `tmp/` that no live run owns:
    /// left by killed or aborted runs. A run owns them while it holds its key's lock.
    pub fn stale_tmp(&self) -> Result<Vec<PathBuf>, EngineError> {
        let tmp = self.root.join("tmp");
        let mut stale = Vec::new();
        for e in fs::read_dir(&tmp).map_err(EngineError::io(&tmp))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.split('.').next().unwrap_or_default();
            let lock_path = self.root.join("locks").join(format!("{key}.lock"));
            let free = match fs::OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path) {
                Ok(f) => f.try_lock().is_ok(),
                // No lock file can be made for this name (not a key): nobody owns it.
                Err(_) => true,
            };
            if free {
                stale.push(e.path());
            }
        }
        stale.sort();
        Ok(stale)
    }

    /// Removes what [`Cache::stale_tmp`] lists; returns what was removed.
    pub fn remove_stale_tmp_all(&self) -> Result<Vec<PathBuf>, EngineError> {
        let stale = self.stale_tmp()?;
        for p in &stale {
            remove_any(p)?;
        }
        Ok(stale)
    }

    /// Takes the per-key lock, blocking while another process computes the key.
    pub fn lock(&self, key: &str) -> Result<KeyLock, EngineError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(EngineError::io(&path))?;
            file.lock().map_err(EngineError::io(&path))?;
            // `gc` deletes lock files (holding their lock). If it deleted this one
            // between our open and our lock, we hold the lock of a deleted file, which
            // excludes no one: a later run creates a new file and locks that. So
            // keep the lock only if `path` is still the file we locked.
            if is_same_file(&file, &path) {
                break file;
            }
        };
        // We own the key now: temporary directories left for it by killed runs are garbage.
        self.remove_stale_tmp(key)?;
        Ok(KeyLock { _file: file })
    }

    fn remove_stale_tmp(&self, key: &str) -> Result<(), EngineError> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{key}.");
        for e in fs::read_dir(&tmp).map_err(EngineError::io(&tmp))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    fn fresh_tmp_path(&self, stem: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{stem}.{}.{n}", std::process::id()))
    }

    /// A temporary directory for the entry of `key`; call while holding its lock.
    pub fn begin(&self, key: &str) -> Result<PendingEntry, EngineError> {
        let dir = self.fresh_tmp_path(key);
        fs::create_dir_all(&dir).map_err(EngineError::io(&dir))?;
        Ok(PendingEntry { dir, final_dir: self.entry_dir(key), committed: false, replace: false })
    }

    pub fn write_index(&self, pipeline: &str, profile: &str, stage: &str, rec: &IndexRecord) -> Result<(), EngineError> {
        let path = self.index_path(pipeline, profile, stage);
        let json = serde_json::to_vec_pretty(rec).expect("index records serialize");
        write_atomic(&path, &json)
    }

    pub fn read_index(&self, pipeline: &str, profile: &str, stage: &str) -> Option<IndexRecord> {
        let bytes = fs::read(self.index_path(pipeline, profile, stage)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn index_path(&self, pipeline: &str, profile: &str, stage: &str) -> PathBuf {
        use crate::limits::file_name_component as name;
        self.root.join("index").join(name(pipeline)).join(name(profile)).join(format!("{}.json", name(stage)))
    }

    /// All entry keys present.
    pub fn keys(&self) -> Result<Vec<String>, EngineError> {
        let dir = self.root.join("entries");
        let mut keys: Vec<String> = fs::read_dir(&dir)
            .map_err(EngineError::io(&dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Removes every entry (and scratch state) not in `keep`, and stray
    /// temporary directories. Returns the removed keys.
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, EngineError> {
        let mut removed = Vec::new();
        for key in self.keys()? {
            if !keep.contains(&key) {
                let _lock = self.lock(&key)?;
                self.discard(&key)?;
                removed.push(key);
            }
        }
        let scratch = self.root.join("scratch");
        for e in fs::read_dir(&scratch).map_err(EngineError::io(&scratch))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_dir_all(e.path()).map_err(EngineError::io(e.path()))?;
            }
        }
        for sub in ["tmp", "locks"] {
            let dir = self.root.join(sub);
            for e in fs::read_dir(&dir).map_err(EngineError::io(&dir))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split('.').next().unwrap_or_default().to_string();
                if keep.contains(&key) {
                    continue;
                }
                // Only remove what no live run holds: take the lock without blocking.
                let lock_path = self.root.join("locks").join(format!("{key}.lock"));
                if let Ok(f) = fs::OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path)
                    && f.try_lock().is_ok() {
                        let _ = remove_any(&e.path());
                    }
            }
        }
        self.remove_stale_tmp_all()?;
        Ok(removed)
    }
}

/// Removes a directory tree, a file or a link.
fn remove_any(p: &Path) -> Result<(), EngineError> {
    let res = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.map_err(EngineError::io(p))
}

/// Swaps the paths `a` and `b` in one step, where the platform can; returns
/// false where it cannot (then the caller moves them one after the other).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Whether `path` names the open `file` (not a file created after it was deleted).
#[cfg(unix)]
fn is_same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_same_file(_file: &fs::File, path: &Path) -> bool {
    path.exists()
}

/// Holds the per-key lock until dropped.
pub struct KeyLock {
    _file: fs::File,
}

/// An entry being written; removed on drop unless committed.
pub struct PendingEntry {
    dir: PathBuf,
    final_dir: PathBuf,
    committed: bool,
    /// Replace an existing entry (a forced rerun) instead of keeping it.
    replace: bool,
}

impl PendingEntry {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes [`PendingEntry::commit`] replace an entry already present (a
    /// forced rerun) in one step: readers find either the old entry or the new
    /// one at its path, never none, and files they opened stay readable.
    pub fn replacing(mut self) -> Self {
        self.replace = true;
        self
    }

    /// Hashes every file, writes `meta.json`, and publishes the entry by an
    /// atomic rename. `meta.files` is filled in here.
    pub fn commit(mut self, mut meta: EntryMeta) -> Result<EntryMeta, EngineError> {
        meta.files = hash_files(&self.dir)?;
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        let meta_path = self.dir.join(META_FILE);
        let mut f = fs::File::create(&meta_path).map_err(EngineError::io(&meta_path))?;
        f.write_all(&json).and_then(|_| f.sync_all()).map_err(EngineError::io(&meta_path))?;
        sync_dir(&self.dir);
        let present = fs::symlink_metadata(&self.final_dir).is_ok();
        if present && self.replace {
            if exchange(&self.dir, &self.final_dir).map_err(EngineError::io(&self.final_dir))? {
                // The old entry now sits at our temporary path.
                remove_any(&self.dir)?;
            } else {
                let old = self.dir.with_extension("replaced");
                fs::rename(&self.final_dir, &old).map_err(EngineError::io(&self.final_dir))?;
                fs::rename(&self.dir, &self.final_dir).map_err(EngineError::io(&self.final_dir))?;
                remove_any(&old)?;
            }
            if let Some(parent) = self.final_dir.parent() {
                sync_dir(parent);
            }
        } else if present {
            // Someone committed the same key meanwhile (it is the same content): keep theirs.
            fs::remove_dir_all(&self.dir).map_err(EngineError::io(&self.dir))?;
        } else {
            fs::rename(&self.dir, &self.final_dir).map_err(EngineError::io(&self.final_dir))?;
            if let Some(parent) = self.final_dir.parent() {
                sync_dir(parent);
            }
        }
        self.committed = true;
        Ok(meta)
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn hash_files(dir: &Path) -> Result<BTreeMap<String, FileMeta>, EngineError> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(EngineError::io(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == META_FILE {
            continue;
        }
        let path = e.path();
        if !path.is_file() {
            return Err(EngineError::CacheCorrupt { path, reason: "stage outputs must be plain files".into() });
        }
        let (blake3, bytes) = hash_file(&path).map_err(EngineError::io(&path))?;
        files.insert(name, FileMeta { blake3, bytes });
    }
    Ok(files)
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    let bytes = fs::metadata(path)?.len();
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

fn verify_entry(dir: &Path, key: &str) -> Result<EntryMeta, String> {
    let meta_path = dir.join(META_FILE);
    let bytes = fs::read(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let meta: EntryMeta =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: unreadable metadata: {e}", meta_path.display()))?;
    if meta.key != key {
        return Err(format!("{}: records key {} instead of {key}", meta_path.display(), meta.key));
    }
    for (name, expected) in &meta.files {
        let path = dir.join(name);
        let (hash, len) = hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if len != expected.bytes {
            return Err(format!("{}: {len} bytes, expected {}", path.display(), expected.bytes));
        }
        if hash != expected.blake3 {
            return Err(format!("{}: content hash mismatch", path.display()));
        }
    }
    for t in meta.tables.values() {
        if !meta.files.contains_key(&t.file) {
            return Err(format!("{}: table file {} not listed", meta_path.display(), t.file));
        }
    }
    Ok(meta)
}

/// Writes a small file atomically (temporary sibling, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(EngineError::io(parent))?;
    }
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(EngineError::io(path))
}

