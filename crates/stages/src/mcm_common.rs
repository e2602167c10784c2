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

pub mod defaults {
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
        if f.d < 2 {
            return Err(ParamIssue::new("d", format!("d must be at least 2, got {}", f.d)));
        }
        if !(f.beta_u >= 0.0 && f.beta_u.is_finite()) {
            return Err(ParamIssue::new("beta_u", format!("beta_u must be finite and >= 0, got {}", f.beta_u)));
        }
        if !(f.beta_v >= 0.0 && f.beta_v.is_finite()) {
            return Err(ParamIssue::new("beta_v", format!("beta_v must be finite and >= 0, got {}", f.beta_v)));
        }
        if !(0.0..=1.0).contains(&f.rho) {
            return Err(ParamIssue::new("rho", format!("rho must lie in [0, 1], got {}", f.rho)));
        }
        if !(f.t > 0.0 && f.t.is_finite()) {
            return Err(ParamIssue::new("t", format!("t must be positive and finite, got {}", f.t)));
        }
        if !f.a.is_finite() {
            return Err(ParamIssue::new("a", "a must be finite"));
        }
        if f.neurons == 0 {
            return Err(ParamIssue::new("neurons", "at least one neuron is needed"));
        }
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

/// Checks `x > 0` and finite.
pub fn positive(field: &str, x: f64) -> Result<(), ParamIssue> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(ParamIssue::new(field, format!("{field} must be positive and finite, got {x}")))
    }
}
