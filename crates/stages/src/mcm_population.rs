//! Figure 4 stage: the population loss by quadrature, its expansion
//! coefficients against t, the landscape, and the information exponents.

use e2h_engine::{CodeFingerprints, Footprint, ParamIssue, Registry, Stage, StageContext, StageError};
use e2h_mcm::population::{Direction, PopulationLoss};
use e2h_mcm::{Activation, Coupling, McmParams, NoiseLevel, NuLaw};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::frame::FrameBuilder;
use crate::mcm_common::{activation_name, count_in, defaults, in_range, limits, positive};

pub fn register(r: &mut Registry) {
    r.register(Population);
}

fn default_t_grid() -> Vec<f64> {
    (0..=40).map(|i| 0.02 * 150f64.powf(i as f64 / 40.0)).collect()
}
fn default_landscape_grid() -> usize {
    61
}
fn default_m_u_given() -> f64 {
    0.6
}
fn default_controls() -> Vec<Activation> {
    vec![Activation::Relu, Activation::Linear]
}

/// `mcm.population`: everything of Figure 4, computed deterministically.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationParams {
    #[serde(default = "defaults::beta_u")]
    pub beta_u: f64,
    #[serde(default = "defaults::beta_v")]
    pub beta_v: f64,
    #[serde(default = "defaults::nu")]
    pub nu: NuLaw,
    /// Coupling strength of the correlated-latent case.
    #[serde(default = "defaults::rho")]
    pub rho: f64,
    /// Noise level of the landscape and exponent panels.
    #[serde(default = "defaults::t")]
    pub t: f64,
    #[serde(default = "defaults::activation")]
    pub activation: Activation,
    #[serde(default = "defaults::a")]
    pub a: f64,
    /// Noise levels of the c_k(t) curves.
    #[serde(default = "default_t_grid")]
    pub t_grid: Vec<f64>,
    /// Points per axis of the landscape grid on [-1, 1]^2 (kept on the disc).
    #[serde(default = "default_landscape_grid")]
    pub landscape_grid: usize,
    /// m_u at which the v-exponent is measured with correlated latents.
    #[serde(default = "default_m_u_given")]
    pub m_u_given: f64,
    /// Activations shown as controls in the exponent panel.
    #[serde(default = "default_controls")]
    pub controls: Vec<Activation>,
}

pub struct Population;

impl Stage for Population {
    type Params = PopulationParams;
    const KIND: &'static str = "mcm.population";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "the population loss by quadrature: expansion coefficients c_k(t), the landscape, information exponents";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::mcm_tables::population()
    }

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        vec![
            P::new("beta_u", "number", "2.0", "[0, 1e4]", "signal strength of the covariance spike u"),
            P::new("beta_v", "number", "5.0", "[0, 1e4]", "signal strength of the non-Gaussian direction v"),
            P::new("nu", "rademacher | uniform | laplace | gaussian", "rademacher", "", "law of the non-Gaussian latent"),
            P::new("rho", "number", "0.8", "[0, 1]", "coupling strength of the correlated-latent case"),
            P::new("t", "number", "0.3", "(0, 100]", "noise level of the landscape and exponent panels"),
            P::new("activation", "tanh2 | relu | linear | ...", "tanh2", "", "activation g"),
            P::new("a", "number", "1.0", "[-1e4, 1e4]", "output scale of the neuron"),
            P::new("t_grid", "list of numbers", "41 log-spaced values in [0.02, 3]", "1 to 10000 values in (0, 100]", "noise levels of the c_k(t) curves"),
            P::new("landscape_grid", "integer", "61", "3..=2001", "points per axis of the landscape grid on [-1, 1]^2"),
            P::new("m_u_given", "number", "0.6", "(-1, 1)", "m_u at which the v-exponent is measured with coupled latents"),
            P::new("controls", "list of activations", "[relu, linear]", "at most 16", "activations shown as controls in the exponent panel"),
        ]
    }


    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        positive("t", p.t)?;
        in_range("t", p.t, 0.0, limits::MAX_T)?;
        in_range("beta_u", p.beta_u, 0.0, limits::MAX_BETA)?;
        in_range("beta_v", p.beta_v, 0.0, limits::MAX_BETA)?;
        in_range("a", p.a, -limits::MAX_SCALE, limits::MAX_SCALE)?;
        count_in("t_grid", p.t_grid.len() as u64, 1, 10_000)?;
        count_in("landscape_grid", p.landscape_grid as u64, 3, 2_001)?;
        count_in("controls", p.controls.len() as u64, 0, 16)?;
        if let Some((i, t)) = p.t_grid.iter().enumerate().find(|(_, t)| **t > limits::MAX_T) {
            return Err(ParamIssue::new(format!("t_grid.{i}"), format!("noise levels must be at most {}, got {t}", limits::MAX_T)));
        }
        if !(0.0..=1.0).contains(&p.rho) {
            return Err(ParamIssue::new("rho", format!("rho must lie in [0, 1], got {}", p.rho)));
        }
        if p.beta_u < 0.0 || p.beta_v < 0.0 {
            return Err(ParamIssue::new("beta_u", "beta_u and beta_v must be >= 0"));
        }
        if let Some((i, t)) = p.t_grid.iter().enumerate().find(|(_, t)| !(**t > 0.0 && t.is_finite())) {
            return Err(ParamIssue::new(format!("t_grid.{i}"), format!("noise levels must be positive, got {t}")));
        }
        if p.landscape_grid < 3 {
            return Err(ParamIssue::new("landscape_grid", "use at least 3 points per axis"));
        }
        // Written to reject NaN as well.
        if p.m_u_given.is_nan() || p.m_u_given.abs() >= 1.0 {
            return Err(ParamIssue::new("m_u_given", "m_u_given must lie in (-1, 1)"));
        }
        Ok(())
    }

    fn footprint(p: &Self::Params) -> Footprint {
        let g = p.landscape_grid as f64;
        Footprint::new(
            g * g * 64.0 + p.t_grid.len() as f64 * 1024.0,
            format!("landscape_grid^2 x 64 B + t_grid x 1 KiB; landscape_grid = {}", p.landscape_grid),
        )
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        // d does not enter the population loss.
        let model = |coupling| McmParams { d: 2, beta_u: p.beta_u, beta_v: p.beta_v, nu: p.nu, coupling };
        let independent = model(Coupling::None);
        let coupled = model(Coupling::Linear { rho: p.rho });
        let loss = |params: McmParams, t: f64, g: Activation| PopulationLoss::new(params, NoiseLevel::at(t), g, p.a);

        // (a) c_k(t).
        let rows: Vec<[f64; 5]> = p
            .t_grid
            .par_iter()
            .map(|&t| {
                let l = loss(independent, t, p.activation);
                let cu = l.coefficients(Direction::U, 0.0, 4);
                let cv = l.coefficients(Direction::V, 0.0, 4);
                let cvc = loss(coupled, t, p.activation).coefficients(Direction::V, p.m_u_given, 4);
                [t, cu[2], cv[2], cv[4], cvc[1]]
            })
            .collect();
        let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<f64>>();
        let sign_change = rows.windows(2).find(|w| w[0][1] > 0.0 && w[1][1] <= 0.0).map_or(f64::NAN, |w| {
            // Linear interpolation of the zero of c_2^u in log t.
            let (t0, t1, c0, c1) = (w[0][0].ln(), w[1][0].ln(), w[0][1], w[1][1]);
            (t0 - c0 * (t1 - t0) / (c1 - c0)).exp()
        });
        let mut coefficients = FrameBuilder::new()
            .f64("t", col(0))
            .f64("c2_u", col(1))
            .f64("c2_v", col(2))
            .f64("c4_v", col(3))
            .f64("c1_v_coupled", col(4))
            .f64("abs_c2_u", col(1).iter().map(|c| c.abs()).collect())
            .f64("abs_c4_v", col(3).iter().map(|c| c.abs()).collect())
            .f64("t_c2_u_sign_change", vec![sign_change; rows.len()])
            .build()?;
        ctx.put_table(
            "coefficients",
            &mut coefficients,
            &[
                ("t", "diffusion time of the OU noising"),
                ("c2_u", "coefficient of m_u^2 in L(m_u, 0) - L(0, 0) (independent latents)"),
                ("c2_v", "coefficient of m_v^2 in L(0, m_v) - L(0, 0): zero, v is whitened"),
                ("c4_v", "coefficient of m_v^4 in L(0, m_v) - L(0, 0)"),
                ("c1_v_coupled", "coefficient of m_v in L(m_u_given, m_v) - L(m_u_given, 0), coupled latents"),
            ],
        )?;

        // (b) the landscape on the disc, both couplings.
        let mut land = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, params) in [("independent", independent), ("coupled", coupled)] {
            let l = loss(params, p.t, p.activation);
            for pt in l.landscape(p.landscape_grid) {
                land.0.push(name.to_string());
                land.1.push(pt.m_u);
                land.2.push(pt.m_v);
                land.3.push(pt.excess);
            }
        }
        let mut landscape = FrameBuilder::new()
            .str("latents", land.0)
            .f64("m_u", land.1)
            .f64("m_v", land.2)
            .f64("excess_loss", land.3)
            .build()?;
        ctx.put_table(
            "landscape",
            &mut landscape,
            &[("excess_loss", "population loss minus the loss of alpha x_t, at overlaps (m_u, m_v) on the unit disc")],
        )?;

        // (c) exponents: curves |L(m) - L(0)| and their small-m slopes.
        let cases = [
            ("u", independent, Direction::U, 0.0),
            ("v", independent, Direction::V, 0.0),
            ("v | m_u = given, coupled", coupled, Direction::V, p.m_u_given),
        ];
        let mut activations = vec![p.activation];
        activations.extend(p.controls.iter().copied().filter(|a| *a != p.activation));
        let mut ex = ExponentRows::default();
        let mut curves = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (case_id, (case, params, dir, at)) in cases.iter().enumerate() {
            for g in &activations {
                let l = loss(*params, p.t, *g);
                let k_series = l.information_exponent(*dir, *at).map_or(f64::NAN, |k| k as f64);
                let k_measured = l.measured_exponent(*dir, *at).unwrap_or(f64::NAN);
                let c = l.coefficients(*dir, *at, 4);
                let k = k_series as usize;
                let ck = if k_series.is_finite() { c[k] } else { 0.0 };
                let case_label = case.replace("given", &format!("{}", p.m_u_given));
                ex.push(&case_label, case_id as f64 + 1.0, &activation_name(*g), k_series, k_measured, ck);
                if *g == p.activation {
                    let f0 = l.excess_along(*dir, *at, 0.0);
                    for i in 0..30 {
                        let m = 0.005 * 120f64.powf(i as f64 / 29.0);
                        curves.0.push(format!("{case_label}: k = {k_measured:.2}"));
                        curves.1.push(m);
                        curves.2.push((l.excess_along(*dir, *at, m) - f0).abs());
                        curves.3.push(case_id as f64 + 1.0);
                    }
                }
            }
        }
        let mut exponents = ex.frame()?;
        ctx.put_table(
            "exponents",
            &mut exponents,
            &[
                ("k_series", "smallest k with c_k != 0 (relative tolerance 1e-4 of the largest |c_k|, k <= 8); NaN: the loss does not depend on the overlap"),
                ("k_measured", "log-log slope of |L(m) - L(0)| for m in [0.01, 0.05]"),
                ("c_k", "the coefficient c_k at k = k_series; learnable only if negative"),
            ],
        )?;
        let mut exponent_curves = FrameBuilder::new()
            .str("case", curves.0)
            .f64("m", curves.1)
            .f64("abs_dL", curves.2)
            .f64("case_id", curves.3)
            .build()?;
        ctx.put_table(
            "exponent_curves",
            &mut exponent_curves,
            &[("abs_dL", "|L(m) - L(0)| along the case's direction (other overlap fixed)")],
        )?;
        let c = loss(independent, p.t, p.activation);
        let cu = c.coefficients(Direction::U, 0.0, 4);
        let cv = c.coefficients(Direction::V, 0.0, 4);
        let opt_i = c.optimum();
        let opt_c = loss(coupled, p.t, p.activation).optimum();
        let mut summary = FrameBuilder::new()
            .f64("t", vec![p.t])
            .f64("c2_u", vec![cu[2]])
            .f64("c4_v", vec![cv[4]])
            .f64("t_c2_u_sign_change", vec![sign_change])
            .f64("optimum_m_u_independent", vec![opt_i.m_u])
            .f64("optimum_m_v_independent", vec![opt_i.m_v])
            .f64("optimum_m_u_coupled", vec![opt_c.m_u])
            .f64("optimum_m_v_coupled", vec![opt_c.m_v])
            .build()?;
        ctx.put_table(
            "summary",
            &mut summary,
            &[
                ("t_c2_u_sign_change", "t at which c_2^u changes sign (u repels below, attracts above)"),
                ("optimum_m_u_independent", "overlaps at the population-loss minimum, independent latents"),
            ],
        )?;
        Ok(())
    }
}

#[derive(Default)]
struct ExponentRows {
    case: Vec<String>,
    case_id: Vec<f64>,
    activation: Vec<String>,
    k_series: Vec<f64>,
    k_measured: Vec<f64>,
    c_k: Vec<f64>,
}

impl ExponentRows {
    fn push(&mut self, case: &str, id: f64, g: &str, ks: f64, km: f64, ck: f64) {
        self.case.push(case.into());
        self.case_id.push(id);
        self.activation.push(g.into());
        self.k_series.push(ks);
        self.k_measured.push(km);
        self.c_k.push(ck);
    }
    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        FrameBuilder::new()
            .str("case", self.case)
            .f64("case_id", self.case_id)
            .str("activation", self.activation)
            .f64("k_series", self.k_series)
            .f64("k_measured", self.k_measured)
            .f64("c_k", self.c_k)
            .build()
    }
}
