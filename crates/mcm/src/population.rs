//! Population loss of one spherical neuron on the MCM, by deterministic quadrature.
//!
//! The denoiser D(x_t) = alpha x_t + a g(w.x_t) w with ||w|| = 1 has per-sample loss
//!
//! ```text
//! l = 1/2 ||D - x||^2 = l_0 + a g(y) (alpha y - h) + a^2/2 g(y)^2,
//! ```
//!
//! with h = w.x, y = w.x_t = alpha h + sigma xi' and l_0 = 1/2 ||alpha x_t - x||^2 the
//! loss of the isotropic baseline alpha x_t. Only the *excess* (the last two terms)
//! depends on w, and only through the overlaps (m_u, m_v): given the latents,
//! h ~ N(mu, S^2) with mu = sqrt(beta_u) m_u lambda + c m_v nu, S^2 = 1 - c^2 m_v^2 and
//! c = sqrt(beta_v / (1 + beta_v)); then y ~ N(alpha mu, tau^2), tau^2 = alpha^2 S^2 + sigma^2,
//! and E[h | y] = mu + (alpha S^2 / tau^2) (y - alpha mu), Var[h | y] = S^2 sigma^2 / tau^2.
//!
//! Every expectation is a deterministic quadrature (never Monte Carlo):
//! - over y given (mu, S^2): a trapezoid rule in z = (y - alpha mu)/tau on [-Z, Z]
//!   for smooth g (for tanh, analytic only in a strip, it beats Gauss-Hermite of the
//!   same size by orders of magnitude), and Gauss-Legendre on both sides of the
//!   kink for ReLU;
//! - independent latents: lambda enters only through the Gaussian h, so it is
//!   integrated exactly (it adds beta_u m_u^2 to S^2); nu by its own rule (exact
//!   sum for Rademacher, Gauss-Legendre for uniform, two-sided Gauss-Laguerre for
//!   Laplace, Gauss-Hermite for Gaussian);
//! - linear coupling (nu = s sign(lambda) |nu0|, P(s = 1) = (1 + rho)/2):
//!   E[F] = E_indep[F] + (rho/2) E[sign(lambda) (F(lambda, |nu0|) - F(lambda, -|nu0|))].
//!   The correction is odd in lambda and in |nu0|, and for odd f,
//!   E|X|[f(|X|)] = sqrt(2/pi) int_0^inf e^(-r) f(x)/x dr with x = sqrt(2r), X ~ N(0,1),
//!   a Gauss-Laguerre sum of a smooth integrand (no kink at lambda = 0 to resolve).

use crate::model::{Activation, McmParams, NoiseLevel, NuLaw};
use rayon::prelude::*;

/// Nodes of the rule over y per unit of the largest standard deviation tau of y
/// (see [`recommended_order`]): the trapezoid spacing in y is then about 0.13,
/// and the aliasing error for tanh(2y) (poles at Im y = pi/4) about
/// exp(-2 pi (pi/4) / 0.13) ~ 1e-16.
const NODES_PER_SD: f64 = 150.0;

/// The smallest order [`recommended_order`] returns.
const MIN_ORDER: usize = 160;

/// Half-width, in standard deviations, of the trapezoid rule over y: the
/// Gaussian mass beyond it (e^(-Z^2/2) ~ 1e-22) is negligible.
const Y_HALF_WIDTH: f64 = 10.0;

/// Step h and number of points j = 1..P (m = j h) of the polynomial fit that
/// gives the expansion coefficients: coefficients up to k = 2P are fitted,
/// those up to k ~ 6 are accurate to better than 1e-6.
const FIT_STEP: f64 = 0.05;
const FIT_POINTS: usize = 5;

/// Largest order looked at by [`PopulationLoss::information_exponent`].
pub const EXPONENT_KMAX: usize = 6;

/// A coefficient counts as nonzero when it exceeds this fraction of the
/// largest |c_k| (k <= EXPONENT_KMAX) ...
const EXPONENT_RTOL: f64 = 1e-4;
/// ... and the rounding noise of the fit, about LOSS_NOISE / FIT_STEP^k.
const LOSS_NOISE: f64 = 1e-13;

/// One of the two planted directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The covariance spike u (overlap m_u).
    U,
    /// The non-Gaussian direction v (overlap m_v).
    V,
}

impl Direction {
    /// The point (m_u, m_v) at overlap `m` along `self`, the other overlap fixed at `at`.
    pub fn point(self, m: f64, at: f64) -> (f64, f64) {
        match self {
            Direction::U => (m, at),
            Direction::V => (at, m),
        }
    }
}

/// Everything the dynamics need at one (m_u, m_v), from one quadrature sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPoint {
    /// Excess population loss L(m_u, m_v) over the baseline alpha x_t.
    pub excess: f64,
    /// (dL/dm_u, dL/dm_v), L extended off the sphere by its formula in (m_u, m_v).
    pub grad: (f64, f64),
    /// G: per-coordinate variance of the per-sample gradient in a bulk
    /// direction (orthogonal to u, v, w), see [`PopulationLoss::grad_variance`].
    pub grad_variance: f64,
}

/// A point of the loss landscape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LandscapePoint {
    pub m_u: f64,
    pub m_v: f64,
    pub excess: f64,
}

/// A minimiser of the excess loss. For odd g the loss is invariant under
/// w -> -w; the reported representative has m_u >= 0 (m_v >= 0 if m_u = 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimum {
    pub m_u: f64,
    pub m_v: f64,
    pub excess: f64,
}

/// A node of the rule over the latents. With `lambda_in_variance` lambda is
/// integrated exactly (it adds beta_u m_u^2 to the variance of h) and `lambda` is 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatentNode {
    pub(crate) lambda: f64,
    pub(crate) nu: f64,
    pub(crate) weight: f64,
    pub(crate) lambda_in_variance: bool,
}

/// Conditional expectations at one latent node: the excess Psi(mu, S^2), its
/// partials in mu and S^2, and the node's contribution to G.
#[derive(Debug, Clone, Copy)]
struct NodeTerms {
    psi: f64,
    d_mu: f64,
    d_s2: f64,
    grad_variance: f64,
}

/// The single-neuron population loss of the MCM at one noise level.
#[derive(Debug, Clone)]
pub struct PopulationLoss {
    params: McmParams,
    noise: NoiseLevel,
    activation: Activation,
    a: f64,
    order: usize,
    latents: Vec<LatentNode>,
    /// Rule for z ~ N(0, 1), y = alpha mu + tau z (smooth g), sized for the
    /// largest tau (nodes with lambda integrated).
    y_rule: quad::Rule,
    /// The same with the same spacing in y for tau <= 1 (the coupling's
    /// correction nodes, where S^2 <= 1): fewer nodes.
    y_rule_narrow: quad::Rule,
    /// Gauss-Legendre on [-1, 1] (Lebesgue weights), mapped onto each side of a kink.
    piece_rule: quad::Rule,
}

impl PopulationLoss {
    /// The loss with the [`recommended_order`] of quadrature (converged to about
    /// 1e-13 or better).
    pub fn new(params: McmParams, noise: NoiseLevel, activation: Activation, a: f64) -> Self {
        Self::with_order(
            params,
            noise,
            activation,
            a,
            recommended_order(&params, noise),
        )
    }

    /// The loss with `order` nodes in the rule over y (trapezoid on [-10, 10]
    /// standard deviations, or Gauss-Legendre on each side of ReLU's kink) and
    /// [`Self::outer_order`]`(order)` nodes in each rule over the latents.
    pub fn with_order(
        params: McmParams,
        noise: NoiseLevel,
        activation: Activation,
        a: f64,
        order: usize,
    ) -> Self {
        Self::with_orders(
            params,
            noise,
            activation,
            a,
            order,
            Self::outer_order(order),
        )
    }

    /// The loss with `order` nodes over y and `outer_order` nodes in each rule
    /// over the latents.
    pub fn with_orders(
        params: McmParams,
        noise: NoiseLevel,
        activation: Activation,
        a: f64,
        order: usize,
        outer_order: usize,
    ) -> Self {
        assert!(
            order >= 8 && outer_order >= 2,
            "quadrature orders ({order}, {outer_order}) are too small"
        );
        let latents = latent_nodes(&params, outer_order);
        let narrow = ((order as f64 / tau_max(&params, noise)).ceil() as usize).max(8);
        let piece = quad::gauss_legendre(order);
        let piece_rule = quad::Rule {
            nodes: piece.nodes,
            weights: piece.weights.iter().map(|w| 2.0 * w).collect(),
        };
        PopulationLoss {
            params,
            noise,
            activation,
            a,
            order,
            latents,
            y_rule: quad::normal_trapezoid(order, Y_HALF_WIDTH),
            y_rule_narrow: quad::normal_trapezoid(narrow, Y_HALF_WIDTH),
            piece_rule,
        }
    }

    /// Default order of the rules over the latents (nu, and lambda under
    /// coupling): their integrands are entire, so few nodes suffice (16 already
    /// converge the defaults to 1e-15, for every law of nu).
    pub fn outer_order(order: usize) -> usize {
        (order / 10).max(16)
    }

    /// The data model.
    pub fn params(&self) -> &McmParams {
        &self.params
    }

    /// The noise level (alpha, sigma) of the loss.
    pub fn noise(&self) -> NoiseLevel {
        self.noise
    }

    /// The neuron's activation g.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The fixed output weight a.
    pub fn a(&self) -> f64 {
        self.a
    }

    /// Number of nodes of the rule over y.
    pub fn order(&self) -> usize {
        self.order
    }

    /// E[1/2 ||alpha x_t - x||^2] = 1/2 [sigma^4 (d + beta_u) + alpha^2 sigma^2 d]: the
    /// loss of the isotropic baseline D_0 = alpha x_t, which the excess is measured from.
    pub fn baseline_loss(&self) -> f64 {
        let (al, si) = (self.noise.alpha, self.noise.sigma);
        let d = self.params.d as f64;
        0.5 * (si.powi(4) * (d + self.params.beta_u) + al * al * si * si * d)
    }

    /// The full population loss E[1/2 ||D - x||^2] in dimension `params.d`.
    pub fn total_loss(&self, m_u: f64, m_v: f64) -> f64 {
        self.baseline_loss() + self.excess_loss(m_u, m_v)
    }

    /// L(m_u, m_v) = a E[g(y)(alpha y - h)] + a^2/2 E[g(y)^2]: the population loss
    /// minus that of the baseline alpha x_t; the quantity the dynamics descend.
    pub fn excess_loss(&self, m_u: f64, m_v: f64) -> f64 {
        self.point(m_u, m_v).excess
    }

    /// (dL/dm_u, dL/dm_v), analytic (same sweep as the loss).
    pub fn gradient(&self, m_u: f64, m_v: f64) -> (f64, f64) {
        self.point(m_u, m_v).grad
    }

    /// G = a^2 E[g'(y)^2 (w.r)^2 + sigma^2 g(y)^2], w.r = alpha y - h + a g(y): the
    /// variance, per coordinate, of the per-sample gradient
    /// a [g'(y) (w.r) x_t + g(y) r] (r = D - x) along a bulk direction e
    /// (orthogonal to u, v, w). There e.x_t = alpha z_e + sigma xi_e and
    /// e.r = -sigma^2 z_e + alpha sigma xi_e, with z_e, xi_e independent standard
    /// normals; the cross term has coefficient alpha(alpha^2 - 1) + alpha sigma^2 = 0 and
    /// the g^2 coefficient is sigma^4 + alpha^2 sigma^2 = sigma^2. Over h given y,
    /// E[(w.r)^2 | y] = (alpha y - E[h|y] + a g)^2 + Var[h|y]. The squared norm of the
    /// gradient is about d G, which drives the contraction of pSGD.
    pub fn grad_variance(&self, m_u: f64, m_v: f64) -> f64 {
        self.point(m_u, m_v).grad_variance
    }

    /// Loss, gradient and gradient variance in one sweep over the quadrature.
    pub fn point(&self, m_u: f64, m_v: f64) -> LossPoint {
        let p = &self.params;
        let (su, c) = (p.beta_u.sqrt(), p.c_v());
        let base_var = 1.0 - c * c * m_v * m_v;
        assert!(
            base_var >= 0.0,
            "m_v = {m_v} is outside the model's range |m_v| <= 1/c"
        );
        let (mut loss, mut gu, mut gv, mut gvar) = (0.0, 0.0, 0.0, 0.0);
        for node in &self.latents {
            let mu = su * m_u * node.lambda + c * m_v * node.nu;
            let extra = if node.lambda_in_variance {
                p.beta_u * m_u * m_u
            } else {
                0.0
            };
            let t = self.node_terms(mu, base_var + extra, node.lambda_in_variance);
            let w = node.weight;
            loss += w * t.psi;
            let du_var = if node.lambda_in_variance {
                2.0 * p.beta_u * m_u
            } else {
                0.0
            };
            gu += w * (t.d_mu * su * node.lambda + t.d_s2 * du_var);
            gv += w * (t.d_mu * c * node.nu - t.d_s2 * 2.0 * c * c * m_v);
            gvar += w * t.grad_variance;
        }
        LossPoint {
            excess: loss,
            grad: (gu, gv),
            grad_variance: gvar,
        }
    }

    /// Excess loss at overlap `m` along `direction`, the other overlap at `at`.
    pub fn excess_along(&self, direction: Direction, at: f64, m: f64) -> f64 {
        let (mu, mv) = direction.point(m, at);
        self.excess_loss(mu, mv)
    }

    /// Expectations over y given h ~ N(mu, s2). With F = a g(y)(alpha y - h) + a^2/2 g^2
    /// and h = mu + S zeta, dPsi/dtheta = E[K (dmu/dtheta + dS/dtheta zeta)] where
    /// K = dF/dh + alpha dF/dy = -a sigma^2 g + alpha a g' (alpha y - h) + alpha a^2 g g'.
    /// K is linear in h, so E[K | y] replaces h by E[h|y], and
    /// dPsi/dS^2 = alpha/(2 tau^2) E[E[K|y] (y - alpha mu) - a sigma^2 g'] (no g'' needed,
    /// which keeps ReLU exact).
    fn node_terms(&self, mu: f64, s2: f64, wide: bool) -> NodeTerms {
        let (al, si2) = (self.noise.alpha, self.noise.sigma * self.noise.sigma);
        let a = self.a;
        let tau2 = al * al * s2 + si2;
        let mean_y = al * mu;
        let k = al * s2 / tau2;
        // alpha y - E[h|y] = slope y + offset
        let (slope, offset) = (al - k, -(1.0 - k * al) * mu);
        let var_h = s2 * si2 / tau2;
        let mut sums = [0.0; 4];
        self.for_each_y(mean_y, tau2.sqrt(), wide, |y, w| {
            let (g, dg) = g_and_slope(self.activation, y);
            let e = slope * y + offset;
            let kk = -a * si2 * g + al * a * dg * e + al * a * a * g * dg;
            let wr = e + a * g;
            sums[0] += w * (a * g * e + 0.5 * a * a * g * g);
            sums[1] += w * kk;
            sums[2] += w * (kk * (y - mean_y) - a * si2 * dg);
            sums[3] += w * (si2 * g * g + dg * dg * (wr * wr + var_h));
        });
        NodeTerms {
            psi: sums[0],
            d_mu: sums[1],
            d_s2: al / (2.0 * tau2) * sums[2],
            grad_variance: a * a * sums[3],
        }
    }

    /// Calls f(y, weight) on the nodes of a rule for y ~ N(mean, sd^2); `wide`
    /// selects the rule sized for sd up to tau_max (else sd <= 1).
    fn for_each_y(&self, mean: f64, sd: f64, wide: bool, mut f: impl FnMut(f64, f64)) {
        if !is_kinked(self.activation) || sd == 0.0 {
            let rule = if wide {
                &self.y_rule
            } else {
                &self.y_rule_narrow
            };
            for (z, w) in rule.nodes.iter().zip(&rule.weights) {
                f(mean + sd * z, *w);
            }
            return;
        }
        // Gauss-Legendre on each side of the kink at y = 0 (z = -mean/sd).
        let kink = (-mean / sd).clamp(-Y_HALF_WIDTH, Y_HALF_WIDTH);
        let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        for (lo, hi) in [(-Y_HALF_WIDTH, kink), (kink, Y_HALF_WIDTH)] {
            let (mid, half) = (0.5 * (lo + hi), 0.5 * (hi - lo));
            if half <= 0.0 {
                continue;
            }
            for (x, w) in self.piece_rule.nodes.iter().zip(&self.piece_rule.weights) {
                let z = mid + half * x;
                f(mean + sd * z, w * half * norm * (-0.5 * z * z).exp());
            }
        }
    }

    /// Expansion coefficients c_0..c_kmax (c_0 = 0) of L(m_u, 0) - L(0, 0) in m_u.
    pub fn coefficients_u(&self, kmax: usize) -> Vec<f64> {
        self.coefficients(Direction::U, 0.0, kmax)
    }

    /// Expansion coefficients c_0..c_kmax (c_0 = 0) of L(0, m_v) - L(0, 0) in m_v.
    pub fn coefficients_v(&self, kmax: usize) -> Vec<f64> {
        self.coefficients(Direction::V, 0.0, kmax)
    }

    /// Coefficients c_k of L(p(m)) - L(p(0)) = sum_k c_k m^k, p(m) the point at
    /// overlap m along `direction` with the other overlap at `at` (e.g. the v-term
    /// once u is learned: `coefficients(Direction::V, 0.6, 4)`).
    ///
    /// Fitted from the even and odd parts on m = j h (j = 1..5, h = 0.05) by
    /// solving the Vandermonde systems in (m/h)^2: the quadrature is deterministic
    /// and smooth in m, so this is a finite-difference scheme of order 10.
    /// Accurate for k up to about 6; kmax is at most 10.
    pub fn coefficients(&self, direction: Direction, at: f64, kmax: usize) -> Vec<f64> {
        assert!(
            kmax <= 2 * FIT_POINTS,
            "kmax = {kmax} exceeds the fit's order {}",
            2 * FIT_POINTS
        );
        let f0 = self.excess_along(direction, at, 0.0);
        let (mut even, mut odd) = (Vec::new(), Vec::new());
        for j in 1..=FIT_POINTS {
            let m = j as f64 * FIT_STEP;
            let plus = self.excess_along(direction, at, m) - f0;
            let minus = self.excess_along(direction, at, -m) - f0;
            even.push(0.5 * (plus + minus));
            odd.push(0.5 * (plus - minus));
        }
        // even(m_j) = sum_i c_{2i} m_j^{2i}, odd(m_j) = sum_i c_{2i-1} m_j^{2i-1}, i = 1..P.
        let fit = |values: &[f64], power: fn(usize) -> i32| {
            let matrix: Vec<Vec<f64>> = (1..=FIT_POINTS)
                .map(|j| {
                    (1..=FIT_POINTS)
                        .map(|i| (j as f64).powi(power(i)))
                        .collect()
                })
                .collect();
            solve_linear(matrix, values.to_vec())
        };
        let ce = fit(&even, |i| 2 * i as i32);
        let co = fit(&odd, |i| 2 * i as i32 - 1);
        let mut c = vec![0.0; kmax + 1];
        for (k, ck) in c.iter_mut().enumerate().skip(1) {
            let scaled = if k % 2 == 0 {
                ce[k / 2 - 1]
            } else {
                co[k.div_ceil(2) - 1]
            };
            *ck = scaled / FIT_STEP.powi(k as i32);
        }
        c
    }

    /// The diffusion information exponent along `direction` (other overlap at
    /// `at`): the smallest k <= 6 whose c_k is nonzero, i.e. above both 1e-4 of
    /// the largest |c_j| and the rounding noise of the fit. None when the loss
    /// does not depend on the direction (e.g. v for ReLU or linear g).
    pub fn information_exponent(&self, direction: Direction, at: f64) -> Option<usize> {
        let c = self.coefficients(direction, at, EXPONENT_KMAX);
        let scale = c.iter().fold(0.0f64, |s, x| s.max(x.abs()));
        (1..=EXPONENT_KMAX).find(|&k| {
            let noise = LOSS_NOISE / FIT_STEP.powi(k as i32);
            c[k].abs() > EXPONENT_RTOL * scale && c[k].abs() > noise
        })
    }

    /// The exponent as the figures measure it: the least-squares slope of
    /// log |L(p(m)) - L(p(0))| against log m for m log-spaced in [0.01, 0.05]
    /// (positive m). None when the difference is at rounding level.
    pub fn measured_exponent(&self, direction: Direction, at: f64) -> Option<f64> {
        let f0 = self.excess_along(direction, at, 0.0);
        let n = 9;
        let mut pts = Vec::with_capacity(n);
        for i in 0..n {
            let m = 0.01 * 5f64.powf(i as f64 / (n - 1) as f64);
            let diff = (self.excess_along(direction, at, m) - f0).abs();
            if diff <= 1e3 * f64::EPSILON * f0.abs().max(1e-3) {
                return None;
            }
            pts.push((m.ln(), diff.ln()));
        }
        Some(least_squares_slope(&pts))
    }

    /// The excess loss on the grid m_i = -1 + 2 i/(n_grid - 1) (both axes),
    /// restricted to the disc m_u^2 + m_v^2 <= 1 (row-major in m_u, then m_v).
    pub fn landscape(&self, n_grid: usize) -> Vec<LandscapePoint> {
        assert!(
            n_grid >= 2,
            "the landscape grid needs at least 2 points per axis"
        );
        let grid: Vec<f64> = (0..n_grid)
            .map(|i| -1.0 + 2.0 * i as f64 / (n_grid - 1) as f64)
            .collect();
        let points: Vec<(f64, f64)> = grid
            .iter()
            .flat_map(|&mu| grid.iter().map(move |&mv| (mu, mv)))
            .filter(|(mu, mv)| mu * mu + mv * mv <= 1.0 + 1e-12)
            .collect();
        points
            .par_iter()
            .map(|&(m_u, m_v)| LandscapePoint {
                m_u,
                m_v,
                excess: self.excess_loss(m_u, m_v),
            })
            .collect()
    }

    /// The minimiser of L on the disc m_u^2 + m_v^2 <= 1: best point of a
    /// 41 x 41 grid, refined by a compass search in polar coordinates (radius
    /// clamped to [0, 1]). Half its overlaps are the weak-recovery thresholds.
    pub fn optimum(&self) -> Optimum {
        let start = self
            .landscape(41)
            .into_iter()
            .min_by(|p, q| p.excess.total_cmp(&q.excess))
            .expect("the grid is never empty");
        let f = |r: f64, th: f64| self.excess_loss(r * th.cos(), r * th.sin());
        let (mut r, mut th) = (start.m_u.hypot(start.m_v), start.m_v.atan2(start.m_u));
        let mut best = f(r, th);
        let mut step = 0.05;
        while step > 1e-9 {
            let mut moved = false;
            for (dr, dt) in [(step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)] {
                let (r2, th2) = ((r + dr).clamp(0.0, 1.0), th + dt);
                let v = f(r2, th2);
                if v < best {
                    (r, th, best, moved) = (r2, th2, v, true);
                    break;
                }
            }
            if !moved {
                step *= 0.5;
            }
        }
        self.canonical(Optimum {
            m_u: r * th.cos(),
            m_v: r * th.sin(),
            excess: best,
        })
    }

    /// The minimiser of L along one axis (the other overlap 0), m in [-1, 1]:
    /// grid of 201 points, then golden-section refinement. For beta_u = 0 only
    /// the v-axis matters.
    pub fn axis_optimum(&self, direction: Direction) -> Optimum {
        let f = |m: f64| self.excess_along(direction, 0.0, m);
        let n = 201;
        let grid: Vec<f64> = (0..n)
            .map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64)
            .collect();
        let i_best = (0..n)
            .min_by(|&i, &j| f(grid[i]).total_cmp(&f(grid[j])))
            .expect("nonempty grid");
        let (lo, hi) = (
            grid[i_best.saturating_sub(1)],
            grid[(i_best + 1).min(n - 1)],
        );
        let m = golden_section(&f, lo, hi, 1e-10);
        let (m_u, m_v) = direction.point(m, 0.0);
        self.canonical(Optimum {
            m_u,
            m_v,
            excess: f(m),
        })
    }

    /// For odd g, the representative of {w, -w} with m_u >= 0 (m_v >= 0 if m_u
    /// is 0 up to rounding, and then m_u is set to 0).
    fn canonical(&self, o: Optimum) -> Optimum {
        let m_u = if o.m_u.abs() < 1e-12 { 0.0 } else { o.m_u };
        let flip = self.activation.is_odd() && (m_u < 0.0 || (m_u == 0.0 && o.m_v < 0.0));
        if flip {
            Optimum {
                m_u: -m_u,
                m_v: -o.m_v,
                ..o
            }
        } else {
            Optimum { m_u, ..o }
        }
    }
}

/// The quadrature order that resolves the rule over y to rounding level: it
/// grows with the largest standard deviation of y, tau_max^2 = alpha^2 (1 + beta_u) + sigma^2
/// (at m_u = 1, lambda integrated), because tanh's poles sit at a fixed
/// distance in y.
pub fn recommended_order(params: &McmParams, noise: NoiseLevel) -> usize {
    ((NODES_PER_SD * tau_max(params, noise)).ceil() as usize).max(MIN_ORDER)
}

/// Largest standard deviation of y over the disc (>= 1).
fn tau_max(params: &McmParams, noise: NoiseLevel) -> f64 {
    (noise.alpha.powi(2) * (1.0 + params.beta_u.max(0.0)) + noise.sigma.powi(2)).sqrt()
}

/// g and g' with one evaluation of tanh.
#[inline]
fn g_and_slope(act: Activation, y: f64) -> (f64, f64) {
    match act {
        Activation::Tanh2 => {
            let t = (2.0 * y).tanh();
            (t, 2.0 * (1.0 - t * t))
        }
        Activation::Tanh => {
            let t = y.tanh();
            (t, 1.0 - t * t)
        }
        _ => (act.value(y), act.derivative(y)),
    }
}

/// Activations with a kink at y = 0, integrated piecewise.
fn is_kinked(act: Activation) -> bool {
    matches!(act, Activation::Relu)
}

/// Nodes of the rule over the latents (see the module docs), `n` the order of
/// each one-dimensional rule.
pub(crate) fn latent_nodes(p: &McmParams, n: usize) -> Vec<LatentNode> {
    let nu = nu_rule(p.nu, n);
    let mut nodes: Vec<LatentNode> = nu
        .nodes
        .iter()
        .zip(&nu.weights)
        .map(|(&nu, &weight)| LatentNode {
            lambda: 0.0,
            nu,
            weight,
            lambda_in_variance: true,
        })
        .collect();
    let rho = p.coupling.rho();
    if rho != 0.0 {
        let lam = half_normal_odd_rule(n);
        let abs_nu = abs_nu_rule(p.nu, n);
        for (&x, &wx) in lam.nodes.iter().zip(&lam.weights) {
            for (&b, &wb) in abs_nu.nodes.iter().zip(&abs_nu.weights) {
                let base = 0.25 * rho * wx * wb;
                for (sl, sn) in [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)] {
                    nodes.push(LatentNode {
                        lambda: sl * x,
                        nu: sn * b,
                        weight: sl * sn * base,
                        lambda_in_variance: false,
                    });
                }
            }
        }
    }
    nodes
}

/// A rule for the (symmetric) law of nu.
fn nu_rule(law: NuLaw, n: usize) -> quad::Rule {
    match law {
        NuLaw::Rademacher => quad::Rule {
            nodes: vec![-1.0, 1.0],
            weights: vec![0.5, 0.5],
        },
        NuLaw::Uniform => scaled(quad::gauss_legendre(n), 3f64.sqrt()),
        NuLaw::Laplace => {
            let r = scaled(quad::gauss_laguerre(n), std::f64::consts::FRAC_1_SQRT_2);
            let nodes = r
                .nodes
                .iter()
                .map(|x| -x)
                .chain(r.nodes.iter().copied())
                .collect();
            let weights = r
                .weights
                .iter()
                .chain(&r.weights)
                .map(|w| 0.5 * w)
                .collect();
            quad::Rule { nodes, weights }
        }
        NuLaw::Gaussian => quad::gauss_hermite(n),
    }
}

/// A rule for |nu0|, exact on odd polynomials (the coupling correction is odd in |nu0|).
fn abs_nu_rule(law: NuLaw, n: usize) -> quad::Rule {
    match law {
        NuLaw::Rademacher => quad::Rule {
            nodes: vec![1.0],
            weights: vec![1.0],
        },
        NuLaw::Uniform => {
            let r = quad::gauss_legendre(n);
            let h = 0.5 * 3f64.sqrt();
            quad::Rule {
                nodes: r.nodes.iter().map(|x| h * (x + 1.0)).collect(),
                weights: r.weights,
            }
        }
        NuLaw::Laplace => scaled(quad::gauss_laguerre(n), std::f64::consts::FRAC_1_SQRT_2),
        NuLaw::Gaussian => half_normal_odd_rule(n),
    }
}

/// A rule for |X|, X ~ N(0, 1), exact on odd polynomials of |X|:
/// E[f(|X|)] = sqrt(2/pi) int_0^inf e^(-r) f(x)/x dr, x = sqrt(2 r) (Gauss-Laguerre).
fn half_normal_odd_rule(n: usize) -> quad::Rule {
    let r = quad::gauss_laguerre(n);
    let nodes: Vec<f64> = r.nodes.iter().map(|r| (2.0 * r).sqrt()).collect();
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let weights = r
        .weights
        .iter()
        .zip(&nodes)
        .map(|(w, x)| c * w / x)
        .collect();
    quad::Rule { nodes, weights }
}

fn scaled(r: quad::Rule, s: f64) -> quad::Rule {
    quad::Rule {
        nodes: r.nodes.iter().map(|x| s * x).collect(),
        weights: r.weights,
    }
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve_linear(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("nonempty");
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot[col];
            for (x, p) in a[row][col..].iter_mut().zip(&pivot[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// Slope of the least-squares line through `pts`.
fn least_squares_slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    sxy / sxx
}

/// Minimises a unimodal `f` on [lo, hi] to within `tol`.
fn golden_section(f: &impl Fn(f64) -> f64, mut lo: f64, mut hi: f64, tol: f64) -> f64 {
    let r = 0.5 * (5f64.sqrt() - 1.0);
    let (mut x1, mut x2) = (hi - r * (hi - lo), lo + r * (hi - lo));
    let (mut f1, mut f2) = (f(x1), f(x2));
    while hi - lo > tol {
        if f1 <= f2 {
            (hi, x2, f2) = (x2, x1, f1);
            x1 = hi - r * (hi - lo);
            f1 = f(x1);
        } else {
            (lo, x1, f1) = (x1, x2, f2);
            x2 = lo + r * (hi - lo);
            f2 = f(x2);
        }
    }
    let m = 0.5 * (lo + hi);
    // The ends of the bracket can beat its interior when the minimum is at +-1.
    [lo, m, hi]
        .into_iter()
        .min_by(|a, b| f(*a).total_cmp(&f(*b)))
        .expect("nonempty")
}

pub mod quad {
    //! Gauss rules for the probability laws that appear in the population loss,
    //! computed by Golub-Welsch (eigen-decomposition of the Jacobi matrix), and
    //! the trapezoid rule for the normal law used over y.

    /// A quadrature rule: E[f(X)] ~ sum_i weights[i] f(nodes[i]).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Rule {
        pub nodes: Vec<f64>,
        pub weights: Vec<f64>,
    }

    impl Rule {
        /// Applies the rule to `f`.
        pub fn integrate(&self, mut f: impl FnMut(f64) -> f64) -> f64 {
            self.nodes
                .iter()
                .zip(&self.weights)
                .map(|(&x, &w)| w * f(x))
                .sum()
        }
    }

    /// The Gauss rule of the measure whose monic orthogonal polynomials have
    /// recurrence diagonal `diag` and off-diagonal `off` (off[i] couples i and
    /// i+1) and total mass `mu0` (Golub & Welsch 1969).
    pub fn gauss_from_jacobi(diag: &[f64], off: &[f64], mu0: f64) -> Rule {
        let n = diag.len();
        assert!(
            n >= 1 && off.len() + 1 >= n,
            "Jacobi matrix sizes do not match"
        );
        let mut d = diag.to_vec();
        let mut e: Vec<f64> = off.iter().take(n.saturating_sub(1)).copied().collect();
        e.push(0.0);
        let mut z = vec![0.0; n];
        z[0] = 1.0;
        tridiagonal_ql(&mut d, &mut e, &mut z);
        let mut pairs: Vec<(f64, f64)> = d
            .into_iter()
            .zip(z)
            .map(|(x, v)| (x, mu0 * v * v))
            .collect();
        pairs.sort_by(|p, q| p.0.total_cmp(&q.0));
        Rule {
            nodes: pairs.iter().map(|p| p.0).collect(),
            weights: pairs.iter().map(|p| p.1).collect(),
        }
    }

    /// Implicit-shift QL on a symmetric tridiagonal matrix (diagonal `d`,
    /// off-diagonal `e`, e[i] coupling i and i+1). On return `d` holds the
    /// eigenvalues and `z` the first components of the eigenvectors (only that
    /// row is tracked: it is all the weights need).
    fn tridiagonal_ql(d: &mut [f64], e: &mut [f64], z: &mut [f64]) {
        let n = d.len();
        for l in 0..n {
            let mut iter = 0;
            loop {
                let mut m = l;
                while m + 1 < n {
                    let dd = d[m].abs() + d[m + 1].abs();
                    if e[m].abs() <= f64::EPSILON * dd {
                        break;
                    }
                    m += 1;
                }
                if m == l {
                    break;
                }
                iter += 1;
                assert!(iter < 100, "QL iteration did not converge");
                let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
                let mut r = g.hypot(1.0);
                g = d[m] - d[l] + e[l] / (g + r.copysign(g));
                let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
                let mut deflated = false;
                for i in (l..m).rev() {
                    let f = s * e[i];
                    let b = c * e[i];
                    r = f.hypot(g);
                    e[i + 1] = r;
                    if r == 0.0 {
                        d[i + 1] -= p;
                        e[m] = 0.0;
                        deflated = true;
                        break;
                    }
                    s = f / r;
                    c = g / r;
                    g = d[i + 1] - p;
                    r = (d[i] - g) * s + 2.0 * c * b;
                    p = s * r;
                    d[i + 1] = g + p;
                    g = c * r - b;
                    let zf = z[i + 1];
                    z[i + 1] = s * z[i] + c * zf;
                    z[i] = c * z[i] - s * zf;
                }
                if deflated {
                    continue;
                }
                d[l] -= p;
                e[l] = g;
                e[m] = 0.0;
            }
        }
    }

    /// Gauss-Hermite rule for the standard normal law N(0, 1).
    pub fn gauss_hermite(n: usize) -> Rule {
        let off: Vec<f64> = (1..n).map(|k| (k as f64).sqrt()).collect();
        symmetrized(gauss_from_jacobi(&vec![0.0; n], &off, 1.0))
    }

    /// Makes a rule of a symmetric law exactly symmetric (odd moments exactly 0).
    fn symmetrized(r: Rule) -> Rule {
        let n = r.nodes.len();
        let nodes = (0..n)
            .map(|i| 0.5 * (r.nodes[i] - r.nodes[n - 1 - i]))
            .collect();
        let weights = (0..n)
            .map(|i| 0.5 * (r.weights[i] + r.weights[n - 1 - i]))
            .collect();
        Rule { nodes, weights }
    }

    /// Gauss-Legendre rule for the uniform law on [-1, 1].
    pub fn gauss_legendre(n: usize) -> Rule {
        let off: Vec<f64> = (1..n)
            .map(|k| {
                let k = k as f64;
                k / (4.0 * k * k - 1.0).sqrt()
            })
            .collect();
        symmetrized(gauss_from_jacobi(&vec![0.0; n], &off, 1.0))
    }

    /// Gauss-Laguerre rule for the exponential law Exp(1) on [0, inf).
    pub fn gauss_laguerre(n: usize) -> Rule {
        let diag: Vec<f64> = (0..n).map(|k| 2.0 * k as f64 + 1.0).collect();
        let off: Vec<f64> = (1..n).map(|k| k as f64).collect();
        gauss_from_jacobi(&diag, &off, 1.0)
    }

    /// Gauss-Legendre rule for the Lebesgue measure on [lo, hi].
    pub fn legendre_on(n: usize, lo: f64, hi: f64) -> Rule {
        let base = gauss_legendre(n);
        let (mid, half) = (0.5 * (lo + hi), 0.5 * (hi - lo));
        Rule {
            nodes: base.nodes.iter().map(|x| mid + half * x).collect(),
            weights: base.weights.iter().map(|w| 2.0 * half * w).collect(),
        }
    }

    /// Trapezoid rule for N(0, 1) on [-zmax, zmax] with n nodes: for integrands
    /// analytic only in a strip (tanh), it converges much faster than
    /// Gauss-Hermite of the same size, whose outer nodes sit where the Gaussian
    /// weight is negligible.
    pub fn normal_trapezoid(n: usize, zmax: f64) -> Rule {
        assert!(n >= 3, "need at least 3 nodes");
        let h = 2.0 * zmax / (n - 1) as f64;
        let c = h / (2.0 * std::f64::consts::PI).sqrt();
        let nodes: Vec<f64> = (0..n).map(|i| -zmax + h * i as f64).collect();
        let weights = nodes.iter().map(|z| c * (-0.5 * z * z).exp()).collect();
        Rule { nodes, weights }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn double_factorial_odd(k: usize) -> f64 {
            (1..=k).map(|j| (2 * j - 1) as f64).product()
        }

        #[test]
        fn hermite_integrates_polynomials_exactly() {
            for n in [5usize, 20, 80, 200] {
                let r = gauss_hermite(n);
                let kmax = (2 * n - 1).min(40);
                for p in 0..=kmax {
                    let got = r.integrate(|x| x.powi(p as i32));
                    let want = if p % 2 == 1 {
                        0.0
                    } else {
                        double_factorial_odd(p / 2)
                    };
                    let tol = 1e-12 * double_factorial_odd(p.div_ceil(2));
                    assert!((got - want).abs() <= tol, "n={n} p={p}: {got} vs {want}");
                }
            }
        }

        #[test]
        fn legendre_and_laguerre_integrate_polynomials_exactly() {
            for n in [3usize, 30, 200] {
                let le = gauss_legendre(n);
                let la = gauss_laguerre(n);
                for p in 0..=(2 * n - 1).min(30) {
                    let got = le.integrate(|x| x.powi(p as i32));
                    let want = if p % 2 == 1 {
                        0.0
                    } else {
                        1.0 / (p as f64 + 1.0)
                    };
                    assert!(
                        (got - want).abs() < 1e-13,
                        "legendre n={n} p={p}: {got} vs {want}"
                    );
                    let got = la.integrate(|x| x.powi(p as i32));
                    let want: f64 = (1..=p).map(|j| j as f64).product();
                    assert!(
                        (got - want).abs() <= 1e-12 * want,
                        "laguerre n={n} p={p}: {got} vs {want}"
                    );
                }
            }
        }

        #[test]
        fn trapezoid_resolves_tanh_where_gauss_hermite_does_not() {
            // tanh(2y) has poles at Im y = pi/4: Gauss-Hermite converges slowly
            // (error ~ 3e-6 at 200 nodes for tau = 1.7), the trapezoid fast.
            let f = |y: f64| (2.0 * y).tanh() * y + 0.5 * (2.0 * y).tanh().powi(2);
            for &(m, tau) in &[(0.3, 1.0f64), (0.3, 1.7), (1.0, 3.0)] {
                let reference = normal_trapezoid(4001, 12.0).integrate(|z| f(m + tau * z));
                let n = (150.0 * tau).ceil() as usize;
                let err = normal_trapezoid(n, 10.0).integrate(|z| f(m + tau * z)) - reference;
                assert!(err.abs() < 1e-13, "m={m} tau={tau} n={n}: error {err:e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Coupling, Mcm, dot, rng_for};
    use rand_distr::{Distribution, StandardNormal};

    fn params(d: usize, nu: NuLaw, coupling: Coupling) -> McmParams {
        McmParams {
            d,
            beta_u: 2.0,
            beta_v: 5.0,
            nu,
            coupling,
        }
    }

    fn defaults(t: f64) -> PopulationLoss {
        PopulationLoss::new(
            params(50, NuLaw::Rademacher, Coupling::None),
            NoiseLevel::at(t),
            Activation::Tanh2,
            1.0,
        )
    }

    /// A unit vector orthogonal to all of `basis` (orthonormal), from `seed`.
    fn orthogonal_unit(basis: &[&[f64]], d: usize, seed: u64) -> Vec<f64> {
        let mut rng = rng_for(seed, 7);
        let mut e: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        for b in basis {
            let p = dot(&e, b);
            e.iter_mut()
                .zip(b.iter())
                .for_each(|(ei, bi)| *ei -= p * bi);
        }
        let n = dot(&e, &e).sqrt();
        e.iter_mut().for_each(|x| *x /= n);
        e
    }

    /// Running mean and standard error.
    #[derive(Default)]
    struct Mean {
        n: f64,
        sum: f64,
        sum2: f64,
    }

    impl Mean {
        fn push(&mut self, x: f64) {
            self.n += 1.0;
            self.sum += x;
            self.sum2 += x * x;
        }
        fn mean(&self) -> f64 {
            self.sum / self.n
        }
        fn se(&self) -> f64 {
            ((self.sum2 / self.n - self.mean().powi(2)) / (self.n - 1.0)).sqrt()
        }
    }

    /// Monte Carlo with the real sampler of (excess loss, total loss, G).
    fn monte_carlo(
        pl: &PopulationLoss,
        m_u: f64,
        m_v: f64,
        samples: usize,
        seed: u64,
    ) -> [Mean; 3] {
        let d = pl.params.d;
        let mcm = Mcm::new(pl.params, seed);
        let e = orthogonal_unit(&[&mcm.u, &mcm.v], d, seed);
        let rest = (1.0 - m_u * m_u - m_v * m_v).sqrt();
        let w: Vec<f64> = (0..d)
            .map(|i| m_u * mcm.u[i] + m_v * mcm.v[i] + rest * e[i])
            .collect();
        let bulk = orthogonal_unit(&[&mcm.u, &mcm.v, &e], d, seed + 1);
        let (al, si, a) = (pl.noise.alpha, pl.noise.sigma, pl.a);
        let mut rng = rng_for(seed, 0);
        let (mut x, mut xt) = (vec![0.0; d], vec![0.0; d]);
        let mut out = [Mean::default(), Mean::default(), Mean::default()];
        for _ in 0..samples {
            mcm.sample_into(&mut rng, &mut x);
            for (xti, xi) in xt.iter_mut().zip(&x) {
                let xi_noise: f64 = StandardNormal.sample(&mut rng);
                *xti = al * xi + si * xi_noise;
            }
            let (h, y) = (dot(&w, &x), dot(&w, &xt));
            let (g, dg) = g_and_slope(pl.activation, y);
            out[0].push(a * g * (al * y - h) + 0.5 * a * a * g * g);
            let total: f64 = (0..d)
                .map(|i| (al * xt[i] + a * g * w[i] - x[i]).powi(2))
                .sum();
            out[1].push(0.5 * total);
            let (bx, bxt) = (dot(&bulk, &x), dot(&bulk, &xt));
            let grad_bulk = a * (dg * (al * y - h + a * g) * bxt + g * (al * bxt - bx));
            out[2].push(grad_bulk * grad_bulk);
        }
        out
    }

    fn check_against_monte_carlo(pl: &PopulationLoss, m_u: f64, m_v: f64, seed: u64) {
        let [excess, total, gvar] = monte_carlo(pl, m_u, m_v, 200_000, seed);
        let pt = pl.point(m_u, m_v);
        let cases = [
            ("excess", pt.excess, &excess),
            ("total", pl.total_loss(m_u, m_v), &total),
            ("G", pt.grad_variance, &gvar),
        ];
        for (name, quad, mc) in cases {
            let z = (quad - mc.mean()) / mc.se();
            assert!(
                z.abs() < 4.0,
                "{name} at ({m_u}, {m_v}), {:?}: quadrature {quad} vs MC {} +- {} (z = {z:.2})",
                pl.params,
                mc.mean(),
                mc.se()
            );
        }
    }

    #[test]
    fn quadrature_matches_monte_carlo_with_the_real_sampler() {
        check_against_monte_carlo(&defaults(0.3), 0.5, 0.6, 1);
        let coupled = params(50, NuLaw::Rademacher, Coupling::Linear { rho: 0.8 });
        let pl = PopulationLoss::new(coupled, NoiseLevel::at(0.3), Activation::Tanh2, 1.0);
        check_against_monte_carlo(&pl, 0.6, 0.5, 2);
        check_against_monte_carlo(&pl, -0.3, 0.8, 3);
    }

    #[test]
    fn quadrature_matches_monte_carlo_for_other_laws_and_activations() {
        let cases = [
            (
                NuLaw::Uniform,
                Coupling::Linear { rho: 0.5 },
                Activation::Tanh,
                0.4,
                0.7,
            ),
            (
                NuLaw::Laplace,
                Coupling::Linear { rho: 0.8 },
                Activation::Tanh2,
                0.6,
                -0.5,
            ),
            (
                NuLaw::Gaussian,
                Coupling::Linear { rho: 0.8 },
                Activation::Tanh2,
                0.6,
                0.5,
            ),
            (
                NuLaw::Rademacher,
                Coupling::None,
                Activation::Relu,
                0.5,
                0.5,
            ),
            (NuLaw::Laplace, Coupling::None, Activation::Linear, 0.2, 0.9),
        ];
        for (i, (nu, coupling, act, m_u, m_v)) in cases.into_iter().enumerate() {
            let pl = PopulationLoss::with_order(
                params(50, nu, coupling),
                NoiseLevel::at(0.5),
                act,
                0.8,
                120,
            );
            check_against_monte_carlo(&pl, m_u, m_v, 10 + i as u64);
        }
    }

    #[test]
    fn analytic_gradient_matches_central_differences() {
        let cases = [
            (NuLaw::Rademacher, Coupling::None, Activation::Tanh2),
            (
                NuLaw::Rademacher,
                Coupling::Linear { rho: 0.8 },
                Activation::Tanh2,
            ),
            (
                NuLaw::Uniform,
                Coupling::Linear { rho: 0.3 },
                Activation::Tanh,
            ),
            (NuLaw::Laplace, Coupling::None, Activation::Relu),
        ];
        for (nu, coupling, act) in cases {
            let pl = PopulationLoss::with_order(
                params(50, nu, coupling),
                NoiseLevel::at(0.3),
                act,
                1.0,
                120,
            );
            for (m_u, m_v) in [(0.3, 0.4), (-0.5, 0.2), (0.0, 0.7)] {
                let (gu, gv) = pl.gradient(m_u, m_v);
                let h = 1e-5;
                let fu = (pl.excess_loss(m_u + h, m_v) - pl.excess_loss(m_u - h, m_v)) / (2.0 * h);
                let fv = (pl.excess_loss(m_u, m_v + h) - pl.excess_loss(m_u, m_v - h)) / (2.0 * h);
                assert!(
                    (gu - fu).abs() < 1e-8 && (gv - fv).abs() < 1e-8,
                    "{nu:?} {coupling:?} {act:?} at ({m_u},{m_v}): ({gu},{gv}) vs ({fu},{fv})"
                );
            }
        }
    }

    #[test]
    fn converges_in_the_quadrature_order() {
        for coupling in [Coupling::None, Coupling::Linear { rho: 0.8 }] {
            for nu in [NuLaw::Rademacher, NuLaw::Laplace] {
                let at = |order| {
                    let pl = PopulationLoss::with_order(
                        params(50, nu, coupling),
                        NoiseLevel::at(0.3),
                        Activation::Tanh2,
                        1.0,
                        order,
                    );
                    let p = pl.point(0.6, 0.5);
                    [p.excess, p.grad.0, p.grad.1, p.grad_variance]
                };
                let rec = recommended_order(&params(50, nu, coupling), NoiseLevel::at(0.3));
                let orders = [rec / 4, rec / 2, rec, 2 * rec];
                let values: Vec<[f64; 4]> = orders.into_iter().map(at).collect();
                let diff = |i: usize| {
                    (0..4)
                        .map(|k| (values[i][k] - values[3][k]).abs())
                        .fold(0.0, f64::max)
                };
                eprintln!(
                    "{coupling:?} {nu:?}: |L(order) - L({})| for {:?}: {:.1e} {:.1e} {:.1e}",
                    2 * rec,
                    &orders[..3],
                    diff(0),
                    diff(1),
                    diff(2)
                );
                assert!(diff(0) > diff(1) && diff(1) > diff(2), "no convergence");
                assert!(
                    diff(2) < 1e-11,
                    "recommended order vs twice it: {}",
                    diff(2)
                );
            }
        }
    }

    /// c_k from the Hermite series of F(h) = E_xi[excess | h] (independent
    /// latents): c_k^v = c^k E[He_k(nu)] F_k / k!, c_2j^u = (beta_u/2)^j F_2j / j!,
    /// F_k = E[F(Z) He_k(Z)], Z ~ N(0, 1).
    fn series_coefficients(pl: &PopulationLoss, kmax: usize) -> (Vec<f64>, Vec<f64>) {
        let (al, si, a) = (pl.noise.alpha, pl.noise.sigma, pl.a);
        let xi = quad::normal_trapezoid(801, 12.0);
        let f = |h: f64| {
            xi.integrate(|z| {
                let y = al * h + si * z;
                let g = pl.activation.value(y);
                a * g * (al * y - h) + 0.5 * a * a * g * g
            })
        };
        let hermite = |k: usize, x: f64| {
            let (mut p0, mut p1) = (1.0, x);
            if k == 0 {
                return p0;
            }
            for j in 1..k {
                (p0, p1) = (p1, x * p1 - j as f64 * p0);
            }
            p1
        };
        let zr = quad::normal_trapezoid(801, 14.0);
        let values: Vec<f64> = zr.nodes.iter().map(|&z| f(z)).collect();
        let fk = |k: usize| {
            zr.nodes
                .iter()
                .zip(&zr.weights)
                .zip(&values)
                .map(|((&z, w), v)| w * v * hermite(k, z))
                .sum::<f64>()
        };
        let fact = |k: usize| (1..=k).map(|j| j as f64).product::<f64>();
        let c = pl.params.c_v();
        let he_nu = |k: usize| 0.5 * (hermite(k, 1.0) + hermite(k, -1.0)); // Rademacher
        let cv = (0..=kmax)
            .map(|k| {
                if k == 0 {
                    0.0
                } else {
                    c.powi(k as i32) * he_nu(k) * fk(k) / fact(k)
                }
            })
            .collect();
        let bu = pl.params.beta_u;
        let cu = (0..=kmax)
            .map(|k| {
                if k == 0 || k % 2 == 1 {
                    0.0
                } else {
                    (bu / 2.0).powi(k as i32 / 2) * fk(k) / fact(k / 2)
                }
            })
            .collect();
        (cu, cv)
    }

    #[test]
    fn fitted_coefficients_match_the_hermite_series() {
        for t in [0.05, 0.3, 1.0] {
            let pl = defaults(t);
            let (su, sv) = series_coefficients(&pl, 6);
            let (fu, fv) = (pl.coefficients_u(6), pl.coefficients_v(6));
            for k in 1..=6 {
                // The fit truncates at order 10 and amplifies rounding by h^-k.
                let tol = |x: f64| {
                    if k <= 4 {
                        1e-9 + 1e-5 * x.abs()
                    } else {
                        1e-6 + 1e-3 * x.abs()
                    }
                };
                let (tol_u, tol_v) = (tol(su[k]), tol(sv[k]));
                assert!(
                    (su[k] - fu[k]).abs() < tol_u,
                    "t={t} c_{k}^u: series {} fit {}",
                    su[k],
                    fu[k]
                );
                assert!(
                    (sv[k] - fv[k]).abs() < tol_v,
                    "t={t} c_{k}^v: series {} fit {}",
                    sv[k],
                    fv[k]
                );
            }
        }
    }

    #[test]
    fn reference_values_of_the_spec() {
        let pl = defaults(0.3);
        let (cu, cv) = (pl.coefficients_u(6), pl.coefficients_v(6));
        eprintln!("t=0.3: c^u = {cu:?}\n       c^v = {cv:?}");
        for t in [0.05, 0.1, 0.2, 0.3, 0.5, 1.0] {
            let pl = defaults(t);
            eprintln!(
                "t={t}: c_2^u = {:.5}, c_4^v = {:.5}, exponents u {:?} v {:?}, measured u {:?} v {:?}",
                pl.coefficients_u(2)[2],
                pl.coefficients_v(4)[4],
                pl.information_exponent(Direction::U, 0.0),
                pl.information_exponent(Direction::V, 0.0),
                pl.measured_exponent(Direction::U, 0.0),
                pl.measured_exponent(Direction::V, 0.0)
            );
        }
        // The SPEC's c_2^u ~ -0.40 is reproduced; its c_4^v ~ -0.045 is not: the
        // quadrature, the Hermite series (test above) and Monte Carlo agree on
        // c_4^v = -0.01926 (pinned here as a regression value).
        assert!((cu[2] + 0.40341).abs() < 1e-4, "c_2^u = {}", cu[2]);
        assert!((cv[4] + 0.019260).abs() < 1e-5, "c_4^v = {}", cv[4]);
        assert!(cu[1].abs() < 1e-10 && cu[3].abs() < 1e-8);
        assert!((cv[1].abs() + cv[2].abs() + cv[3].abs()) < 1e-7);
        assert!(defaults(0.05).coefficients_u(2)[2] > 0.0);
        for t in [0.1, 0.3, 1.0] {
            assert!(
                defaults(t).coefficients_u(2)[2] < 0.0,
                "c_2^u({t}) should be negative"
            );
        }
        assert_eq!(pl.information_exponent(Direction::U, 0.0), Some(2));
        assert_eq!(pl.information_exponent(Direction::V, 0.0), Some(4));
        let (ku, kv) = (
            pl.measured_exponent(Direction::U, 0.0).unwrap(),
            pl.measured_exponent(Direction::V, 0.0).unwrap(),
        );
        assert!(
            (ku - 2.0).abs() < 0.02 && (kv - 4.0).abs() < 0.02,
            "measured exponents {ku}, {kv}"
        );
    }

    #[test]
    fn v_is_invisible_to_relu_and_linear_activations() {
        for act in [Activation::Relu, Activation::Linear] {
            for nu in [NuLaw::Rademacher, NuLaw::Uniform, NuLaw::Laplace] {
                let pl = PopulationLoss::new(
                    params(50, nu, Coupling::None),
                    NoiseLevel::at(0.3),
                    act,
                    1.0,
                );
                let l0 = pl.excess_loss(0.0, 0.0);
                for m in [0.2, 0.5, 0.9] {
                    let diff = pl.excess_loss(0.0, m) - l0;
                    assert!(
                        diff.abs() < 1e-13,
                        "{act:?} {nu:?}: L(0,{m}) - L(0,0) = {diff}"
                    );
                }
                assert_eq!(
                    pl.information_exponent(Direction::V, 0.0),
                    None,
                    "{act:?} {nu:?}"
                );
                assert_eq!(pl.measured_exponent(Direction::V, 0.0), None);
                assert_eq!(pl.information_exponent(Direction::U, 0.0), Some(2));
            }
        }
    }

    #[test]
    fn coupling_makes_the_v_term_linear_once_u_is_learned() {
        let coupled = PopulationLoss::new(
            params(50, NuLaw::Rademacher, Coupling::Linear { rho: 0.8 }),
            NoiseLevel::at(0.3),
            Activation::Tanh2,
            1.0,
        );
        let c = coupled.coefficients(Direction::V, 0.6, 4);
        eprintln!(
            "coupled, m_u = 0.6: c^v = {c:?}, measured {:?}",
            coupled.measured_exponent(Direction::V, 0.6)
        );
        assert!(c[1] < -1e-3, "c_1 = {}", c[1]);
        assert_eq!(coupled.information_exponent(Direction::V, 0.6), Some(1));
        let k = coupled.measured_exponent(Direction::V, 0.6).unwrap();
        assert!((k - 1.0).abs() < 0.1, "measured exponent {k}");
        // Before u is learned, or without coupling, v keeps exponent 4.
        assert_eq!(coupled.information_exponent(Direction::V, 0.0), Some(4));
        assert_eq!(
            defaults(0.3).information_exponent(Direction::V, 0.6),
            Some(4)
        );
    }

    /// First-order optimality on the disc: zero gradient inside; on the unit
    /// circle, zero derivative along it and no descent outwards.
    fn assert_kkt(pl: &PopulationLoss, o: Optimum) {
        let (gu, gv) = pl.gradient(o.m_u, o.m_v);
        if o.m_u.hypot(o.m_v) < 1.0 - 1e-6 {
            assert!(
                gu.abs() < 1e-6 && gv.abs() < 1e-6,
                "gradient ({gu}, {gv}) at the interior optimum {o:?}"
            );
        } else {
            let along = -gu * o.m_v + gv * o.m_u;
            let outwards = gu * o.m_u + gv * o.m_v;
            assert!(
                along.abs() < 1e-6 && outwards <= 1e-9,
                "optimum {o:?}: dL/dtheta = {along}, dL/dr = {outwards}"
            );
        }
        let grid_best = pl
            .landscape(21)
            .iter()
            .map(|p| p.excess)
            .fold(f64::INFINITY, f64::min);
        assert!(
            o.excess <= grid_best + 1e-12,
            "{o:?} is worse than a grid point ({grid_best})"
        );
    }

    #[test]
    fn optima() {
        let t = NoiseLevel::at(0.3);
        let pl = defaults(0.3);
        let coupled = PopulationLoss::new(
            params(50, NuLaw::Rademacher, Coupling::Linear { rho: 0.8 }),
            t,
            Activation::Tanh2,
            1.0,
        );
        let no_u = McmParams {
            beta_u: 0.0,
            ..params(50, NuLaw::Rademacher, Coupling::None)
        };
        let no_u = PopulationLoss::new(no_u, t, Activation::Tanh2, 1.0);
        for model in [&pl, &coupled, &no_u] {
            let opt = model.optimum();
            let (ou, ov) = (
                model.axis_optimum(Direction::U),
                model.axis_optimum(Direction::V),
            );
            eprintln!(
                "{:?}: optimum {opt:?}\n  u axis {ou:?}\n  v axis {ov:?}",
                model.params.coupling
            );
            assert_kkt(model, opt);
            assert!(opt.excess <= ou.excess.min(ov.excess) + 1e-12);
            assert!(ou.m_v == 0.0 && ov.m_u == 0.0 && ou.m_u >= 0.0 && ov.m_v >= 0.0);
        }
        // With independent latents one neuron prefers u entirely; v needs coupling.
        let opt = pl.optimum();
        assert!(
            (opt.m_u - 1.0).abs() < 1e-6 && opt.m_v.abs() < 1e-6,
            "{opt:?}"
        );
        let copt = coupled.optimum();
        assert!(copt.m_v > 0.3 && copt.m_u > 0.8, "{copt:?}");
        assert!((no_u.axis_optimum(Direction::V).m_v - 1.0).abs() < 1e-6);
    }

    #[test]
    fn landscape_covers_the_disc() {
        let pts = defaults(0.3).landscape(11);
        assert!(
            pts.iter()
                .all(|p| p.m_u * p.m_u + p.m_v * p.m_v <= 1.0 + 1e-12)
        );
        assert!(pts.iter().any(|p| p.m_u == 1.0 && p.m_v == 0.0));
        assert_eq!(
            pts.len(),
            (0..11)
                .flat_map(|i| (0..11).map(move |j| (i, j)))
                .filter(|(i, j)| {
                    let (a, b) = (-1.0 + 0.2 * *i as f64, -1.0 + 0.2 * *j as f64);
                    a * a + b * b <= 1.0 + 1e-12
                })
                .count()
        );
    }
}
