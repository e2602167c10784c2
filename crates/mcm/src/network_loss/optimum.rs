//! The best loss the architecture reaches: readouts exactly, directions by a
//! pattern search.

use super::{NetworkLoss, NetworkState};

impl NetworkLoss {
    /// The population optimum of `neurons` neurons on the MCM: readouts exactly
    /// (normal equations), directions by a pattern search over their coordinates
    /// in (u, v, e_1..e_K) (e_k orthogonal to u, v), started from the two best
    /// K-tuples of {u, v, (u +- v)/sqrt 2, e_k} (5^K of them). Returns the total MCM loss and the state.
    /// For odd g each neuron is reported with its larger overlap >= 0.
    pub fn best_reachable(&self, neurons: usize) -> (f64, NetworkState) {
        let k = neurons;
        let dim = k + 2;
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let candidates = |j: usize| -> Vec<Vec<f64>> {
            let mut e = vec![0.0; dim];
            e[2 + j] = 1.0;
            let mut out = vec![e];
            for (cu, cv) in [(1.0, 0.0), (0.0, 1.0), (s, s), (s, -s)] {
                let mut c = vec![0.0; dim];
                c[0] = cu;
                c[1] = cv;
                out.push(c);
            }
            out
        };
        let excess_at = |coords: &[f64]| -> f64 {
            let rows: Vec<Vec<f64>> = coords.chunks(dim).map(<[f64]>::to_vec).collect();
            let st = NetworkState::from_coordinates(&rows, vec![0.0; k], vec![0.0; k]);
            match self.mcm_quadratic(&st.gram, k) {
                Ok(q) => q.minimiser().2,
                Err(_) => f64::INFINITY,
            }
        };
        // Every K-tuple of candidates.
        let mut starts: Vec<(f64, Vec<f64>)> = Vec::new();
        let per = candidates(0).len();
        let total = per.pow(k as u32);
        for code in 0..total {
            let mut coords = Vec::with_capacity(k * dim);
            let mut rest = code;
            for j in 0..k {
                coords.extend(candidates(j)[rest % per].iter().copied());
                rest /= per;
            }
            starts.push((excess_at(&coords), coords));
        }
        starts.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut best: Option<(f64, Vec<f64>)> = None;
        let normalise = |coords: &mut [f64]| {
            for row in coords.chunks_mut(dim) {
                let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 {
                    row.iter_mut().for_each(|x| *x /= norm);
                }
            }
        };
        for (e0, c0) in starts.into_iter().take(2) {
            let (e, c) = pattern_search(&excess_at, &normalise, c0, e0);
            if best.as_ref().is_none_or(|b| e < b.0) {
                best = Some((e, c));
            }
        }
        let (_, coords) = best.expect("at least one start");
        let mut rows: Vec<Vec<f64>> = coords.chunks(dim).map(<[f64]>::to_vec).collect();
        if self.activation.is_odd() {
            for r in rows.iter_mut() {
                let lead = if r[0].abs() >= r[1].abs() { r[0] } else { r[1] };
                if lead < 0.0 {
                    r.iter_mut().for_each(|x| *x = -*x);
                }
            }
        }
        let st = NetworkState::from_coordinates(&rows, vec![0.0; k], vec![0.0; k]);
        let quad = self
            .mcm_quadratic(&st.gram, k)
            .expect("a Gram matrix built from coordinates is valid");
        let (a, b, excess) = quad.minimiser();
        (self.baseline_loss() + excess, NetworkState { a, b, ..st })
    }
}

/// Pattern search from `x` (value `fx`): along each coordinate in turn, a
/// step of +-h (and, once it helps, 2h, 4h, ... while they help), with
/// `normalise` applied to every trial point; h halves from 0.1 to 1e-5 when a
/// whole sweep fails. At most 4000 evaluations.
fn pattern_search(
    f: &impl Fn(&[f64]) -> f64,
    normalise: &impl Fn(&mut [f64]),
    mut x: Vec<f64>,
    mut fx: f64,
) -> (f64, Vec<f64>) {
    let (mut step, mut evals) = (0.1, 0);
    let trial = |x: &[f64], i: usize, delta: f64, evals: &mut usize| {
        let mut y = x.to_vec();
        y[i] += delta;
        normalise(&mut y);
        *evals += 1;
        let fy = f(&y);
        (fy, y)
    };
    while step > 1e-5 && evals < 4000 {
        let mut moved = false;
        for i in 0..x.len() {
            for sign in [1.0, -1.0] {
                let (fy, y) = trial(&x, i, sign * step, &mut evals);
                if fy < fx - 1e-13 {
                    (x, fx, moved) = (y, fy, true);
                    let mut longer = 2.0 * step;
                    loop {
                        let (fz, z) = trial(&x, i, sign * longer, &mut evals);
                        if fz >= fx - 1e-13 || evals >= 4000 {
                            break;
                        }
                        (x, fx) = (z, fz);
                        longer *= 2.0;
                    }
                    break;
                }
            }
        }
        if !moved {
            step *= 0.5;
        }
    }
    (fx, x)
}
