//! The K-neuron spherical denoiser
//! D_W(x_t) = alpha x_t + sum_k w_k [a_k g(w_k . x_t) + b_k (w_k . x_t)]
//! and its online projected SGD update (the directions on the sphere; the
//! readouts a_k, b_k fixed or trained by plain SGD).

use rand::Rng;

use crate::model::{dot, random_unit, Activation};

/// Weights are stored row-major: neuron k is `w[k*d .. (k+1)*d]`, each of unit norm.
#[derive(Debug, Clone, PartialEq)]
pub struct Denoiser {
    pub d: usize,
    pub k: usize,
    pub w: Vec<f64>,
    pub activation: Activation,
    /// Amplitude a_k of each neuron's nonlinearity.
    pub a: Vec<f64>,
    /// Linear gain b_k of each neuron.
    pub b: Vec<f64>,
}

/// Learning rates of the readouts; `None` keeps them fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadoutRates {
    pub eta_a: f64,
    pub eta_b: f64,
}

/// Work buffers reused across steps (no allocation in the hot loop).
#[derive(Debug, Clone)]
pub struct Scratch {
    pub(crate) r: Vec<f64>,
    y: Vec<f64>,
    g: Vec<f64>,
    dg: Vec<f64>,
}

impl Scratch {
    pub fn new(d: usize, k: usize) -> Self {
        Scratch { r: vec![0.0; d], y: vec![0.0; k], g: vec![0.0; k], dg: vec![0.0; k] }
    }
}

impl Denoiser {
    /// Each neuron uniform on the sphere, with readouts (a, b).
    pub fn random<R: Rng + ?Sized>(d: usize, k: usize, activation: Activation, (a, b): (f64, f64), rng: &mut R) -> Self {
        let mut w = Vec::with_capacity(d * k);
        for _ in 0..k {
            w.extend(random_unit(rng, d));
        }
        Denoiser { d, k, w, activation, a: vec![a; k], b: vec![b; k] }
    }

    /// The correction of neuron k at pre-activation y: a_k g(y) + b_k y.
    #[inline]
    pub fn output(&self, k: usize, y: f64) -> f64 {
        self.a[k] * self.activation.value(y) + self.b[k] * y
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
            let hk = self.output(k, dot(wk, xt));
            for (o, wi) in out.iter_mut().zip(wk) {
                *o += hk * wi;
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
    /// sum_k h_k (w_k . (alpha x_t - x)) + 1/2 ||sum_k h_k w_k||^2 with h_k the
    /// neuron's output a_k g(y_k) + b_k y_k.
    /// Its variance is O(1) where the loss's is O(d), so test losses are
    /// estimated as the analytic baseline plus the mean of this.
    pub fn excess_loss(&self, x: &[f64], xt: &[f64], alpha: f64, scratch: &mut Scratch) -> f64 {
        let mut e = 0.0;
        for k in 0..self.k {
            let wk = self.neuron(k);
            let yk = dot(wk, xt);
            let hk = self.output(k, yk);
            scratch.g[k] = hk;
            e += hk * (alpha * yk - dot(wk, x));
        }
        let mut quad = 0.0;
        for j in 0..self.k {
            quad += scratch.g[j] * scratch.g[j];
            for l in 0..j {
                quad += 2.0 * scratch.g[j] * scratch.g[l] * dot(self.neuron(j), self.neuron(l));
            }
        }
        e + 0.5 * quad
    }

    /// Gradient of the per-sample loss with respect to every w_k (ambient, not
    /// projected): h_k r + h_k' (w_k . r) x_t with r = D_W(x_t) - x, h_k the
    /// neuron's output and h_k' = a_k g'(y_k) + b_k; into `grad`. Returns the
    /// gradients with respect to (a_k, b_k): ((w_k . r) g(y_k), (w_k . r) y_k).
    pub fn gradient(&self, x: &[f64], xt: &[f64], alpha: f64, grad: &mut [f64]) -> Vec<(f64, f64)> {
        let mut r = vec![0.0; self.d];
        self.apply(xt, alpha, &mut r);
        for (ri, xi) in r.iter_mut().zip(x) {
            *ri -= xi;
        }
        let mut readout = Vec::with_capacity(self.k);
        for k in 0..self.k {
            let wk = self.neuron(k);
            let yk = dot(wk, xt);
            let (gk, dgk) = (self.activation.value(yk), self.activation.derivative(yk));
            let (hk, dhk) = (self.a[k] * gk + self.b[k] * yk, self.a[k] * dgk + self.b[k]);
            let wr = dot(wk, &r);
            for ((gi, ri), xti) in grad[k * self.d..(k + 1) * self.d].iter_mut().zip(&r).zip(xt) {
                *gi = hk * ri + dhk * wr * xti;
            }
            readout.push((wr * gk, wr * yk));
        }
        readout
    }

    /// One step of online projected SGD on the sample (x, x_t), every gradient
    /// taken before any parameter moves:
    /// w_k <- (w_k - eta grad_k) / ||w_k - eta grad_k||, and with `readout`
    /// a_k <- a_k - eta_a (w_k . r) g(y_k), b_k <- b_k - eta_b (w_k . r) y_k.
    /// (`Trainer` runs the single-neuron fixed-readout case through a
    /// pipelined copy of this step; a test holds the two equal bit for bit.)
    #[inline]
    pub fn psgd_step(&mut self, x: &[f64], xt: &[f64], alpha: f64, eta: f64, readout: Option<ReadoutRates>, s: &mut Scratch) {
        let d = self.d;
        // r = alpha x_t - x + sum_k h_k w_k
        for k in 0..self.k {
            let y = dot(self.neuron(k), xt);
            s.y[k] = y;
            (s.g[k], s.dg[k]) = self.activation.value_and_derivative(y);
        }
        for ((ri, xti), xi) in s.r.iter_mut().zip(xt).zip(x) {
            *ri = alpha * xti - xi;
        }
        for k in 0..self.k {
            let hk = self.a[k] * s.g[k] + self.b[k] * s.y[k];
            for (ri, wi) in s.r.iter_mut().zip(&self.w[k * d..(k + 1) * d]) {
                *ri += hk * wi;
            }
        }
        for k in 0..self.k {
            let wk = &mut self.w[k * d..(k + 1) * d];
            let wr = dot(wk, &s.r);
            let c_r = eta * (self.a[k] * s.g[k] + self.b[k] * s.y[k]);
            let c_x = eta * (self.a[k] * s.dg[k] + self.b[k]) * wr;
            if let Some(rates) = readout {
                self.a[k] -= rates.eta_a * wr * s.g[k];
                self.b[k] -= rates.eta_b * wr * s.y[k];
            }
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
        let mut den = Denoiser::random(20, k, activation, (1.0, 0.0), &mut rng);
        // Distinct readouts, so that every term of the gradient is exercised.
        for j in 0..k {
            den.a[j] = 0.8 - 0.3 * j as f64;
            den.b[j] = -0.2 + 0.25 * j as f64;
        }
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
            let readout = den.gradient(&x, &xt, 0.7, &mut grad);
            for (k, (ga, gb)) in readout.iter().enumerate() {
                let h = 1e-6;
                // Central differences of the loss in one readout.
                let fd = |bump: &dyn Fn(&mut Denoiser, f64)| {
                    let (mut p, mut m) = (den.clone(), den.clone());
                    bump(&mut p, h);
                    bump(&mut m, -h);
                    (p.loss(&x, &xt, 0.7) - m.loss(&x, &xt, 0.7)) / (2.0 * h)
                };
                let fd_a = fd(&|d: &mut Denoiser, e: f64| d.a[k] += e);
                let fd_b = fd(&|d: &mut Denoiser, e: f64| d.b[k] += e);
                assert!((fd_a - ga).abs() < 1e-6 * (1.0 + ga.abs()), "{act:?} a_{k}: fd {fd_a} vs {ga}");
                assert!((fd_b - gb).abs() < 1e-6 * (1.0 + gb.abs()), "{act:?} b_{k}: fd {fd_b} vs {gb}");
            }
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
        let rates = ReadoutRates { eta_a: 0.03, eta_b: 0.02 };
        let readout = den.gradient(&x, &xt, 0.7, &mut vec![0.0; den.w.len()]);
        stepped.psgd_step(&x, &xt, 0.7, eta, Some(rates), &mut Scratch::new(20, 2));
        for (k, (ga, gb)) in readout.iter().enumerate() {
            assert!((stepped.a[k] - (den.a[k] - 0.03 * ga)).abs() < 1e-14);
            assert!((stepped.b[k] - (den.b[k] - 0.02 * gb)).abs() < 1e-14);
        }
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
