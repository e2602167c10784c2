//! `cargo xtask check`: every figure's `ci` profile, its declared claims, and
//! its tables against committed baselines.

use crate::pipeline::Context;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Rewrite the baselines from this run and summarise what changed.
    #[arg(long)]
    pub bless: bool,
    /// Only this figure.
    #[arg(long)]
    pub figure: Option<u32>,
    /// Profile to check (default: ci).
    #[arg(long, default_value = "ci")]
    pub profile: String,
}

pub fn run(_ctx: &Context, _args: &CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("check is not implemented yet")
}
