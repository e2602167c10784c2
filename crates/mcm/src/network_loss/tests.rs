use super::*;
use crate::model::{Coupling, Mcm, NuLaw, dot, normalize, rng_for};
use crate::population::PopulationLoss;
use crate::simulate::{isotropic_loss, wiener_loss};
use rand::Rng;
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

fn normal(rng: &mut crate::model::SimRng) -> f64 {
    StandardNormal.sample(rng)
}

fn defaults() -> McmParams {
    params(50, NuLaw::Rademacher, Coupling::None)
}

/// One neuron at overlaps (m_u, m_v), the rest of its norm orthogonal to u and v.
fn one_neuron(m_u: f64, m_v: f64, a: f64, b: f64) -> NetworkState {
    let r = (1.0 - m_u * m_u - m_v * m_v).max(0.0).sqrt();
    NetworkState::from_coordinates(&[vec![m_u, m_v, r]], vec![a], vec![b])
}

/// A random state of `k` neurons with sizeable overlaps with u and v.
fn random_state(k: usize, seed: u64) -> NetworkState {
    let mut rng = rng_for(seed, 7);
    let coords: Vec<Vec<f64>> = (0..k)
        .map(|_| {
            (0..k + 2)
                .map(|i| normal(&mut rng) * if i < 2 { 1.5 } else { 0.6 })
                .collect()
        })
        .collect();
    let a = (0..k).map(|_| rng.random::<f64>() * 1.6 - 0.4).collect();
    let b = (0..k).map(|_| rng.random::<f64>() - 0.6).collect();
    NetworkState::from_coordinates(&coords, a, b)
}

#[test]
fn one_neuron_without_gain_is_the_single_neuron_population_loss() {
    let cases = [
        (NuLaw::Rademacher, Coupling::None, Activation::Tanh2),
        (
            NuLaw::Rademacher,
            Coupling::Linear { rho: 0.8 },
            Activation::Tanh2,
        ),
        (
            NuLaw::Uniform,
            Coupling::Linear { rho: 0.5 },
            Activation::Tanh,
        ),
        (NuLaw::Laplace, Coupling::None, Activation::Relu),
        (
            NuLaw::Rademacher,
            Coupling::Linear { rho: 0.8 },
            Activation::Relu,
        ),
        (NuLaw::Gaussian, Coupling::None, Activation::Linear),
    ];
    let noise = NoiseLevel::at(0.3);
    for (nu, coupling, act) in cases {
        let p = params(50, nu, coupling);
        let net = NetworkLoss::new(p, noise, act);
        for a in [1.0, 0.6] {
            let single = PopulationLoss::new(p, noise, act, a);
            for (m_u, m_v) in [(0.6, 0.5), (-0.3, 0.8), (1.0, 0.0), (0.0, 1.0), (0.1, -0.2)] {
                let got = net.losses(&one_neuron(m_u, m_v, a, 0.0)).unwrap();
                let want = single.total_loss(m_u, m_v);
                assert!(
                    (got.mcm - want).abs() < 1e-10,
                    "{nu:?} {coupling:?} {act:?} a={a} at ({m_u},{m_v}): {} vs {want} (diff {:.1e})",
                    got.mcm,
                    got.mcm - want
                );
            }
        }
    }
}

#[test]
fn two_neurons_match_a_monte_carlo_estimate() {
    let cases = [
        (NuLaw::Rademacher, Coupling::None, Activation::Tanh2, 1),
        (
            NuLaw::Rademacher,
            Coupling::Linear { rho: 0.8 },
            Activation::Tanh2,
            2,
        ),
        (NuLaw::Laplace, Coupling::None, Activation::Relu, 3),
        (
            NuLaw::Uniform,
            Coupling::Linear { rho: 0.5 },
            Activation::Tanh,
            4,
        ),
    ];
    let d = 12;
    let noise = NoiseLevel::at(0.3);
    for (nu, coupling, act, seed) in cases {
        let p = params(d, nu, coupling);
        let model = Mcm::new(p, seed);
        // Two neurons with sizeable overlaps, from random coordinates on u, v and the bulk.
        let mut rng = rng_for(seed, 3);
        let w: Vec<Vec<f64>> = (0..2)
            .map(|_| {
                let (cu, cv): (f64, f64) = (
                    StandardNormal.sample(&mut rng),
                    StandardNormal.sample(&mut rng),
                );
                let mut w: Vec<f64> = (0..d)
                    .map(|i| 0.4 * normal(&mut rng) + cu * model.u[i] + cv * model.v[i])
                    .collect();
                normalize(&mut w);
                w
            })
            .collect();
        let (a, b) = (vec![0.9, -0.5], vec![-0.3, 0.2]);
        let basis = [&model.u, &model.v, &w[0], &w[1]];
        let gram: Vec<f64> = basis
            .iter()
            .flat_map(|x| basis.iter().map(move |y| dot(x, y)))
            .collect();
        let state = NetworkState {
            gram,
            a: a.clone(),
            b: b.clone(),
        };
        let exact = network_losses(&p, noise, act, &state).unwrap();
        let q12 = dot(&w[0], &w[1]);
        let n = 400_000;
        let (mut x, mut xt) = (vec![0.0; d], vec![0.0; d]);
        for gaussian in [false, true] {
            let mut rng = rng_for(seed, 100 + gaussian as u64);
            let (mut sum, mut sum2) = (0.0, 0.0);
            for _ in 0..n {
                if gaussian {
                    model.sample_gaussian_into(&mut rng, &mut x);
                } else {
                    model.sample_into(&mut rng, &mut x);
                }
                for (xti, xi) in xt.iter_mut().zip(&x) {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    *xti = noise.alpha * xi + noise.sigma * e;
                }
                // Excess over 1/2 ||alpha x_t - x||^2, from the projections.
                let h: Vec<f64> = (0..2)
                    .map(|k| {
                        let y = dot(&w[k], &xt);
                        a[k] * act.value(y) + b[k] * y
                    })
                    .collect();
                let mut e = 0.5 * (h[0] * h[0] + h[1] * h[1]) + h[0] * h[1] * q12;
                for k in 0..2 {
                    e += h[k] * (noise.alpha * dot(&w[k], &xt) - dot(&w[k], &x));
                }
                sum += e;
                sum2 += e * e;
            }
            let mean = sum / n as f64;
            let se = ((sum2 / n as f64 - mean * mean) / n as f64).sqrt();
            let want = if gaussian { exact.gauss } else { exact.mcm } - isotropic_loss(&p, noise);
            eprintln!(
                "{nu:?} {coupling:?} {act:?} gaussian={gaussian}: quadrature {want:.6}, Monte Carlo {mean:.6} +- {se:.6}"
            );
            assert!(
                (mean - want).abs() < 4.0 * se,
                "{nu:?} {coupling:?} {act:?} gaussian={gaussian}: {want} vs {mean} +- {se}"
            );
        }
    }
}

#[test]
fn linear_denoiser_at_the_spike_eigenvectors_is_the_wiener_filter() {
    let noise = NoiseLevel::at(0.3);
    let (a2, s2) = (noise.alpha * noise.alpha, noise.sigma * noise.sigma);
    for coupling in [Coupling::None, Coupling::Linear { rho: 0.8 }] {
        let p = defaults();
        let p = McmParams { coupling, ..p };
        let eig = p.spike_eigen();
        let coords: Vec<Vec<f64>> = eig.iter().map(|(_, e)| vec![e[0], e[1]]).collect();
        // D = alpha C (alpha^2 C + sigma^2)^-1 x_t: gain alpha l / (alpha^2 l + sigma^2) along each eigenvector.
        let gains: Vec<f64> = eig
            .iter()
            .map(|(l, _)| noise.alpha * l / (a2 * l + s2) - noise.alpha)
            .collect();
        for (act, a, b) in [
            (Activation::Linear, gains.clone(), vec![0.0; 2]),
            (Activation::Tanh2, vec![0.0; 2], gains.clone()),
        ] {
            let st = NetworkState::from_coordinates(&coords, a, b);
            let l = network_losses(&p, noise, act, &st).unwrap();
            let w = wiener_loss(&p, noise);
            assert!(
                (l.gauss - w).abs() < 1e-10 && (l.mcm - w).abs() < 1e-10,
                "{coupling:?} {act:?}: {l:?} vs Wiener {w}"
            );
        }
        // The best readouts of linear neurons there are the Wiener gains, on both laws.
        let st = NetworkState::from_coordinates(&coords, vec![0.0; 2], vec![0.0; 2]);
        let net = NetworkLoss::new(p, noise, Activation::Linear);
        let (mcm, gauss) = net.quadratics(&st.gram, 2).unwrap();
        for q in [mcm, gauss] {
            let (a, b, excess) = q.minimiser();
            for k in 0..2 {
                assert!(
                    (a[k] + b[k] - gains[k]).abs() < 1e-9,
                    "{coupling:?}: readouts {a:?} {b:?} vs {gains:?}"
                );
            }
            assert!((net.baseline_loss() + excess - wiener_loss(&p, noise)).abs() < 1e-10);
        }
        assert!((net.baseline_loss() - isotropic_loss(&p, noise)).abs() < 1e-12);
    }
}

#[test]
fn gaussian_latents_make_the_mcm_its_own_surrogate() {
    let p = params(50, NuLaw::Gaussian, Coupling::None);
    for act in [Activation::Tanh2, Activation::Relu] {
        for seed in 0..3 {
            let st = random_state(2, seed);
            let l = network_losses(&p, NoiseLevel::at(0.3), act, &st).unwrap();
            assert!((l.mcm - l.gauss).abs() < 1e-9, "{act:?} seed {seed}: {l:?}");
        }
    }
    // Rademacher latents: they differ.
    let l = network_losses(
        &defaults(),
        NoiseLevel::at(0.3),
        Activation::Tanh2,
        &random_state(2, 0),
    )
    .unwrap();
    assert!((l.mcm - l.gauss).abs() > 1e-4, "{l:?}");
}

#[test]
fn parallel_neurons_add_their_readouts() {
    let noise = NoiseLevel::at(0.3);
    for (act, coupling) in [
        (Activation::Tanh2, Coupling::None),
        (Activation::Relu, Coupling::Linear { rho: 0.8 }),
    ] {
        let p = McmParams {
            coupling,
            ..defaults()
        };
        let w = vec![0.5, 0.6, (1.0f64 - 0.61).sqrt()];
        let two = NetworkState::from_coordinates(
            &[w.clone(), w.clone()],
            vec![0.7, 0.2],
            vec![-0.1, 0.3],
        );
        let one = NetworkState::from_coordinates(&[w], vec![0.9], vec![0.2]);
        let (l2, l1) = (
            network_losses(&p, noise, act, &two).unwrap(),
            network_losses(&p, noise, act, &one).unwrap(),
        );
        assert!(
            (l2.mcm - l1.mcm).abs() < 1e-10 && (l2.gauss - l1.gauss).abs() < 1e-10,
            "{act:?}: {l2:?} vs {l1:?}"
        );
        // Readout optimum of two parallel neurons: the one-neuron optimum (one feature pair is redundant).
        let net = NetworkLoss::new(p, noise, act);
        let e2 = net.mcm_quadratic(&two.gram, 2).unwrap().minimiser().2;
        let e1 = net.mcm_quadratic(&one.gram, 1).unwrap().minimiser().2;
        assert!((e2 - e1).abs() < 1e-9, "{act:?}: {e2} vs {e1}");
    }
}

#[test]
fn optimal_readouts_solve_the_normal_equations() {
    let noise = NoiseLevel::at(0.3);
    for (seed, act, coupling) in [
        (0, Activation::Tanh2, Coupling::None),
        (1, Activation::Tanh, Coupling::Linear { rho: 0.8 }),
        (2, Activation::Relu, Coupling::None),
    ] {
        let p = McmParams {
            coupling,
            ..defaults()
        };
        let st = random_state(2, seed);
        let net = NetworkLoss::new(p, noise, act);
        let (mcm, gauss) = net.quadratics(&st.gram, 2).unwrap();
        // The quadratic is the loss: at the state's readouts, and at others.
        let l = net.losses(&st).unwrap();
        assert!((net.baseline_loss() + mcm.excess(&st.a, &st.b) - l.mcm).abs() < 1e-12);
        assert!((net.baseline_loss() + gauss.excess(&st.a, &st.b) - l.gauss).abs() < 1e-12);
        for q in [&mcm, &gauss] {
            let (a, b, excess) = q.minimiser();
            let grad = q.gradient(&a, &b);
            let scale = q.linear.iter().fold(0.0f64, |s, x| s.max(x.abs()));
            assert!(
                grad.iter().all(|g| g.abs() < 1e-10 * scale.max(1.0)),
                "seed {seed}: gradient {grad:?} at the optimum"
            );
            // No readout nearby does better, as the full loss sees it.
            for i in 0..4 {
                for h in [1e-3, -1e-3] {
                    let (mut a2, mut b2) = (a.clone(), b.clone());
                    if i < 2 {
                        a2[i] += h
                    } else {
                        b2[i - 2] += h
                    }
                    let moved = NetworkState {
                        gram: st.gram.clone(),
                        a: a2,
                        b: b2,
                    };
                    let lm = net.losses(&moved).unwrap();
                    let lm = if std::ptr::eq(q, &mcm) {
                        lm.mcm
                    } else {
                        lm.gauss
                    };
                    assert!(
                        lm > net.baseline_loss() + excess,
                        "seed {seed}: moving readout {i} by {h} lowers the loss"
                    );
                }
            }
            // The Hessian is symmetric and positive semi-definite.
            for i in 0..4 {
                for j in 0..4 {
                    assert_eq!(q.hessian[i * 4 + j], q.hessian[j * 4 + i]);
                }
            }
        }
    }
}

#[test]
fn invalid_states_are_refused() {
    let net = NetworkLoss::new(defaults(), NoiseLevel::at(0.3), Activation::Tanh2);
    let good = random_state(2, 5);
    assert!(net.losses(&good).is_ok());
    let short = NetworkState {
        gram: good.gram[..15].to_vec(),
        ..good.clone()
    };
    assert!(matches!(
        net.losses(&short),
        Err(NetworkLossError::GramSize { .. })
    ));
    let bad_b = NetworkState {
        b: vec![0.0],
        ..good.clone()
    };
    assert!(matches!(
        net.losses(&bad_b),
        Err(NetworkLossError::ReadoutSize { .. })
    ));
    let mut not_unit = good.clone();
    not_unit.gram[2 * 4 + 2] = 1.1;
    assert!(matches!(
        net.losses(&not_unit),
        Err(NetworkLossError::GramEntry { row: 2, col: 2, .. })
    ));
    let mut skew = good.clone();
    skew.gram[1] = 0.2;
    skew.gram[4] = 0.2;
    assert!(matches!(
        net.losses(&skew),
        Err(NetworkLossError::GramEntry { row: 0, col: 1, .. })
    ));
    // A state integrated in floating point (norms and symmetry off by 1e-8) is
    // normalised, not refused.
    let mut drifted = good.clone();
    drifted.gram[2 * 4 + 2] += 2e-8;
    drifted.gram[3 * 4 + 2] += 1e-8;
    drifted.gram[1] += 1e-9;
    let (l, ld) = (net.losses(&good).unwrap(), net.losses(&drifted).unwrap());
    assert!(
        (l.mcm - ld.mcm).abs() < 1e-6 && (l.gauss - ld.gauss).abs() < 1e-6,
        "{l:?} {ld:?}"
    );
    // m_u = m_v = 0.9: no unit vector has these overlaps.
    let impossible = NetworkState {
        gram: vec![1.0, 0.0, 0.9, 0.0, 1.0, 0.9, 0.9, 0.9, 1.0],
        a: vec![1.0],
        b: vec![0.0],
    };
    assert!(matches!(
        net.losses(&impossible),
        Err(NetworkLossError::NotPositive { .. })
    ));
}

/// 1/2 E[(E[h | y] - alpha y)^2] along v (independent Rademacher latents): the
/// gain of the Bayes-optimal correction over alpha x_t, from the posterior of nu.
fn bayes_gain_along_v(p: &McmParams, noise: NoiseLevel) -> f64 {
    let (al, si2, c) = (noise.alpha, noise.sigma * noise.sigma, p.c_v());
    let tau2 = al * al * (1.0 - c * c) + si2;
    let (tau, k) = (tau2.sqrt(), al * (1.0 - c * c) / tau2);
    // y = alpha c nu + tau z; E[h | y, nu] = c nu + k (y - alpha c nu).
    let rule = quad::normal_trapezoid(2001, 12.0);
    let mut gain = 0.0;
    for nu in [-1.0, 1.0] {
        gain += 0.5
            * rule.integrate(|z| {
                let y = al * c * nu + tau * z;
                let (lp, lm) = (
                    -(y - al * c).powi(2) / (2.0 * tau2),
                    -(y + al * c).powi(2) / (2.0 * tau2),
                );
                let p_plus = 1.0 / (1.0 + (lm - lp).exp());
                let post_nu = 2.0 * p_plus - 1.0;
                let mean_h = c * post_nu + k * (y - al * c * post_nu);
                0.5 * (mean_h - al * y).powi(2)
            });
    }
    gain
}

#[test]
fn reference_values_of_the_spec() {
    let noise = NoiseLevel::at(0.3);
    let (a2, s2) = (noise.alpha * noise.alpha, noise.sigma * noise.sigma);
    let net = NetworkLoss::new(defaults(), noise, Activation::Tanh2);
    let at = |m_u: f64, m_v: f64| {
        net.mcm_quadratic(&one_neuron(m_u, m_v, 0.0, 0.0).gram, 1)
            .unwrap()
    };
    let (qu, qv) = (at(1.0, 0.0), at(0.0, 1.0));
    // theta = (a, b): a alone, b alone, both.
    let fixed_u = qu.excess(&[1.0], &[0.0]);
    let a_only_u = -qu.linear[0] / qu.hessian[0];
    let b_only_u = -qu.linear[1] / qu.hessian[3];
    let (au, bu, best_u) = qu.minimiser();
    let fixed_v = qv.excess(&[1.0], &[0.0]);
    let (av, bv, best_v) = qv.minimiser();
    let bayes = bayes_gain_along_v(&defaults(), noise);
    let tanh_v = NetworkLoss::new(defaults(), noise, Activation::Tanh)
        .mcm_quadratic(&one_neuron(0.0, 1.0, 0.0, 0.0).gram, 1)
        .unwrap()
        .minimiser();
    eprintln!(
        "at u: a = 1: {fixed_u:+.4}; best a = {a_only_u:.4}: {:+.4}; best b = {b_only_u:.4}: {:+.4}; best (a, b) = ({:.4}, {:.4}): {best_u:+.4}",
        qu.excess(&[a_only_u], &[0.0]),
        qu.excess(&[0.0], &[b_only_u]),
        au[0],
        bu[0]
    );
    eprintln!(
        "at v: a = 1: {fixed_v:+.4}; tanh(2y) best (a, b) = ({:.4}, {:.4}): {best_v:+.5}; tanh(y) best (a, b) = ({:.4}, {:.4}): {:+.5}; Bayes gain {bayes:.5}",
        av[0], bv[0], tanh_v.0[0], tanh_v.1[0], tanh_v.2
    );
    // SPEC: +0.017, a = 0.478 giving -0.084, Wiener along u -0.107, +0.285 at v, Bayes gain 0.0114 along v.
    assert!((fixed_u - 0.017).abs() < 5e-4, "{fixed_u}");
    assert!(
        (a_only_u - 0.478).abs() < 5e-4 && (qu.excess(&[a_only_u], &[0.0]) + 0.084).abs() < 5e-4
    );
    // b alone along u is the Wiener filter along u, in closed form.
    let l = 1.0 + defaults().beta_u;
    let wiener_u = 0.5 * l * s2 / (a2 * l + s2) - 0.5 * (s2 * s2 * l + a2 * s2);
    assert!(
        (qu.excess(&[0.0], &[b_only_u]) - wiener_u).abs() < 1e-12
            && (wiener_u + 0.107).abs() < 5e-4,
        "{wiener_u}"
    );
    assert!((b_only_u - (noise.alpha * l / (a2 * l + s2) - noise.alpha)).abs() < 1e-12);
    assert!(best_u <= wiener_u);
    assert!((fixed_v - 0.285).abs() < 5e-4, "{fixed_v}");
    assert!((bayes - 0.0114).abs() < 5e-5, "Bayes gain along v {bayes}");
    // No correction beats the Bayes-optimal one; tanh(y) gets most of it.
    assert!(
        -best_v < bayes && -tanh_v.2 < bayes && -tanh_v.2 > 0.8 * bayes,
        "{best_v} {} {bayes}",
        tanh_v.2
    );
}

#[test]
fn two_neurons_at_best_take_u_and_v() {
    let noise = NoiseLevel::at(0.3);
    let p = defaults();
    let (loss, st) = best_reachable_loss(&p, noise, Activation::Tanh2, 2);
    let (one, st1) = best_reachable_loss(&p, noise, Activation::Tanh2, 1);
    let w = wiener_loss(&p, noise);
    eprintln!(
        "K = 2: {loss:.5} (Wiener {w:.5}, K = 1 {one:.5}) at {:?} {:?}, a {:?} b {:?}",
        st.overlaps(0),
        st.overlaps(1),
        st.a,
        st.b
    );
    eprintln!("K = 1: {:?}, a {:?} b {:?}", st1.overlaps(0), st1.a, st1.b);
    let mut ov = [st.overlaps(0), st.overlaps(1)];
    ov.sort_by(|x, y| y.0.abs().total_cmp(&x.0.abs()));
    assert!(ov[0].0.abs() > 0.95 && ov[1].1.abs() > 0.95, "{ov:?}");
    assert!(loss < w && loss < one, "{loss} {w} {one}");
    assert!((st1.overlaps(0).0 - 1.0).abs() < 1e-3);
}

/// E[g(Y_1) g(Y_2)] by a fine tensor trapezoid rule in the eigenbasis of the
/// covariance (an independent route to the two-dimensional integral).
fn brute_cross_moment(act: Activation, m: [f64; 2], t: [f64; 3]) -> f64 {
    let (a, b, c) = (t[0], t[1], t[2]);
    let half = 0.5 * (a - c);
    let r = (half * half + b * b).sqrt();
    let (l1, l2) = (0.5 * (a + c) + r, (0.5 * (a + c) - r).max(0.0));
    let th = 0.5 * (2.0 * b).atan2(a - c);
    let (co, si) = (th.cos(), th.sin());
    let rule = quad::normal_trapezoid(1201, 11.0);
    let mut s = 0.0;
    for (z1, w1) in rule.nodes.iter().zip(&rule.weights) {
        for (z2, w2) in rule.nodes.iter().zip(&rule.weights) {
            let (e1, e2) = (l1.sqrt() * z1, l2.sqrt() * z2);
            let (y1, y2) = (m[0] + co * e1 - si * e2, m[1] + si * e1 + co * e2);
            s += w1 * w2 * act.value(y1) * act.value(y2);
        }
    }
    s
}

#[test]
fn cross_moments_match_a_fine_tensor_rule() {
    let net = |act| NetworkLoss::new(defaults(), NoiseLevel::at(0.3), act);
    for act in [
        Activation::Tanh2,
        Activation::Tanh,
        Activation::Relu,
        Activation::Linear,
    ] {
        let n = net(act);
        for (m, t) in [
            ([0.3, -0.7], [1.8, 0.9, 1.1]),
            ([0.0, 0.0], [1.0, -0.2, 0.6]),
            ([1.2, 0.4], [2.2, 1.4, 0.95]),
            ([-0.5, 0.8], [0.7, 0.0, 1.3]),
        ] {
            let got = n.cross_moment(m[0], m[1], t[0], t[1], t[2]);
            let want = brute_cross_moment(act, m, t);
            // ReLU: the brute rule is only second-order accurate at the kinks.
            let tol = if act == Activation::Relu { 1e-5 } else { 1e-10 };
            assert!(
                (got - want).abs() < tol,
                "{act:?} {m:?} {t:?}: {got} vs {want} ({:.1e})",
                got - want
            );
        }
    }
}

#[test]
fn coupled_latents_need_two_neurons_to_beat_the_wiener_filter() {
    // With coupled latents the covariance has two non-unit eigenvalues in the
    // (u, v) plane: one neuron can follow only one of them.
    let noise = NoiseLevel::at(0.3);
    let p = McmParams {
        coupling: Coupling::Linear { rho: 0.8 },
        ..defaults()
    };
    let w = wiener_loss(&p, noise);
    let (one, st1) = best_reachable_loss(&p, noise, Activation::Tanh2, 1);
    let (two, st2) = best_reachable_loss(&p, noise, Activation::Tanh2, 2);
    eprintln!(
        "coupled: K = 1 {one:.6} at {:?}; K = 2 {two:.6} at {:?} {:?} (q12 = {:.4}), a {:?} b {:?}; Wiener {w:.6}",
        st1.overlaps(0),
        st2.overlaps(0),
        st2.overlaps(1),
        st2.gram[3 * 4 + 2],
        st2.a,
        st2.b
    );
    assert!(one > w && two < w, "{one} {two} {w}");
    // The reported readouts are optimal for the reported directions.
    let net = NetworkLoss::new(p, noise, Activation::Tanh2);
    let l = net.losses(&st2).unwrap();
    assert!((l.mcm - two).abs() < 1e-12);
    let q = net.mcm_quadratic(&st2.gram, 2).unwrap();
    assert!(q.gradient(&st2.a, &st2.b).iter().all(|g| g.abs() < 1e-10));
}

#[test]
fn overlap_gradient_of_one_neuron_is_the_single_neuron_gradient() {
    let noise = NoiseLevel::at(0.3);
    for coupling in [Coupling::None, Coupling::Linear { rho: 0.8 }] {
        let p = McmParams {
            coupling,
            ..defaults()
        };
        let single = PopulationLoss::new(p, noise, Activation::Tanh2, 0.8);
        let net = NetworkLoss::new(p, noise, Activation::Tanh2);
        for (m_u, m_v) in [(0.6, 0.5), (1.0, 0.0), (0.1, -0.7)] {
            let g = net
                .overlap_gradients(&one_neuron(m_u, m_v, 0.8, 0.0))
                .unwrap()
                .mcm;
            let (gu, gv) = single.gradient(m_u, m_v);
            assert!(
                (g.m_u[0] - gu).abs() < 1e-8 && (g.m_v[0] - gv).abs() < 1e-8,
                "{coupling:?} at ({m_u}, {m_v}): ({}, {}) vs ({gu}, {gv})",
                g.m_u[0],
                g.m_v[0]
            );
        }
    }
}

#[test]
fn overlap_gradient_predicts_the_loss_along_a_path_of_directions() {
    let noise = NoiseLevel::at(0.3);
    let net = NetworkLoss::new(
        McmParams {
            coupling: Coupling::Linear { rho: 0.8 },
            ..defaults()
        },
        noise,
        Activation::Tanh2,
    );
    // Two neurons whose coordinates move along a fixed direction.
    let c0 = [vec![0.7, 0.3, 0.5, 0.2], vec![0.4, 0.6, -0.3, 0.5]];
    let dc = [vec![0.1, -0.3, 0.2, 0.4], vec![-0.2, 0.1, 0.5, -0.3]];
    let state = |e: f64| {
        let rows: Vec<Vec<f64>> = c0
            .iter()
            .zip(&dc)
            .map(|(c, d)| c.iter().zip(d).map(|(x, y)| x + e * y).collect())
            .collect();
        NetworkState::from_coordinates(&rows, vec![0.6, -0.4], vec![0.1, 0.3])
    };
    let h = 1e-4;
    let (plus, minus) = (
        net.losses(&state(h)).unwrap(),
        net.losses(&state(-h)).unwrap(),
    );
    let g = net.overlap_gradients(&state(0.0)).unwrap();
    let d_gram: Vec<f64> = state(h)
        .gram
        .iter()
        .zip(&state(-h).gram)
        .map(|(p, m)| (p - m) / (2.0 * h))
        .collect();
    let n = 4;
    for (grad, (lp, lm)) in [
        (&g.mcm, (plus.mcm, minus.mcm)),
        (&g.gauss, (plus.gauss, minus.gauss)),
    ] {
        let mut predicted = 0.0;
        for k in 0..2 {
            predicted += grad.m_u[k] * d_gram[2 + k] + grad.m_v[k] * d_gram[n + 2 + k];
        }
        predicted += grad.q[1] * d_gram[2 * n + 3];
        let along = (lp - lm) / (2.0 * h);
        assert!(
            (predicted - along).abs() < 1e-6,
            "predicted {predicted}, along the path {along}"
        );
    }
    // The readout partials are the quadratic's gradient.
    let (mcm, _) = net.quadratics(&state(0.0).gram, 2).unwrap();
    let d = mcm.gradient(&[0.6, -0.4], &[0.1, 0.3]);
    assert_eq!(g.mcm.a, d[..2].to_vec());
    assert_eq!(g.mcm.b, d[2..].to_vec());
}
