//! What defines a training trajectory: [`TrainConfig`] and its learning-rate schedule.


use serde::{Deserialize, Serialize};

use crate::adam::AdamConfig;
use crate::ddpm::DdpmConfig;
use crate::error::TrainError;

use crate::unet::UNetConfig;

/// Everything that defines a training trajectory (not its length).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    pub model: UNetConfig,
    /// The noise schedule.
    pub diffusion: DdpmConfig,
    /// Adam(W) moments, epsilon and weight decay.
    pub adam: AdamConfig,
    /// Seed of initialisation, batch order, flips, noise levels, noise and dropout.
    pub seed: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup: lr(step) = lr min(1, step / warmup_steps) for 1-based steps
    /// (0 = no warmup).
    pub warmup_steps: u64,
    /// Global L2 norm the gradients are clipped to (None = no clipping).
    pub grad_clip: Option<f64>,
    /// Exponential moving average of the weights with this decay (None = off).
    /// When on, evaluation uses the EMA weights.
    pub ema_decay: Option<f64>,
    /// Random horizontal flips of the training images.
    pub random_flip: bool,
}

impl TrainConfig {
    /// Ho et al.'s CIFAR-10 training: the paper U-Net, T = 1000, Adam lr 2e-4,
    /// batch 128, warmup 5000, clipping at 1, EMA 0.9999, flips.
    pub fn paper(seed: u64) -> Self {
        Self {
            model: UNetConfig::paper(),
            diffusion: DdpmConfig::default(),
            adam: AdamConfig::default(),
            seed,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            grad_clip: Some(1.0),
            ema_decay: Some(0.9999),
            random_flip: true,
        }
    }

    /// A CPU-sized configuration for tests: [`UNetConfig::tiny`], batch 8, lr 2e-4,
    /// no warmup, clipping at 1, no EMA, flips.
    pub fn tiny(seed: u64) -> Self {
        Self {
            model: UNetConfig::tiny(),
            diffusion: DdpmConfig::default(),
            adam: AdamConfig::default(),
            seed,
            batch_size: 8,
            lr: 2e-4,
            warmup_steps: 0,
            grad_clip: Some(1.0),
            ema_decay: None,
            random_flip: true,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate().map_err(TrainError::Config)?;
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be positive".into()));
        }
        if self.diffusion.num_steps == 0 {
            return Err(TrainError::Config(
                "diffusion.num_steps must be positive".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(TrainError::Config(format!("bad learning rate {}", self.lr)));
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return Err(TrainError::Config(format!(
                "ema_decay {d} must be in [0, 1)"
            )));
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(TrainError::Config(format!(
                "grad_clip {c} must be positive"
            )));
        }
        Ok(())
    }

    /// The learning rate of (1-based) step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear() {
        let mut c = TrainConfig::tiny(0);
        c.warmup_steps = 4;
        assert_eq!(c.lr_at(1), c.lr / 4.0);
        assert_eq!(c.lr_at(4), c.lr);
        assert_eq!(c.lr_at(100), c.lr);
    }
}
