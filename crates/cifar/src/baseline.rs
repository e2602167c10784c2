//! The linear-denoiser baseline table: per noise level, the analytic MMSE of the
//! Gaussian model and the empirical Wiener loss on real test images and on as many
//! Gaussian-surrogate samples, with common random numbers.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::ddpm::DdpmSchedule;
use crate::error::{CifarError, Result};
use crate::loader::CifarImages;
use crate::stats::GaussianModel;
use crate::wiener::{eps_mse_projected, mmse_eps, project};
use crate::{DIM, surrogate};

/// Default noise levels (1-based, out of T = 1000).
pub const DEFAULT_TS: [usize; 7] = [10, 50, 100, 250, 500, 750, 1000];

/// How the baseline is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineConfig {
    /// Noise levels t (1-based).
    pub ts: Vec<usize>,
    /// Use only the first `n_test` test images (None: all of them). The surrogate
    /// gets as many samples.
    pub n_test: Option<usize>,
    /// Seed of the noise draws and of the surrogate samples.
    pub seed: u64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            ts: DEFAULT_TS.to_vec(),
            n_test: None,
            seed: 0,
        }
    }
}

/// One row of the baseline table (losses are per-dimension epsilon-MSEs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineRow {
    /// Noise level (1-based).
    pub t: usize,
    /// alpha_bar_t.
    pub alpha_bar: f64,
    /// Analytic MMSE of the Gaussian model, `(1/d) sum abar l / (abar l + 1 - abar)`.
    pub mmse_analytic: f64,
    /// Wiener loss on the real test images.
    pub wiener_real: f64,
    /// Its standard error over images.
    pub wiener_real_se: f64,
    /// Wiener loss on Gaussian-surrogate samples (same noise draws).
    pub wiener_surrogate: f64,
    /// Its standard error over samples.
    pub wiener_surrogate_se: f64,
}

/// The baseline table on CIFAR test images (scaled to [-1, 1]); `model` is the
/// Gaussian model of the training images.
pub fn baseline_table(
    model: &GaussianModel,
    test: &CifarImages,
    schedule: &DdpmSchedule,
    cfg: &BaselineConfig,
) -> Result<Vec<BaselineRow>> {
    let n = cfg.n_test.map_or(test.n, |m| m.min(test.n));
    if model.dim() != DIM {
        return Err(CifarError::Shape {
            context: "baseline_table",
            what: format!("model has dimension {}, CIFAR images {DIM}", model.dim()),
        });
    }
    baseline_table_data(model, &test.head(n).to_f64(), schedule, cfg)
}

/// The noise draws and surrogate samples of an evaluation set of `n` vectors:
/// `eps` (n x d standard normal, one draw per vector, used at every t and for both
/// sets: common random numbers) from Xoshiro256++ seeded with `seed`, and `n`
/// surrogate samples from the same generator after a `jump()` (the two streams
/// never overlap). Both laid out one vector after the other.
pub fn eval_draws(model: &GaussianModel, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut noise_rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut surrogate_rng = noise_rng.clone();
    surrogate_rng.jump();
    let eps = surrogate::standard_normal(n * model.dim(), &mut noise_rng);
    let fake = surrogate::sample_with_rng(model, n, &mut surrogate_rng);
    (eps, fake)
}

/// The baseline table on any data set (`n` vectors of the model's dimension,
/// one after the other; `cfg.n_test` is ignored: all vectors are used), with the
/// draws of [`eval_draws`]`(model, n, cfg.seed)`.
pub fn baseline_table_data(
    model: &GaussianModel,
    test: &[f64],
    schedule: &DdpmSchedule,
    cfg: &BaselineConfig,
) -> Result<Vec<BaselineRow>> {
    let d = model.dim();
    if d == 0 || !test.len().is_multiple_of(d) || test.is_empty() {
        return Err(CifarError::Shape {
            context: "baseline_table_data",
            what: format!("{} test values for dimension {d}", test.len()),
        });
    }
    let (eps, fake) = eval_draws(model, test.len() / d, cfg.seed);
    baseline_rows(model, test, &fake, &eps, schedule, &cfg.ts)
}

/// The baseline table from explicit sets: `real` and `surrogate` clean vectors
/// and the noise draws `eps`, all n x d (one vector after the other); vector i of
/// both sets is noised with `eps` vector i at every t.
pub fn baseline_rows(
    model: &GaussianModel,
    real: &[f64],
    surrogate: &[f64],
    eps: &[f64],
    schedule: &DdpmSchedule,
    ts: &[usize],
) -> Result<Vec<BaselineRow>> {
    if real.len() != eps.len() || surrogate.len() != eps.len() {
        return Err(CifarError::Shape {
            context: "baseline_rows",
            what: format!(
                "real has {} values, surrogate {}, eps {}; they must agree",
                real.len(),
                surrogate.len(),
                eps.len()
            ),
        });
    }
    // Everything in the eigenbasis: two products per set, then O(n d) per t.
    let noise = project(model, eps, None)?;
    let real = project(model, real, Some(&model.mean))?;
    let fake = project(model, surrogate, Some(&model.mean))?;
    ts.iter()
        .map(|&t| {
            let abar = schedule.alpha_bar(t);
            let r = eps_mse_projected(&model.eigenvalues, abar, real.as_ref(), noise.as_ref())?;
            let s = eps_mse_projected(&model.eigenvalues, abar, fake.as_ref(), noise.as_ref())?;
            Ok(BaselineRow {
                t,
                alpha_bar: abar,
                mmse_analytic: mmse_eps(&model.eigenvalues, abar),
                wiener_real: r.mean,
                wiener_real_se: r.se,
                wiener_surrogate: s.mean,
                wiener_surrogate_se: s.se,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_data_rows_match_analytic() {
        let d = 16;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
        let train: Vec<f64> = surrogate::standard_normal(2000 * d, &mut rng)
            .iter()
            .enumerate()
            .map(|(i, z)| z * 0.5 / (1.0 + (i % d) as f64) - 0.2)
            .collect();
        let model = GaussianModel::fit(&train, d).unwrap();
        // "Real" data drawn from the model itself: both columns match the analytic value.
        let test = surrogate::sample(&model, 20_000, 3);
        let rows = baseline_table_data(
            &model,
            &test,
            &DdpmSchedule::default(),
            &BaselineConfig::default(),
        )
        .unwrap();
        assert_eq!(rows.len(), DEFAULT_TS.len());
        for r in &rows {
            for (m, se) in [
                (r.wiener_real, r.wiener_real_se),
                (r.wiener_surrogate, r.wiener_surrogate_se),
            ] {
                let z = (m - r.mmse_analytic) / se;
                assert!(
                    z.abs() < 4.5,
                    "t = {}: {m} +- {se} vs {}",
                    r.t,
                    r.mmse_analytic
                );
            }
        }
        // The eps-loss falls with the noise level (x_t is mostly eps at large t).
        assert!(
            rows.windows(2)
                .all(|w| w[1].mmse_analytic < w[0].mmse_analytic)
        );
    }
}
