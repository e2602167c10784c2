//! Derivatives of the excess loss with respect to the overlaps: the drift of
//! a deterministic (population) description of the training dynamics.

use super::{NetworkLoss, NetworkLossError, NetworkState, Overlaps, parse_gram};

/// Step of the central differences: their truncation error (h^2 times the
/// third derivative) and rounding error (1e-15 / h) are both about 1e-10.
const STEP: f64 = 2e-5;

/// Partial derivatives of the excess loss over alpha x_t (the same as of the
/// total loss) at one state, on one data law. The loss is extended off the
/// set of valid Gram matrices by its formula, so every partial exists even at
/// m_u = 1.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapGradient {
    /// dL/dm_uk, m_uk = u . w_k.
    pub m_u: Vec<f64>,
    /// dL/dm_vk, m_vk = v . w_k.
    pub m_v: Vec<f64>,
    /// K x K row-major: dL/dq_jk for j != k, with q_jk = q_kj moved together
    /// (the diagonal, fixed at 1 by the sphere, is 0).
    pub q: Vec<f64>,
    /// dL/da_k.
    pub a: Vec<f64>,
    /// dL/db_k.
    pub b: Vec<f64>,
}

/// The gradients on the MCM and on its surrogate.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapGradients {
    pub mcm: OverlapGradient,
    pub gauss: OverlapGradient,
}

impl NetworkLoss {
    /// Partial derivatives of the losses with respect to the overlaps (central
    /// differences of the quadrature) and the readouts (exact, the loss is
    /// quadratic in them). With them the population gradient of neuron k is
    /// dL/dm_uk u + dL/dm_vk v + sum_{j != k} dL/dq_jk w_j.
    pub fn overlap_gradients(
        &self,
        state: &NetworkState,
    ) -> Result<OverlapGradients, NetworkLossError> {
        let k = state.neurons();
        if state.b.len() != k {
            return Err(NetworkLossError::ReadoutSize {
                got: state.b.len(),
                want: k,
            });
        }
        let ov = parse_gram(&state.gram, k)?;
        let excess = |o: &Overlaps| {
            let (m, g) = (self.mcm_quadratic_of(o), self.gauss_quadratic_of(o));
            [m.excess(&state.a, &state.b), g.excess(&state.a, &state.b)]
        };
        let central = |perturb: &dyn Fn(&mut Overlaps, f64)| {
            let (mut plus, mut minus) = (ov.clone(), ov.clone());
            perturb(&mut plus, STEP);
            perturb(&mut minus, -STEP);
            let (p, m) = (excess(&plus), excess(&minus));
            [(p[0] - m[0]) / (2.0 * STEP), (p[1] - m[1]) / (2.0 * STEP)]
        };
        let mut grads = [0, 1].map(|_| OverlapGradient {
            m_u: vec![0.0; k],
            m_v: vec![0.0; k],
            q: vec![0.0; k * k],
            a: Vec::new(),
            b: Vec::new(),
        });
        for j in 0..k {
            let du = central(&|o: &mut Overlaps, h| o.m_u[j] += h);
            let dv = central(&|o: &mut Overlaps, h| o.m_v[j] += h);
            for (g, (du, dv)) in grads.iter_mut().zip(du.into_iter().zip(dv)) {
                g.m_u[j] = du;
                g.m_v[j] = dv;
            }
            for i in 0..j {
                let dq = central(&|o: &mut Overlaps, h| {
                    o.q[i * k + j] += h;
                    o.q[j * k + i] += h;
                });
                for (g, dq) in grads.iter_mut().zip(dq) {
                    g.q[i * k + j] = dq;
                    g.q[j * k + i] = dq;
                }
            }
        }
        let readouts = [self.mcm_quadratic_of(&ov), self.gauss_quadratic_of(&ov)];
        for (g, quad) in grads.iter_mut().zip(&readouts) {
            let d = quad.gradient(&state.a, &state.b);
            g.a = d[..k].to_vec();
            g.b = d[k..].to_vec();
        }
        let [mcm, gauss] = grads;
        Ok(OverlapGradients { mcm, gauss })
    }
}
