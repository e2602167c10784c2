//! `cargo xtask figure N`: finds the pipeline of figure N.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::pipeline::Context;

/// `pipelines/fig<N>-*.yaml`, exactly one.
pub fn pipeline_of(ctx: &Context, number: u32) -> anyhow::Result<PathBuf> {
    let dir = ctx.root.join("pipelines");
    let prefix = format!("fig{number}-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".yaml"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no pipeline for figure {number}: expected {}/{prefix}*.yaml", dir.display()),
        _ => bail!("several pipelines for figure {number}: {found:?}"),
    }
}

/// Every figure pipeline, in figure order.
pub fn all_figure_pipelines(ctx: &Context) -> anyhow::Result<Vec<PathBuf>> {
    let dir = ctx.root.join("pipelines");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("fig") && n.ends_with(".yaml"))
        })
        .collect();
    found.sort();
    Ok(found)
}
