//! Exact population losses of the K-neuron denoiser with learned readouts, on
//! the MCM and on its Gaussian surrogate N(0, C), by deterministic quadrature.
//!
//! The denoiser is D(x_t) = alpha x_t + sum_k w_k h_k with h_k = a_k g(y_k) + b_k y_k,
//! y_k = w_k . x_t and ||w_k|| = 1. With r_0 = alpha x_t - x its per-sample loss is
//!
//! ```text
//! 1/2 ||D - x||^2 = 1/2 ||r_0||^2 + sum_k h_k (alpha y_k - w_k . x) + 1/2 sum_{j,k} h_j h_k q_jk,
//! ```
//!
//! q_jk = w_j . w_k. The first term is the loss of alpha x_t (the same on the MCM
//! and its surrogate, which share the covariance); the rest, the *excess*, is a
//! quadratic form in the readouts theta = (a_1..a_K, b_1..b_K):
//! excess = l . theta + 1/2 theta^T H theta ([`ReadoutQuadratic`]), whose coefficients
//! are expectations of features f = (g(y_1)..g(y_K), y_1..y_K) against
//! e_k = alpha y_k - h_k (h_k = w_k . x) and against each other. They depend on the
//! weights only through the Gram matrix of (u, v, w_1..w_K):
//!
//! - given the latents (lambda, nu), h = (w_k . x)_k is Gaussian with mean
//!   mu_k = sqrt(beta_u) lambda m_uk + c nu m_vk (c = sqrt(beta_v / (1 + beta_v))) and
//!   covariance Sigma = Q - c^2 m_v m_v^T (the whitening S has S^2 = I - c^2 v v^T);
//!   with independent latents lambda is integrated exactly (Sigma += beta_u m_u m_u^T);
//! - y = alpha h + sigma W xi has mean alpha mu and covariance T = alpha^2 Sigma + sigma^2 Q;
//! - every term but E[g(y_j) g(y_k)], j != k, involves g of a single y_k, and
//!   E[h_j | y_k], E[y_j | y_k] are linear in y_k, so it is a one-dimensional
//!   integral (moments E[g], E[g (y - mean)], E[g^2]); the cross terms are
//!   two-dimensional (Cholesky of the 2 x 2 block of T, inner rule over the
//!   second coordinate, outer over the first);
//! - the latents are summed with the rules of [`crate::population`] (exact sum for
//!   Rademacher nu, the odd-in-lambda correction for linear coupling);
//! - on the surrogate everything is Gaussian: one node with mu = 0 and
//!   Sigma = W C W^T = Q + beta_u m_u m_u^T + gamma (m_u m_v^T + m_v m_u^T).
//!
//! Rules over y: the trapezoid rule in z = (y - mean)/sd with a step that keeps
//! its aliasing error exp(-2 pi d / h) near 1e-14 for the one-dimensional and
//! 1e-11 for the two-dimensional integrals (d the distance of tanh's poles from
//! the real axis, in units of z); for ReLU, Gauss-Legendre on each side of the
//! kink, and the inner integral of a cross term in closed form. See
//! [`crate::population`] for why a trapezoid rule beats Gauss-Hermite for tanh.
//! For odd g a latent node and its mirror (-lambda, -nu) share their
//! two-dimensional integrals. Any K works; the cost grows like K^2 / 2
//! two-dimensional rules. Measured for K = 2 at the defaults (tanh(2y)): about
//! 0.2 ms per call with independent latents, 1.6 ms with linear coupling.

use rayon::prelude::*;
use thiserror::Error;

use crate::model::{Activation, McmParams, NoiseLevel};
use crate::population::{LatentNode, latent_nodes, quad};

/// Half-width, in standard deviations, of every rule over y.
const Z_HALF_WIDTH: f64 = 9.0;

/// The trapezoid step h (in z) is 2 pi d / ALIAS_EXPONENT, d the distance of the
/// integrand's nearest pole from the real axis: aliasing error about e^-32 ~ 1e-14.
const ALIAS_EXPONENT: f64 = 32.0;

/// The same for the two-dimensional rules (aliasing error about e^-26, 1e-11
/// once the Gaussian weight's growth off the real axis is counted):
/// they dominate the cost, and the figures need far less.
const ALIAS_EXPONENT_2D: f64 = 26.0;

/// Half-width, in standard deviations, of the two-dimensional rules (the
/// Gaussian weight beyond it is below 1e-14).
const Z_HALF_WIDTH_2D: f64 = 8.0;

/// Parameters of a rule over one standard normal coordinate.
#[derive(Debug, Clone, Copy)]
struct Accuracy {
    alias_exponent: f64,
    half_width: f64,
}

const ONE_DIMENSIONAL: Accuracy = Accuracy {
    alias_exponent: ALIAS_EXPONENT,
    half_width: Z_HALF_WIDTH,
};
const TWO_DIMENSIONAL: Accuracy = Accuracy {
    alias_exponent: ALIAS_EXPONENT_2D,
    half_width: Z_HALF_WIDTH_2D,
};

/// Largest trapezoid step in z (for integrands without poles: the Gaussian
/// weight itself and polynomials, integrated to rounding by this step).
const MAX_Z_STEP: f64 = 0.25;

/// Gauss-Legendre nodes on each side of a kink (ReLU).
const KINK_ORDER: usize = 48;

/// Order of each rule over the latents: 12 converges the coupled defaults to
/// about 1e-13 (8: 1e-10).
const LATENT_ORDER: usize = 12;

/// Tolerance of the checks on the Gram matrix (unit diagonal, symmetry,
/// u orthogonal to v, positive semi-definiteness): loose enough for states
/// integrated in floating point; the matrix is then normalised to a unit
/// diagonal and symmetrised.
const GRAM_TOL: f64 = 1e-6;

/// An inner standard deviation below this fraction of the total is treated as
/// zero (the neurons are parallel): the error is of order its square.
const DEGENERATE_SD: f64 = 1e-8;

/// The reduced state of the denoiser: Gram matrix of (u, v, w_1..w_K) and readouts.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkState {
    /// (K + 2) x (K + 2), row-major, in the order (u, v, w_1..w_K): gram[0] =
    /// gram[K + 3] = 1 (unit u and v), gram[1] = 0 (u orthogonal to v), unit diagonal.
    pub gram: Vec<f64>,
    /// Amplitudes a_k of g(y_k).
    pub a: Vec<f64>,
    /// Linear gains b_k of y_k.
    pub b: Vec<f64>,
}

impl NetworkState {
    /// The state of neurons given by their coordinates in an orthonormal basis
    /// whose first two vectors are u and v (each row is normalised here).
    pub fn from_coordinates(coordinates: &[Vec<f64>], a: Vec<f64>, b: Vec<f64>) -> Self {
        let k = coordinates.len();
        let n = k + 2;
        let dim = coordinates.iter().map(Vec::len).max().unwrap_or(2).max(2);
        let mut rows: Vec<Vec<f64>> = vec![vec![0.0; dim]; n];
        rows[0][0] = 1.0;
        rows[1][1] = 1.0;
        for (row, c) in rows[2..].iter_mut().zip(coordinates) {
            let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
            for (r, x) in row.iter_mut().zip(c) {
                *r = x / norm;
            }
        }
        let mut gram = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                gram[i * n + j] = if i == j {
                    1.0
                } else {
                    rows[i].iter().zip(&rows[j]).map(|(x, y)| x * y).sum()
                };
            }
        }
        NetworkState { gram, a, b }
    }

    /// Number of neurons K.
    pub fn neurons(&self) -> usize {
        self.a.len()
    }

    /// (m_u, m_v) of neuron k.
    pub fn overlaps(&self, k: usize) -> (f64, f64) {
        let n = self.neurons() + 2;
        (self.gram[2 + k], self.gram[n + 2 + k])
    }
}

/// Total per-sample population losses 1/2 E||D(x_t) - x||^2 (the convention of
/// `simulate::isotropic_loss` and `simulate::wiener_loss`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkLosses {
    /// On the MCM.
    pub mcm: f64,
    /// On its Gaussian surrogate N(0, C).
    pub gauss: f64,
}

/// Why a state cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NetworkLossError {
    #[error(
        "the Gram matrix has {got} entries; {neurons} neurons (the length of a) need (K + 2)^2 = {want}"
    )]
    GramSize {
        got: usize,
        want: usize,
        neurons: usize,
    },
    #[error("b has {got} entries, a has {want}: one pair of readouts per neuron")]
    ReadoutSize { got: usize, want: usize },
    #[error("Gram entry ({row}, {col}) = {value}: {why}")]
    GramEntry {
        row: usize,
        col: usize,
        value: f64,
        why: &'static str,
    },
    #[error(
        "the Gram matrix is not positive semi-definite (pivot {pivot} of its Cholesky factorisation is {value})"
    )]
    NotPositive { pivot: usize, value: f64 },
}

/// The excess loss over alpha x_t as a quadratic in the readouts
/// theta = (a_1..a_K, b_1..b_K): excess(theta) = linear . theta + 1/2 theta^T hessian theta.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutQuadratic {
    pub neurons: usize,
    /// l_i = E[f_i e_dir(i)], f = (g(y_1)..g(y_K), y_1..y_K), e_k = alpha y_k - w_k . x.
    pub linear: Vec<f64>,
    /// 2K x 2K row-major: H_il = q_{dir(i) dir(l)} E[f_i f_l] (positive semi-definite).
    pub hessian: Vec<f64>,
}

impl ReadoutQuadratic {
    fn zeros(neurons: usize) -> Self {
        let n = 2 * neurons;
        ReadoutQuadratic {
            neurons,
            linear: vec![0.0; n],
            hessian: vec![0.0; n * n],
        }
    }

    fn add_scaled(&mut self, other: &ReadoutQuadratic, s: f64) {
        for (x, y) in self.linear.iter_mut().zip(&other.linear) {
            *x += s * y;
        }
        for (x, y) in self.hessian.iter_mut().zip(&other.hessian) {
            *x += s * y;
        }
    }

    fn theta(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().chain(b).copied().collect()
    }

    /// The excess loss over alpha x_t at readouts (a, b).
    pub fn excess(&self, a: &[f64], b: &[f64]) -> f64 {
        let th = Self::theta(a, b);
        let n = th.len();
        let mut e = 0.0;
        for i in 0..n {
            e += self.linear[i] * th[i];
            for l in 0..n {
                e += 0.5 * th[i] * self.hessian[i * n + l] * th[l];
            }
        }
        e
    }

    /// Gradient of the excess in theta = (a, b): l + H theta.
    pub fn gradient(&self, a: &[f64], b: &[f64]) -> Vec<f64> {
        let th = Self::theta(a, b);
        let n = th.len();
        (0..n)
            .map(|i| self.linear[i] + (0..n).map(|l| self.hessian[i * n + l] * th[l]).sum::<f64>())
            .collect()
    }

    /// The optimal readouts (a, b) and their excess: the solution of the normal
    /// equations H theta = -l. Features that are (numerically) linear
    /// combinations of others, e.g. g(y) = y next to b y, or two parallel
    /// neurons, get readout 0 (pivoted Cholesky drops them): the minimum is the same.
    pub fn minimiser(&self) -> (Vec<f64>, Vec<f64>, f64) {
        let k = self.neurons;
        let th = minimise_psd_quadratic(&self.linear, &self.hessian);
        let (a, b) = (th[..k].to_vec(), th[k..].to_vec());
        let e = self.excess(&a, &b);
        (a, b, e)
    }
}

/// Minimiser of l . x + 1/2 x^T H x for symmetric positive semi-definite H
/// (row-major): pivoted Cholesky picks the numerically independent
/// coordinates, the others stay 0.
fn minimise_psd_quadratic(l: &[f64], h: &[f64]) -> Vec<f64> {
    let n = l.len();
    let scale = (0..n).map(|i| h[i * n + i]).fold(0.0f64, f64::max);
    let mut x = vec![0.0; n];
    if scale <= 0.0 {
        return x;
    }
    // Pivoted Cholesky: residual diagonal of the Schur complement.
    let mut chosen: Vec<usize> = Vec::new();
    let mut factor: Vec<Vec<f64>> = Vec::new(); // columns of L over all n rows
    let mut resid: Vec<f64> = (0..n).map(|i| h[i * n + i]).collect();
    loop {
        let best = (0..n)
            .filter(|i| !chosen.contains(i))
            .max_by(|&i, &j| resid[i].total_cmp(&resid[j]));
        let Some(p) = best else { break };
        if resid[p] <= 1e-11 * scale {
            break;
        }
        let piv = resid[p].sqrt();
        let col: Vec<f64> = (0..n)
            .map(|i| {
                let s: f64 = factor.iter().map(|c| c[i] * c[p]).sum();
                (h[i * n + p] - s) / piv
            })
            .collect();
        for i in 0..n {
            resid[i] -= col[i] * col[i];
        }
        chosen.push(p);
        factor.push(col);
    }
    let m = chosen.len();
    // Solve (L_S L_S^T) x_S = -l_S with L_S the chosen rows of the factor (lower triangular in pivot order).
    let lrow = |r: usize, c: usize| factor[c][chosen[r]];
    let mut y = vec![0.0; m];
    for r in 0..m {
        let s: f64 = (0..r).map(|c| lrow(r, c) * y[c]).sum();
        y[r] = (-l[chosen[r]] - s) / lrow(r, r);
    }
    let mut xs = vec![0.0; m];
    for r in (0..m).rev() {
        let s: f64 = (r + 1..m).map(|c| lrow(c, r) * xs[c]).sum();
        xs[r] = (y[r] - s) / lrow(r, r);
    }
    for (r, &i) in chosen.iter().enumerate() {
        x[i] = xs[r];
    }
    x
}

/// The loss functional of one data model, noise level and activation; holds
/// the rules over the latents. Cheap to build (microseconds).
#[derive(Debug, Clone)]
pub struct NetworkLoss {
    params: McmParams,
    noise: NoiseLevel,
    activation: Activation,
    latents: Vec<LatentNode>,
    /// For odd g: mirror[i] = Some(j), j < i, when node j is node i's mirror (-lambda, -nu).
    mirror: Vec<Option<usize>>,
}

/// The pieces of one Gram matrix the expectations need.
#[derive(Debug, Clone)]
struct Overlaps {
    k: usize,
    m_u: Vec<f64>,
    m_v: Vec<f64>,
    /// K x K row-major: w_j . w_k.
    q: Vec<f64>,
}

impl NetworkLoss {
    pub fn new(params: McmParams, noise: NoiseLevel, activation: Activation) -> Self {
        Self::with_latent_order(params, noise, activation, LATENT_ORDER)
    }

    /// The same with `order` nodes in each rule over the latents (at least 2).
    pub fn with_latent_order(
        params: McmParams,
        noise: NoiseLevel,
        activation: Activation,
        order: usize,
    ) -> Self {
        let latents = latent_nodes(&params, order.max(2));
        let key = |x: f64| if x == 0.0 { 0 } else { x.to_bits() };
        let mut seen = std::collections::HashMap::new();
        let mirror = latents
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let found = seen
                    .get(&(key(-n.lambda), key(-n.nu), n.lambda_in_variance))
                    .copied()
                    .filter(|_| activation.is_odd());
                if found.is_none() {
                    seen.insert((key(n.lambda), key(n.nu), n.lambda_in_variance), i);
                }
                found
            })
            .collect();
        NetworkLoss {
            params,
            noise,
            activation,
            latents,
            mirror,
        }
    }

    /// E[1/2 ||alpha x_t - x||^2] = 1/2 (sigma^2 d + sigma^4 beta_u), on the MCM and on the surrogate.
    pub fn baseline_loss(&self) -> f64 {
        let s2 = self.noise.sigma * self.noise.sigma;
        0.5 * (s2 * self.params.d as f64 + s2 * s2 * self.params.beta_u)
    }

    /// Total losses on the MCM and on the surrogate.
    pub fn losses(&self, state: &NetworkState) -> Result<NetworkLosses, NetworkLossError> {
        if state.b.len() != state.a.len() {
            return Err(NetworkLossError::ReadoutSize {
                got: state.b.len(),
                want: state.a.len(),
            });
        }
        let (mcm, gauss) = self.quadratics(&state.gram, state.neurons())?;
        let base = self.baseline_loss();
        Ok(NetworkLosses {
            mcm: base + mcm.excess(&state.a, &state.b),
            gauss: base + gauss.excess(&state.a, &state.b),
        })
    }

    /// The readout quadratics (MCM, surrogate) of `neurons` neurons with Gram matrix `gram`.
    pub fn quadratics(
        &self,
        gram: &[f64],
        neurons: usize,
    ) -> Result<(ReadoutQuadratic, ReadoutQuadratic), NetworkLossError> {
        let ov = parse_gram(gram, neurons)?;
        Ok((self.mcm_quadratic_of(&ov), self.gauss_quadratic_of(&ov)))
    }

    /// The readout quadratic on the MCM only.
    pub fn mcm_quadratic(
        &self,
        gram: &[f64],
        neurons: usize,
    ) -> Result<ReadoutQuadratic, NetworkLossError> {
        Ok(self.mcm_quadratic_of(&parse_gram(gram, neurons)?))
    }

    fn mcm_quadratic_of(&self, ov: &Overlaps) -> ReadoutQuadratic {
        let k = ov.k;
        let p = &self.params;
        let (su, c) = (p.beta_u.sqrt(), p.c_v());
        let gaussian_of = |node: &LatentNode| {
            let mu: Vec<f64> = (0..k)
                .map(|j| su * node.lambda * ov.m_u[j] + c * node.nu * ov.m_v[j])
                .collect();
            let mut sigma = vec![0.0; k * k];
            for i in 0..k {
                for j in 0..k {
                    let mut s = ov.q[i * k + j] - c * c * ov.m_v[i] * ov.m_v[j];
                    if node.lambda_in_variance {
                        s += p.beta_u * ov.m_u[i] * ov.m_u[j];
                    }
                    sigma[i * k + j] = s;
                }
            }
            (mu, sigma)
        };
        // For odd g, E[g(y_i) g(y_j)] is even in the means, so a node and its
        // mirror (-lambda, -nu) share the two-dimensional integrals: compute
        // them for the first of each pair and reuse them for the second.
        let mirror = self.mirror.as_slice();
        let firsts: Vec<(ReadoutQuadratic, Vec<f64>)> = self
            .latents
            .par_iter()
            .enumerate()
            .map(|(i, node)| {
                if mirror.get(i).copied().flatten().is_some() {
                    return (ReadoutQuadratic::zeros(k), Vec::new());
                }
                let (mu, sigma) = gaussian_of(node);
                self.node_quadratic(&mu, &sigma, &ov.q, None)
            })
            .collect();
        let seconds: Vec<Option<ReadoutQuadratic>> = self
            .latents
            .par_iter()
            .enumerate()
            .map(|(i, node)| {
                let first = mirror.get(i).copied().flatten()?;
                let (mu, sigma) = gaussian_of(node);
                Some(
                    self.node_quadratic(&mu, &sigma, &ov.q, Some(&firsts[first].1))
                        .0,
                )
            })
            .collect();
        let mut total = ReadoutQuadratic::zeros(k);
        for ((node, first), second) in self.latents.iter().zip(&firsts).zip(&seconds) {
            total.add_scaled(second.as_ref().unwrap_or(&first.0), node.weight);
        }
        total
    }

    fn gauss_quadratic_of(&self, ov: &Overlaps) -> ReadoutQuadratic {
        let k = ov.k;
        let (bu, gamma) = (self.params.beta_u, self.params.cross_covariance());
        let mut sigma = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                sigma[i * k + j] = ov.q[i * k + j]
                    + bu * ov.m_u[i] * ov.m_u[j]
                    + gamma * (ov.m_u[i] * ov.m_v[j] + ov.m_v[i] * ov.m_u[j]);
            }
        }
        self.node_quadratic(&vec![0.0; k], &sigma, &ov.q, None).0
    }

    /// The quadratic's coefficients given h ~ N(mu, sigma) (K x K), with neuron
    /// overlaps q: see the module docs.
    /// Also returns the cross moments E[g(y_i) g(y_j)], i < j (row by row),
    /// or takes them from `cross` when given.
    fn node_quadratic(
        &self,
        mu: &[f64],
        sigma: &[f64],
        q: &[f64],
        cross: Option<&[f64]>,
    ) -> (ReadoutQuadratic, Vec<f64>) {
        let mut cross_out = Vec::new();
        let k = mu.len();
        let (al, si2) = (self.noise.alpha, self.noise.sigma * self.noise.sigma);
        let t: Vec<f64> = sigma
            .iter()
            .zip(q)
            .map(|(s, qq)| al * al * s + si2 * qq)
            .collect();
        let mean: Vec<f64> = mu.iter().map(|m| al * m).collect();
        let sd: Vec<f64> = (0..k).map(|j| t[j * k + j].max(0.0).sqrt()).collect();
        // One-dimensional moments: E[g], E[g (y - mean)], E[g^2] of each y_j.
        let g_moments: Vec<[f64; 3]> = (0..k).map(|j| self.moments_1d(mean[j], sd[j])).collect();
        // E[g(y_j) y_i] and E[g(y_j) h_i] through the regressions on y_j.
        let ratio = |j: usize, num: f64| {
            if t[j * k + j] > 0.0 {
                num / t[j * k + j]
            } else {
                0.0
            }
        };
        let g_y = |j: usize, i: usize| {
            al * mu[i] * g_moments[j][0] + ratio(j, t[i * k + j]) * g_moments[j][1]
        };
        let g_h = |j: usize, i: usize| {
            mu[i] * g_moments[j][0] + ratio(j, al * sigma[i * k + j]) * g_moments[j][1]
        };
        let y_y = |i: usize, j: usize| t[i * k + j] + al * al * mu[i] * mu[j];
        let y_h = |i: usize, j: usize| al * sigma[i * k + j] + al * mu[i] * mu[j];
        let mut out = ReadoutQuadratic::zeros(k);
        let n = 2 * k;
        for j in 0..k {
            out.linear[j] = al * g_y(j, j) - g_h(j, j);
            out.linear[k + j] = al * y_y(j, j) - y_h(j, j);
        }
        for i in 0..k {
            for j in 0..k {
                let qij = q[i * k + j];
                // The g-g block: the diagonal is one-dimensional, the upper
                // triangle two-dimensional, the lower triangle its mirror.
                if i == j {
                    out.hessian[i * n + j] = qij * g_moments[i][2];
                } else if i < j {
                    let gg = match cross {
                        Some(c) => c[cross_out.len()],
                        None => self.cross_moment(
                            mean[i],
                            mean[j],
                            t[i * k + i],
                            t[i * k + j],
                            t[j * k + j],
                        ),
                    };
                    cross_out.push(gg);
                    out.hessian[i * n + j] = qij * gg;
                    out.hessian[j * n + i] = qij * gg;
                }
                out.hessian[i * n + k + j] = qij * g_y(i, j);
                out.hessian[(k + j) * n + i] = qij * g_y(i, j);
                out.hessian[(k + i) * n + k + j] = qij * y_y(i, j);
            }
        }
        // Exactly symmetric (the products above round differently in each order).
        for i in 0..n {
            for l in 0..i {
                out.hessian[i * n + l] = out.hessian[l * n + i];
            }
        }
        (out, cross_out)
    }

    /// E[g(Y)], E[g(Y)(Y - mean)], E[g(Y)^2] for Y ~ N(mean, sd^2).
    fn moments_1d(&self, mean: f64, sd: f64) -> [f64; 3] {
        let mut m = [0.0; 3];
        let kinks = [if sd > 0.0 { -mean / sd } else { 0.0 }];
        self.for_each_normal(ONE_DIMENSIONAL, sd, &kinks, |z, w| {
            let g = self.activation.value(mean + sd * z);
            m[0] += w * g;
            m[1] += w * g * sd * z;
            m[2] += w * g * g;
        });
        m
    }

    /// E[g(Y_1) g(Y_2)] for (Y_1, Y_2) normal with means (m1, m2) and covariance
    /// [[t11, t12], [t12, t22]]: Y_1 = m1 + l11 z1, Y_2 = m2 + l21 z1 + l22 z2.
    fn cross_moment(&self, m1: f64, m2: f64, t11: f64, t12: f64, t22: f64) -> f64 {
        let act = self.activation;
        let l11 = t11.max(0.0).sqrt();
        if l11 == 0.0 {
            return act.value(m1) * self.moments_1d(m2, t22.max(0.0).sqrt())[0];
        }
        let l21 = t12 / l11;
        let l22 = (t22 - l21 * l21).max(0.0).sqrt();
        let degenerate = l22 <= DEGENERATE_SD * t22.max(0.0).sqrt();
        // Inner expectation over z2 of g(c + l22 z2), a smooth function of c.
        let smooth_inner: Vec<(f64, f64)> = if degenerate || is_kinked(act) {
            Vec::new()
        } else {
            self.normal_nodes(TWO_DIMENSIONAL, l22)
        };
        let inner = |c: f64| -> f64 {
            if degenerate {
                return act.value(c);
            }
            if is_kinked(act) {
                // ReLU: E[max(c + l22 z, 0)] = c Phi(c/l22) + l22 phi(c/l22).
                let r = c / l22;
                let phi = (-0.5 * r * r).exp() / (2.0 * std::f64::consts::PI).sqrt();
                return c * 0.5 * libm::erfc(-r * std::f64::consts::FRAC_1_SQRT_2) + l22 * phi;
            }
            smooth_inner
                .iter()
                .map(|&(z, w)| w * act.value(c + l22 * z))
                .sum()
        };
        let scale = l11.max(l21.abs());
        let mut kinks = vec![-m1 / l11];
        if degenerate && l21 != 0.0 {
            kinks.push(-m2 / l21);
        }
        let mut s = 0.0;
        // The outer rule's step is set by the larger of l11 and |l21| (poles of
        // g(m1 + l11 z1) and of the inner function of m2 + l21 z1).
        self.for_each_normal(TWO_DIMENSIONAL, scale, &kinks, |z, w| {
            s += w * act.value(m1 + l11 * z) * inner(m2 + l21 * z)
        });
        s
    }

    /// Calls f(z, weight) on a rule for z ~ N(0, 1) suited to integrands
    /// F(scale z): trapezoid with a step set by F's poles, or, for ReLU,
    /// Gauss-Legendre between the kinks (given in z).
    fn for_each_normal(
        &self,
        acc: Accuracy,
        scale: f64,
        kinks: &[f64],
        mut f: impl FnMut(f64, f64),
    ) {
        if !is_kinked(self.activation) {
            for (z, w) in self.normal_nodes(acc, scale) {
                f(z, w);
            }
            return;
        }
        let mut cuts: Vec<f64> = kinks
            .iter()
            .map(|k| k.clamp(-acc.half_width, acc.half_width))
            .collect();
        cuts.push(-acc.half_width);
        cuts.push(acc.half_width);
        cuts.sort_by(f64::total_cmp);
        let rule = kink_rule();
        let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        for pair in cuts.windows(2) {
            let (mid, half) = (0.5 * (pair[0] + pair[1]), 0.5 * (pair[1] - pair[0]));
            if half <= 0.0 {
                continue;
            }
            for (x, w) in rule.nodes.iter().zip(&rule.weights) {
                let z = mid + half * x;
                f(z, w * half * norm * (-0.5 * z * z).exp());
            }
        }
    }

    /// Trapezoid nodes and weights for z ~ N(0, 1), integrand analytic in the
    /// strip |Im z| < pole_distance / scale.
    fn normal_nodes(&self, acc: Accuracy, scale: f64) -> Vec<(f64, f64)> {
        let step = match pole_distance(self.activation) {
            Some(d) if scale > 0.0 => {
                (2.0 * std::f64::consts::PI * d / scale / acc.alias_exponent).min(MAX_Z_STEP)
            }
            _ => MAX_Z_STEP,
        };
        let n = ((2.0 * acc.half_width / step).ceil() as usize + 1).max(3);
        let rule = quad::normal_trapezoid(n, acc.half_width);
        rule.nodes.into_iter().zip(rule.weights).collect()
    }
}

/// Total losses 1/2 E||D - x||^2 on the MCM and on its Gaussian surrogate of the
/// denoiser in `state` (see the module docs). Errors when the state's sizes
/// disagree or its Gram matrix is not one of unit vectors with u orthogonal to v.
pub fn network_losses(
    params: &McmParams,
    noise: NoiseLevel,
    activation: Activation,
    state: &NetworkState,
) -> Result<NetworkLosses, NetworkLossError> {
    NetworkLoss::new(*params, noise, activation).losses(state)
}

/// The best total MCM loss reachable by `neurons` neurons with learned readouts,
/// and the state that reaches it (see [`NetworkLoss::best_reachable`]).
pub fn best_reachable_loss(
    params: &McmParams,
    noise: NoiseLevel,
    activation: Activation,
    neurons: usize,
) -> (f64, NetworkState) {
    NetworkLoss::new(*params, noise, activation).best_reachable(neurons)
}

fn parse_gram(gram: &[f64], k: usize) -> Result<Overlaps, NetworkLossError> {
    let n = k + 2;
    if gram.len() != n * n {
        return Err(NetworkLossError::GramSize {
            got: gram.len(),
            want: n * n,
            neurons: k,
        });
    }
    let raw = |i: usize, j: usize| gram[i * n + j];
    for i in 0..n {
        if !raw(i, i).is_finite() || (raw(i, i) - 1.0).abs() > GRAM_TOL {
            return Err(NetworkLossError::GramEntry {
                row: i,
                col: i,
                value: raw(i, i),
                why: "the vectors must have unit norm",
            });
        }
    }
    // Unit diagonal and exact symmetry from here on.
    let at = |i: usize, j: usize| 0.5 * (raw(i, j) + raw(j, i)) / (raw(i, i) * raw(j, j)).sqrt();
    for i in 0..n {
        for j in 0..i {
            if !raw(i, j).is_finite() || (raw(i, j) - raw(j, i)).abs() > GRAM_TOL {
                return Err(NetworkLossError::GramEntry {
                    row: i,
                    col: j,
                    value: at(i, j),
                    why: "the matrix must be symmetric",
                });
            }
        }
    }
    if at(0, 1).abs() > GRAM_TOL {
        return Err(NetworkLossError::GramEntry {
            row: 0,
            col: 1,
            value: at(0, 1),
            why: "u and v must be orthogonal",
        });
    }
    // Cholesky with a tolerance: positive semi-definite.
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let d = at(j, j) - (0..j).map(|c| l[j * n + c] * l[j * n + c]).sum::<f64>();
        if d < -GRAM_TOL {
            return Err(NetworkLossError::NotPositive { pivot: j, value: d });
        }
        let piv = d.max(0.0).sqrt();
        l[j * n + j] = piv;
        for i in j + 1..n {
            let s = at(i, j) - (0..j).map(|c| l[i * n + c] * l[j * n + c]).sum::<f64>();
            l[i * n + j] = if piv > 1e-7 { s / piv } else { 0.0 };
        }
    }
    Ok(Overlaps {
        k,
        m_u: (0..k).map(|j| at(0, 2 + j)).collect(),
        m_v: (0..k).map(|j| at(1, 2 + j)).collect(),
        q: (0..k)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| at(2 + i, 2 + j))
            .collect(),
    })
}

/// Distance from the real axis of the nearest pole of g (None: entire or kinked).
fn pole_distance(act: Activation) -> Option<f64> {
    match act {
        Activation::Tanh2 => Some(std::f64::consts::FRAC_PI_4),
        Activation::Tanh => Some(std::f64::consts::FRAC_PI_2),
        Activation::Relu | Activation::Linear => None,
    }
}

fn is_kinked(act: Activation) -> bool {
    matches!(act, Activation::Relu)
}

/// Gauss-Legendre on [-1, 1] with Lebesgue weights (sum 2).
fn kink_rule() -> &'static quad::Rule {
    static RULE: std::sync::OnceLock<quad::Rule> = std::sync::OnceLock::new();
    RULE.get_or_init(|| {
        let r = quad::gauss_legendre(KINK_ORDER);
        quad::Rule {
            nodes: r.nodes,
            weights: r.weights.iter().map(|w| 2.0 * w).collect(),
        }
    })
}

mod gradient;
mod optimum;

pub use gradient::{OverlapGradient, OverlapGradients};
#[cfg(test)]
mod tests;
