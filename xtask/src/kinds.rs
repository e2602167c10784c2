//! `cargo xtask kinds [KIND]`: the stage kinds a pipeline may name, their
//! params (type, default, range, meaning) and the tables and columns they write.

use e2h_engine::InputArity;

use crate::pipeline::Context;

pub fn run(ctx: &Context, kind: Option<&str>) -> anyhow::Result<()> {
    let registry = &ctx.registry;
    let Some(kind) = kind else {
        for name in registry.kind_names() {
            let doc = registry.describe(name).expect("a listed kind");
            outln!("{name:<24} {}", doc.about);
        }
        outln!("\n`cargo xtask kinds KIND` lists a kind's params and the tables it writes.");
        return Ok(());
    };
    let Some(doc) = registry.describe(kind) else {
        anyhow::bail!("no stage kind `{kind}`; known kinds: {}", registry.kind_names().join(", "));
    };
    outln!("{} (version {})", doc.kind, doc.version);
    if !doc.about.is_empty() {
        outln!("  {}", doc.about);
    }
    let inputs = match doc.inputs {
        InputArity::None => "none".to_string(),
        InputArity::Exactly(names) => names.join(", "),
        InputArity::AnyNonEmpty => "any names, at least one".to_string(),
    };
    outln!("\ninputs: {inputs}");
    outln!("\nparams:");
    if doc.params.is_empty() {
        outln!("  (not documented here; see the kind's source)");
    }
    let width = doc.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &doc.params {
        let default = if p.default.is_empty() { "required".to_string() } else { format!("default {}", p.default) };
        let range = if p.range.is_empty() { String::new() } else { format!(", {}", p.range) };
        outln!("  {:<width$}  {} ({default}{range})", p.name, p.ty);
        outln!("  {:<width$}  {}", "", p.meaning);
    }
    outln!("\ntables:");
    if doc.tables.is_empty() {
        outln!("  (none declared)");
    }
    for t in &doc.tables {
        outln!("  {}:", t.name);
        let width = t.columns.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        for (c, d) in &t.columns {
            outln!("    {c:<width$}  {d}");
        }
    }
    Ok(())
}
