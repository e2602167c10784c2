//! The mixed cumulant model (MCM) of Bardone, Merger & Goldt, and the simple
//! spherical denoisers trained on it.
//!
//! This crate is pure science: it knows nothing of pipelines, YAML or caching.
//! Every stochastic function takes an explicit seed or generator; results are
//! bit-identical for the same seed whatever the number of threads.

pub mod denoiser;
pub mod model;
pub mod network_loss;
pub mod population;
pub mod reduced;
pub mod simulate;
pub mod theory;

pub use model::{Activation, Coupling, Mcm, McmParams, NoiseLevel, NuLaw};
pub use network_loss::{
    NetworkLoss, NetworkLossError, NetworkLosses, NetworkState, OverlapGradient, OverlapGradients,
    ReadoutQuadratic,
    best_reachable_loss, network_losses,
};
