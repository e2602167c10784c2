//! Epsilon-MSE evaluation with common random numbers (fixed noise per image and level).


use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ddpm::{DdpmSchedule, eps_mse_per_image};
use crate::dropout::ForwardMode;
use crate::rng::{fill_standard_normal, rng_for, stream};
use crate::unet::UNet;

/// Mean epsilon-MSE (per dimension) at one noise level over an image set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    /// Noise level (1-based).
    pub t: usize,
    /// Mean over images of the per-image mean squared error per dimension.
    pub mean: f64,
    /// Standard error of that mean (sample standard deviation / sqrt(n)).
    pub sem: f64,
    /// Number of images.
    pub n: usize,
}

/// Which weights an evaluation used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalWeights {
    /// The exponential moving average (when `ema_decay` is set).
    Ema,
    /// The raw optimised weights.
    Raw,
}

/// Pixels u8 in [0, 255] to f32 in [-1, 1]: v / 127.5 - 1.
pub fn u8_to_unit(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// `n` images stored as u8 NCHW (`channels x size x size` each) to an f32 tensor
/// (n, channels, size, size) in [-1, 1].
pub fn images_to_tensor(
    data: &[u8],
    channels: usize,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let d = channels * size * size;
    if d == 0 || !data.len().is_multiple_of(d) {
        candle_core::bail!(
            "{} bytes is not a whole number of {d}-byte images",
            data.len()
        )
    }
    let v: Vec<f32> = data.iter().map(|&b| u8_to_unit(b)).collect();
    Tensor::from_vec(v, (data.len() / d, channels, size, size), device)
}

/// The fixed evaluation noise of image `index` at level `t`: a function of
/// `(noise_seed, index, t)` only, so two image sets evaluated with the same seed
/// see the same noise (common random numbers), whatever the batching.
pub fn eval_noise(noise_seed: u64, index: usize, t: usize, dim: usize) -> Vec<f32> {
    let mut rng = rng_for(
        noise_seed,
        stream::EVAL,
        ((index as u64) << 20) ^ (t as u64),
    );
    let mut v = vec![0f32; dim];
    fill_standard_normal(&mut rng, &mut v);
    v
}

/// Per-image epsilon-MSE of `model` (evaluation mode, no autograd graph when the
/// model is built on detached parameters) on `images` (N, C, H, W) f32 (any
/// device; moved batch by batch to the model's) at each
/// level in `t_levels`, with the noise of [`eval_noise`]. Returns one vector of N
/// values per level.
pub fn eval_eps_mse_per_image(
    model: &UNet,
    schedule: &DdpmSchedule,
    images: &Tensor,
    t_levels: &[usize],
    noise_seed: u64,
    batch_size: usize,
) -> candle_core::Result<Vec<Vec<f64>>> {
    let (n, c, h, w) = images.dims4()?;
    let dim = c * h * w;
    let device = model.device().clone();
    let mode = ForwardMode::eval();
    let mut out = vec![Vec::with_capacity(n); t_levels.len()];
    let bs = batch_size.max(1);
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let x0 = images
            .narrow(0, start, len)?
            .to_device(&device)?
            .to_dtype(DType::F32)?
            .detach();
        for (j, &t) in t_levels.iter().enumerate() {
            let mut eps = Vec::with_capacity(len * dim);
            for i in start..start + len {
                eps.extend(eval_noise(noise_seed, i, t, dim));
            }
            let eps = Tensor::from_vec(eps, (len, c, h, w), &device)?;
            let ts = vec![t; len];
            let xt = schedule.noise(&x0, &eps, &ts)?;
            let pred = model.forward(&xt, &ts, &mode)?;
            let per = eps_mse_per_image(&pred, &eps)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            out[j].extend(per);
        }
        start += len;
    }
    Ok(out)
}

/// Mean and standard error of per-image values (f64, two-pass).
pub fn mean_sem(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// [`eval_eps_mse_per_image`] summarised per level.
pub fn eval_eps_mse(
    model: &UNet,
    schedule: &DdpmSchedule,
    images: &Tensor,
    t_levels: &[usize],
    noise_seed: u64,
    batch_size: usize,
) -> candle_core::Result<Vec<LevelStats>> {
    let per = eval_eps_mse_per_image(model, schedule, images, t_levels, noise_seed, batch_size)?;
    Ok(t_levels
        .iter()
        .zip(per)
        .map(|(&t, v)| {
            let (mean, sem) = mean_sem(&v);
            LevelStats {
                t,
                mean,
                sem,
                n: v.len(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sem_two_pass() {
        let (m, s) = mean_sem(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
    }
}
