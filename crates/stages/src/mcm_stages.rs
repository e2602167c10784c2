//! Stage kinds of the mixed cumulant model: simulations, fits and theory.

use e2h_engine::{CodeFingerprints, Footprint, ParamIssue, Registry, Resources, Stage, StageContext, StageError};
use e2h_mcm::simulate::{self, PsgdConfig, Readout};
use e2h_mcm::population::PopulationLoss;
use e2h_mcm::theory::{random_start, OverlapDynamics};
use e2h_mcm::Mcm;

use crate::frame::{quartiles, FrameBuilder};
use crate::mcm_common::{
    activation_name, check_learning_rate, check_samples, count_in, coupling_name, in_range, limits, mcm_params, nu_name,
    positive, ModelFields, SimulatorName,
};

pub fn register(r: &mut Registry) {
    r.record_version("e2h-mcm", env!("CARGO_PKG_VERSION"));
    r.register(Trajectories);
}

fn default_lr_exponent() -> f64 {
    1.0
}
fn default_grid_points() -> usize {
    40
}
fn default_replicas() -> u64 {
    16
}
fn default_n_test() -> usize {
    1000
}
fn default_learned() -> f64 {
    0.5
}

mcm_params! {
    /// `mcm.trajectories`: online pSGD from random initialisations, overlaps
    /// and test losses on a log-spaced grid of sample counts.
    pub struct TrajectoriesParams {
        /// eta = delta / d^lr_exponent.
        pub delta: f64,
        #[serde(default = "default_lr_exponent")]
        pub lr_exponent: f64,
        /// Training length in units of d (n_max = n_max_over_d * d).
        pub n_max_over_d: f64,
        #[serde(default = "default_grid_points")]
        pub grid_points: usize,
        /// Independent runs (initialisation and sample stream), in parallel.
        #[serde(default = "default_replicas")]
        pub replicas: u64,
        /// Fresh test samples per loss estimate (the same ones at every grid point).
        #[serde(default = "default_n_test")]
        pub n_test: usize,
        /// |m| at which a direction counts as learned in the summary table.
        #[serde(default = "default_learned")]
        pub learned_threshold: f64,
        /// `reduced` (exact chain on the overlaps, cost independent of d) or `full`.
        #[serde(default = "crate::mcm_common::defaults::simulator")]
        pub simulator: SimulatorName,
        /// `fixed`: a_k = a, b_k = 0 for ever; `learned`: (a_k, b_k) start at
        /// (a, b) and are trained by SGD at readout_delta / d^readout_lr_exponent.
        #[serde(default = "default_readout")]
        pub readout: ReadoutKind,
        /// Initial linear gain b_k (learned readout).
        #[serde(default)]
        pub b: f64,
        #[serde(default)]
        pub readout_delta: Option<f64>,
        #[serde(default = "default_readout_lr_exponent")]
        pub readout_lr_exponent: f64,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadoutKind {
    Fixed,
    Learned,
}

fn default_readout() -> ReadoutKind {
    ReadoutKind::Fixed
}
fn default_readout_lr_exponent() -> f64 {
    1.0
}

impl TrajectoriesParams {
    fn readout(&self) -> Readout {
        match (self.readout, self.readout_delta) {
            (ReadoutKind::Learned, Some(delta)) => {
                Readout::Learned { a0: self.a, b0: self.b, delta, lr_exponent: self.readout_lr_exponent }
            }
            _ => Readout::Fixed { a: self.a },
        }
    }
}

pub struct Trajectories;

impl Stage for Trajectories {
    type Params = TrajectoriesParams;
    const KIND: &'static str = "mcm.trajectories";
    // 3: the reduced simulator (default), learned readouts, readout and exact-loss columns.
    const VERSION: &'static str = "3";
    const ABOUT: &'static str = "online pSGD of the MCM denoiser from random starts: overlaps and test losses on a log grid of sample counts";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::mcm_tables::trajectories()
    }

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        let mut docs = crate::mcm_common::model_param_docs();
        docs.extend([
            P::new("delta", "number", "", "(0, 1000]", "learning-rate constant: eta = delta / d^lr_exponent"),
            P::new("lr_exponent", "number", "1.0", "[0, 4]", "exponent p of eta = delta / d^p"),
            P::new("n_max_over_d", "number", "", "n_max = n_max_over_d x d in [1, 1e12]", "training length in units of d"),
            P::new("grid_points", "integer", "40", "2..=100000", "log-spaced sample counts at which overlaps and losses are recorded"),
            P::new("replicas", "integer", "16", "1..=1000000", "independent runs (initialisation and sample stream)"),
            P::new("n_test", "integer", "1000", "2..=10000000", "fresh test samples per loss estimate"),
            P::new("learned_threshold", "number", "0.5", "[0, 1]", "|m| at which a direction counts as learned in `summary`"),
            P::new("simulator", "reduced | full", "reduced", "", "reduced: the exact chain on the overlaps, O(K^3) a step at any d (K <= 6); full: d-dimensional samples"),
            P::new("readout", "fixed | learned", "fixed", "", "fixed: a_k = a, b_k = 0; learned: (a_k, b_k) start at (a, b) and are trained by SGD"),
            P::new("b", "number", "0.0", "[-1e4, 1e4]", "initial linear gain b_k (learned readout)"),
            P::new("readout_delta", "number", "", "(0, 1000]", "readout learning rate readout_delta / d^readout_lr_exponent (learned readout only)"),
            P::new("readout_lr_exponent", "number", "1.0", "[0, 4]", "exponent of the readout learning rate"),
        ]);
        docs
    }


    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        p.validate_fields()?;
        check_learning_rate(p.delta, p.lr_exponent)?;
        check_samples("n_max_over_d", p.n_max_over_d * p.d as f64, "n_max = n_max_over_d x d")?;
        count_in("replicas", p.replicas, 1, limits::MAX_REPLICAS)?;
        count_in("n_test", p.n_test as u64, 2, limits::MAX_TEST_SAMPLES)?;
        count_in("grid_points", p.grid_points as u64, 2, limits::MAX_GRID_POINTS)?;
        in_range("learned_threshold", p.learned_threshold, 0.0, 1.0)?;
        p.simulator.validate(p.d, p.neurons)?;
        match (p.readout, p.readout_delta) {
            (ReadoutKind::Learned, None) => {
                return Err(ParamIssue::new("readout_delta", "a learned readout needs its learning rate `readout_delta`"));
            }
            (ReadoutKind::Learned, Some(delta)) => {
                positive("readout_delta", delta)?;
                in_range("readout_delta", delta, 0.0, limits::MAX_DELTA)?;
            }
            (ReadoutKind::Fixed, Some(_)) => {
                return Err(ParamIssue::new("readout_delta", "`readout_delta` only applies to `readout: learned`"));
            }
            (ReadoutKind::Fixed, None) if p.b != 0.0 => {
                return Err(ParamIssue::new("b", "a fixed readout has b = 0; use `readout: learned` to start from another b"));
            }
            _ => {}
        }
        in_range("b", p.b, -limits::MAX_SCALE, limits::MAX_SCALE)?;
        in_range("readout_lr_exponent", p.readout_lr_exponent, 0.0, limits::MAX_LR_EXPONENT)?;
        Ok(())
    }

    /// Replicas run in parallel threads.
    fn resources(_p: &Self::Params) -> Resources {
        Resources { cpus: Some(2), ..Resources::default() }
    }

    fn footprint(p: &Self::Params) -> Footprint {
        let (d, k, r, g, n) = (p.d as f64, p.neurons as f64, p.replicas as f64, p.grid_points as f64, p.n_test as f64);
        Footprint::new(
            r * g * k * 400.0 + 3.0 * n * d * 8.0 + 2.0 * r * k * d * 8.0,
            format!(
                "replicas x grid_points x neurons x 400 B of trajectory rows + 3 x n_test x d x 8 B of test samples \
                 + 2 x replicas x neurons x d x 8 B of weights; replicas = {}, grid_points = {}, neurons = {}, n_test = {}, d = {}",
                p.replicas, p.grid_points, p.neurons, p.n_test, p.d
            ),
        )
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let model = Mcm::new(p.model(), ctx.seed());
        let cfg = PsgdConfig {
            noise: p.noise(),
            neurons: p.neurons,
            activation: p.activation,
            readout: p.readout(),
            delta: p.delta,
            lr_exponent: p.lr_exponent,
            simulator: p.simulator.simulator(),
        };
        let d = p.d as f64;
        let n_max = (p.n_max_over_d * d).round() as u64;
        let grid = simulate::log_grid(n_max, p.grid_points);
        let bar = ctx.progress(n_max.saturating_mul(p.replicas), "pSGD samples");
        // Exact (quadrature) test losses where they are cheap: up to two neurons.
        let exact = p.neurons <= 2;
        let points = simulate::trajectories(&model, cfg, ctx.seed(), p.replicas, &grid, p.n_test, exact, &|n| bar.inc(n));
        bar.finish();
        ctx.record("learning_rate", cfg.learning_rate(p.d));
        ctx.record("accumulation", "f64");

        let col = |f: &dyn Fn(&simulate::TrajectoryPoint) -> f64| points.iter().map(f).collect::<Vec<f64>>();
        let rows = points.len();
        let mut trajectory = FrameBuilder::new()
            .u64("seed", points.iter().map(|q| q.replica).collect())
            .u64("d", vec![p.d as u64; rows])
            .u64("n", points.iter().map(|q| q.n).collect())
            .f64("n_over_d", col(&|q| q.n as f64 / d))
            .u64("neuron", points.iter().map(|q| q.neuron as u64).collect())
            .f64("m_u", col(&|q| q.m_u))
            .f64("m_v", col(&|q| q.m_v))
            .f64("a", col(&|q| q.a))
            .f64("b", col(&|q| q.b))
            .f64("loss_mcm", col(&|q| q.losses.mcm))
            .f64("loss_mcm_se", col(&|q| q.losses.mcm_se))
            .f64("loss_gauss", col(&|q| q.losses.gauss))
            .f64("loss_gauss_se", col(&|q| q.losses.gauss_se))
            .f64("loss_mcm_exact", col(&|q| q.exact.map_or(f64::NAN, |e| e.mcm)))
            .f64("loss_gauss_exact", col(&|q| q.exact.map_or(f64::NAN, |e| e.gauss)))
            .f64("loss_wiener", col(&|q| q.losses.wiener))
            .f64("loss_isotropic", col(&|q| q.losses.isotropic))
            .f64("t", vec![p.t; rows])
            .f64("delta", vec![p.delta; rows])
            .f64("eta", vec![cfg.learning_rate(p.d); rows])
            .str("activation", vec![activation_name(p.activation); rows])
            .str("coupling", vec![coupling_name(p.coupling); rows])
            .f64("rho", vec![p.rho; rows])
            .f64("beta_u", vec![p.beta_u; rows])
            .f64("beta_v", vec![p.beta_v; rows])
            .str("nu", vec![nu_name(p.nu); rows])
            .build()?;
        ctx.put_table("trajectory", &mut trajectory, &[])?;

        if p.neurons >= 2 {
            let mut by_role = summarise_by_role(&points, &grid, p.neurons, d)?;
            ctx.put_table("by_role", &mut by_role, &[])?;
        }
        // The best loss the architecture reaches (K neurons, learned readouts),
        // the floor of the loss panels.
        let best = if exact {
            let (loss, state) = e2h_mcm::best_reachable_loss(&p.model(), p.noise(), p.activation, p.neurons);
            ctx.record("best_reachable_state", serde_json::json!({"gram": state.gram, "a": state.a, "b": state.b}));
            loss
        } else {
            f64::NAN
        };
        let mut by_n = summarise_by_n(&points, &grid, p.neurons, d, best)?;
        ctx.put_table("by_n", &mut by_n, &[])?;
        // The single-neuron theory (population optimum, ODE) is that of the
        // fixed readout; with a learned readout it would need the loss and the
        // gradient variance as functions of (a, b) too, which it does not have.
        let mut optimum_overlaps = (f64::NAN, f64::NAN);
        if matches!(cfg.readout, Readout::Fixed { .. }) {
            let pop = PopulationLoss::new(p.model(), p.noise(), p.activation, p.a);
            let optimum = pop.optimum();
            optimum_overlaps = (optimum.m_u.abs(), optimum.m_v.abs());
            let dynamics = OverlapDynamics::new(pop, p.d, p.delta, p.lr_exponent);
            let grid_f: Vec<f64> = grid.iter().map(|&n| n as f64).collect();
            let ode = dynamics.trajectory(random_start(p.d), &grid_f);
            let mut theory = FrameBuilder::new()
                .f64("n", grid_f.clone())
                .f64("n_over_d", grid_f.iter().map(|n| n / d).collect())
                .f64("abs_m_u", ode.iter().map(|m| m[0].abs()).collect())
                .f64("abs_m_v", ode.iter().map(|m| m[1].abs()).collect())
                .build()?;
            ctx.put_table("theory", &mut theory, &[])?;
        }
        let last = *grid.last().unwrap_or(&0);
        let finals: Vec<&simulate::TrajectoryPoint> = points.iter().filter(|q| q.n == last && q.neuron == 0).collect();
        let median_of = |f: &dyn Fn(&simulate::TrajectoryPoint) -> f64| quartiles(&finals.iter().map(|q| f(q)).collect::<Vec<_>>()).1;
        let final_gap = (
            median_of(&|q| mcm_loss(q) - gauss_loss(q)),
            median_of(&|q| if q.exact.is_some() { 0.0 } else { q.losses.mcm_se.hypot(q.losses.gauss_se) }),
        );
        let mut summary = learned_summary(&by_n, p.learned_threshold, optimum_overlaps, final_gap)?;
        ctx.put_table("summary", &mut summary, &[])?;
        Ok(())
    }
}

/// Quartiles over replicas at each grid point of the neuron that ends nearest
/// u in its run and of the other neurons (max over them).
fn summarise_by_role(
    points: &[simulate::TrajectoryPoint],
    grid: &[u64],
    neurons: usize,
    d: f64,
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    let last = *grid.last().unwrap_or(&0);
    // Per replica: the index of the neuron with the largest final |m_u|.
    let mut u_neuron = std::collections::BTreeMap::new();
    for q in points.iter().filter(|q| q.n == last) {
        let best = u_neuron.entry(q.replica).or_insert((q.neuron, q.m_u.abs()));
        if q.m_u.abs() > best.1 {
            *best = (q.neuron, q.m_u.abs());
        }
    }
    let mut b = RoleColumns::default();
    for &n in grid {
        let at: Vec<&simulate::TrajectoryPoint> = points.iter().filter(|q| q.n == n).collect();
        for role in ["u_neuron", "other_neuron"] {
            let pick = |f: &dyn Fn(&simulate::TrajectoryPoint) -> f64| -> Vec<f64> {
                at.chunks(neurons)
                    .map(|c| {
                        let first = u_neuron.get(&c[0].replica).map_or(0, |x| x.0);
                        c.iter()
                            .filter(|q| (q.neuron == first) == (role == "u_neuron"))
                            .map(|q| f(q))
                            .fold(f64::NEG_INFINITY, f64::max)
                    })
                    .collect()
            };
            b.push(n as f64, n as f64 / d, role, [
                quartiles(&pick(&|q| q.m_u.abs())),
                quartiles(&pick(&|q| q.m_v.abs())),
                quartiles(&pick(&|q| q.a)),
                quartiles(&pick(&|q| q.b)),
            ]);
        }
    }
    b.frame()
}

#[derive(Default)]
struct RoleColumns {
    n: Vec<f64>,
    n_over_d: Vec<f64>,
    role: Vec<String>,
    /// |m_u|, |m_v|, a, b: (q25, median, q75) each.
    stats: [Vec<(f64, f64, f64)>; 4],
}

impl RoleColumns {
    fn push(&mut self, n: f64, n_over_d: f64, role: &str, stats: [(f64, f64, f64); 4]) {
        self.n.push(n);
        self.n_over_d.push(n_over_d);
        self.role.push(role.into());
        for (col, s) in self.stats.iter_mut().zip(stats) {
            col.push(s);
        }
    }

    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        let mut b = FrameBuilder::new().f64("n", self.n).f64("n_over_d", self.n_over_d).str("neuron_role", self.role);
        for (name, col) in ["abs_m_u", "abs_m_v", "a", "b"].iter().zip(&self.stats) {
            b = b
                .f64(&format!("{name}_q25"), col.iter().map(|s| s.0).collect())
                .f64(&format!("{name}_median"), col.iter().map(|s| s.1).collect())
                .f64(&format!("{name}_q75"), col.iter().map(|s| s.2).collect());
        }
        b.build()
    }
}

/// Quartiles over replicas at each grid point (max over neurons within a replica).
fn summarise_by_n(
    points: &[simulate::TrajectoryPoint],
    grid: &[u64],
    neurons: usize,
    d: f64,
    best: f64,
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    let names = [
        "n", "n_over_d", "abs_m_u_q25", "abs_m_u_median", "abs_m_u_q75", "abs_m_v_q25", "abs_m_v_median",
        "abs_m_v_q75", "excess_mcm_q25", "excess_mcm_median", "excess_mcm_q75", "excess_gauss_q25",
        "excess_gauss_median", "excess_gauss_q75", "excess_wiener", "loss_isotropic", "gap_mcm_q25", "gap_mcm_median",
        "gap_mcm_q75", "gap_gauss_q25", "gap_gauss_median", "gap_gauss_q75", "gap_wiener", "gap_isotropic", "loss_best",
    ];
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for &n in grid {
        let at: Vec<&simulate::TrajectoryPoint> = points.iter().filter(|q| q.n == n).collect();
        let per_replica = |f: &dyn Fn(&simulate::TrajectoryPoint) -> f64| -> Vec<f64> {
            at.chunks(neurons).map(|c| c.iter().map(|q| f(q)).fold(f64::NEG_INFINITY, f64::max)).collect()
        };
        let mu = quartiles(&per_replica(&|q| q.m_u.abs()));
        let mv = quartiles(&per_replica(&|q| q.m_v.abs()));
        let em = quartiles(&per_replica(&|q| mcm_loss(q) - q.losses.isotropic));
        let eg = quartiles(&per_replica(&|q| gauss_loss(q) - q.losses.isotropic));
        let gm = quartiles(&per_replica(&|q| mcm_loss(q) - best));
        let gg = quartiles(&per_replica(&|q| gauss_loss(q) - best));
        let (wiener, isotropic) = at.first().map_or((f64::NAN, f64::NAN), |q| (q.losses.wiener, q.losses.isotropic));
        let values = [
            n as f64, n as f64 / d, mu.0, mu.1, mu.2, mv.0, mv.1, mv.2, em.0, em.1, em.2, eg.0, eg.1, eg.2,
            wiener - isotropic, isotropic, gm.0, gm.1, gm.2, gg.0, gg.1, gg.2, wiener - best, isotropic - best, best,
        ];
        for (c, v) in cols.iter_mut().zip(values) {
            c.push(v);
        }
    }
    let mut b = FrameBuilder::new();
    for (name, c) in names.iter().zip(cols) {
        b = b.f64(name, c);
    }
    b.build()
}

/// The test loss on MCM samples: exact where computed, else the Monte Carlo estimate.
fn mcm_loss(q: &simulate::TrajectoryPoint) -> f64 {
    q.exact.map_or(q.losses.mcm, |e| e.mcm)
}

/// The same on surrogate samples.
fn gauss_loss(q: &simulate::TrajectoryPoint) -> f64 {
    q.exact.map_or(q.losses.gauss, |e| e.gauss)
}

fn learned_summary(
    by_n: &polars::prelude::DataFrame,
    threshold: f64,
    (opt_u, opt_v): (f64, f64),
    (final_gap, final_gap_se): (f64, f64),
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use e2h_engine::table::column_f64;
    let x = column_f64(by_n, "n_over_d")?;
    let first = |col: &str| -> polars::prelude::PolarsResult<f64> {
        let m = column_f64(by_n, col)?;
        Ok(x.iter().zip(&m).find(|(_, m)| **m >= threshold).map_or(f64::INFINITY, |(x, _)| *x))
    };
    let last = |col: &str| -> polars::prelude::PolarsResult<f64> { Ok(*column_f64(by_n, col)?.last().unwrap_or(&f64::NAN)) };
    let w = last("excess_wiener")?;
    FrameBuilder::new()
        .f64("learned_threshold", vec![threshold])
        .f64("n_over_d_u_learned", vec![first("abs_m_u_median")?])
        .f64("n_over_d_v_learned", vec![first("abs_m_v_median")?])
        .f64("final_abs_m_u_median", vec![last("abs_m_u_median")?])
        .f64("final_abs_m_v_median", vec![last("abs_m_v_median")?])
        .f64("optimum_abs_m_u", vec![opt_u])
        .f64("optimum_abs_m_v", vec![opt_v])
        .f64("final_m_v_over_optimum", vec![if opt_v > 1e-6 { last("abs_m_v_median")? / opt_v } else { f64::NAN }])
        .f64("final_mcm_minus_wiener", vec![last("excess_mcm_median")? - w])
        .f64("final_gauss_minus_wiener", vec![last("excess_gauss_median")? - w])
        .f64("v_over_u_learned", vec![first("abs_m_v_median")? / first("abs_m_u_median")?])
        .f64("final_excess_mcm", vec![last("excess_mcm_median")?])
        .f64("final_mcm_minus_gauss", vec![final_gap])
        .f64("final_mcm_minus_gauss_se", vec![final_gap_se])
        .build()
}
