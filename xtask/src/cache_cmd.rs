//! `cargo xtask cache ls|verify|gc|adopt`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use e2h_engine::adopt::{adopt, AdoptOutcome};
use e2h_engine::cache::EntryMeta;
use e2h_engine::registry::changed_units;
use e2h_engine::EntryStatus;

use crate::pipeline::Context;

#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// List entries: key, pipeline, stage, size, when computed, and whether
    /// other code than this build's made it.
    Ls,
    /// Verify every entry's content hashes; report (and with --fix remove) corrupt
    /// ones, entries that are not directories, and temporary folders left by
    /// interrupted runs.
    Verify {
        #[arg(long)]
        fix: bool,
    },
    /// Remove every entry not referenced by any profile of the pipelines under pipelines/.
    Gc {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Vouch for entries made by other code: re-key them under the current code
    /// instead of recomputing them (recorded in their meta.json; `check` still
    /// recomputes them).
    Adopt {
        /// Declared stages or stage instances, e.g. `train` or `sim[d=64]`.
        #[arg(required = true)]
        stages: Vec<String>,
        /// The figure whose pipeline declares the stages.
        #[arg(long, required_unless_present = "pipeline", conflicts_with = "pipeline")]
        figure: Option<u32>,
        /// The pipeline file that declares the stages.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Profile (default: the file's default_profile).
        #[arg(long, short)]
        profile: Option<String>,
        /// Who vouches, recorded in the entry (default: git's user.name, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

pub fn run(ctx: &Context, action: CacheAction) -> anyhow::Result<()> {
    let cache = ctx.cache()?;
    match action {
        CacheAction::Ls => {
            let mut total = 0u64;
            for key in cache.keys()? {
                match cache.status(&key) {
                    EntryStatus::Valid(m) => {
                        let bytes: u64 = m.files.values().map(|f| f.bytes).sum();
                        total += bytes;
                        outln!(
                            "{}  {:<28} {:<40} {:>10}  {}{}",
                            &key[..12],
                            m.pipeline,
                            m.stage,
                            human_bytes(bytes),
                            m.finished,
                            provenance(ctx, &m)
                        );
                    }
                    EntryStatus::Corrupt(r) => outln!("{}  CORRUPT: {r}", &key[..12]),
                    EntryStatus::Missing => {}
                }
            }
            outln!("total {}", human_bytes(total));
        }
        CacheAction::Verify { fix } => {
            let (mut ok, mut bad) = (0, 0);
            for key in cache.keys()? {
                match cache.status(&key) {
                    EntryStatus::Valid(_) => ok += 1,
                    EntryStatus::Corrupt(r) => {
                        bad += 1;
                        outln!("corrupt {key}: {r}");
                        if fix {
                            cache.discard(&key)?;
                            outln!("  removed");
                        }
                    }
                    EntryStatus::Missing => {}
                }
            }
            // Temporary folders of killed runs: invisible to runs, but disk space lost.
            let stale = cache.stale_tmp()?;
            for p in &stale {
                outln!("leftover temporary {}", p.display());
                if fix {
                    std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p))?;
                    outln!("  removed");
                }
            }
            outln!("{ok} valid, {bad} corrupt, {} leftover temporary", stale.len());
            anyhow::ensure!(bad == 0 || fix, "{bad} corrupt cache entries (rerun with --fix to remove them)");
            anyhow::ensure!(
                stale.is_empty() || fix,
                "{} leftover temporary folders of interrupted runs (rerun with --fix to remove them)",
                stale.len()
            );
        }
        CacheAction::Gc { dry_run } => {
            let keep = referenced_keys(ctx)?;
            if dry_run {
                for key in cache.keys()? {
                    if !keep.contains(&key) {
                        outln!("would remove {key}");
                    }
                }
            } else {
                let removed = cache.gc(&keep)?;
                outln!("removed {} entries, kept {}", removed.len(), keep.len());
            }
        }
        CacheAction::Adopt { stages, figure, pipeline, profile, by } => {
            let path = match (figure, pipeline) {
                (Some(n), _) => crate::figure::pipeline_of(ctx, n)?,
                (None, Some(p)) => p,
                (None, None) => anyhow::bail!("name the pipeline with --figure N or --pipeline FILE"),
            };
            let (_, plan) = ctx.plan(&path, profile.as_deref())?;
            for name in &stages {
                anyhow::ensure!(
                    plan.stages.iter().any(|s| &s.decl == name || &s.name == name),
                    "no stage `{name}` in {} (profile {})",
                    path.display(),
                    plan.profile
                );
            }
            let by = by.unwrap_or_else(|| who(ctx));
            // In plan order: upstream stages are adopted before what they feed.
            for (i, stage) in plan.stages.iter().enumerate() {
                if !stages.iter().any(|n| n == &stage.decl || n == &stage.name) {
                    continue;
                }
                match adopt(&cache, &plan, i, &by)? {
                    AdoptOutcome::Adopted { from_key, changed, record } => {
                        let why = if changed.is_empty() {
                            "upstream adopted".to_string()
                        } else {
                            format!("code changed ({})", changed.join(", "))
                        };
                        outln!(
                            "adopted  {:<40} {} -> {}  ({why}; by {} at {}, recorded in its meta.json)",
                            stage.name,
                            &from_key[..12],
                            &stage.key[..12],
                            record.by,
                            record.at
                        );
                    }
                    AdoptOutcome::AlreadyCurrent { adopted } => {
                        let what = if adopted { "adopted earlier" } else { "made by the current code" };
                        outln!("current  {:<40} {}  ({what}; nothing to adopt)", stage.name, &stage.key[..12]);
                    }
                }
            }
            outln!("adopted entries are reused by `figure` and `run`, flagged by `cache ls`, and recomputed by `check`");
        }
    }
    Ok(())
}

/// ` adopted; made by other code (e2h-mcm)` and the like, for `ls`; empty for
/// an entry made by the code of this build.
fn provenance(ctx: &Context, meta: &EntryMeta) -> String {
    let mut notes = Vec::new();
    if !meta.adopted.is_empty() {
        notes.push("adopted".to_string());
    }
    match ctx.registry.code_of(&meta.kind) {
        None => notes.push(format!("kind `{}` unknown to this build", meta.kind)),
        Some(code) => {
            let changed = changed_units(&meta.code, code);
            if !changed.is_empty() {
                notes.push(format!("made by other code ({})", changed.join(", ")));
            }
        }
    }
    if notes.is_empty() { String::new() } else { format!("  {}", notes.join("; ")) }
}

/// Who vouches for an adoption: git's user.name in the project, else $USER.
fn who(ctx: &Context) -> String {
    let git = std::process::Command::new("git")
        .args(["config", "user.name"])
        .current_dir(&ctx.root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|name| !name.is_empty());
    git.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("USERNAME").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Keys of every stage of every profile of every pipeline under pipelines/.
fn referenced_keys(ctx: &Context) -> anyhow::Result<BTreeSet<String>> {
    let mut keep = BTreeSet::new();
    let mut files = Vec::new();
    collect_yaml(&ctx.root.join("pipelines"), &mut files)?;
    for path in files {
        let spec = e2h_engine::PipelineSpec::load(&path)?;
        let profiles: Vec<String> = std::iter::once(e2h_engine::plan::DEFAULT_PROFILE.to_string())
            .chain(spec.file.profiles.keys().cloned())
            .collect();
        for profile in profiles {
            let plan = e2h_engine::Plan::build(&spec, &ctx.registry, Some(&profile))?;
            keep.extend(plan.stages.into_iter().map(|s| s.key));
        }
    }
    Ok(keep)
}

pub(crate) fn collect_yaml(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_yaml(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
