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
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::optim::{AdamStep, adam_update};
use crate::kernels::{self, use_cpu_kernels};

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
        // Separate storage for each moment: the CPU update writes them in place.
        let v = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
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
        self.step_scaled(grads, lr, None)
    }

    /// One update with the gradients multiplied by `grad_scale` first (as
    /// [`clip_grad_norm`] would scale them), without materialising the scaled
    /// gradients. On the CPU the update runs in place, one fused pass per tensor.
    pub fn step_scaled(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: Option<f64>,
    ) -> Result<()> {
        self.update(grads, lr, grad_scale, true)
    }

    /// The update, through the in-place CPU kernel when `fused` allows it and
    /// the parameter is on the CPU, through candle ops otherwise.
    fn update(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: Option<f64>,
        fused: bool,
    ) -> Result<()> {
        self.t += 1;
        let c = &self.config;
        let t = self.t as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        let kernel_step = AdamStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size,
            inv_bc2_sqrt: 1.0 / bc2_sqrt,
            decay: (c.weight_decay != 0.0).then_some(1.0 - lr * c.weight_decay),
            grad_scale,
        };
        if fused
            && self
                .params
                .iter()
                .all(|(_, var)| use_cpu_kernels(var.as_tensor()))
        {
            // Tensor by tensor side by side: most are small (biases, norms),
            // each too short for its own update to use both threads.
            return self
                .params
                .par_iter()
                .zip(self.m.par_iter().zip(&self.v))
                .try_for_each(|((_, var), (m, v))| {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        return Ok(());
                    };
                    adam_update(
                        var.as_tensor(),
                        m,
                        v,
                        &g.to_dtype(DType::F32)?,
                        &kernel_step,
                    )
                });
        }
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            let g = match grad_scale {
                Some(s) => (g * s)?,
                None => g,
            };
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

    /// Copies of the moments, named `adam_m/<param>` and `adam_v/<param>` (copies:
    /// later updates write the moments in place).
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("adam_m/{name}"), self.m[i].copy()?);
            out.insert(format!("adam_v/{name}"), self.v[i].copy()?);
        }
        Ok(out)
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
                // An own copy: the CPU update writes the moments in place.
                *slot = t.to_device(var.device())?.to_dtype(DType::F32)?.copy()?;
            }
        }
        self.t = step_count;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` (summed in f64, in the given order).
pub fn global_grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let present: Vec<&Tensor> = vars
        .iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()))
        .collect();
    if present.is_empty() {
        return Ok(0.0);
    }
    if present.iter().all(|g| use_cpu_kernels(g)) {
        // The same sums as below (bit for bit where candle sums in the order
        // of `candle_sum`), without a squared copy of each gradient (one
        // allocation and pass per parameter tensor); tensors in parallel,
        // their sums added in order.
        let parts = present
            .par_iter()
            .map(|g| kernels::reduce::sum_of_squares(g).map(f64::from))
            .collect::<Result<Vec<f64>>>()?;
        return Ok(parts.iter().sum::<f64>().sqrt());
    }
    let sq: Vec<Tensor> = present
        .iter()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<_>>()?;
    let parts = Tensor::stack(&sq, 0)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(parts.iter().sum::<f64>().sqrt())
}

/// The factor [`clip_grad_norm`] scales gradients of global norm `norm` by, or
/// `None` when they are within `max_norm`.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// Clip the gradients of `vars` to global L2 norm at most `max_norm` (as PyTorch's
/// `clip_grad_norm_`: scale by `max_norm / (norm + 1e-6)` when that is below one).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, vars)?;
    if let Some(coef) = clip_coefficient(norm, max_norm) {
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
    use crate::test_support::bits;
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
        let state = opt.state().unwrap();
        let m = state["adam_m/w"].to_vec1::<f32>().unwrap()[0];
        assert!((m - 0.38).abs() < 1e-6);
    }

    /// The in-place CPU update and the candle-op update give the same bits,
    /// with clipping and weight decay.
    #[test]
    fn fused_update_is_bit_identical_to_the_candle_ops() {
        let init: Vec<f32> = (0..5000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let config = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let make = || {
            let w =
                Var::from_tensor(&Tensor::from_vec(init.clone(), (50, 100), &Device::Cpu).unwrap())
                    .unwrap();
            let opt = Adam::new(vec![("w".into(), w.clone())], config.clone()).unwrap();
            (w, opt)
        };
        let ((w_a, mut a), (w_b, mut b)) = (make(), make());
        for (step, scale) in [(0, None), (1, Some(0.37)), (2, Some(0.9))] {
            let lr = 1e-3 * (step + 1) as f64;
            let grads_of = |w: &Var| {
                let target = Tensor::from_vec(
                    init.iter().map(|v| v * 0.5 - 0.1).collect::<Vec<_>>(),
                    (50, 100),
                    &Device::Cpu,
                )
                .unwrap();
                (w.as_tensor() - target)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            a.update(&grads_of(&w_a), lr, scale, true).unwrap();
            b.update(&grads_of(&w_b), lr, scale, false).unwrap();
        }
        assert_eq!(bits(w_a.as_tensor()), bits(w_b.as_tensor()));
        let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
        for key in ["adam_m/w", "adam_v/w"] {
            assert_eq!(bits(&sa[key]), bits(&sb[key]), "{key}");
        }
        assert_ne!(
            bits(w_a.as_tensor()),
            bits(&Tensor::from_vec(init.clone(), (50, 100), &Device::Cpu).unwrap())
        );
    }
}
