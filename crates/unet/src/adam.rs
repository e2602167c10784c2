//! Adam(W) with inspectable, checkpointable moments, and global-norm gradient clipping.
//!
//! candle-nn's `AdamW` keeps its moments private; this one follows PyTorch's
//! `torch.optim.AdamW` update exactly (decoupled weight decay, bias corrections):
//!
//! ```text
//! w <- w (1 - lr wd)
//! m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
//! w <- w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Adam hyper-parameters (the learning rate is passed per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (0 = plain Adam).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// PyTorch defaults with weight decay 0: (0.9, 0.999), eps 1e-8.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer: one (m, v) pair per parameter, in parameter-name order.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    /// Zero moments for `params`.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            config,
            params,
            m,
            v,
            t: 0,
        })
    }

    /// Number of updates taken.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left
    /// unchanged (their moments too), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let c = &self.config;
        let t = self.t as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, c.eps)?;
            let update = (m.div(&denom)? * step_size)?;
            let w = var.as_tensor().detach();
            let w = if c.weight_decay != 0.0 {
                (w * (1.0 - lr * c.weight_decay))?
            } else {
                w
            };
            var.set(&(w - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named `adam_m/<param>` and `adam_v/<param>`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("adam_m/{name}"), self.m[i].clone());
            out.insert(format!("adam_v/{name}"), self.v[i].clone());
        }
        out
    }

    /// Restore the moments (as written by [`Adam::state`]) and the update count.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step_count: u64) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("adam_m", &mut self.m[i]), ("adam_v", &mut self.v[i])] {
                let key = format!("{prefix}/{name}");
                let Some(t) = state.get(&key) else {
                    candle_core::bail!("optimizer state {key:?} missing")
                };
                if t.shape() != var.shape() {
                    candle_core::bail!("optimizer state {key:?} has shape {:?}", t.shape())
                }
                *slot = t.to_device(var.device())?.to_dtype(DType::F32)?;
            }
        }
        self.t = step_count;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` (summed in f64, in the given order).
pub fn global_grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let sq: Vec<Tensor> = vars
        .iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<_>>()?;
    if sq.is_empty() {
        return Ok(0.0);
    }
    let parts = Tensor::stack(&sq, 0)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(parts.iter().sum::<f64>().sqrt())
}

/// Clip the gradients of `vars` to global L2 norm at most `max_norm` (as PyTorch's
/// `clip_grad_norm_`: scale by `max_norm / (norm + 1e-6)` when that is below one).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, vars)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, v) in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * coef)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_adam_steps() {
        let w = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Adam::new(vec![("w".into(), w.clone())], AdamConfig::default()).unwrap();
        for expected in [0.9f32, 0.8] {
            // loss = 2 w: gradient 2, so each bias-corrected step moves w by lr.
            let loss = (w.as_tensor() * 2.0).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.1).unwrap();
            let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
            assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        }
        assert_eq!(opt.step_count(), 2);
        let state = opt.state();
        let m = state["adam_m/w"].to_vec1::<f32>().unwrap()[0];
        assert!((m - 0.38).abs() < 1e-6);
    }
}
