//! The DDPM forward process (Ho et al. 2020) and the epsilon-prediction loss.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// A linear beta schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdpmConfig {
    /// Number of diffusion steps T.
    pub num_steps: usize,
    /// beta_1.
    pub beta_start: f64,
    /// beta_T.
    pub beta_end: f64,
}

impl Default for DdpmConfig {
    /// Ho et al.: T = 1000, beta from 1e-4 to 0.02.
    fn default() -> Self {
        Self {
            num_steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

/// Noise schedule with 1-based noise levels t = 1..=T:
/// beta_t = beta_start + (beta_end - beta_start) (t - 1) / (T - 1),
/// alpha_bar_t = prod_{s <= t} (1 - beta_s), and
/// x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Computed in f64.
#[derive(Clone, Debug)]
pub struct DdpmSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl DdpmSchedule {
    /// The schedule of `config`.
    pub fn new(config: &DdpmConfig) -> Self {
        Self::linear(config.num_steps, config.beta_start, config.beta_end)
    }

    /// A linear schedule with `num_steps` levels.
    pub fn linear(num_steps: usize, beta_start: f64, beta_end: f64) -> Self {
        assert!(num_steps >= 1, "need at least one diffusion step");
        let betas: Vec<f64> = (0..num_steps)
            .map(|i| {
                if num_steps == 1 {
                    beta_start
                } else {
                    beta_start + (beta_end - beta_start) * i as f64 / (num_steps - 1) as f64
                }
            })
            .collect();
        let mut prod = 1.0;
        let alpha_bars = betas
            .iter()
            .map(|b| {
                prod *= 1.0 - b;
                prod
            })
            .collect();
        Self { betas, alpha_bars }
    }

    /// T.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    fn idx(&self, t: usize) -> usize {
        assert!(
            (1..=self.betas.len()).contains(&t),
            "noise level t = {t} outside 1..={}",
            self.betas.len()
        );
        t - 1
    }

    /// beta_t (t 1-based).
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[self.idx(t)]
    }

    /// alpha_bar_t = prod_{s=1..t} (1 - beta_s).
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bars[self.idx(t)]
    }

    /// x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, with one level per
    /// image. `x0`, `eps`: (B, ...) on the same device; `t`: B levels.
    pub fn noise(&self, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
        let b = x0.dim(0)?;
        if t.len() != b {
            candle_core::bail!("{} noise levels for a batch of {b}", t.len())
        }
        let mut shape = vec![1usize; x0.rank()];
        shape[0] = b;
        let a: Vec<f32> = t.iter().map(|&s| self.alpha_bar(s).sqrt() as f32).collect();
        let s: Vec<f32> = t
            .iter()
            .map(|&s| (1.0 - self.alpha_bar(s)).sqrt() as f32)
            .collect();
        let a = Tensor::from_vec(a, shape.clone(), x0.device())?;
        let s = Tensor::from_vec(s, shape, x0.device())?;
        x0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?
    }
}

/// The epsilon-prediction loss: mean squared error per dimension over the batch.
pub fn eps_mse(pred: &Tensor, eps: &Tensor) -> Result<Tensor> {
    (pred - eps)?.sqr()?.mean_all()
}

/// Per-image mean squared error per dimension: (B, ...) -> (B,).
pub fn eps_mse_per_image(pred: &Tensor, eps: &Tensor) -> Result<Tensor> {
    (pred - eps)?.sqr()?.flatten_from(1)?.mean(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ho_schedule_values() {
        let s = DdpmSchedule::new(&DdpmConfig::default());
        assert_eq!(s.num_steps(), 1000);
        assert!((s.beta(1) - 1e-4).abs() < 1e-15);
        assert!((s.beta(1000) - 0.02).abs() < 1e-15);
        assert!((s.alpha_bar(1) - 0.9999).abs() < 1e-15);
        assert!((s.alpha_bar(2) - 0.9999 * (1.0 - (1e-4 + 0.0199 / 999.0))).abs() < 1e-15);
        // alpha_bar_T of Ho's schedule is about 4.04e-5.
        assert!(
            (4.0e-5..4.1e-5).contains(&s.alpha_bar(1000)),
            "{}",
            s.alpha_bar(1000)
        );
    }

    #[test]
    fn noising_mixes_signal_and_noise() {
        let s = DdpmSchedule::linear(10, 0.1, 0.5);
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let eps = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.0]], &dev).unwrap();
        let xt = s
            .noise(&x0, &eps, &[1, 10])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, t) in [(0usize, 1usize), (1, 10)] {
            let a = s.alpha_bar(t);
            let x = x0.to_vec2::<f32>().unwrap();
            let e = eps.to_vec2::<f32>().unwrap();
            for k in 0..2 {
                let want =
                    a.sqrt() * f64::from(x[row][k]) + (1.0 - a).sqrt() * f64::from(e[row][k]);
                assert!((f64::from(xt[row][k]) - want).abs() < 1e-6);
            }
        }
        let mse = eps_mse(&x0, &eps).unwrap().to_scalar::<f32>().unwrap();
        assert!((mse - (0.25 + 9.0 + 1.0 + 16.0) / 4.0).abs() < 1e-6);
    }
}
