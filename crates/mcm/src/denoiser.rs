//! The K-neuron spherical denoiser D_W(x_t) = alpha x_t + a sum_k w_k g(w_k . x_t)
//! and its online projected SGD update.

use rand::Rng;

use crate::model::{dot, random_unit, Activation};

/// Weights are stored row-major: neuron k is `w[k*d .. (k+1)*d]`, each of unit norm.
#[derive(Debug, Clone, PartialEq)]
pub struct Denoiser {
    pub d: usize,
    pub k: usize,
    pub w: Vec<f64>,
    pub activation: Activation,
    /// Fixed output scale a.
    pub a: f64,
}

/// Work buffers reused across steps (no allocation in the hot loop).
#[derive(Debug, Clone)]
pub struct Scratch {
    pub(crate) r: Vec<f64>,
    g: Vec<f64>,
    dg: Vec<f64>,
}

impl Scratch {
    pub fn new(d: usize, k: usize) -> Self {
        Scratch { r: vec![0.0; d], g: vec![0.0; k], dg: vec![0.0; k] }
    }
}

impl Denoiser {
    /// Each neuron uniform on the sphere.
    pub fn random<R: Rng + ?Sized>(d: usize, k: usize, activation: Activation, a: f64, rng: &mut R) -> Self {
        let mut w = Vec::with_capacity(d * k);
        for _ in 0..k {
            w.extend(random_unit(rng, d));
        }
        Denoiser { d, k, w, activation, a }
    }

    pub fn neuron(&self, k: usize) -> &[f64] {
        &self.w[k * self.d..(k + 1) * self.d]
    }

    /// D_W(x_t) into `out`.
    pub fn apply(&self, xt: &[f64], alpha: f64, out: &mut [f64]) {
        for (o, x) in out.iter_mut().zip(xt) {
            *o = alpha * x;
        }
        for k in 0..self.k {
            let wk = self.neuron(k);
            let gk = self.a * self.activation.value(dot(wk, xt));
            for (o, wi) in out.iter_mut().zip(wk) {
                *o += gk * wi;
            }
        }
    }

    /// Per-sample loss 1/2 ||D_W(x_t) - x||^2.
    pub fn loss(&self, x: &[f64], xt: &[f64], alpha: f64) -> f64 {
        let mut out = vec![0.0; self.d];
        self.apply(xt, alpha, &mut out);
        0.5 * out.iter().zip(x).map(|(o, xi)| (o - xi) * (o - xi)).sum::<f64>()
    }

    /// loss(x, x_t) - 1/2 ||alpha x_t - x||^2, computed from projections only:
    /// a sum_k g_k (w_k . (alpha x_t - x)) + a^2/2 ||sum_k g_k w_k||^2.
    /// Its variance is O(1) where the loss's is O(d), so test losses are
    /// estimated as the analytic baseline plus the mean of this.
    pub fn excess_loss(&self, x: &[f64], xt: &[f64], alpha: f64, scratch: &mut Scratch) -> f64 {
        let mut e = 0.0;
        for k in 0..self.k {
            let wk = self.neuron(k);
            let yk = dot(wk, xt);
            let gk = self.activation.value(yk);
            scratch.g[k] = gk;
            e += self.a * gk * (alpha * yk - dot(wk, x));
        }
        let mut quad = 0.0;
        for j in 0..self.k {
            quad += scratch.g[j] * scratch.g[j];
            for l in 0..j {
                quad += 2.0 * scratch.g[j] * scratch.g[l] * dot(self.neuron(j), self.neuron(l));
            }
        }
        e + 0.5 * self.a * self.a * quad
    }

    /// Gradient of the per-sample loss with respect to every w_k (ambient, not
    /// projected): a g(y_k) r + a g'(y_k) (w_k . r) x_t with r = D_W(x_t) - x.
    pub fn gradient(&self, x: &[f64], xt: &[f64], alpha: f64, grad: &mut [f64]) {
        let mut r = vec![0.0; self.d];
        self.apply(xt, alpha, &mut r);
        for (ri, xi) in r.iter_mut().zip(x) {
            *ri -= xi;
        }
        for k in 0..self.k {
            let wk = self.neuron(k);
            let yk = dot(wk, xt);
            let (gk, dgk) = (self.activation.value(yk), self.activation.derivative(yk));
            let wr = dot(wk, &r);
            for ((gi, ri), xti) in grad[k * self.d..(k + 1) * self.d].iter_mut().zip(&r).zip(xt) {
                *gi = self.a * (gk * ri + dgk * wr * xti);
            }
        }
    }

    /// One step of online projected SGD on the sample (x, x_t):
    /// w_k <- (w_k - eta grad_k) / ||w_k - eta grad_k||.
    /// (`Trainer` runs the single-neuron case through a pipelined copy of this
    /// step; a test holds the two equal bit for bit.)
    #[inline]
    pub fn psgd_step(&mut self, x: &[f64], xt: &[f64], alpha: f64, eta: f64, s: &mut Scratch) {
        let d = self.d;
        // r = alpha x_t - x + a sum_k g_k w_k
        for k in 0..self.k {
            (s.g[k], s.dg[k]) = self.activation.value_and_derivative(dot(self.neuron(k), xt));
        }
        for ((ri, xti), xi) in s.r.iter_mut().zip(xt).zip(x) {
            *ri = alpha * xti - xi;
        }
        for k in 0..self.k {
            let ag = self.a * s.g[k];
            for (ri, wi) in s.r.iter_mut().zip(&self.w[k * d..(k + 1) * d]) {
                *ri += ag * wi;
            }
        }
        for k in 0..self.k {
            let wk = &mut self.w[k * d..(k + 1) * d];
            let wr = dot(wk, &s.r);
            let c_r = eta * self.a * s.g[k];
            let c_x = eta * self.a * s.dg[k] * wr;
            let mut norm2 = 0.0;
            for ((wi, ri), xti) in wk.iter_mut().zip(&s.r).zip(xt) {
                *wi -= c_r * ri + c_x * xti;
                norm2 += *wi * *wi;
            }
            let inv = 1.0 / norm2.sqrt();
            for wi in wk.iter_mut() {
                *wi *= inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rng_for, Coupling, Mcm, McmParams, NuLaw};

    fn setup(activation: Activation, k: usize) -> (Mcm, Denoiser, Vec<f64>, Vec<f64>) {
        let params = McmParams { d: 20, beta_u: 2.0, beta_v: 5.0, nu: NuLaw::Rademacher, coupling: Coupling::None };
        let model = Mcm::new(params, 3);
        let mut rng = rng_for(5, 0);
        let den = Denoiser::random(20, k, activation, 1.0, &mut rng);
        let mut x = vec![0.0; 20];
        model.sample_into(&mut rng, &mut x);
        let xt: Vec<f64> = x.iter().map(|xi| 0.7 * xi + 0.3 * rng.random::<f64>()).collect();
        (model, den, x, xt)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for act in [Activation::Tanh2, Activation::Tanh, Activation::Linear] {
            let (_, den, x, xt) = setup(act, 2);
            let mut grad = vec![0.0; den.w.len()];
            den.gradient(&x, &xt, 0.7, &mut grad);
            for i in [0, 7, 19, 20, 33] {
                let h = 1e-6;
                let (mut p, mut m) = (den.clone(), den.clone());
                p.w[i] += h;
                m.w[i] -= h;
                let fd = (p.loss(&x, &xt, 0.7) - m.loss(&x, &xt, 0.7)) / (2.0 * h);
                assert!((fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()), "{act:?} coord {i}: fd {fd} vs {}", grad[i]);
            }
        }
    }

    #[test]
    fn psgd_step_is_the_projected_gradient_step_and_keeps_unit_norm() {
        let (_, den, x, xt) = setup(Activation::Tanh2, 2);
        let eta = 0.05;
        let mut grad = vec![0.0; den.w.len()];
        den.gradient(&x, &xt, 0.7, &mut grad);
        let mut stepped = den.clone();
        stepped.psgd_step(&x, &xt, 0.7, eta, &mut Scratch::new(20, 2));
        for k in 0..2 {
            let raw: Vec<f64> = (0..20).map(|i| den.w[k * 20 + i] - eta * grad[k * 20 + i]).collect();
            let n = dot(&raw, &raw).sqrt();
            for (i, r) in raw.iter().enumerate() {
                assert!((stepped.w[k * 20 + i] - r / n).abs() < 1e-12);
            }
            assert!((dot(stepped.neuron(k), stepped.neuron(k)) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn excess_loss_is_loss_minus_isotropic_baseline() {
        let (_, den, x, xt) = setup(Activation::Tanh2, 3);
        let base = 0.5 * x.iter().zip(&xt).map(|(a, b)| (0.7 * b - a).powi(2)).sum::<f64>();
        let e = den.excess_loss(&x, &xt, 0.7, &mut Scratch::new(20, 3));
        assert!((den.loss(&x, &xt, 0.7) - base - e).abs() < 1e-10);
    }
}
