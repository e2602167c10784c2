//! The stage kinds of this project: thin adapters that read typed parameters,
//! call the science crates, and store their results as tables and figures.
//!
//! Science crates know nothing of YAML or caching; the engine knows nothing of
//! diffusion. This crate is the only place where the two meet.

mod cifar_tables;
pub mod cifar_stages;
pub mod code;
mod frame;
mod mcm_common;
pub mod mcm_population;
pub mod mcm_scaling;
pub mod mcm_scaling_fit;
pub mod mcm_stages;
mod mcm_tables;
pub mod plot_stage;
pub mod unet_stages;

use e2h_engine::Registry;

/// Every stage kind a pipeline may name.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.record_version("e2h-stages", env!("CARGO_PKG_VERSION"));
    mcm_stages::register(&mut r);
    mcm_scaling::register(&mut r);
    mcm_scaling_fit::register(&mut r);
    mcm_population::register(&mut r);
    cifar_stages::register(&mut r);
    unet_stages::register(&mut r);
    plot_stage::register(&mut r);
    r
}
