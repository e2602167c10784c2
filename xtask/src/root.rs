//! Where the project is: found when the command runs, never baked in when it
//! was compiled (one binary may serve several clones through a shared
//! `CARGO_TARGET_DIR`, and cargo does not rebuild identical path packages).

use std::path::{Path, PathBuf};

/// How the project root was found, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `--root` or `E2H_ROOT`.
    Explicit,
    /// The parent of the `CARGO_MANIFEST_DIR` that `cargo run` (the `cargo
    /// xtask` alias) sets for the process it starts.
    CargoRun,
    /// The nearest ancestor of the current directory that is a project.
    WorkingDirectory,
}

/// The project root, in order: `explicit` (from `--root` / `E2H_ROOT`); the
/// parent of a run-time `CARGO_MANIFEST_DIR` that is a project; the nearest
/// ancestor of the current directory that is one; otherwise an error that
/// says how to point at the project.
pub fn find(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, Found)> {
    if let Some(root) = explicit {
        anyhow::ensure!(root.is_dir(), "the project root {} (from --root or E2H_ROOT) is not a directory", root.display());
        return Ok((root, Found::Explicit));
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    if let Some(parent) = manifest_dir.as_deref().and_then(Path::parent)
        && is_project(parent)
    {
        return Ok((parent.to_path_buf(), Found::CargoRun));
    }
    let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("cannot read the current directory: {e}"))?;
    if let Some(root) = cwd.ancestors().find(|d| is_project(d)) {
        return Ok((root.to_path_buf(), Found::WorkingDirectory));
    }
    anyhow::bail!(
        "cannot find the project: neither {} nor any folder above it holds a workspace Cargo.toml beside a \
         pipelines/ folder; run the command inside the project, or point at it with --root DIR or E2H_ROOT=DIR",
        cwd.display()
    )
}

/// A project root holds the workspace manifest and the pipelines folder.
pub fn is_project(dir: &Path) -> bool {
    dir.join("pipelines").is_dir()
        && std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|manifest| manifest.contains("[workspace]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_needs_a_workspace_manifest_and_pipelines() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_project(dir.path()));
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        assert!(!is_project(dir.path()));
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        assert!(!is_project(dir.path()), "a package manifest is not a workspace");
        std::fs::write(dir.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        assert!(is_project(dir.path()));
    }
}
