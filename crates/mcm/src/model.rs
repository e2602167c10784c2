//! The data model: x = sqrt(beta_u) lambda u + S (sqrt(beta_v) nu v + z).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The generator used for every simulation: fast, small state, and its
/// `jump()` gives independent streams without correlated seeds.
pub type SimRng = Xoshiro256PlusPlus;

/// A generator for stream `stream` of a given seed (e.g. one per replica).
pub fn rng_for(seed: u64, stream: u64) -> SimRng {
    // Mix the pair with SplitMix64-style constants so (seed, stream) pairs
    // that differ in one bit give unrelated states.
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SimRng::seed_from_u64(z ^ (z >> 31))
}

/// Law of the non-Gaussian latent nu (zero mean, unit variance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NuLaw {
    /// +-1 with probability 1/2; excess kurtosis -2.
    Rademacher,
    /// Uniform on [-sqrt 3, sqrt 3]; excess kurtosis -1.2.
    Uniform,
    /// Laplace with scale 1/sqrt 2; excess kurtosis +3.
    Laplace,
    /// Standard normal: the control, no higher cumulant.
    Gaussian,
}

impl NuLaw {
    /// Excess kurtosis kappa4 = E[nu^4] - 3.
    pub fn excess_kurtosis(self) -> f64 {
        match self {
            NuLaw::Rademacher => -2.0,
            NuLaw::Uniform => -1.2,
            NuLaw::Laplace => 3.0,
            NuLaw::Gaussian => 0.0,
        }
    }

    /// E|nu|, needed for the latent correlation under linear coupling.
    pub fn mean_abs(self) -> f64 {
        match self {
            NuLaw::Rademacher => 1.0,
            NuLaw::Uniform => 3f64.sqrt() / 2.0,
            NuLaw::Laplace => std::f64::consts::FRAC_1_SQRT_2,
            NuLaw::Gaussian => (2.0 / std::f64::consts::PI).sqrt(),
        }
    }

    pub fn sample<R: Rng + ?Sized>(self, rng: &mut R) -> f64 {
        match self {
            NuLaw::Rademacher => {
                if rng.random::<bool>() {
                    1.0
                } else {
                    -1.0
                }
            }
            NuLaw::Uniform => 3f64.sqrt() * (2.0 * rng.random::<f64>() - 1.0),
            NuLaw::Laplace => {
                // Inverse CDF of a Laplace with scale b = 1/sqrt 2 (variance 2 b^2 = 1).
                let p: f64 = rng.random::<f64>() - 0.5;
                let b = std::f64::consts::FRAC_1_SQRT_2;
                -b * p.signum() * (1.0 - 2.0 * p.abs()).max(f64::MIN_POSITIVE).ln()
            }
            NuLaw::Gaussian => StandardNormal.sample(rng),
        }
    }
}

/// How the two latents are tied together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Coupling {
    /// lambda and nu independent.
    None,
    /// nu = s * sign(lambda) * |nu0|, s = +1 with probability (1 + rho)/2, else -1.
    /// For Rademacher nu this is SPEC's nu = s sign(lambda); for the other laws it
    /// keeps nu's marginal law. E[lambda nu] = rho sqrt(2/pi) E|nu0|.
    Linear { rho: f64 },
}

impl Coupling {
    pub fn rho(self) -> f64 {
        match self {
            Coupling::None => 0.0,
            Coupling::Linear { rho } => rho,
        }
    }
}

/// The denoiser's activation g.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// g(y) = tanh(2 y), the default.
    Tanh2,
    /// g(y) = tanh(y).
    Tanh,
    /// g(y) = max(y, 0).
    Relu,
    /// g(y) = y.
    Linear,
}

impl Activation {
    #[inline]
    pub fn value(self, y: f64) -> f64 {
        match self {
            Activation::Tanh2 => (2.0 * y).tanh(),
            Activation::Tanh => y.tanh(),
            Activation::Relu => y.max(0.0),
            Activation::Linear => y,
        }
    }

    #[inline]
    pub fn derivative(self, y: f64) -> f64 {
        match self {
            Activation::Tanh2 => {
                let th = (2.0 * y).tanh();
                2.0 * (1.0 - th * th)
            }
            Activation::Tanh => {
                let th = y.tanh();
                1.0 - th * th
            }
            Activation::Relu => {
                if y > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Linear => 1.0,
        }
    }

    /// (g(y), g'(y)), bit for bit `(value(y), derivative(y))` with one tanh
    /// instead of two.
    #[inline]
    pub fn value_and_derivative(self, y: f64) -> (f64, f64) {
        match self {
            Activation::Tanh2 => {
                let th = (2.0 * y).tanh();
                (th, 2.0 * (1.0 - th * th))
            }
            Activation::Tanh => {
                let th = y.tanh();
                (th, 1.0 - th * th)
            }
            Activation::Relu | Activation::Linear => (self.value(y), self.derivative(y)),
        }
    }

    /// Odd activations make the model invariant under w -> -w.
    pub fn is_odd(self) -> bool {
        !matches!(self, Activation::Relu)
    }
}

/// Parameters of the data model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McmParams {
    pub d: usize,
    pub beta_u: f64,
    pub beta_v: f64,
    pub nu: NuLaw,
    pub coupling: Coupling,
}

impl McmParams {
    /// c = sqrt(beta_v / (1 + beta_v)): the scale of nu along v after whitening.
    pub fn c_v(&self) -> f64 {
        (self.beta_v / (1.0 + self.beta_v)).sqrt()
    }

    /// E[lambda nu].
    pub fn latent_correlation(&self) -> f64 {
        self.coupling.rho() * (2.0 / std::f64::consts::PI).sqrt() * self.nu.mean_abs()
    }

    /// The u-v cross covariance gamma: C = I + beta_u u u^T + gamma (u v^T + v u^T).
    pub fn cross_covariance(&self) -> f64 {
        self.latent_correlation() * self.beta_u.sqrt() * self.c_v()
    }

    /// Fourth cumulant of x along v: kappa4 (beta_v / (1 + beta_v))^2.
    pub fn v_fourth_cumulant(&self) -> f64 {
        let c2 = self.beta_v / (1.0 + self.beta_v);
        self.nu.excess_kurtosis() * c2 * c2
    }

    /// The two non-unit eigenvalues of the covariance, in the (u, v) plane, and
    /// the corresponding eigenvectors as (cos, sin) coefficients on (u, v).
    pub fn spike_eigen(&self) -> [(f64, [f64; 2]); 2] {
        let a = 1.0 + self.beta_u;
        let b = self.cross_covariance();
        let dd = 1.0;
        let mean = 0.5 * (a + dd);
        let disc = (0.25 * (a - dd) * (a - dd) + b * b).sqrt();
        let (l1, l2) = (mean + disc, mean - disc);
        let vec_for = |l: f64| {
            // (a - l) x + b y = 0
            let (x, y) = if b.abs() > 1e-300 { (b, l - a) } else if (l - a).abs() < (l - dd).abs() { (1.0, 0.0) } else { (0.0, 1.0) };
            let n = (x * x + y * y).sqrt();
            [x / n, y / n]
        };
        [(l1, vec_for(l1)), (l2, vec_for(l2))]
    }
}

/// Noise level of the variance-preserving OU process at time t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLevel {
    pub t: f64,
    pub alpha: f64,
    pub sigma: f64,
}

impl NoiseLevel {
    pub fn at(t: f64) -> Self {
        let alpha = (-t).exp();
        NoiseLevel { t, alpha, sigma: (1.0 - alpha * alpha).sqrt() }
    }
}

/// One draw of the latents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latents {
    pub lambda: f64,
    pub nu: f64,
}

/// An instance of the MCM: parameters plus the planted directions.
#[derive(Debug, Clone)]
pub struct Mcm {
    pub params: McmParams,
    pub u: Vec<f64>,
    pub v: Vec<f64>,
    /// 1 - 1/sqrt(1 + beta_v): S = I - s_shrink v v^T.
    s_shrink: f64,
    /// sqrt(beta_u) and sqrt(beta_v), needed for every sample.
    sqrt_beta_u: f64,
    sqrt_beta_v: f64,
}

impl Mcm {
    /// Draws u, v uniformly (an orthonormal pair) from `seed`.
    pub fn new(params: McmParams, seed: u64) -> Self {
        assert!(params.d >= 2, "the MCM needs d >= 2");
        let mut rng = rng_for(seed, u64::MAX);
        let d = params.d;
        let u = random_unit(&mut rng, d);
        let mut v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        let proj = dot(&u, &v);
        for (vi, ui) in v.iter_mut().zip(&u) {
            *vi -= proj * ui;
        }
        normalize(&mut v);
        Self::with_directions(params, u, v)
    }

    /// An MCM with given orthonormal directions.
    pub fn with_directions(params: McmParams, u: Vec<f64>, v: Vec<f64>) -> Self {
        let s_shrink = 1.0 - 1.0 / (1.0 + params.beta_v).sqrt();
        Mcm { params, u, v, s_shrink, sqrt_beta_u: params.beta_u.sqrt(), sqrt_beta_v: params.beta_v.sqrt() }
    }

    /// Draws the latents (lambda, nu) with the model's coupling.
    #[inline]
    pub fn sample_latents<R: Rng + ?Sized>(&self, rng: &mut R) -> Latents {
        let lambda: f64 = StandardNormal.sample(rng);
        let nu0 = self.params.nu.sample(rng);
        let nu = match self.params.coupling {
            Coupling::None => nu0,
            Coupling::Linear { rho } => {
                let s = if rng.random::<f64>() < 0.5 * (1.0 + rho) { 1.0 } else { -1.0 };
                s * lambda.signum() * nu0.abs()
            }
        };
        Latents { lambda, nu }
    }

    /// Fills `x` with one sample of the model; returns its latents.
    /// Cost: d normals plus two passes over x.
    #[inline]
    pub fn sample_into<R: Rng + ?Sized>(&self, rng: &mut R, x: &mut [f64]) -> Latents {
        let lat = self.sample_latents(rng);
        fill_normal(rng, x);
        self.finish_sample(lat, x);
        lat
    }

    /// Coefficients (of u, of v) that turn white noise z with v.z = `vz` into
    /// the sample: x = z + coef_u u + coef_v v.
    #[inline]
    pub(crate) fn spike_coefficients(&self, lat: Latents, vz: f64) -> (f64, f64) {
        // S(sqrt(bv) nu v + z) = z + (sqrt(bv) nu - shrink (sqrt(bv) nu + v.z)) v
        let coef_v = self.sqrt_beta_v * lat.nu - self.s_shrink * (self.sqrt_beta_v * lat.nu + vz);
        let coef_u = self.sqrt_beta_u * lat.lambda;
        (coef_u, coef_v)
    }

    /// Turns x = z (already filled with standard normals) into the MCM sample
    /// with latents `lat`: x = sqrt(beta_u) lambda u + S(sqrt(beta_v) nu v + z).
    #[inline]
    pub fn finish_sample(&self, lat: Latents, x: &mut [f64]) {
        let (coef_u, coef_v) = self.spike_coefficients(lat, dot(&self.v, x));
        for ((xi, ui), vi) in x.iter_mut().zip(&self.u).zip(&self.v) {
            *xi += coef_u * ui + coef_v * vi;
        }
    }

    /// Fills `x` with a sample of the Gaussian surrogate N(0, C), C the MCM covariance.
    #[inline]
    pub fn sample_gaussian_into<R: Rng + ?Sized>(&self, rng: &mut R, x: &mut [f64]) {
        for xi in x.iter_mut() {
            *xi = StandardNormal.sample(rng);
        }
        // C = I + sum_j (l_j - 1) e_j e_j^T over the (u, v) eigenvectors e_j:
        // x = z + sum_j (sqrt(l_j) - 1) (e_j . z) e_j.
        for (l, [cu, cv]) in self.params.spike_eigen() {
            let e_dot_z = cu * dot(&self.u, x) + cv * dot(&self.v, x);
            let k = (l.max(0.0).sqrt() - 1.0) * e_dot_z;
            if k != 0.0 {
                for ((xi, ui), vi) in x.iter_mut().zip(&self.u).zip(&self.v) {
                    *xi += k * (cu * ui + cv * vi);
                }
            }
        }
    }
}

/// Fills `z` with standard normals, in order.
#[inline]
pub(crate) fn fill_normal<R: Rng + ?Sized>(rng: &mut R, z: &mut [f64]) {
    for zi in z.iter_mut() {
        *zi = StandardNormal.sample(rng);
    }
}

/// A point drawn uniformly on the unit sphere of R^d.
pub fn random_unit<R: Rng + ?Sized>(rng: &mut R, d: usize) -> Vec<f64> {
    let mut w: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
    normalize(&mut w);
    w
}

#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four accumulators: lets the compiler vectorise while the summation order
    // stays fixed (results do not depend on the machine's thread count).
    // Whole chunks of four, so the loop carries no bounds checks.
    let (a_chunks, a_tail) = a.as_chunks::<4>();
    let (b_chunks, b_tail) = b[..a.len()].as_chunks::<4>();
    let mut acc = [0.0f64; 4];
    for (ac, bc) in a_chunks.iter().zip(b_chunks) {
        for j in 0..4 {
            acc[j] += ac[j] * bc[j];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (ai, bi) in a_tail.iter().zip(b_tail) {
        s += ai * bi;
    }
    s
}

pub fn normalize(w: &mut [f64]) {
    let n = dot(w, w).sqrt();
    for wi in w.iter_mut() {
        *wi /= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample moments of the projections of `n` samples on `dirs`.
    fn moments(model: &Mcm, n: usize, gaussian: bool, dirs: &[&[f64]]) -> Vec<(f64, f64)> {
        let mut rng = rng_for(11, 0);
        let mut x = vec![0.0; model.params.d];
        let mut acc = vec![(0.0, 0.0); dirs.len()];
        for _ in 0..n {
            if gaussian {
                model.sample_gaussian_into(&mut rng, &mut x);
            } else {
                model.sample_into(&mut rng, &mut x);
            }
            for (a, e) in acc.iter_mut().zip(dirs) {
                let p = dot(e, &x);
                a.0 += p * p;
                a.1 += p * p * p * p;
            }
        }
        acc.iter()
            .map(|(m2, m4)| {
                let (m2, m4) = (m2 / n as f64, m4 / n as f64);
                (m2, m4 / (m2 * m2) - 3.0)
            })
            .collect()
    }

    fn params(nu: NuLaw, coupling: Coupling) -> McmParams {
        McmParams { d: 10, beta_u: 2.0, beta_v: 5.0, nu, coupling }
    }

    #[test]
    fn value_and_derivative_equal_value_and_derivative_bit_for_bit() {
        for activation in [Activation::Tanh2, Activation::Tanh, Activation::Relu, Activation::Linear] {
            for y in [-3.1, -0.7, -1e-9, 0.0, 2e-7, 0.25, 1.3, 19.0] {
                let (g, dg) = activation.value_and_derivative(y);
                assert_eq!(g.to_bits(), activation.value(y).to_bits());
                assert_eq!(dg.to_bits(), activation.derivative(y).to_bits());
            }
        }
    }

    #[test]
    fn directions_are_orthonormal_and_random() {
        let m = Mcm::new(params(NuLaw::Rademacher, Coupling::None), 1);
        assert!((dot(&m.u, &m.u) - 1.0).abs() < 1e-12 && (dot(&m.v, &m.v) - 1.0).abs() < 1e-12);
        assert!(dot(&m.u, &m.v).abs() < 1e-12);
        assert!(m.u.iter().all(|c| c.abs() < 0.99), "u must not be a coordinate vector");
        assert_ne!(Mcm::new(m.params, 2).u, m.u);
    }

    #[test]
    fn covariance_is_spiked_identity_and_v_carries_the_fourth_cumulant() {
        for nu in [NuLaw::Rademacher, NuLaw::Uniform, NuLaw::Laplace, NuLaw::Gaussian] {
            let m = Mcm::new(params(nu, Coupling::None), 1);
            let mut e = vec![0.0; 10];
            e[0] = 1.0;
            let other: Vec<f64> = {
                let p = dot(&e, &m.u);
                let q = dot(&e, &m.v);
                let mut o: Vec<f64> = e.iter().zip(&m.u).zip(&m.v).map(|((ei, ui), vi)| ei - p * ui - q * vi).collect();
                normalize(&mut o);
                o
            };
            let n = 400_000;
            let mom = moments(&m, n, false, &[&m.u, &m.v, &other]);
            let se_var = (2.0 / n as f64).sqrt() * 4.0;
            assert!((mom[0].0 - 3.0).abs() < 3.0 * se_var * 3.0, "{nu:?} var u {}", mom[0].0);
            assert!((mom[1].0 - 1.0).abs() < se_var, "{nu:?} var v {}", mom[1].0);
            assert!((mom[2].0 - 1.0).abs() < se_var, "{nu:?} var other {}", mom[2].0);
            assert!(mom[0].1.abs() < 0.05, "{nu:?} kurtosis along u {}", mom[0].1);
            let expected = m.params.v_fourth_cumulant();
            assert!((mom[1].1 - expected).abs() < 0.05 + 0.03 * expected.abs(), "{nu:?} kurtosis along v {} vs {expected}", mom[1].1);
            assert!(mom[2].1.abs() < 0.05, "{nu:?} kurtosis elsewhere {}", mom[2].1);
        }
    }

    #[test]
    fn coupling_adds_the_predicted_cross_covariance_and_the_surrogate_matches_it() {
        let p = params(NuLaw::Rademacher, Coupling::Linear { rho: 0.8 });
        let m = Mcm::new(p, 1);
        let diag: Vec<f64> = m.u.iter().zip(&m.v).map(|(a, b)| (a + b) / 2f64.sqrt()).collect();
        // Var((u+v)/sqrt2 . x) = (C_uu + C_vv)/2 + C_uv.
        let expected = (3.0 + 1.0) / 2.0 + p.cross_covariance();
        for gaussian in [false, true] {
            let mom = moments(&m, 300_000, gaussian, &[&diag, &m.v]);
            assert!((mom[0].0 - expected).abs() < 0.03, "gaussian={gaussian}: {} vs {expected}", mom[0].0);
            if gaussian {
                assert!(mom[1].1.abs() < 0.05, "the surrogate has no fourth cumulant along v");
            }
        }
        assert!((p.latent_correlation() - 0.8 * (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-15);
    }
}
