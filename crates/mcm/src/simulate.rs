//! Online projected SGD of the denoiser on fresh MCM samples: overlap
//! trajectories with test losses, and weak-recovery times.

use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::denoiser::{Denoiser, ReadoutRates, Scratch};
use crate::model::{dot, fill_normal, rng_for, Activation, Latents, Mcm, McmParams, NoiseLevel, SimRng};
use crate::network_loss::{NetworkLoss, NetworkLosses, NetworkState};
use crate::reduced::{self, ReducedSampler, ReducedState, StepRule};

/// How the readouts (a_k, b_k) of the neurons behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readout {
    /// a_k = a, b_k = 0 for ever (the model of Figures 3 and 4).
    Fixed { a: f64 },
    /// Start at (a0, b0); trained by SGD at rate delta / d^lr_exponent.
    Learned { a0: f64, b0: f64, delta: f64, lr_exponent: f64 },
}

impl Readout {
    /// The readouts at initialisation.
    pub fn initial(self) -> (f64, f64) {
        match self {
            Readout::Fixed { a } => (a, 0.0),
            Readout::Learned { a0, b0, .. } => (a0, b0),
        }
    }

    /// Learning rates in dimension d (`None`: fixed).
    pub fn rates(self, d: usize) -> Option<ReadoutRates> {
        match self {
            Readout::Fixed { .. } => None,
            Readout::Learned { delta, lr_exponent, .. } => {
                let eta = delta / (d as f64).powf(lr_exponent);
                Some(ReadoutRates { eta_a: eta, eta_b: eta })
            }
        }
    }
}

/// Which simulation of the same online pSGD runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulator {
    /// The exact Markov chain on the overlaps (`crate::reduced`): O(K^3) per
    /// step whatever d.
    Reduced,
    /// Full d-dimensional samples and weights: O(K d) per step.
    Full,
}

/// One training run's setup (the model instance is passed separately).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsgdConfig {
    pub noise: NoiseLevel,
    /// Number of neurons K.
    pub neurons: usize,
    pub activation: Activation,
    pub readout: Readout,
    /// Learning rate of the directions eta = delta / d^lr_exponent.
    pub delta: f64,
    pub lr_exponent: f64,
    pub simulator: Simulator,
}

impl PsgdConfig {
    pub fn learning_rate(&self, d: usize) -> f64 {
        self.delta / (d as f64).powf(self.lr_exponent)
    }
}

/// A training run, whichever simulator carries it.
pub trait Simulation {
    /// Samples seen so far.
    fn samples(&self) -> u64;
    /// Trains until `n` samples have been seen.
    fn run_until(&mut self, n: u64);
    /// (m_u, m_v) of neuron k.
    fn overlaps(&self, k: usize) -> (f64, f64);
    /// (a_k, b_k).
    fn readout(&self, k: usize) -> (f64, f64);
    /// w_j . w_k.
    fn neuron_overlap(&self, j: usize, k: usize) -> f64;
    /// Test losses on `n_test` fresh samples drawn from `rng`.
    fn test_losses(&self, n_test: usize, rng: &mut SimRng) -> TestLosses;
    /// The Gram matrix of (u, v, w_1..w_K) and the readouts: everything the
    /// population losses depend on.
    fn network_state(&self) -> NetworkState {
        let k = self.readouts_len();
        let n = k + 2;
        let mut gram = vec![0.0; n * n];
        for i in 0..n {
            gram[i * n + i] = 1.0;
        }
        for j in 0..k {
            let (mu, mv) = self.overlaps(j);
            for (i, m) in [(0, mu), (1, mv)] {
                gram[i * n + 2 + j] = m;
                gram[(2 + j) * n + i] = m;
            }
            for l in 0..j {
                let o = self.neuron_overlap(j, l);
                gram[(2 + j) * n + 2 + l] = o;
                gram[(2 + l) * n + 2 + j] = o;
            }
        }
        let (a, b) = (0..k).map(|j| self.readout(j)).unzip();
        NetworkState { gram, a, b }
    }
    /// The number of neurons K.
    fn readouts_len(&self) -> usize;
}

/// Streams of one replica: training samples, initialisation, test samples.
fn replica_rngs(seed: u64, replica: u64) -> (SimRng, SimRng, SimRng) {
    (rng_for(seed, 3 * replica), rng_for(seed, 3 * replica + 1), rng_for(seed, 3 * replica + 2))
}

/// The training loop's state for one replica.
pub struct Trainer<'m> {
    pub model: &'m Mcm,
    pub cfg: PsgdConfig,
    pub den: Denoiser,
    pub n: u64,
    eta: f64,
    rng: SimRng,
    x: Vec<f64>,
    xt: Vec<f64>,
    scratch: Scratch,
    /// Between single-neuron steps: the next sample's latents and v.z, when
    /// `x` already holds its white noise z and `xt` its noise xi.
    drawn: Option<DrawnNoise>,
}

/// The latents of the next sample and v.z of its white noise z.
#[derive(Debug, Clone, Copy)]
struct DrawnNoise {
    lat: Latents,
    v_dot_z: f64,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m Mcm, cfg: PsgdConfig, seed: u64, replica: u64) -> Self {
        let d = model.params.d;
        let (rng, mut init_rng, _) = replica_rngs(seed, replica);
        let den = Denoiser::random(d, cfg.neurons, cfg.activation, cfg.readout.initial(), &mut init_rng);
        Trainer {
            model,
            cfg,
            den,
            n: 0,
            eta: cfg.learning_rate(d),
            rng,
            x: vec![0.0; d],
            xt: vec![0.0; d],
            scratch: Scratch::new(d, cfg.neurons),
            drawn: None,
        }
    }

    /// One fresh sample, one pSGD step. Draws 2d + 2 normals (d + 1 for
    /// Rademacher-free latents: lambda, nu, z, xi).
    #[inline]
    pub fn step(&mut self) {
        if self.cfg.neurons == 1 && matches!(self.cfg.readout, Readout::Fixed { .. }) {
            self.step_single_neuron();
        } else {
            self.step_reference();
        }
        self.n += 1;
    }

    /// The plain step: draw a sample, noise it, take `Denoiser::psgd_step`.
    fn step_reference(&mut self) {
        let NoiseLevel { alpha, sigma, .. } = self.cfg.noise;
        self.model.sample_into(&mut self.rng, &mut self.x);
        for (xti, xi) in self.xt.iter_mut().zip(&self.x) {
            let xi_noise: f64 = StandardNormal.sample(&mut self.rng);
            *xti = alpha * xi + sigma * xi_noise;
        }
        let readout = self.cfg.readout.rates(self.model.params.d);
        self.den.psgd_step(&self.x, &self.xt, alpha, self.eta, readout, &mut self.scratch);
    }

    /// `step_reference` for one neuron, software-pipelined; the results are
    /// the same bit for bit (tested). Drawing the normals is the bottleneck.
    /// The floating-point work is done in plain passes the compiler vectorises,
    /// except the squared norm of the updated w, a sequential sum whose latency
    /// is hidden by drawing the next sample's white noise in the same loop; so
    /// between steps `x` and `xt` hold the next z and xi (`drawn`). Numbers are
    /// drawn in the reference's order, and every floating-point operation is
    /// the reference's, in the same order.
    #[inline]
    fn step_single_neuron(&mut self) {
        let d = self.model.params.d;
        let NoiseLevel { alpha, sigma, .. } = self.cfg.noise;
        let (eta, a, activation) = (self.eta, self.den.a[0], self.den.activation);
        let model = self.model;
        // A local copy of the generator state, so it can live in registers.
        let mut local_rng = self.rng.clone();
        let rng = &mut local_rng;
        let (x, xt, r) = (&mut self.x[..d], &mut self.xt[..d], &mut self.scratch.r[..d]);
        let (u, v, w) = (&model.u[..d], &model.v[..d], &mut self.den.w[..d]);
        let noise = match self.drawn.take() {
            Some(drawn) => drawn,
            None => {
                let lat = model.sample_latents(rng);
                fill_normal(rng, x);
                let v_dot_z = dot(v, x);
                fill_normal(rng, xt);
                DrawnNoise { lat, v_dot_z }
            }
        };

        // x = z + coef_u u + coef_v v, x_t = alpha x + sigma xi, the residual
        // r = alpha x_t - x + a g w (fusing the projections into these passes
        // would stop their vectorisation).
        let (coef_u, coef_v) = model.spike_coefficients(noise.lat, noise.v_dot_z);
        for (((xi, xti), ui), vi) in x.iter_mut().zip(xt.iter_mut()).zip(u).zip(v) {
            *xi += coef_u * ui + coef_v * vi;
            *xti = alpha * *xi + sigma * *xti;
        }
        let y = dot(w, xt);
        let (g, dg) = activation.value_and_derivative(y);
        // b = 0: the reference's a g + b y and a g' + b, bit for bit.
        let ag = a * g + 0.0 * y;
        for (((ri, xti), xi), wi) in r.iter_mut().zip(xt.iter()).zip(x.iter()).zip(w.iter()) {
            *ri = (alpha * xti - xi) + ag * wi;
        }
        let wr = dot(w, r);
        let c_r = eta * ag;
        let c_x = eta * (a * dg + 0.0) * wr;

        // The update of w, then its squared norm with the next sample's
        // latents and z drawn (into x, no longer needed) in the same loop.
        for ((wi, ri), xti) in w.iter_mut().zip(r.iter()).zip(xt.iter()) {
            *wi -= c_r * ri + c_x * xti;
        }
        let lat = model.sample_latents(rng);
        let mut norm2 = 0.0;
        for (wi, xi) in w.iter().zip(x.iter_mut()) {
            norm2 += wi * wi;
            *xi = StandardNormal.sample(rng);
        }
        let v_dot_z = dot(v, x);

        // Back on the sphere; the next sample's xi into x_t.
        let inv = 1.0 / norm2.sqrt();
        for wi in w.iter_mut() {
            *wi *= inv;
        }
        fill_normal(rng, xt);
        self.drawn = Some(DrawnNoise { lat, v_dot_z });
        self.rng = local_rng;
    }

    pub fn run_until(&mut self, n: u64) {
        while self.n < n {
            self.step();
        }
    }

    /// (m_u, m_v) of neuron k.
    pub fn overlaps(&self, k: usize) -> (f64, f64) {
        let w = self.den.neuron(k);
        (dot(w, &self.model.u), dot(w, &self.model.v))
    }
}

impl Simulation for Trainer<'_> {
    fn samples(&self) -> u64 {
        self.n
    }
    fn run_until(&mut self, n: u64) {
        Trainer::run_until(self, n)
    }
    fn overlaps(&self, k: usize) -> (f64, f64) {
        Trainer::overlaps(self, k)
    }
    fn readout(&self, k: usize) -> (f64, f64) {
        (self.den.a[k], self.den.b[k])
    }
    fn neuron_overlap(&self, j: usize, k: usize) -> f64 {
        dot(self.den.neuron(j), self.den.neuron(k))
    }
    fn test_losses(&self, n_test: usize, rng: &mut SimRng) -> TestLosses {
        test_losses(self.model, &self.den, self.cfg.noise, n_test, rng)
    }
    fn readouts_len(&self) -> usize {
        self.den.k
    }
}

/// The reduced chain of one replica: same streams as [`Trainer`] (training,
/// initialisation, test), consumed differently.
pub struct ReducedTrainer<'m> {
    pub model: &'m Mcm,
    pub cfg: PsgdConfig,
    pub state: ReducedState,
    pub n: u64,
    rule: StepRule,
    sampler: ReducedSampler,
    rng: SimRng,
}

impl<'m> ReducedTrainer<'m> {
    pub fn new(model: &'m Mcm, cfg: PsgdConfig, seed: u64, replica: u64) -> Self {
        let d = model.params.d;
        let (rng, mut init_rng, _) = replica_rngs(seed, replica);
        let state = ReducedState::random(d, cfg.neurons, cfg.readout.initial(), &mut init_rng);
        let rule = StepRule {
            noise: cfg.noise,
            activation: cfg.activation,
            eta: cfg.learning_rate(d),
            readout: cfg.readout.rates(d),
        };
        ReducedTrainer { model, cfg, state, n: 0, rule, sampler: ReducedSampler::new(d, cfg.neurons), rng }
    }

    #[inline]
    pub fn step(&mut self) {
        let sample = self.sampler.sample(self.model, &mut self.rng);
        self.state.step(self.model, &self.rule, &sample);
        self.n += 1;
    }
}

impl Simulation for ReducedTrainer<'_> {
    fn samples(&self) -> u64 {
        self.n
    }
    fn run_until(&mut self, n: u64) {
        while self.n < n {
            self.step();
        }
    }
    fn overlaps(&self, k: usize) -> (f64, f64) {
        self.state.overlaps(k)
    }
    fn readout(&self, k: usize) -> (f64, f64) {
        (self.state.a[k], self.state.b[k])
    }
    fn neuron_overlap(&self, j: usize, k: usize) -> f64 {
        self.state.neuron_overlap(j, k)
    }
    fn test_losses(&self, n_test: usize, rng: &mut SimRng) -> TestLosses {
        let (model, noise) = (self.model, self.cfg.noise);
        let (em, sm) = reduced::mean_excess_loss(model, &self.state, self.cfg.activation, noise, n_test, false, rng);
        let (eg, sg) = reduced::mean_excess_loss(model, &self.state, self.cfg.activation, noise, n_test, true, rng);
        let base = isotropic_loss(&model.params, noise);
        TestLosses {
            mcm: base + em,
            mcm_se: sm,
            gauss: base + eg,
            gauss_se: sg,
            wiener: wiener_loss(&model.params, noise),
            isotropic: base,
        }
    }
    fn readouts_len(&self) -> usize {
        self.state.k
    }
}

/// The simulation of one replica that `cfg.simulator` asks for.
pub fn simulation<'m>(model: &'m Mcm, cfg: PsgdConfig, seed: u64, replica: u64) -> Box<dyn Simulation + Send + 'm> {
    match cfg.simulator {
        Simulator::Full => Box::new(Trainer::new(model, cfg, seed, replica)),
        Simulator::Reduced => Box::new(ReducedTrainer::new(model, cfg, seed, replica)),
    }
}

/// Test losses of a denoiser (means of 1/2 ||D - x||^2 per sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestLosses {
    pub mcm: f64,
    pub mcm_se: f64,
    pub gauss: f64,
    pub gauss_se: f64,
    pub wiener: f64,
    /// Loss of alpha x_t, the optimal denoiser for isotropic Gaussian data.
    pub isotropic: f64,
}

/// Loss of D0 = alpha x_t on any data with covariance trace d + beta_u:
/// 1/2 (sigma^2 d + sigma^4 beta_u).
pub fn isotropic_loss(p: &McmParams, noise: NoiseLevel) -> f64 {
    let s2 = noise.sigma * noise.sigma;
    0.5 * (s2 * p.d as f64 + s2 * s2 * p.beta_u)
}

/// Loss of the optimal linear (Wiener) denoiser alpha C (alpha^2 C + sigma^2)^-1 x_t:
/// 1/2 sum_i lambda_i sigma^2 / (alpha^2 lambda_i + sigma^2).
pub fn wiener_loss(p: &McmParams, noise: NoiseLevel) -> f64 {
    let (a2, s2) = (noise.alpha * noise.alpha, noise.sigma * noise.sigma);
    let spikes: f64 = p.spike_eigen().iter().map(|(l, _)| l * s2 / (a2 * l + s2)).sum();
    0.5 * ((p.d as f64 - 2.0) * s2 + spikes)
}

/// Estimates the test losses on `n_test` fresh MCM and surrogate samples drawn
/// from `rng`: the analytic baseline plus the mean excess over it.
pub fn test_losses(model: &Mcm, den: &Denoiser, noise: NoiseLevel, n_test: usize, rng: &mut SimRng) -> TestLosses {
    let d = model.params.d;
    let (mut x, mut xt) = (vec![0.0; d], vec![0.0; d]);
    let mut scratch = Scratch::new(d, den.k);
    let mut stats = |gaussian: bool, rng: &mut SimRng| {
        let (mut sum, mut sum2) = (0.0, 0.0);
        for _ in 0..n_test {
            if gaussian {
                model.sample_gaussian_into(rng, &mut x);
            } else {
                model.sample_into(rng, &mut x);
            }
            for (xti, xi) in xt.iter_mut().zip(&x) {
                let e: f64 = StandardNormal.sample(rng);
                *xti = noise.alpha * xi + noise.sigma * e;
            }
            let e = den.excess_loss(&x, &xt, noise.alpha, &mut scratch);
            sum += e;
            sum2 += e * e;
        }
        mean_and_standard_error(sum, sum2, n_test)
    };
    let base = isotropic_loss(&model.params, noise);
    let (em, sm) = stats(false, rng);
    let (eg, sg) = stats(true, rng);
    TestLosses {
        mcm: base + em,
        mcm_se: sm,
        gauss: base + eg,
        gauss_se: sg,
        wiener: wiener_loss(&model.params, noise),
        isotropic: base,
    }
}

/// Mean and standard error of `n` values from their sum and sum of squares.
pub(crate) fn mean_and_standard_error(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    let n = n as f64;
    let mean = sum / n;
    let var = (sum2 / n - mean * mean).max(0.0) * n / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// `points` sample counts from 1 to n_max, log-spaced, plus 0; distinct and sorted.
pub fn log_grid(n_max: u64, points: usize) -> Vec<u64> {
    let mut g = vec![0u64];
    if n_max == 0 {
        return g;
    }
    let points = points.max(2);
    for i in 0..points {
        let f = i as f64 / (points - 1) as f64;
        g.push((n_max as f64).powf(f).round() as u64);
    }
    g.sort_unstable();
    g.dedup();
    g
}

/// One row of a trajectory: neuron `neuron` of replica `replica` after `n` samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrajectoryPoint {
    pub replica: u64,
    pub n: u64,
    pub neuron: usize,
    pub m_u: f64,
    pub m_v: f64,
    /// Readouts (a_k, b_k).
    pub a: f64,
    pub b: f64,
    /// Monte Carlo estimates on fresh test samples.
    pub losses: TestLosses,
    /// The same losses by quadrature (population values), when asked for.
    pub exact: Option<NetworkLosses>,
}

/// Trains `replicas` independent denoisers (in parallel) on the same model and
/// records overlaps and test losses on `grid`. Same seed, same numbers,
/// whatever the thread count: each replica owns its generator streams.
pub fn trajectories(
    model: &Mcm,
    cfg: PsgdConfig,
    seed: u64,
    replicas: u64,
    grid: &[u64],
    n_test: usize,
    exact_losses: bool,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Vec<TrajectoryPoint> {
    let quadrature = exact_losses.then(|| NetworkLoss::new(model.params, cfg.noise, cfg.activation));
    let per_replica: Vec<Vec<TrajectoryPoint>> = (0..replicas)
        .into_par_iter()
        .map(|replica| {
            let mut tr = simulation(model, cfg, seed, replica);
            let (_, _, test_seed_rng) = replica_rngs(seed, replica);
            let mut out = Vec::new();
            for &n in grid {
                let before = tr.samples();
                tr.run_until(n);
                on_progress(tr.samples() - before);
                // The same test samples at every grid point (common random numbers in time).
                let mut test_rng = test_seed_rng.clone();
                let losses = tr.test_losses(n_test, &mut test_rng);
                // The simulation keeps unit rows to rounding, which the quadrature accepts.
                let exact = quadrature.as_ref().map(|q| q.losses(&tr.network_state()).expect("the state of a simulation is a valid Gram matrix"));
                for k in 0..cfg.neurons {
                    let (m_u, m_v) = tr.overlaps(k);
                    let (a, b) = tr.readout(k);
                    out.push(TrajectoryPoint { replica, n, neuron: k, m_u, m_v, a, b, losses, exact });
                }
            }
            out
        })
        .collect();
    per_replica.into_iter().flatten().collect()
}

/// Which overlap defines weak recovery: the planted direction of the population loss.
pub use crate::population::Direction;

/// Result of a weak-recovery run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    pub replica: u64,
    /// First sample count at which max_k |m| >= threshold (checked every
    /// `stride` samples), or the budget when censored.
    pub n: u64,
    pub censored: bool,
    pub initial_overlap: f64,
}

/// Runs pSGD until some neuron's |overlap with `dir`| reaches `threshold`,
/// or `budget` samples. Replicas in parallel, deterministic per seed.
#[allow(clippy::too_many_arguments)]
pub fn recovery_times(
    model: &Mcm,
    cfg: PsgdConfig,
    seed: u64,
    replicas: u64,
    dir: Direction,
    threshold: f64,
    budget: u64,
    stride: u64,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Vec<Recovery> {
    let overlap = |tr: &dyn Simulation| -> f64 {
        (0..cfg.neurons)
            .map(|k| {
                let (mu, mv) = tr.overlaps(k);
                match dir {
                    Direction::U => mu.abs(),
                    Direction::V => mv.abs(),
                }
            })
            .fold(0.0, f64::max)
    };
    (0..replicas)
        .into_par_iter()
        .map(|replica| {
            let mut tr = simulation(model, cfg, seed, replica);
            let initial_overlap = overlap(tr.as_ref());
            let stride = stride.max(1);
            let mut reported = 0;
            loop {
                if overlap(tr.as_ref()) >= threshold {
                    on_progress(budget - reported);
                    return Recovery { replica, n: tr.samples(), censored: false, initial_overlap };
                }
                if tr.samples() >= budget {
                    on_progress(budget - reported);
                    return Recovery { replica, n: budget, censored: true, initial_overlap };
                }
                let next = tr.samples().saturating_add(stride).min(budget);
                tr.run_until(next);
                if tr.samples() - reported > budget / 100 {
                    on_progress(tr.samples() - reported);
                    reported = tr.samples();
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Coupling, NuLaw};

    fn params(d: usize, coupling: Coupling) -> McmParams {
        McmParams { d, beta_u: 2.0, beta_v: 5.0, nu: NuLaw::Rademacher, coupling }
    }

    fn cfg() -> PsgdConfig {
        PsgdConfig {
            noise: NoiseLevel::at(0.3),
            neurons: 1,
            activation: Activation::Tanh2,
            readout: Readout::Fixed { a: 1.0 },
            delta: 1.0,
            lr_exponent: 1.0,
            simulator: Simulator::Full,
        }
    }

    #[test]
    fn same_seed_same_numbers_and_unit_norm() {
        let model = Mcm::new(params(32, Coupling::None), 1);
        let grid = log_grid(2000, 6);
        let a = trajectories(&model, cfg(), 7, 3, &grid, 50, true, &|_| {});
        let b = trajectories(&model, cfg(), 7, 3, &grid, 50, true, &|_| {});
        assert_eq!(a, b);
        let c = trajectories(&model, cfg(), 8, 3, &grid, 50, true, &|_| {});
        assert_ne!(a, c);
        // Thread count does not change the numbers.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let d = pool.install(|| trajectories(&model, cfg(), 7, 3, &grid, 50, true, &|_| {}));
        assert_eq!(a, d);
        let mut tr = Trainer::new(&model, cfg(), 1, 0);
        tr.run_until(500);
        assert!((dot(tr.den.neuron(0), tr.den.neuron(0)) - 1.0).abs() < 1e-10);
    }

    #[test]
    fn single_neuron_pipeline_matches_the_reference_step_bit_for_bit() {
        let laws = [
            (NuLaw::Rademacher, Coupling::None),
            (NuLaw::Uniform, Coupling::Linear { rho: 0.8 }),
            (NuLaw::Laplace, Coupling::None),
            (NuLaw::Gaussian, Coupling::Linear { rho: 0.3 }),
        ];
        // d not a multiple of four exercises the tails of the projections.
        for d in [2, 3, 5, 8, 13, 64] {
            for activation in [Activation::Tanh2, Activation::Tanh, Activation::Relu, Activation::Linear] {
                for (nu, coupling) in laws {
                    let model = Mcm::new(McmParams { d, beta_u: 2.0, beta_v: 5.0, nu, coupling }, 1);
                    let cfg = PsgdConfig { activation, delta: 0.5, ..cfg() };
                    let mut pipelined = Trainer::new(&model, cfg, 9, 2);
                    let mut reference = Trainer::new(&model, cfg, 9, 2);
                    for n in 1..=300 {
                        pipelined.step();
                        reference.step_reference();
                        if n % 50 == 0 || n < 4 {
                            let bits = |t: &Trainer| t.den.w.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&pipelined), bits(&reference), "d {d}, {activation:?}, {nu:?}, {coupling:?}, step {n}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn u_is_learned_at_n_over_d_of_order_ten() {
        let d = 64;
        let model = Mcm::new(params(d, Coupling::None), 2);
        let rec = recovery_times(&model, cfg(), 3, 4, Direction::U, 0.5, 200 * d as u64, 8, &|_| {});
        for r in &rec {
            assert!(!r.censored, "u not learned within n/d = 200: {r:?}");
            assert!(r.n < 100 * d as u64, "u learned late: {r:?}");
        }
    }

    #[test]
    fn wiener_loss_matches_a_monte_carlo_of_the_linear_denoiser() {
        // With the denoiser's neurons off (a = 0) the test loss is the isotropic baseline.
        let p = params(16, Coupling::Linear { rho: 0.8 });
        let model = Mcm::new(p, 4);
        let noise = NoiseLevel::at(0.3);
        let den = Denoiser { d: 16, k: 1, w: model.u.clone(), activation: Activation::Tanh2, a: vec![0.0], b: vec![0.0] };
        let l = test_losses(&model, &den, noise, 20000, &mut rng_for(1, 1));
        assert!((l.mcm - l.isotropic).abs() < 1e-12);
        // A linear neuron along the top eigenvector with the Wiener gain beats alpha x_t.
        assert!(l.wiener < l.isotropic);
    }

    #[test]
    fn both_simulators_estimate_the_exact_losses() {
        // Two neurons with learned readouts, part-way through training: the Monte
        // Carlo test losses of each simulator agree with the quadrature.
        let model = Mcm::new(params(24, Coupling::Linear { rho: 0.8 }), 6);
        for simulator in [Simulator::Reduced, Simulator::Full] {
            let cfg = PsgdConfig {
                neurons: 2,
                readout: Readout::Learned { a0: 0.8, b0: 0.1, delta: 0.5, lr_exponent: 1.0 },
                delta: 0.5,
                simulator,
                ..cfg()
            };
            let points = trajectories(&model, cfg, 3, 2, &[0, 3000], 40_000, true, &|_| {});
            for q in points {
                let exact = q.exact.expect("exact losses were asked for");
                for (mc, se, ex, what) in [(q.losses.mcm, q.losses.mcm_se, exact.mcm, "MCM"), (q.losses.gauss, q.losses.gauss_se, exact.gauss, "surrogate")] {
                    assert!((mc - ex).abs() < 4.0 * se, "{simulator:?} n {} {what}: Monte Carlo {mc} +- {se}, quadrature {ex}", q.n);
                }
            }
        }
    }

    #[test]
    fn log_grid_is_sorted_and_spans_the_range() {
        let g = log_grid(1000, 4);
        assert_eq!(g, vec![0, 1, 10, 100, 1000]);
    }
}
