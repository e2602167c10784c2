//! Online pSGD as an exact Markov chain on the overlaps: a step costs O(K^3),
//! whatever the dimension d.
//!
//! # The reduction
//!
//! Every training sample is fresh, z and xi are isotropic, and the data's only
//! structure lies in span(u, v). Let E = (e_0, ..., e_{m-1}), m = K + 2, be the
//! Gram-Schmidt basis of (u, v, w_1, ..., w_K) (so e_0 = u, e_1 = v, positive
//! diagonal). Given the current weights, the coordinates of z and xi along E are
//! 2m i.i.d. N(0, 1), and their parts z_R, xi_R orthogonal to E are isotropic in
//! the remaining d - m dimensions, independent of the rest.
//!
//! The update needs z_R and xi_R only through the 2 x 2 Gram matrix of (z_R,
//! xi_R), which is Wishart(2, d - m). By the Bartlett decomposition there is an
//! orthonormal pair (f_1, f_2) orthogonal to E with
//!
//! ```text
//! z_R = c1 f_1,    xi_R = n f_1 + c2 f_2,    c1^2 ~ chi2(d - m), n ~ N(0, 1), c2^2 ~ chi2(d - m - 1),
//! ```
//!
//! all independent. In the coordinates (E, f_1, f_2) the sample is then
//! x = z + coef_u u + coef_v v (coef_v depends on v.z, the coordinate along
//! e_1), x_t = alpha x + sigma xi, and the step of [`crate::denoiser::Denoiser::psgd_step`]
//!
//! ```text
//! y_k = w_k . x_t,  h_k = a_k g(y_k) + b_k y_k,  h_k' = a_k g'(y_k) + b_k,
//! r = alpha x_t - x + sum_k h_k w_k,
//! p_k = w_k - eta (h_k r + h_k' (w_k . r) x_t),            w_k <- p_k / |p_k|,
//! a_k <- a_k - eta_a (w_k . r) g(y_k),  b_k <- b_k - eta_b (w_k . r) y_k,
//! ```
//!
//! is computed exactly in m + 2 coordinates: w_k has no component along f_1,
//! f_2, so y_k and w_k . r need only the E coordinates, and the f-components
//! of p_k are -eta (h_k r_R + h_k' (w_k . r) x_t,R) with r_R = (alpha^2 - 1) z_R +
//! alpha sigma xi_R and x_t,R = alpha z_R + sigma xi_R. The new state is the
//! Gram-Schmidt basis of (u, v, p_1, ..., p_K): u and v keep their coordinates,
//! the components of the p_k beyond (u, v) are re-triangularised (QR), and each
//! |p_k| is computed from the same components as its coordinates, so every row
//! has unit norm to rounding without any clamping. For K = 1 this is the state
//! (m_u, m_v, q), q = sqrt(1 - m_u^2 - m_v^2) carried as a variable.
//!
//! One step draws the latents, 2m normals, one normal and two chi-squares; d
//! enters only through the degrees of freedom (and through eta). The chain is
//! exact at every finite d (not a large-d limit) for online SGD with fresh
//! samples; with reused samples (finite data, epochs) it does not apply.
//!
//! Initialisation from the uniform sphere in the same coordinates: neuron k has
//! k + 2 normal coordinates along (u, v, e_2, ..., e_{k+1}) and sqrt(chi2(d - 2 - k))
//! along the new e_{k+2}, normalised.

use rand::Rng;
use rand_distr::{ChiSquared, Distribution, StandardNormal};

use crate::denoiser::ReadoutRates;
use crate::model::{Activation, Latents, Mcm, NoiseLevel};

/// The most neurons the reduced chain carries (the state is (K + 2)^2 numbers).
pub const MAX_NEURONS: usize = 6;
const MAX_M: usize = MAX_NEURONS + 2;

/// One fresh sample as the reduced step sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReducedSample {
    pub latents: Latents,
    /// Coordinates of the white noise z and of the diffusion noise xi along E
    /// (the first K + 2 entries are used).
    pub z: [f64; MAX_M],
    pub xi: [f64; MAX_M],
    /// Bartlett factors of the rest: z_R = c1 f_1, xi_R = n f_1 + c2 f_2.
    pub c1: f64,
    pub n: f64,
    pub c2: f64,
}

/// sqrt of a chi-square with `dof` degrees of freedom (0 allowed: always 0).
#[derive(Debug, Clone, Copy)]
struct Chi(Option<ChiSquared<f64>>);

impl Chi {
    fn new(dof: usize) -> Self {
        Chi((dof > 0).then(|| ChiSquared::new(dof as f64).expect("a positive number of degrees of freedom")))
    }

    #[inline]
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        self.0.map_or(0.0, |c| c.sample(rng).sqrt())
    }
}

/// Draws reduced samples for K neurons in dimension d.
#[derive(Debug, Clone, Copy)]
pub struct ReducedSampler {
    m: usize,
    chi_first: Chi,
    chi_second: Chi,
}

impl ReducedSampler {
    /// The exact law: the rest has d - (K + 2) dimensions.
    pub fn new(d: usize, neurons: usize) -> Self {
        Self::with_rest_dimension(neurons, d - (neurons + 2))
    }

    /// A sampler whose rest has `rest` dimensions; anything but d - K - 2 is
    /// the wrong law (the tests' negative control uses that).
    pub(crate) fn with_rest_dimension(neurons: usize, rest: usize) -> Self {
        ReducedSampler { m: neurons + 2, chi_first: Chi::new(rest), chi_second: Chi::new(rest.saturating_sub(1)) }
    }

    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, model: &Mcm, rng: &mut R) -> ReducedSample {
        let latents = model.sample_latents(rng);
        let mut z = [0.0; MAX_M];
        let mut xi = [0.0; MAX_M];
        for zj in &mut z[..self.m] {
            *zj = StandardNormal.sample(rng);
        }
        for xj in &mut xi[..self.m] {
            *xj = StandardNormal.sample(rng);
        }
        let c1 = self.chi_first.sample(rng);
        let n = StandardNormal.sample(rng);
        let c2 = self.chi_second.sample(rng);
        ReducedSample { latents, z, xi, c1, n, c2 }
    }
}

/// The state of K neurons: their coordinates in the basis E and their readouts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReducedState {
    pub k: usize,
    /// `w[k][j]`: neuron k along e_j (e_0 = u, e_1 = v); zero for j > k + 2.
    pub w: [[f64; MAX_M]; MAX_NEURONS],
    pub a: [f64; MAX_NEURONS],
    pub b: [f64; MAX_NEURONS],
}

/// What a step needs besides the state and the sample.
#[derive(Debug, Clone, Copy)]
pub struct StepRule {
    pub noise: NoiseLevel,
    pub activation: Activation,
    /// Learning rate of the directions.
    pub eta: f64,
    /// Learning rates of the readouts; `None`: fixed.
    pub readout: Option<ReadoutRates>,
}

impl ReducedState {
    /// Each neuron uniform on the sphere of R^d, with readouts (a, b).
    ///
    /// # Panics
    /// If K is 0 or above [`MAX_NEURONS`], or d < K + 2 (callers validate).
    pub fn random<R: Rng + ?Sized>(d: usize, k: usize, (a, b): (f64, f64), rng: &mut R) -> Self {
        assert!((1..=MAX_NEURONS).contains(&k) && d >= k + 2, "reduced chain: K = {k} neurons in d = {d}");
        let mut w = [[0.0; MAX_M]; MAX_NEURONS];
        for (i, row) in w.iter_mut().enumerate().take(k) {
            for c in &mut row[..i + 2] {
                *c = StandardNormal.sample(rng);
            }
            row[i + 2] = Chi::new(d - 2 - i).sample(rng);
            let norm = row[..i + 3].iter().map(|c| c * c).sum::<f64>().sqrt();
            for c in &mut row[..i + 3] {
                *c /= norm;
            }
        }
        ReducedState { k, w, a: [a; MAX_NEURONS], b: [b; MAX_NEURONS] }
    }

    /// The state of given coordinates (rows: neurons, lower-triangular beyond
    /// (u, v) as the Gram-Schmidt basis makes them) and readouts.
    pub fn from_coordinates(w: &[Vec<f64>], a: &[f64], b: &[f64]) -> Self {
        let k = w.len();
        assert!((1..=MAX_NEURONS).contains(&k));
        let mut state = ReducedState { k, w: [[0.0; MAX_M]; MAX_NEURONS], a: [0.0; MAX_NEURONS], b: [0.0; MAX_NEURONS] };
        for (i, row) in w.iter().enumerate() {
            state.w[i][..row.len()].copy_from_slice(row);
            state.a[i] = a[i];
            state.b[i] = b[i];
        }
        state
    }

    /// (m_u, m_v) of neuron k.
    #[inline]
    pub fn overlaps(&self, k: usize) -> (f64, f64) {
        (self.w[k][0], self.w[k][1])
    }

    /// w_j . w_k.
    pub fn neuron_overlap(&self, j: usize, k: usize) -> f64 {
        let m = self.k + 2;
        self.w[j][..m].iter().zip(&self.w[k][..m]).map(|(p, q)| p * q).sum()
    }

    /// One pSGD step on `sample` (see the module docs for the derivation).
    #[inline]
    pub fn step(&mut self, model: &Mcm, rule: &StepRule, s: &ReducedSample) {
        // Array sizes known at compile time: the loops over the K + 2
        // coordinates unroll, and nothing larger than the state is touched.
        match self.k {
            1 => self.step_sized::<1, 3, 5>(model, rule, s),
            2 => self.step_sized::<2, 4, 6>(model, rule, s),
            3 => self.step_sized::<3, 5, 7>(model, rule, s),
            4 => self.step_sized::<4, 6, 8>(model, rule, s),
            5 => self.step_sized::<5, 7, 9>(model, rule, s),
            6 => self.step_sized::<6, 8, 10>(model, rule, s),
            k => unreachable!("a reduced state has 1..={MAX_NEURONS} neurons, not {k}"),
        }
    }

    /// The step for K neurons, M = K + 2 coordinates along E, P = M + 2 with (f_1, f_2).
    #[inline(always)]
    fn step_sized<const K: usize, const M: usize, const P: usize>(&mut self, model: &Mcm, rule: &StepRule, s: &ReducedSample) {
        let NoiseLevel { alpha, sigma, .. } = rule.noise;
        // The sample in (E, f_1, f_2): x = z + coef_u u + coef_v v.
        let (coef_u, coef_v) = model.spike_coefficients(s.latents, s.z[1]);
        let mut x = [0.0; M];
        x.copy_from_slice(&s.z[..M]);
        x[0] += coef_u;
        x[1] += coef_v;
        let mut xt = [0.0; M];
        let mut r = [0.0; M];
        for j in 0..M {
            xt[j] = alpha * x[j] + sigma * s.xi[j];
            r[j] = alpha * xt[j] - x[j];
        }
        let xt_rest = [alpha * s.c1 + sigma * s.n, sigma * s.c2];
        let r_rest = [alpha * xt_rest[0] - s.c1, alpha * xt_rest[1]];

        let mut y = [0.0; K];
        let mut g = [0.0; K];
        let mut h = [0.0; K];
        let mut dh = [0.0; K];
        for k in 0..K {
            let yk: f64 = self.w[k][..M].iter().zip(&xt).map(|(w, x)| w * x).sum();
            let (gk, dgk) = rule.activation.value_and_derivative(yk);
            (y[k], g[k]) = (yk, gk);
            h[k] = self.a[k] * gk + self.b[k] * yk;
            dh[k] = self.a[k] * dgk + self.b[k];
        }
        for k in 0..K {
            for j in 0..M {
                r[j] += h[k] * self.w[k][j];
            }
        }

        // p_k in M + 2 coordinates: (E, f_1, f_2).
        let mut p = [[0.0; P]; K];
        for k in 0..K {
            let wr: f64 = self.w[k][..M].iter().zip(&r).map(|(w, r)| w * r).sum();
            let (c_r, c_x) = (rule.eta * h[k], rule.eta * dh[k] * wr);
            for j in 0..M {
                p[k][j] = self.w[k][j] - (c_r * r[j] + c_x * xt[j]);
            }
            p[k][M] = -(c_r * r_rest[0] + c_x * xt_rest[0]);
            p[k][M + 1] = -(c_r * r_rest[1] + c_x * xt_rest[1]);
            if let Some(rates) = rule.readout {
                self.a[k] -= rates.eta_a * wr * g[k];
                self.b[k] -= rates.eta_b * wr * y[k];
            }
        }
        self.retriangularise::<K, M, P>(&p);
    }

    /// The Gram-Schmidt coordinates of (u, v, p_1/|p_1|, ..., p_K/|p_K|):
    /// modified Gram-Schmidt of the components beyond (u, v) (M of them).
    #[inline(always)]
    fn retriangularise<const K: usize, const M: usize, const P: usize>(&mut self, p: &[[f64; P]; K]) {
        let mut q = [[0.0; M]; K];
        for k in 0..K {
            let mut rest = [0.0; M];
            rest.copy_from_slice(&p[k][2..M + 2]);
            let mut coords = [0.0; K];
            for j in 0..k {
                let c: f64 = q[j].iter().zip(&rest).map(|(a, b)| a * b).sum();
                for (rv, qv) in rest.iter_mut().zip(&q[j]) {
                    *rv -= c * qv;
                }
                coords[j] = c;
            }
            let diag = rest.iter().map(|v| v * v).sum::<f64>().sqrt();
            coords[k] = diag;
            if diag > 0.0 {
                for (qv, rv) in q[k].iter_mut().zip(&rest) {
                    *qv = rv / diag;
                }
            }
            let norm2 = p[k][0] * p[k][0] + p[k][1] * p[k][1] + coords[..=k].iter().map(|c| c * c).sum::<f64>();
            let inv = 1.0 / norm2.sqrt();
            let row = &mut self.w[k];
            *row = [0.0; MAX_M];
            row[0] = p[k][0] * inv;
            row[1] = p[k][1] * inv;
            for j in 0..=k {
                row[2 + j] = coords[j] * inv;
            }
        }
    }

    /// loss(x, x_t) - 1/2 ||alpha x_t - x||^2 of one sample given by its
    /// coordinates along E (the excess depends on nothing else).
    #[inline]
    pub fn excess_loss(&self, activation: Activation, alpha: f64, x: &[f64], xt: &[f64]) -> f64 {
        let m = self.k + 2;
        let mut h = [0.0; MAX_NEURONS];
        let mut e = 0.0;
        for (k, hk) in h.iter_mut().enumerate().take(self.k) {
            let (mut yk, mut xk) = (0.0, 0.0);
            for j in 0..m {
                yk += self.w[k][j] * xt[j];
                xk += self.w[k][j] * x[j];
            }
            *hk = self.a[k] * activation.value(yk) + self.b[k] * yk;
            e += *hk * (alpha * yk - xk);
        }
        let mut quad = 0.0;
        for j in 0..self.k {
            quad += h[j] * h[j];
            for l in 0..j {
                quad += 2.0 * h[j] * h[l] * self.neuron_overlap(j, l);
            }
        }
        e + 0.5 * quad
    }
}

/// Mean and standard error of the excess loss over `n_test` fresh samples of
/// the MCM (`gaussian`: of its Gaussian surrogate), drawn in the coordinates
/// along E: exact in law, O(K^2) per sample.
pub fn mean_excess_loss<R: Rng + ?Sized>(
    model: &Mcm,
    state: &ReducedState,
    activation: Activation,
    noise: NoiseLevel,
    n_test: usize,
    gaussian: bool,
    rng: &mut R,
) -> (f64, f64) {
    let m = state.k + 2;
    let eigen = model.params.spike_eigen();
    let (mut sum, mut sum2) = (0.0, 0.0);
    for _ in 0..n_test {
        let mut x = [0.0; MAX_M];
        let mut xt = [0.0; MAX_M];
        if gaussian {
            for xj in &mut x[..m] {
                *xj = StandardNormal.sample(rng);
            }
            // x = z + sum_j (sqrt(l_j) - 1) (e_j . z) e_j, e_j in span(u, v).
            let (z0, z1) = (x[0], x[1]);
            for (l, [cu, cv]) in eigen {
                let k = (l.max(0.0).sqrt() - 1.0) * (cu * z0 + cv * z1);
                x[0] += k * cu;
                x[1] += k * cv;
            }
        } else {
            let latents = model.sample_latents(rng);
            for xj in &mut x[..m] {
                *xj = StandardNormal.sample(rng);
            }
            let (coef_u, coef_v) = model.spike_coefficients(latents, x[1]);
            x[0] += coef_u;
            x[1] += coef_v;
        }
        for j in 0..m {
            let xi: f64 = StandardNormal.sample(rng);
            xt[j] = noise.alpha * x[j] + noise.sigma * xi;
        }
        let e = state.excess_loss(activation, noise.alpha, &x[..m], &xt[..m]);
        sum += e;
        sum2 += e * e;
    }
    crate::simulate::mean_and_standard_error(sum, sum2, n_test)
}

#[cfg(test)]
#[path = "reduced_tests.rs"]
mod tests;
