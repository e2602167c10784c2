//! `cargo xtask cache ls|verify|gc`.

use std::collections::BTreeSet;

use e2h_engine::EntryStatus;

use crate::pipeline::Context;

#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// List entries: key, stage, kind, size, when computed.
    Ls,
    /// Verify every entry's content hashes; report (and with --fix remove) corrupt ones.
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
                        println!(
                            "{}  {:<28} {:<40} {:>10}  {}",
                            &key[..12],
                            m.pipeline,
                            m.stage,
                            human_bytes(bytes),
                            m.finished
                        );
                    }
                    EntryStatus::Corrupt(r) => println!("{}  CORRUPT: {r}", &key[..12]),
                    EntryStatus::Missing => {}
                }
            }
            println!("total {}", human_bytes(total));
        }
        CacheAction::Verify { fix } => {
            let (mut ok, mut bad) = (0, 0);
            for key in cache.keys()? {
                match cache.status(&key) {
                    EntryStatus::Valid(_) => ok += 1,
                    EntryStatus::Corrupt(r) => {
                        bad += 1;
                        println!("corrupt {key}: {r}");
                        if fix {
                            cache.discard(&key)?;
                            println!("  removed");
                        }
                    }
                    EntryStatus::Missing => {}
                }
            }
            println!("{ok} valid, {bad} corrupt");
            anyhow::ensure!(bad == 0 || fix, "{bad} corrupt cache entries (rerun with --fix to remove them)");
        }
        CacheAction::Gc { dry_run } => {
            let keep = referenced_keys(ctx)?;
            if dry_run {
                for key in cache.keys()? {
                    if !keep.contains(&key) {
                        println!("would remove {key}");
                    }
                }
            } else {
                let removed = cache.gc(&keep)?;
                println!("removed {} entries, kept {}", removed.len(), keep.len());
            }
        }
    }
    Ok(())
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

fn collect_yaml(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
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
