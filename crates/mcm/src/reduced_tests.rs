//! The reduced chain against the full d-dimensional simulation: pathwise (the
//! same samples give the same overlaps) and in law (one-step transitions and
//! first-passage times), with a negative control that shows the law tests
//! have power.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::*;
use crate::denoiser::{Denoiser, ReadoutRates, Scratch};
use crate::model::{dot, rng_for, Coupling, McmParams, NuLaw, SimRng};

fn model(d: usize, coupling: Coupling, seed: u64) -> Mcm {
    Mcm::new(McmParams { d, beta_u: 2.0, beta_v: 5.0, nu: NuLaw::Rademacher, coupling }, seed)
}

/// The Gram-Schmidt basis (u, v, e_2, ...) of the full state, with positive
/// diagonal, and the coordinates of each neuron in it.
fn basis_and_coordinates(model: &Mcm, den: &Denoiser) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut basis = vec![model.u.clone(), model.v.clone()];
    let mut coords = Vec::new();
    for k in 0..den.k {
        let w = den.neuron(k);
        let mut row: Vec<f64> = basis.iter().map(|e| dot(e, w)).collect();
        let mut rest = w.to_vec();
        for (e, c) in basis.iter().zip(&row) {
            for (r, ei) in rest.iter_mut().zip(e) {
                *r -= c * ei;
            }
        }
        let norm = dot(&rest, &rest).sqrt();
        row.push(norm);
        basis.push(rest.iter().map(|r| r / norm).collect());
        coords.push(row);
    }
    (basis, coords)
}

/// The reduced view of the full sample (z, xi): coordinates along the basis
/// and the Bartlett factors of the rest.
fn reduce_sample(latents: Latents, z: &[f64], xi: &[f64], basis: &[Vec<f64>]) -> ReducedSample {
    let mut s = ReducedSample { latents, z: [0.0; MAX_M], xi: [0.0; MAX_M], c1: 0.0, n: 0.0, c2: 0.0 };
    let (mut z_rest, mut xi_rest) = (z.to_vec(), xi.to_vec());
    for (j, e) in basis.iter().enumerate() {
        (s.z[j], s.xi[j]) = (dot(e, z), dot(e, xi));
        for ((zr, xr), ei) in z_rest.iter_mut().zip(xi_rest.iter_mut()).zip(e) {
            *zr -= s.z[j] * ei;
            *xr -= s.xi[j] * ei;
        }
    }
    s.c1 = dot(&z_rest, &z_rest).sqrt();
    s.n = if s.c1 > 0.0 { dot(&z_rest, &xi_rest) / s.c1 } else { 0.0 };
    s.c2 = (dot(&xi_rest, &xi_rest) - s.n * s.n).max(0.0).sqrt();
    s
}

/// The basis-free description of a state: (m_u, m_v) of each neuron, the
/// neuron-neuron overlaps and the readouts.
fn invariants(overlaps: impl Fn(usize) -> (f64, f64), gram: impl Fn(usize, usize) -> f64, a: &[f64], b: &[f64], k: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for j in 0..k {
        let (mu, mv) = overlaps(j);
        out.extend([mu, mv, a[j], b[j]]);
        for l in 0..j {
            out.push(gram(j, l));
        }
    }
    out
}

fn full_invariants(model: &Mcm, den: &Denoiser) -> Vec<f64> {
    invariants(
        |j| (dot(den.neuron(j), &model.u), dot(den.neuron(j), &model.v)),
        |j, l| dot(den.neuron(j), den.neuron(l)),
        &den.a,
        &den.b,
        den.k,
    )
}

fn reduced_invariants(state: &ReducedState) -> Vec<f64> {
    invariants(|j| state.overlaps(j), |j, l| state.neuron_overlap(j, l), &state.a, &state.b, state.k)
}

/// Largest difference, relative to the size of the value where it exceeds 1
/// (readouts can grow).
fn largest_difference(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0, f64::max)
}

/// Full and reduced simulation driven by the same samples for `steps` steps.
/// Returns the largest difference of the overlaps and readouts (a) when the
/// reduced chain runs on its own from the common start, and (b) for a single
/// step of the reduced map from the full simulation's current state.
fn pathwise_gaps(d: usize, neurons: usize, rule: StepRule, coupling: Coupling, steps: usize, seed: u64) -> (f64, f64) {
    let model = model(d, coupling, seed);
    let mut rng = rng_for(seed, 1);
    let (a0, b0) = if rule.readout.is_some() { (0.7, -0.1) } else { (1.0, 0.0) };
    let mut den = Denoiser::random(d, neurons, rule.activation, (a0, b0), &mut rng);
    let (_, coords) = basis_and_coordinates(&model, &den);
    let mut state = ReducedState::from_coordinates(&coords, &den.a, &den.b);
    let mut scratch = Scratch::new(d, neurons);
    let (mut z, mut xi, mut x, mut xt) = (vec![0.0; d], vec![0.0; d], vec![0.0; d], vec![0.0; d]);
    let NoiseLevel { alpha, sigma, .. } = rule.noise;
    let (mut free_gap, mut step_gap): (f64, f64) = (0.0, 0.0);
    for _ in 0..steps {
        let latents = model.sample_latents(&mut rng);
        for (zi, xii) in z.iter_mut().zip(xi.iter_mut()) {
            *zi = StandardNormal.sample(&mut rng);
            *xii = StandardNormal.sample(&mut rng);
        }
        let (basis, coords) = basis_and_coordinates(&model, &den);
        let sample = reduce_sample(latents, &z, &xi, &basis);
        let mut synced = ReducedState::from_coordinates(&coords, &den.a, &den.b);
        x.copy_from_slice(&z);
        model.finish_sample(latents, &mut x);
        for ((xti, xi_), e) in xt.iter_mut().zip(&x).zip(&xi) {
            *xti = alpha * xi_ + sigma * e;
        }
        den.psgd_step(&x, &xt, alpha, rule.eta, rule.readout, &mut scratch);
        state.step(&model, &rule, &sample);
        synced.step(&model, &rule, &sample);
        let full = full_invariants(&model, &den);
        free_gap = free_gap.max(largest_difference(&full, &reduced_invariants(&state)));
        step_gap = step_gap.max(largest_difference(&full, &reduced_invariants(&synced)));
    }
    (free_gap, step_gap)
}

#[test]
fn the_reduced_step_follows_the_full_simulation_sample_by_sample() {
    let rates = Some(ReadoutRates { eta_a: 0.02, eta_b: 0.01 });
    let strong = Some(ReadoutRates { eta_a: 0.1, eta_b: 0.05 });
    // (d, K, activation, readout, delta (eta = delta / d), coupling, free-running?)
    // Large steps make the random map expanding (rounding differences grow
    // geometrically), so those cases are checked one step at a time only.
    let cases = [
        (4, 1, Activation::Tanh2, None, 0.1, Coupling::None, true),
        (4, 1, Activation::Tanh2, strong, 2.0, Coupling::None, false),
        (5, 1, Activation::Tanh, rates, 0.5, Coupling::Linear { rho: 0.8 }, true),
        (5, 2, Activation::Tanh2, rates, 0.5, Coupling::None, true),
        (5, 3, Activation::Relu, strong, 1.0, Coupling::None, false),
        (64, 1, Activation::Tanh2, None, 2.0, Coupling::None, true),
        (64, 2, Activation::Tanh2, rates, 1.0, Coupling::Linear { rho: 0.5 }, true),
        (64, 2, Activation::Linear, None, 0.3, Coupling::None, true),
        (64, 4, Activation::Tanh, strong, 8.0, Coupling::Linear { rho: 0.8 }, false),
        (1024, 1, Activation::Relu, rates, 5.0, Coupling::Linear { rho: 0.8 }, true),
        (1024, 2, Activation::Tanh2, rates, 3.0, Coupling::None, true),
    ];
    for (i, (d, k, activation, readout, delta, coupling, free)) in cases.into_iter().enumerate() {
        let rule = StepRule { noise: NoiseLevel::at(0.3), activation, eta: delta / d as f64, readout };
        let steps = if d > 100 { 1500 } else { 4000 };
        let (free_gap, step_gap) = pathwise_gaps(d, k, rule, coupling, steps, 100 + i as u64);
        let what = format!("case {i} (d {d}, K {k}, {activation:?}, eta {:.3})", rule.eta);
        assert!(step_gap < 1e-12, "{what}: one reduced step differs from the full step by {step_gap:e}");
        if free {
            assert!(free_gap < 1e-12, "{what}: after up to {steps} steps the overlaps differ by {free_gap:e}");
        }
    }
}

#[test]
fn rows_stay_unit_norm_and_lower_triangular() {
    let model = model(32, Coupling::None, 3);
    let rule = StepRule {
        noise: NoiseLevel::at(0.3),
        activation: Activation::Tanh2,
        eta: 0.05,
        readout: Some(ReadoutRates { eta_a: 0.01, eta_b: 0.01 }),
    };
    let mut rng = rng_for(3, 0);
    let mut state = ReducedState::random(32, 3, (1.0, 0.0), &mut rng);
    let sampler = ReducedSampler::new(32, 3);
    for _ in 0..20_000 {
        let s = sampler.sample(&model, &mut rng);
        state.step(&model, &rule, &s);
    }
    for k in 0..3 {
        assert!((state.neuron_overlap(k, k) - 1.0).abs() < 1e-13, "neuron {k}: |w|^2 = {}", state.neuron_overlap(k, k));
        assert!(state.w[k][k + 3..].iter().all(|c| *c == 0.0), "neuron {k}: {:?}", state.w[k]);
        assert!(state.w[k][k + 2] >= 0.0);
    }
}

/// Two-sample Kolmogorov-Smirnov test: the p-value of "same law".
fn ks_p_value(mut a: Vec<f64>, mut b: Vec<f64>) -> f64 {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut dmax) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        dmax = dmax.max((i as f64 / na - j as f64 / nb).abs());
    }
    let ne = na * nb / (na + nb);
    let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * dmax;
    let mut p = 0.0;
    for k in 1..=100 {
        let term = 2.0 * (-1f64).powi(k - 1) * (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        p += term;
        if term.abs() < 1e-12 {
            break;
        }
    }
    p.clamp(0.0, 1.0)
}

/// The statistic of one step from a fixed state: 1 - m_u'^2 - m_v'^2 of
/// neuron 0 (the weight outside span(u, v), where the rest of the sample acts).
fn one_step_full(model: &Mcm, den0: &Denoiser, rule: &StepRule, draws: usize, rng: &mut SimRng) -> Vec<f64> {
    let d = model.params.d;
    let mut scratch = Scratch::new(d, den0.k);
    let (mut x, mut xt) = (vec![0.0; d], vec![0.0; d]);
    (0..draws)
        .map(|_| {
            let mut den = den0.clone();
            model.sample_into(rng, &mut x);
            for (xti, xi) in xt.iter_mut().zip(&x) {
                let e: f64 = StandardNormal.sample(rng);
                *xti = rule.noise.alpha * xi + rule.noise.sigma * e;
            }
            den.psgd_step(&x, &xt, rule.noise.alpha, rule.eta, rule.readout, &mut scratch);
            let (mu, mv) = (dot(den.neuron(0), &model.u), dot(den.neuron(0), &model.v));
            1.0 - mu * mu - mv * mv
        })
        .collect()
}

fn one_step_reduced(model: &Mcm, state0: &ReducedState, rule: &StepRule, sampler: ReducedSampler, draws: usize, rng: &mut SimRng) -> Vec<f64> {
    (0..draws)
        .map(|_| {
            let mut state = state0.clone();
            state.step(model, rule, &sampler.sample(model, rng));
            let (mu, mv) = state.overlaps(0);
            1.0 - mu * mu - mv * mv
        })
        .collect()
}

#[test]
fn one_step_transitions_have_the_law_of_the_full_step_and_a_wrong_rest_is_caught() {
    for (d, k) in [(6usize, 1usize), (7, 2)] {
        let model = model(d, Coupling::None, 9);
        let rule = StepRule {
            noise: NoiseLevel::at(0.3),
            activation: Activation::Tanh2,
            eta: 0.6,
            readout: Some(ReadoutRates { eta_a: 0.1, eta_b: 0.1 }),
        };
        let mut rng = SimRng::seed_from_u64(42 + d as u64);
        let den = Denoiser::random(d, k, rule.activation, (0.8, 0.1), &mut rng);
        let (_, coords) = basis_and_coordinates(&model, &den);
        let state = ReducedState::from_coordinates(&coords, &den.a, &den.b);
        let draws = 20_000;
        let full = one_step_full(&model, &den, &rule, draws, &mut rng);
        let exact = one_step_reduced(&model, &state, &rule, ReducedSampler::new(d, k), draws, &mut rng);
        let p = ks_p_value(full.clone(), exact);
        assert!(p > 1e-3, "d {d}, K {k}: the reduced one-step law differs from the full one (KS p = {p:e})");
        // Negative control: the rest's degrees of freedom off by one.
        let wrong = ReducedSampler::with_rest_dimension(k, d - (k + 2) + 1);
        let off = one_step_reduced(&model, &state, &rule, wrong, draws, &mut rng);
        let p_off = ks_p_value(full, off);
        assert!(p_off < 1e-6, "d {d}, K {k}: the test cannot tell a wrong rest dimension (KS p = {p_off:e})");
    }
}

/// First sample count at which |m_u| (or |m_v|) of some neuron reaches `threshold`.
fn passage_reduced(model: &Mcm, rule: &StepRule, sampler: ReducedSampler, v: bool, threshold: f64, budget: u64, seed: u64, replica: u64) -> f64 {
    let d = model.params.d;
    let mut init = rng_for(seed, 2 * replica);
    let mut rng = rng_for(seed, 2 * replica + 1);
    let mut state = ReducedState::random(d, 1, (1.0, 0.0), &mut init);
    for n in 0..budget {
        let (mu, mv) = state.overlaps(0);
        if (if v { mv } else { mu }).abs() >= threshold {
            return n as f64;
        }
        state.step(model, rule, &sampler.sample(model, &mut rng));
    }
    budget as f64
}

fn passage_full(model: &Mcm, rule: &StepRule, v: bool, threshold: f64, budget: u64, seed: u64, replica: u64) -> f64 {
    let d = model.params.d;
    let mut init = rng_for(seed, 2 * replica);
    let mut rng = rng_for(seed, 2 * replica + 1);
    let mut den = Denoiser::random(d, 1, rule.activation, (1.0, 0.0), &mut init);
    let mut scratch = Scratch::new(d, 1);
    let (mut x, mut xt) = (vec![0.0; d], vec![0.0; d]);
    for n in 0..budget {
        let m = dot(den.neuron(0), if v { &model.v } else { &model.u });
        if m.abs() >= threshold {
            return n as f64;
        }
        model.sample_into(&mut rng, &mut x);
        for (xti, xi) in xt.iter_mut().zip(&x) {
            let e: f64 = StandardNormal.sample(&mut rng);
            *xti = rule.noise.alpha * xi + rule.noise.sigma * e;
        }
        den.psgd_step(&x, &xt, rule.noise.alpha, rule.eta, None, &mut scratch);
    }
    budget as f64
}

#[test]
fn first_passage_times_have_the_law_of_the_full_simulation() {
    use rayon::prelude::*;
    // (d, v?, delta, eta exponent, threshold, budget, runs). v: without the
    // u spike (beta_u = 0), where v is the population optimum (|m_v| = 0.42).
    let cases = [(64usize, false, 2.0, 1, 0.3, 200_000u64, 300u64), (16, true, 0.3, 2, 0.36, 1_000_000, 200)];
    for (d, v, delta, p, threshold, budget, runs) in cases {
        let mut model = model(d, Coupling::None, 5);
        if v {
            model = Mcm::with_directions(McmParams { beta_u: 0.0, ..model.params }, model.u, model.v);
        }
        let rule = StepRule { noise: NoiseLevel::at(0.3), activation: Activation::Tanh2, eta: delta / (d as f64).powi(p), readout: None };
        let full: Vec<f64> = (0..runs).into_par_iter().map(|r| passage_full(&model, &rule, v, threshold, budget, 1, r)).collect();
        let reduced: Vec<f64> = (0..runs)
            .into_par_iter()
            .map(|r| passage_reduced(&model, &rule, ReducedSampler::new(d, 1), v, threshold, budget, 2, r))
            .collect();
        if !v {
            // Negative control: a chain without the rest of the sample (no
            // eta^2 d contraction). Off by one degree of freedom is too small an
            // error for first-passage times; the one-step test catches that.
            let wrong: Vec<f64> = (0..runs)
                .into_par_iter()
                .map(|r| passage_reduced(&model, &rule, ReducedSampler::with_rest_dimension(1, 0), v, threshold, budget, 3, r))
                .collect();
            let p_wrong = ks_p_value(full.clone(), wrong);
            assert!(p_wrong < 1e-6, "d {d}: the test cannot tell a chain without the rest (KS p = {p_wrong:e})");
        }
        let censored = full.iter().chain(&reduced).filter(|n| **n >= budget as f64).count();
        assert!(censored * 10 < 2 * runs as usize, "d {d}: {censored} censored runs; the budget is too short for a test");
        let p_value = ks_p_value(full.clone(), reduced.clone());
        let median = |xs: &[f64]| {
            let mut s = xs.to_vec();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        assert!(
            p_value > 1e-3,
            "d {d}, {}: first-passage laws differ (KS p = {p_value:e}; medians {} full, {} reduced)",
            if v { "v" } else { "u" },
            median(&full),
            median(&reduced)
        );
    }
}
