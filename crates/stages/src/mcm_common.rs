//! Parameters shared by every MCM stage kind, written flat in YAML so that any
//! of them can be swept or overridden by a profile on its own.

use e2h_engine::ParamIssue;
use e2h_mcm::{Activation, Coupling, McmParams, NoiseLevel, NuLaw};
use serde::{Deserialize, Serialize};

/// `none` or `linear` (with `rho`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouplingKind {
    None,
    Linear,
}

/// `reduced` (the exact chain on the overlaps, O(K^3) per step) or `full`
/// (d-dimensional samples, the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulatorName {
    Reduced,
    Full,
}

impl SimulatorName {
    pub fn simulator(self) -> e2h_mcm::simulate::Simulator {
        match self {
            SimulatorName::Reduced => e2h_mcm::simulate::Simulator::Reduced,
            SimulatorName::Full => e2h_mcm::simulate::Simulator::Full,
        }
    }

    /// The reduced chain carries at most `MAX_NEURONS` neurons and needs d >= K + 2.
    pub fn validate(self, d: usize, neurons: usize) -> Result<(), ParamIssue> {
        if self == SimulatorName::Reduced {
            let max = e2h_mcm::reduced::MAX_NEURONS;
            if neurons > max {
                return Err(ParamIssue::new(
                    "neurons",
                    format!("the reduced simulator carries at most {max} neurons, got {neurons}; use `simulator: full`"),
                ));
            }
            if d < neurons + 2 {
                return Err(ParamIssue::new("d", format!("the reduced simulator needs d >= neurons + 2 = {}, got {d}", neurons + 2)));
            }
        }
        Ok(())
    }
}

pub mod defaults {
    pub fn simulator() -> super::SimulatorName {
        super::SimulatorName::Reduced
    }
    pub fn beta_u() -> f64 {
        2.0
    }
    pub fn beta_v() -> f64 {
        5.0
    }
    pub fn nu() -> e2h_mcm::NuLaw {
        e2h_mcm::NuLaw::Rademacher
    }
    pub fn coupling() -> super::CouplingKind {
        super::CouplingKind::None
    }
    pub fn rho() -> f64 {
        0.8
    }
    pub fn t() -> f64 {
        0.3
    }
    pub fn activation() -> e2h_mcm::Activation {
        e2h_mcm::Activation::Tanh2
    }
    pub fn a() -> f64 {
        1.0
    }
    pub fn one() -> usize {
        1
    }
}

/// Declares a params struct with the model, noise and denoiser fields
/// (defaults from SPEC.md) followed by the kind's own fields.
macro_rules! mcm_params {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Dimension d.
            pub d: usize,
            #[serde(default = "crate::mcm_common::defaults::beta_u")]
            pub beta_u: f64,
            #[serde(default = "crate::mcm_common::defaults::beta_v")]
            pub beta_v: f64,
            #[serde(default = "crate::mcm_common::defaults::nu")]
            pub nu: e2h_mcm::NuLaw,
            #[serde(default = "crate::mcm_common::defaults::coupling")]
            pub coupling: crate::mcm_common::CouplingKind,
            /// Strength of the linear coupling (ignored when `coupling: none`).
            #[serde(default = "crate::mcm_common::defaults::rho")]
            pub rho: f64,
            /// Diffusion time t of the OU noising.
            #[serde(default = "crate::mcm_common::defaults::t")]
            pub t: f64,
            #[serde(default = "crate::mcm_common::defaults::activation")]
            pub activation: e2h_mcm::Activation,
            /// Fixed output scale a of the neurons.
            #[serde(default = "crate::mcm_common::defaults::a")]
            pub a: f64,
            /// Number of neurons K.
            #[serde(default = "crate::mcm_common::defaults::one")]
            pub neurons: usize,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl crate::mcm_common::ModelFields for $name {
            fn fields(&self) -> crate::mcm_common::Fields {
                crate::mcm_common::Fields {
                    d: self.d,
                    beta_u: self.beta_u,
                    beta_v: self.beta_v,
                    nu: self.nu,
                    coupling: self.coupling,
                    rho: self.rho,
                    t: self.t,
                    a: self.a,
                    neurons: self.neurons,
                }
            }
        }
    };
}
pub(crate) use mcm_params;

/// The shared fields, copied out of any params struct.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub d: usize,
    pub beta_u: f64,
    pub beta_v: f64,
    pub nu: NuLaw,
    pub coupling: CouplingKind,
    pub rho: f64,
    pub t: f64,
    pub a: f64,
    pub neurons: usize,
}

pub trait ModelFields {
    fn fields(&self) -> Fields;

    fn model(&self) -> McmParams {
        let f = self.fields();
        McmParams {
            d: f.d,
            beta_u: f.beta_u,
            beta_v: f.beta_v,
            nu: f.nu,
            coupling: match f.coupling {
                CouplingKind::None => Coupling::None,
                CouplingKind::Linear => Coupling::Linear { rho: f.rho },
            },
        }
    }

    fn noise(&self) -> NoiseLevel {
        NoiseLevel::at(self.fields().t)
    }

    /// Range checks of the shared fields.
    fn validate_fields(&self) -> Result<(), ParamIssue> {
        let f = self.fields();
        count_in("d", f.d as u64, 2, limits::MAX_D)?;
        in_range("beta_u", f.beta_u, 0.0, limits::MAX_BETA)?;
        in_range("beta_v", f.beta_v, 0.0, limits::MAX_BETA)?;
        in_range("rho", f.rho, 0.0, 1.0)?;
        positive("t", f.t)?;
        in_range("t", f.t, 0.0, limits::MAX_T)?;
        in_range("a", f.a, -limits::MAX_SCALE, limits::MAX_SCALE)?;
        count_in("neurons", f.neurons as u64, 1, limits::MAX_NEURONS)?;
        Ok(())
    }
}

/// Name of an activation as written in YAML.
pub fn activation_name(a: Activation) -> String {
    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

pub fn nu_name(n: NuLaw) -> String {
    serde_json::to_value(n).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

pub fn coupling_name(c: CouplingKind) -> String {
    match c {
        CouplingKind::None => "none".into(),
        CouplingKind::Linear => "linear".into(),
    }
}

/// Ranges of the MCM stages' params: beyond them the simulations would take
/// forever, overflow their counters, or the quadrature lose all meaning.
pub mod limits {
    pub const MAX_D: u64 = 1 << 20;
    pub const MAX_NEURONS: u64 = 1024;
    pub const MAX_BETA: f64 = 1e4;
    pub const MAX_T: f64 = 100.0;
    pub const MAX_SCALE: f64 = 1e4;
    /// delta of eta = delta / d^p.
    pub const MAX_DELTA: f64 = 1e3;
    pub const MAX_LR_EXPONENT: f64 = 4.0;
    /// Samples of one run (n_max, a recovery budget).
    pub const MAX_SAMPLES: f64 = 1e12;
    pub const MAX_REPLICAS: u64 = 1_000_000;
    pub const MAX_GRID_POINTS: u64 = 100_000;
    pub const MAX_TEST_SAMPLES: u64 = 10_000_000;
}

/// Checks `lo <= x <= hi` (NaN fails).
pub fn in_range(field: &str, x: f64, lo: f64, hi: f64) -> Result<(), ParamIssue> {
    if x >= lo && x <= hi {
        Ok(())
    } else {
        Err(ParamIssue::new(field, format!("{field} must lie in [{lo}, {hi}], got {x}")))
    }
}

/// Checks `lo <= n <= hi` for a count.
pub fn count_in(field: &str, n: u64, lo: u64, hi: u64) -> Result<(), ParamIssue> {
    if (lo..=hi).contains(&n) {
        Ok(())
    } else {
        Err(ParamIssue::new(field, format!("{field} must lie in {lo}..={hi}, got {n}")))
    }
}

/// The learning-rate params shared by the pSGD kinds.
pub fn check_learning_rate(delta: f64, lr_exponent: f64) -> Result<(), ParamIssue> {
    positive("delta", delta)?;
    in_range("delta", delta, 0.0, limits::MAX_DELTA)?;
    in_range("lr_exponent", lr_exponent, 0.0, limits::MAX_LR_EXPONENT)
}

/// Checks a run length in samples (`what` says how it is computed).
pub fn check_samples(field: &str, samples: f64, what: &str) -> Result<(), ParamIssue> {
    if samples >= 1.0 && samples <= limits::MAX_SAMPLES {
        Ok(())
    } else {
        Err(ParamIssue::new(
            field,
            format!("{what} = {samples:.3e} samples per run; it must lie in [1, {:.0e}]", limits::MAX_SAMPLES),
        ))
    }
}

/// Checks `x > 0` and finite.
pub fn positive(field: &str, x: f64) -> Result<(), ParamIssue> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(ParamIssue::new(field, format!("{field} must be positive and finite, got {x}")))
    }
}

/// The shared model, noise and denoiser params, for `cargo xtask kinds`.
pub fn model_param_docs() -> Vec<e2h_engine::ParamDoc> {
    use e2h_engine::ParamDoc as P;
    vec![
        P::new("d", "integer", "", "2..=1048576", "dimension d of the data"),
        P::new("beta_u", "number", "2.0", "[0, 1e4]", "signal strength of the covariance spike u"),
        P::new("beta_v", "number", "5.0", "[0, 1e4]", "signal strength of the non-Gaussian direction v"),
        P::new("nu", "rademacher | uniform | laplace | gaussian", "rademacher", "", "law of the non-Gaussian latent nu"),
        P::new("coupling", "none | linear", "none", "", "coupling of the latents lambda and nu"),
        P::new("rho", "number", "0.8", "[0, 1]", "strength of the linear coupling (ignored when coupling: none)"),
        P::new("t", "number", "0.3", "(0, 100]", "diffusion time of the OU noising"),
        P::new("activation", "tanh2 | relu | linear | ...", "tanh2", "", "activation g of the neurons"),
        P::new("a", "number", "1.0", "[-1e4, 1e4]", "fixed output scale of the neurons"),
        P::new("neurons", "integer", "1", "1..=1024", "number of neurons K"),
    ]
}
