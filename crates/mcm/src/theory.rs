//! Deterministic high-dimensional dynamics of the overlaps (m_u, m_v) of one
//! neuron under online projected SGD (pSGD), the theory overlay of figures 2-3.
//!
//! One pSGD step is w' = (w - eta grad) / ||w - eta grad||, grad the per-sample
//! gradient. Expanding to second order, with ||grad||^2 ~ d G (G the per-coordinate
//! gradient variance, [`PopulationLoss::grad_variance`]) dominating every other
//! O(eta^2) term in high dimension,
//!
//! ```text
//! m_u' - m_u = -eta (u.grad - m_u w.grad) - eta^2 ||grad||^2 m_u / 2 + O(eta^2).
//! ```
//!
//! The mean of u.grad - m_u w.grad is the u-component of the spherical (Riemannian)
//! gradient P grad L, P = I - w w^T, of the population loss; as L depends on w
//! only through (m_u, m_v), P (L_u u + L_v v) . u = L_u (1 - m_u^2) - L_v m_u m_v.
//! Averaging over one sample per step (the fluctuations are O(eta) with zero
//! mean) gives the ODE in the number of samples n:
//!
//! ```text
//! dm_u/dn = -eta [L_u (1 - m_u^2) - L_v m_u m_v] - eta^2 d G m_u / 2
//! dm_v/dn = -eta [L_v (1 - m_v^2) - L_u m_u m_v] - eta^2 d G m_v / 2
//! ```
//!
//! The first term is the spherical gradient flow (learning when the expansion
//! coefficient c_k of the loss is negative), the second the contraction from the
//! normalisation. The flow keeps m_u^2 + m_v^2 <= 1.
//!
//! Integration: an adaptive L-stable Rosenbrock method in n, whose step grows
//! with the slowness of the dynamics (plateaus, the approach to the fixed
//! point), so that n up to 1e9 and beyond costs a few hundred steps.

use crate::population::{Direction, PopulationLoss};

/// Relative tolerance of the adaptive integrator.
const RTOL: f64 = 1e-6;

/// Online pSGD on the single-neuron population loss, in the overlaps.
#[derive(Debug, Clone)]
pub struct OverlapDynamics {
    /// The population loss whose gradient drives the overlaps.
    pub loss: PopulationLoss,
    /// The dimension d (enters only through eta and the contraction eta^2 d G).
    pub d: f64,
    /// The learning rate eta.
    pub eta: f64,
    /// Add the Ito term eta^2 G / (2 m) of the sampling noise to each equation
    /// (off by default, as in the paper's deterministic limit). With it, the
    /// equations describe the root-mean-square overlap: at m^2 = 1/d the noise
    /// exactly balances the contraction, as it does for a random start.
    pub ito_correction: bool,
}

impl OverlapDynamics {
    /// Dynamics with eta = delta / d^p (p = 1 for exponent-2 directions, 2 for
    /// exponent 4).
    pub fn new(loss: PopulationLoss, d: usize, delta: f64, p: f64) -> Self {
        let d = d as f64;
        OverlapDynamics {
            loss,
            d,
            eta: delta / d.powf(p),
            ito_correction: false,
        }
    }

    /// The right-hand side (dm_u/dn, dm_v/dn) at `m` = [m_u, m_v].
    pub fn drift(&self, m: [f64; 2]) -> [f64; 2] {
        let pt = self.loss.point(m[0], m[1]);
        let (lu, lv) = pt.grad;
        let [mu, mv] = m;
        let shrink = 0.5 * self.eta * self.eta * self.d * pt.grad_variance;
        let mut f = [
            -self.eta * (lu * (1.0 - mu * mu) - lv * mu * mv) - shrink * mu,
            -self.eta * (lv * (1.0 - mv * mv) - lu * mu * mv) - shrink * mv,
        ];
        if self.ito_correction {
            let noise = 0.5 * self.eta * self.eta * pt.grad_variance;
            for (fi, mi) in f.iter_mut().zip(m) {
                if mi != 0.0 {
                    *fi += noise / mi;
                }
            }
        }
        f
    }

    /// The overlaps at each n of `n_grid` (non-decreasing, n >= 0), starting
    /// from `m0` at n = 0.
    pub fn trajectory(&self, m0: [f64; 2], n_grid: &[f64]) -> Vec<[f64; 2]> {
        let mut stepper = Stepper::new(self, m0);
        let mut out = Vec::with_capacity(n_grid.len());
        for &n in n_grid {
            assert!(
                n >= stepper.n,
                "n_grid must be non-decreasing and start at n >= 0"
            );
            stepper.advance_to(n);
            out.push(stepper.m);
        }
        out
    }

    /// The first n at which |m_direction| reaches `threshold`, starting from `m0`;
    /// None if it does not within `n_max` samples.
    pub fn predicted_recovery_time(
        &self,
        m0: [f64; 2],
        threshold: f64,
        direction: Direction,
        n_max: f64,
    ) -> Option<f64> {
        let idx = match direction {
            Direction::U => 0,
            Direction::V => 1,
        };
        let mut stepper = Stepper::new(self, m0);
        if stepper.m[idx].abs() >= threshold {
            return Some(0.0);
        }
        while stepper.n < n_max {
            let (n0, m0_step, h) = (stepper.n, stepper.m, stepper.step_once(n_max));
            if stepper.m[idx].abs() >= threshold {
                return Some(stepper.crossing(n0, m0_step, h, idx, threshold));
            }
        }
        None
    }
}

/// The usual random start: |m_u| = |m_v| = 1/sqrt(d).
pub fn random_start(d: usize) -> [f64; 2] {
    let m = 1.0 / (d as f64).sqrt();
    [m, m]
}

/// State of the adaptive integrator: the L-stable Rosenbrock pair 2(3) of
/// Shampine & Reichelt (MATLAB's ode23s). Explicit Runge-Kutta would be
/// stability-bound near the attracting fixed point (time scale 1/eta), where a
/// trajectory to n = 1e9 would need millions of steps; here the step grows
/// geometrically once the overlaps have settled.
struct Stepper<'a> {
    dynamics: &'a OverlapDynamics,
    n: f64,
    m: [f64; 2],
    /// Drift at (n, m).
    f: [f64; 2],
    /// Next trial step.
    h: f64,
    atol: f64,
    /// The step size underflowed (an extreme learning rate): the overlaps are
    /// unknown (NaN) from here on, and the integrator jumps to the end.
    failed: bool,
}

/// ode23s constants: d = 1/(2 + sqrt 2), e32 = 6 + sqrt 2.
const ROS_D: f64 = 0.292_893_218_813_452_5;
const ROS_E32: f64 = 7.414_213_562_373_095;

impl<'a> Stepper<'a> {
    fn new(dynamics: &'a OverlapDynamics, m0: [f64; 2]) -> Self {
        let f = dynamics.drift(m0);
        let scale = m0[0].abs().max(m0[1].abs()).max(1e-300);
        let speed = f[0].abs().max(f[1].abs()).max(1e-300);
        // A first step that moves m by about 1e-4 of itself.
        let h = (1e-4 * scale / speed).clamp(1e-6, 1e12);
        // Absolute tolerance: 1e-4 of the smallest nonzero starting overlap.
        let smallest = m0
            .iter()
            .map(|x| x.abs())
            .filter(|&x| x > 0.0)
            .fold(f64::INFINITY, f64::min);
        let atol = if smallest.is_finite() {
            (1e-4 * smallest).max(1e-14)
        } else {
            1e-14
        };
        Stepper {
            dynamics,
            n: 0.0,
            m: m0,
            f,
            h,
            atol,
            failed: false,
        }
    }

    /// Forward-difference Jacobian of the drift at the current state.
    fn jacobian(&self) -> [[f64; 2]; 2] {
        let mut jac = [[0.0; 2]; 2];
        let scale = self.m[0].abs().max(self.m[1].abs());
        for col in 0..2 {
            let step = 1e-7 * self.m[col].abs().max(1e-3 * scale).max(1e-12);
            let mut y = self.m;
            y[col] += step;
            let f = self.dynamics.drift(y);
            for row in 0..2 {
                jac[row][col] = (f[row] - self.f[row]) / step;
            }
        }
        jac
    }

    /// One trial step of size h from the current state: (new m, its drift,
    /// scaled error estimate; infinite when a stage leaves the disc).
    fn trial(&self, h: f64, jac: &[[f64; 2]; 2]) -> ([f64; 2], [f64; 2], f64) {
        let hd = h * ROS_D;
        let w = [
            [1.0 - hd * jac[0][0], -hd * jac[0][1]],
            [-hd * jac[1][0], 1.0 - hd * jac[1][1]],
        ];
        let det = w[0][0] * w[1][1] - w[0][1] * w[1][0];
        let solve = |b: [f64; 2]| {
            [
                (w[1][1] * b[0] - w[0][1] * b[1]) / det,
                (w[0][0] * b[1] - w[1][0] * b[0]) / det,
            ]
        };
        let add = |y: [f64; 2], c: f64, k: [f64; 2]| [y[0] + c * k[0], y[1] + c * k[1]];
        let inside = |y: [f64; 2]| {
            y.iter().all(|x| x.is_finite()) && y[0] * y[0] + y[1] * y[1] <= 1.0 + 1e-3
        };
        let f0 = self.f;
        let k1 = solve(f0);
        let mid = add(self.m, 0.5 * h, k1);
        if !inside(mid) {
            return (mid, f0, f64::INFINITY);
        }
        let f1 = self.dynamics.drift(mid);
        let k2 = add(solve([f1[0] - k1[0], f1[1] - k1[1]]), 1.0, k1);
        let y = add(self.m, h, k2);
        if !inside(y) {
            return (y, f0, f64::INFINITY);
        }
        let f2 = self.dynamics.drift(y);
        let rhs = [0, 1].map(|i| f2[i] - ROS_E32 * (k2[i] - f1[i]) - 2.0 * (k1[i] - f0[i]));
        let k3 = solve(rhs);
        let mut err: f64 = 0.0;
        for i in 0..2 {
            let e = h / 6.0 * (k1[i] - 2.0 * k2[i] + k3[i]);
            let tol = self.atol + RTOL * self.m[i].abs().max(y[i].abs());
            err = err.max((e / tol).abs());
        }
        (y, f2, if err.is_finite() { err } else { f64::INFINITY })
    }

    /// Takes one accepted step, not beyond `n_end`; returns its size.
    fn step_once(&mut self, n_end: f64) -> f64 {
        if self.failed {
            let h = n_end - self.n;
            self.n = n_end;
            return h;
        }
        let jac = self.jacobian();
        loop {
            let h = self.h.min(n_end - self.n);
            let (y, f, err) = self.trial(h, &jac);
            let factor = if err == 0.0 {
                5.0
            } else {
                (0.8 * err.powf(-1.0 / 3.0)).clamp(0.2, 5.0)
            };
            if err <= 1.0 {
                self.n = if h == n_end - self.n {
                    n_end
                } else {
                    self.n + h
                };
                self.m = y;
                self.f = f;
                self.h = h * factor;
                return h;
            }
            self.h = h * factor;
            if !(self.h > 1e-12 * self.n.max(1.0)) {
                // Step size underflow: no trajectory to report, but no panic either.
                self.failed = true;
                self.m = [f64::NAN; 2];
                let h = n_end - self.n;
                self.n = n_end;
                return h;
            }
        }
    }

    fn advance_to(&mut self, n_end: f64) {
        while self.n < n_end {
            self.step_once(n_end);
        }
    }

    /// Bisects, within the step of size h taken from (n0, m0), the n at which
    /// |m[idx]| reaches `threshold` (re-taking the step with shorter sizes).
    fn crossing(&self, n0: f64, m0: [f64; 2], h: f64, idx: usize, threshold: f64) -> f64 {
        let from = Stepper {
            dynamics: self.dynamics,
            n: n0,
            m: m0,
            f: self.dynamics.drift(m0),
            h,
            atol: self.atol,
            failed: false,
        };
        let jac = from.jacobian();
        let (mut lo, mut hi) = (0.0, h);
        while hi - lo > 1e-9 * (n0 + h) {
            let mid = 0.5 * (lo + hi);
            if from.trial(mid, &jac).0[idx].abs() >= threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        n0 + hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Coupling, McmParams, NoiseLevel, NuLaw};

    fn params(beta_u: f64, beta_v: f64, coupling: Coupling) -> McmParams {
        McmParams {
            d: 1000,
            beta_u,
            beta_v,
            nu: NuLaw::Rademacher,
            coupling,
        }
    }

    fn loss(p: McmParams, t: f64) -> PopulationLoss {
        PopulationLoss::new(p, NoiseLevel::at(t), Activation::Tanh2, 1.0)
    }

    #[test]
    fn an_extreme_learning_rate_gives_nan_overlaps_not_a_panic() {
        // delta = 1e7 at d = 16: the step size underflows at once (it used to be an assert).
        let dynamics = OverlapDynamics::new(loss(params(2.0, 5.0, Coupling::None), 0.3), 16, 1e7, 1.0);
        let traj = dynamics.trajectory(random_start(16), &[0.0, 10.0, 100.0, 1000.0]);
        assert_eq!(traj.len(), 4);
        assert!(traj[3].iter().all(|m| m.is_nan()), "{traj:?}");
        let n = dynamics.predicted_recovery_time(random_start(16), 0.5, crate::population::Direction::U, 1e4);
        assert_eq!(n, None);
    }

    #[test]
    fn drift_signs_follow_the_expansion_coefficients() {
        // eta = 1e-9: the contraction eta^2 d G is negligible against the gradient.
        let dynamics = |t: f64| {
            OverlapDynamics::new(loss(params(2.0, 5.0, Coupling::None), t), 1000, 1e-6, 1.0)
        };
        // c_2^u < 0 at t = 0.3: u is attracting; c_2^u > 0 at t = 0.05: u repels.
        assert!(dynamics(0.3).drift([0.05, 0.0])[0] > 0.0);
        assert!(dynamics(0.05).drift([0.05, 0.0])[0] < 0.0);
        // c_4^v < 0: v grows from a small positive overlap (cubically).
        let dv = dynamics(0.3).drift([0.0, 0.05])[1];
        assert!(dv > 0.0, "dm_v/dn = {dv}");
        // Symmetry: the drift is odd in each overlap for independent latents.
        let (a, b) = (
            dynamics(0.3).drift([0.1, 0.2]),
            dynamics(0.3).drift([-0.1, 0.2]),
        );
        assert!((a[0] + b[0]).abs() < 1e-15 && (a[1] - b[1]).abs() < 1e-15);
    }

    #[test]
    fn u_only_recovery_time_scales_like_d_log_d() {
        let pl = loss(params(2.0, 0.0, Coupling::None), 0.3);
        let c2 = pl.coefficients_u(2)[2];
        let g0 = pl.grad_variance(0.0, 0.0);
        let threshold = 0.5 * pl.axis_optimum(Direction::U).m_u;
        let delta = 0.5;
        let mut times = Vec::new();
        for &d in &[1_000usize, 10_000, 100_000, 1_000_000] {
            let dynamics = OverlapDynamics::new(pl.clone(), d, delta, 1.0);
            let n = dynamics
                .predicted_recovery_time(random_start(d), threshold, Direction::U, 1e12)
                .expect("u is learned");
            times.push(((d as f64).ln(), n / d as f64));
        }
        // Linearised: m ~ m0 exp(delta r n/d), r = 2|c_2| - delta G/2, m0 = d^(-1/2):
        // n*/d = ln(d)/(2 delta r) + const.
        let r = 2.0 * c2.abs() - 0.5 * delta * g0;
        let want = 1.0 / (2.0 * delta * r);
        for w in times.windows(2) {
            let slope = (w[1].1 - w[0].1) / (w[1].0 - w[0].0);
            assert!(
                (slope / want - 1.0).abs() < 0.01,
                "slope {slope} vs {want}; times {times:?}"
            );
        }
    }

    #[test]
    fn fixed_point_is_the_population_optimum_as_eta_vanishes() {
        for coupling in [Coupling::None, Coupling::Linear { rho: 0.8 }] {
            let pl = loss(params(2.0, 5.0, coupling), 0.3);
            let opt = pl.optimum();
            let mut dynamics = OverlapDynamics::new(pl, 1000, 1e-9, 1.0);
            dynamics.d = 1.0; // eta^2 d G negligible
            let n_end = 1e4 / dynamics.eta;
            let m = dynamics.trajectory([0.3, 0.3], &[0.0, n_end])[1];
            assert!(
                (m[0] - opt.m_u).abs() < 1e-4 && (m[1] - opt.m_v).abs() < 1e-4,
                "{m:?} vs {opt:?}"
            );
        }
    }

    #[test]
    fn the_flow_stays_on_the_disc_and_starts_where_asked() {
        let pl = loss(params(2.0, 5.0, Coupling::Linear { rho: 0.8 }), 0.3);
        let dynamics = OverlapDynamics::new(pl, 1000, 0.5, 1.0);
        let grid: Vec<f64> = (0..30)
            .map(|i| {
                if i == 0 {
                    0.0
                } else {
                    10f64.powf(1.0 + 0.25 * i as f64)
                }
            })
            .collect();
        let traj = dynamics.trajectory(random_start(1000), &grid);
        assert_eq!(traj[0], random_start(1000));
        for m in &traj {
            assert!(m[0] * m[0] + m[1] * m[1] <= 1.0 + 1e-9, "{m:?}");
        }
    }

    #[test]
    fn v_recovery_with_quartic_exponent_is_cheap_and_scales_like_d_cubed() {
        // beta_u = 0: only v matters (with the defaults the optimum is m = (1, 0)).
        let pl = loss(params(0.0, 5.0, Coupling::None), 0.3);
        let c4 = pl.coefficients_v(4)[4];
        let threshold = 0.5 * pl.axis_optimum(Direction::V).m_v;
        let delta = 0.05;
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        for &d in &[1_000usize, 10_000, 100_000] {
            let dynamics = OverlapDynamics::new(pl.clone(), d, delta, 2.0);
            let n = dynamics.predicted_recovery_time(
                [0.0, 1.0 / (d as f64).sqrt()],
                threshold,
                Direction::V,
                1e18,
            );
            let n = n.expect("v is learned");
            // dm/dn ~ 4 eta |c_4| m^3 from m0^2 = 1/d: n* ~ d^3 / (8 delta |c_4|) for small delta.
            times.push((d as f64, n, n * 8.0 * delta * c4.abs() / (d as f64).powi(3)));
        }
        eprintln!(
            "v recovery (d, n*, n* 8 delta |c4| / d^3): {times:?} in {:?}",
            start.elapsed()
        );
        for w in times.windows(2) {
            let exponent = (w[1].1 / w[0].1).log10();
            assert!(
                (exponent - 3.0).abs() < 0.05,
                "n*(v) grows like d^{exponent}"
            );
        }
        assert!(
            start.elapsed().as_secs_f64() < 2.0,
            "took {:?}",
            start.elapsed()
        );
    }
}
