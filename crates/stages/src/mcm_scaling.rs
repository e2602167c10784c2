//! Figure 3's simulations: weak-recovery times of online pSGD (the fit of their
//! scaling with d is `mcm_scaling_fit`).

use e2h_engine::{CodeFingerprints, Footprint, ParamIssue, Registry, Resources, Stage, StageContext, StageError};
use e2h_mcm::population::{Direction, PopulationLoss};
use e2h_mcm::simulate::{self, PsgdConfig, Readout};
use e2h_mcm::theory::{random_start, OverlapDynamics};
use e2h_mcm::Mcm;
use serde::{Deserialize, Serialize};

use crate::frame::FrameBuilder;
use crate::mcm_common::{
    check_learning_rate, check_samples, count_in, coupling_name, in_range, limits, mcm_params, positive, ModelFields,
    SimulatorName,
};

pub fn register(r: &mut Registry) {
    r.register(Recovery);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionName {
    U,
    V,
}

impl DirectionName {
    fn direction(self) -> Direction {
        match self {
            DirectionName::U => Direction::U,
            DirectionName::V => Direction::V,
        }
    }
}

fn default_lr_exponent() -> f64 {
    1.0
}
fn default_replicas() -> u64 {
    32
}
fn default_fraction() -> f64 {
    0.5
}

mcm_params! {
    /// `mcm.recovery`: the first sample count at which |m_direction| reaches the
    /// threshold, for `replicas` independent runs; runs that reach the budget
    /// are kept as censored.
    pub struct RecoveryParams {
        pub direction: DirectionName,
        /// eta = delta / d^lr_exponent.
        pub delta: f64,
        #[serde(default = "default_lr_exponent")]
        pub lr_exponent: f64,
        /// Threshold on |m|; default: `threshold_fraction` of the overlap at the
        /// minimum of the population loss (over the disc).
        #[serde(default)]
        pub threshold: Option<f64>,
        #[serde(default = "default_fraction")]
        pub threshold_fraction: f64,
        /// Budget = budget_factor * d^budget_exponent samples per run.
        pub budget_factor: f64,
        pub budget_exponent: f64,
        #[serde(default = "default_replicas")]
        pub replicas: u64,
        /// `reduced` (exact chain on the overlaps, cost independent of d) or `full`.
        #[serde(default = "crate::mcm_common::defaults::simulator")]
        pub simulator: SimulatorName,
    }
}

pub struct Recovery;

impl Stage for Recovery {
    type Params = RecoveryParams;
    const KIND: &'static str = "mcm.recovery";
    // 2: the reduced simulator (default) and the `simulator` column.
    const VERSION: &'static str = "2";
    const ABOUT: &'static str = "weak-recovery times n* of online pSGD (censored at a budget) and their ODE prediction";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::mcm_tables::recovery()
    }

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        let mut docs = crate::mcm_common::model_param_docs();
        docs.extend([
            P::new("direction", "u | v", "", "", "the direction whose recovery time is measured"),
            P::new("delta", "number", "", "(0, 1000]", "learning-rate constant: eta = delta / d^lr_exponent"),
            P::new("lr_exponent", "number", "1.0", "[0, 4]", "exponent p of eta = delta / d^p"),
            P::new("threshold", "number", "(from threshold_fraction)", "(0, 1)", "|m| that counts as recovered"),
            P::new("threshold_fraction", "number", "0.5", "(0, 1]", "threshold as a fraction of |m| at the population-loss minimum"),
            P::new("budget_factor", "number", "", "budget in [1, 1e12]", "budget = budget_factor x d^budget_exponent samples per run"),
            P::new("budget_exponent", "number", "", "[0, 4]", "see budget_factor"),
            P::new("replicas", "integer", "32", "1..=1000000", "independent runs"),
            P::new("simulator", "reduced | full", "reduced", "", "reduced: the exact chain on the overlaps, O(K^3) a step at any d (K <= 6); full: d-dimensional samples"),
        ]);
        docs
    }


    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        p.validate_fields()?;
        check_learning_rate(p.delta, p.lr_exponent)?;
        positive("budget_factor", p.budget_factor)?;
        in_range("budget_exponent", p.budget_exponent, 0.0, 4.0)?;
        check_samples(
            "budget_factor",
            p.budget_factor * (p.d as f64).powf(p.budget_exponent),
            "the budget budget_factor x d^budget_exponent",
        )?;
        positive("threshold_fraction", p.threshold_fraction)?;
        in_range("threshold_fraction", p.threshold_fraction, 0.0, 1.0)?;
        if let Some(t) = p.threshold
            && !(t > 0.0 && t < 1.0) {
                return Err(ParamIssue::new("threshold", format!("threshold must lie in (0, 1), got {t}")));
            }
        count_in("replicas", p.replicas, 1, limits::MAX_REPLICAS)?;
        p.simulator.validate(p.d, p.neurons)?;
        Ok(())
    }

    /// Replicas run in parallel threads.
    fn resources(_p: &Self::Params) -> Resources {
        Resources { cpus: Some(2), ..Resources::default() }
    }

    fn footprint(p: &Self::Params) -> Footprint {
        let (d, k, r) = (p.d as f64, p.neurons as f64, p.replicas as f64);
        Footprint::new(
            r * (200.0 + 2.0 * k * d * 8.0),
            format!("replicas x (200 B + 2 x neurons x d x 8 B); replicas = {}, neurons = {}, d = {}", p.replicas, p.neurons, p.d),
        )
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let params = p.model();
        let dir = p.direction.direction();
        let pop = PopulationLoss::new(params, p.noise(), p.activation, p.a);
        let optimum = pop.optimum();
        let opt_overlap = match dir {
            Direction::U => optimum.m_u.abs(),
            Direction::V => optimum.m_v.abs(),
        };
        let threshold = p.threshold.unwrap_or(p.threshold_fraction * opt_overlap);
        if threshold.is_nan() || threshold <= 1.0 / (p.d as f64).sqrt() {
            return Err(format!(
                "threshold {threshold:.4} is not above the typical initial overlap 1/sqrt(d) = {:.4} \
                 (population optimum |m| = {opt_overlap:.4}); give `threshold` explicitly",
                1.0 / (p.d as f64).sqrt()
            )
            .into());
        }
        let d = p.d as f64;
        let budget = (p.budget_factor * d.powf(p.budget_exponent)).round() as u64;
        let cfg = PsgdConfig {
            noise: p.noise(),
            neurons: p.neurons,
            activation: p.activation,
            readout: Readout::Fixed { a: p.a },
            delta: p.delta,
            lr_exponent: p.lr_exponent,
            simulator: p.simulator.simulator(),
        };
        let model = Mcm::new(params, ctx.seed());
        let stride = (p.d as u64 / 8).max(1);
        let bar = ctx.progress(budget.saturating_mul(p.replicas), "pSGD samples (budget)");
        let runs = simulate::recovery_times(&model, cfg, ctx.seed(), p.replicas, dir, threshold, budget, stride, &|n| bar.inc(n));
        bar.finish();
        // The deterministic prediction from the typical start |m_u| = |m_v| = 1/sqrt(d).
        let dynamics = OverlapDynamics::new(pop, p.d, p.delta, p.lr_exponent);
        let theory = dynamics.predicted_recovery_time(random_start(p.d), threshold, dir, budget as f64 * 10.0).unwrap_or(f64::INFINITY);
        ctx.record("threshold", threshold);
        ctx.record("population_optimum", serde_json::json!({"m_u": optimum.m_u, "m_v": optimum.m_v}));
        let rows = runs.len();
        let mut df = FrameBuilder::new()
            .u64("d", vec![p.d as u64; rows])
            .u64("seed", runs.iter().map(|r| r.replica).collect())
            .f64("n_star", runs.iter().map(|r| r.n as f64).collect())
            .bool("censored", runs.iter().map(|r| r.censored).collect())
            .f64("initial_overlap", runs.iter().map(|r| r.initial_overlap).collect())
            .f64("threshold", vec![threshold; rows])
            .f64("budget", vec![budget as f64; rows])
            .f64("n_star_theory", vec![theory; rows])
            .f64("eta", vec![cfg.learning_rate(p.d); rows])
            .str("direction", vec![format!("{:?}", p.direction).to_lowercase(); rows])
            .str("coupling", vec![coupling_name(p.coupling); rows])
            .str("simulator", vec![format!("{:?}", p.simulator).to_lowercase(); rows])
            .build()?;
        ctx.put_table("recovery", &mut df, &[])?;
        Ok(())
    }
}
