//! Code fingerprints of the stage kinds, computed by `build.rs` (and by the
//! tests, on temporary source trees, through the same functions).
//!
//! A unit is either a science crate (`e2h-mcm`: every file of its directory
//! but `tests/`, `examples/`, `benches/` and `target/`, so `Cargo.toml` and an
//! embedded font count) or one module of this crate (`e2h-stages::frame`: its
//! `src/<name>.rs`). A module depends on the modules it names as
//! `crate::<name>`, the science crates it names as `e2h_<name>`, and the
//! workspace crates those crates depend on, transitively. The stage kinds of a
//! module depend on the closure of that module. The engine is no unit: it
//! stores results but computes none of them.
//!
//! Files are hashed byte for byte: comments and formatting count as changes.
//! Telling a comment from code would need a Rust lexer in the build, and a
//! mistake there would reuse results of changed code, which is what the
//! fingerprints exist to prevent; an expensive entry survives a comment-only
//! edit through `cargo xtask cache adopt`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Prefix of every unit that is a module of the stages crate.
pub const STAGES_PREFIX: &str = "e2h-stages::";

/// Crates that are not units: this one (its modules are) and the engine.
const NOT_UNITS: [&str; 2] = ["e2h-stages", "e2h-engine"];

/// Folders of a crate that do not go into what it computes.
const SKIPPED_DIRS: [&str; 4] = ["tests", "examples", "benches", "target"];

/// Everything the stage kinds' fingerprints are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// Unit name -> blake3 of its sources.
    pub units: BTreeMap<String, String>,
    /// Module of the stages crate -> the units its stage kinds depend on.
    pub modules: BTreeMap<String, BTreeSet<String>>,
    /// Paths whose changes change a fingerprint (for `cargo:rerun-if-changed`).
    pub watched: Vec<PathBuf>,
}

/// The fingerprints of the stages crate at `crates_dir/stages` and of the
/// science crates beside it.
pub fn fingerprints(crates_dir: &Path) -> io::Result<Fingerprints> {
    let mut units = BTreeMap::new();
    let mut watched = Vec::new();
    // Workspace crates: name -> (directory, workspace crates it depends on).
    let mut crates: BTreeMap<String, (PathBuf, Vec<String>)> = BTreeMap::new();
    for dir in sorted_entries(crates_dir)? {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        watched.push(manifest.clone());
        let text = fs::read_to_string(&manifest)?;
        let Some(name) = package_name(&text) else { continue };
        crates.insert(name, (dir, workspace_dependencies(&text)));
    }
    for (name, (dir, _)) in &crates {
        if NOT_UNITS.contains(&name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        for entry in sorted_entries(dir)? {
            let skipped = entry.file_name().and_then(|n| n.to_str()).is_some_and(|n| SKIPPED_DIRS.contains(&n));
            if !skipped && !is_editor_litter(&entry) {
                watched.push(entry.clone());
                collect_files(&entry, &mut files)?;
            }
        }
        units.insert(name.clone(), hash_files(dir, &files)?);
    }

    let src = crates_dir.join("stages").join("src");
    watched.push(src.clone());
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for file in sorted_entries(&src)? {
        let Some(module) = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".rs")) else {
            continue;
        };
        if module == "lib" || !file.is_file() || is_editor_litter(&file) {
            continue;
        }
        sources.insert(module.to_string(), fs::read_to_string(&file)?);
        units.insert(format!("{STAGES_PREFIX}{module}"), hash_files(&src, std::slice::from_ref(&file))?);
    }

    // Direct dependencies of every module, then their closures.
    let mut direct: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &sources {
        let mut deps: BTreeSet<String> = BTreeSet::from([format!("{STAGES_PREFIX}{module}")]);
        for name in crate_paths(text) {
            if sources.contains_key(&name) {
                deps.insert(format!("{STAGES_PREFIX}{name}"));
            }
        }
        for name in science_crates_named(text) {
            if crates.contains_key(&name) && !NOT_UNITS.contains(&name.as_str()) {
                deps.insert(name);
            }
        }
        direct.insert(module.clone(), deps);
    }
    let mut modules = BTreeMap::new();
    for module in sources.keys() {
        let mut closure = BTreeSet::new();
        let mut todo = vec![format!("{STAGES_PREFIX}{module}")];
        while let Some(unit) = todo.pop() {
            if !closure.insert(unit.clone()) {
                continue;
            }
            if let Some(m) = unit.strip_prefix(STAGES_PREFIX) {
                todo.extend(direct[m].iter().cloned());
            } else if let Some((_, deps)) = crates.get(&unit) {
                todo.extend(deps.iter().filter(|d| !NOT_UNITS.contains(&d.as_str())).cloned());
            }
        }
        modules.insert(module.clone(), closure);
    }
    Ok(Fingerprints { units, modules, watched })
}

/// blake3 over the files' paths (relative to `base`), sizes and bytes.
pub fn hash_files(base: &Path, files: &[PathBuf]) -> io::Result<String> {
    let mut sorted: Vec<(String, &PathBuf)> = files
        .iter()
        .map(|f| (f.strip_prefix(base).unwrap_or(f).to_string_lossy().replace('\\', "/"), f))
        .collect();
    sorted.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"e2h-code-fingerprint-v1\n");
    for (relative, path) in sorted {
        let bytes = fs::read(path)?;
        h.update(relative.as_bytes());
        h.update(&[0]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    Ok(entries)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if path.is_dir() {
        for entry in sorted_entries(path)? {
            if !is_editor_litter(&entry) {
                collect_files(&entry, out)?;
            }
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Hidden files and editors' backups (`.model.rs.swp`, `model.rs~`, `#model.rs#`).
fn is_editor_litter(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with('.') || name.starts_with('#') || name.ends_with('~')
}

/// `name = "..."` of the `[package]` table.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line.strip_prefix("name").map(str::trim_start).and_then(|r| r.strip_prefix('='))
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// The `e2h-*` crates of the `[dependencies]` table (not dev- or build-dependencies).
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && line.starts_with("e2h-") {
            let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
            deps.push(name);
        }
    }
    deps
}

/// Module names a source refers to as `crate::name` or inside `crate::{a::x, b}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of every item at the group's top level.
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        names.insert(identifier(&group[i..]));
                        item_start = false;
                    }
                    c if !c.is_whitespace() => item_start = false,
                    _ => {}
                }
            }
        } else {
            names.insert(identifier(rest));
        }
    }
    names
}

/// Crate names a source refers to as `e2h_name`, as `e2h-name`.
fn science_crates_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("e2h_") {
        let preceded_by_identifier =
            rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at..];
        let name = identifier(rest);
        rest = &rest[name.len()..];
        if !preceded_by_identifier {
            names.insert(name.replace('_', "-"));
        }
    }
    names
}

fn identifier(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}
