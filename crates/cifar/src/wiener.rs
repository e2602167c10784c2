//! The optimal linear (Wiener) epsilon predictor for data with mean mu and
//! covariance Sigma = V diag(lambda) V^T, its analytic loss on Gaussian data, and
//! its empirical loss on given images with given noise draws.
//!
//! At noise level t, `x_t = sqrt(abar) x0 + sqrt(1 - abar) eps` and
//!
//! ```text
//! eps_hat = sqrt(1 - abar) (abar Sigma + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu)
//!         = V diag(g) V^T (x_t - sqrt(abar) mu),   g_k = sqrt(1 - abar) / (abar lambda_k + 1 - abar).
//! ```
//!
//! Losses are per-dimension epsilon-MSEs, `|eps_hat - eps|^2 / d`, averaged over
//! images. Data sets are `n` vectors of dimension `d` stored one after the other.

use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{CifarError, Result};
use crate::stats::{GaussianModel, as_columns};

/// Analytic per-dimension epsilon-MSE of the Wiener predictor on Gaussian data:
/// `(1/d) sum_i abar lambda_i / (abar lambda_i + 1 - abar)`.
pub fn mmse_eps(eigenvalues: &[f64], alpha_bar: f64) -> f64 {
    let s: f64 = eigenvalues
        .iter()
        .map(|&l| alpha_bar * l / (alpha_bar * l + 1.0 - alpha_bar))
        .sum();
    s / eigenvalues.len() as f64
}

/// The per-eigendirection gains `g_k = sqrt(1 - abar) / (abar lambda_k + 1 - abar)`.
pub fn wiener_gains(eigenvalues: &[f64], alpha_bar: f64) -> Vec<f64> {
    let s = (1.0 - alpha_bar).sqrt();
    eigenvalues
        .iter()
        .map(|&l| s / (alpha_bar * l + 1.0 - alpha_bar))
        .collect()
}

/// A mean over images with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossEstimate {
    /// Mean of the per-image losses.
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / sqrt(n)).
    pub se: f64,
    /// Number of images.
    pub n: usize,
}

impl LossEstimate {
    /// Mean and standard error of per-image values.
    pub fn from_samples(values: &[f64]) -> Self {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let se = if n > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        } else {
            f64::NAN
        };
        Self { mean, se, n }
    }
}

fn check_len(context: &'static str, name: &str, len: usize, d: usize) -> Result<usize> {
    if d == 0 || !len.is_multiple_of(d) {
        return Err(CifarError::Shape {
            context,
            what: format!("{name} has {len} values, not a multiple of the dimension {d}"),
        });
    }
    Ok(len / d)
}

/// `V^T (x - shift)` for every vector x of `data`: the d x n matrix of
/// coordinates in the eigenbasis (columns = vectors).
pub fn project(model: &GaussianModel, data: &[f64], shift: Option<&[f64]>) -> Result<Mat<f64>> {
    let d = model.dim();
    let n = check_len("wiener::project", "data", data.len(), d)?;
    let v = model.eigenvectors.as_ref();
    let out = match shift {
        None => v.transpose() * as_columns(data, d, n),
        Some(s) => {
            let mut xc = Mat::<f64>::zeros(d, n);
            xc.par_col_iter_mut().enumerate().for_each(|(j, mut col)| {
                let x = &data[j * d..(j + 1) * d];
                for k in 0..d {
                    col[k] = x[k] - s[k];
                }
            });
            v.transpose() * xc
        }
    };
    Ok(out)
}

/// The Wiener epsilon predictor at one noise level.
#[derive(Debug, Clone)]
pub struct WienerDenoiser<'a> {
    model: &'a GaussianModel,
    alpha_bar: f64,
    gains: Vec<f64>,
}

impl<'a> WienerDenoiser<'a> {
    /// The predictor for `model` at `alpha_bar` (in (0, 1)).
    pub fn new(model: &'a GaussianModel, alpha_bar: f64) -> Self {
        assert!(
            alpha_bar > 0.0 && alpha_bar < 1.0,
            "alpha_bar = {alpha_bar} must lie in (0, 1)"
        );
        Self {
            model,
            alpha_bar,
            gains: wiener_gains(&model.eigenvalues, alpha_bar),
        }
    }

    /// alpha_bar of this predictor.
    pub fn alpha_bar(&self) -> f64 {
        self.alpha_bar
    }

    /// Predict eps for noisy vectors `x_t` (n vectors, one after the other);
    /// returns n predictions in the same layout.
    pub fn predict_eps(&self, x_t: &[f64]) -> Result<Vec<f64>> {
        let d = self.model.dim();
        let n = check_len("WienerDenoiser::predict_eps", "x_t", x_t.len(), d)?;
        let shift: Vec<f64> = self
            .model
            .mean
            .iter()
            .map(|m| self.alpha_bar.sqrt() * m)
            .collect();
        let mut coords = project(self.model, x_t, Some(&shift))?;
        coords.par_col_iter_mut().for_each(|mut col| {
            for (k, g) in self.gains.iter().enumerate() {
                col[k] *= g;
            }
        });
        let mut out = vec![0.0; n * d];
        faer::linalg::matmul::matmul(
            MatMut::from_column_major_slice_mut(&mut out, d, n),
            Accum::Replace,
            self.model.eigenvectors.as_ref(),
            coords.as_ref(),
            1.0,
            Par::rayon(0),
        );
        Ok(out)
    }
}

/// Noise the clean vectors: `x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`.
pub fn add_noise(x0: &[f64], eps: &[f64], alpha_bar: f64) -> Vec<f64> {
    assert_eq!(x0.len(), eps.len(), "x0 and eps differ in length");
    let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    x0.par_iter()
        .zip(eps.par_iter())
        .map(|(x, e)| a * x + s * e)
        .collect()
}

/// Empirical epsilon-MSE of the Wiener predictor on clean vectors `x0` with the
/// noise draws `eps` (same layout), computed in pixel space: noise, predict,
/// compare. Per-dimension mean over images, with its standard error.
pub fn eps_mse(
    model: &GaussianModel,
    alpha_bar: f64,
    x0: &[f64],
    eps: &[f64],
) -> Result<LossEstimate> {
    let d = model.dim();
    let n = check_len("wiener::eps_mse", "x0", x0.len(), d)?;
    if eps.len() != x0.len() {
        return Err(CifarError::Shape {
            context: "wiener::eps_mse",
            what: format!("eps has {} values, x0 has {}", eps.len(), x0.len()),
        });
    }
    let x_t = add_noise(x0, eps, alpha_bar);
    let pred = WienerDenoiser::new(model, alpha_bar).predict_eps(&x_t)?;
    let per_image: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let r = i * d..(i + 1) * d;
            pred[r.clone()]
                .iter()
                .zip(&eps[r])
                .map(|(p, e)| (p - e).powi(2))
                .sum::<f64>()
                / d as f64
        })
        .collect();
    Ok(LossEstimate::from_samples(&per_image))
}

/// The same loss as [`eps_mse`], from eigenbasis coordinates: `signal = V^T (x0 - mu)`
/// and `noise = V^T eps` (both d x n, see [`project`]). Exact because V is
/// orthonormal; costs O(n d) per noise level once the projections exist, so many
/// noise levels share two matrix products.
pub fn eps_mse_projected(
    eigenvalues: &[f64],
    alpha_bar: f64,
    signal: MatRef<'_, f64>,
    noise: MatRef<'_, f64>,
) -> Result<LossEstimate> {
    let d = eigenvalues.len();
    if signal.nrows() != d || noise.nrows() != d || signal.ncols() != noise.ncols() {
        return Err(CifarError::Shape {
            context: "wiener::eps_mse_projected",
            what: format!(
                "{d} eigenvalues, signal {}x{}, noise {}x{}",
                signal.nrows(),
                signal.ncols(),
                noise.nrows(),
                noise.ncols()
            ),
        });
    }
    let gains = wiener_gains(eigenvalues, alpha_bar);
    let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    // eps_hat - eps in the eigenbasis: g (a x + s e) - e.
    let cs: Vec<f64> = gains.iter().map(|g| g * a).collect();
    let ce: Vec<f64> = gains.iter().map(|g| g * s - 1.0).collect();
    let per_image: Vec<f64> = (0..signal.ncols())
        .into_par_iter()
        .map(|j| {
            let (x, e) = (signal.col(j), noise.col(j));
            let mut acc = 0.0;
            for k in 0..d {
                let r = cs[k] * x[k] + ce[k] * e[k];
                acc += r * r;
            }
            acc / d as f64
        })
        .collect();
    Ok(LossEstimate::from_samples(&per_image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surrogate;
    use faer::linalg::solvers::Solve;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn synthetic_model(d: usize) -> GaussianModel {
        // A random Gaussian with a decaying spectrum and a non-zero mean.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let n = 4 * d;
        let raw = surrogate::standard_normal(n * d, &mut rng);
        let data: Vec<f64> = raw
            .iter()
            .enumerate()
            .map(|(i, z)| z * (2.0 / (1.0 + (i % d) as f64)).sqrt() + 0.1 * (i % 7) as f64)
            .collect();
        GaussianModel::fit(&data, d).unwrap()
    }

    #[test]
    fn mmse_limits() {
        let l = [1.0, 2.0, 0.0];
        assert!(mmse_eps(&l, 1e-12) < 1e-11);
        assert!((mmse_eps(&l, 1.0 - 1e-12) - 2.0 / 3.0).abs() < 1e-9);
        // one eigenvalue 1 at abar = 1/2: 0.5 / (0.5 + 0.5)
        assert!((mmse_eps(&[1.0], 0.5) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn empirical_wiener_loss_matches_analytic_on_gaussian_data() {
        let d = 24;
        let model = synthetic_model(d);
        let n = 40_000;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let x0 = surrogate::sample_with_rng(&model, n, &mut rng);
        let eps = surrogate::standard_normal(n * d, &mut rng);
        for abar in [0.99, 0.7, 0.3, 0.02] {
            let analytic = mmse_eps(&model.eigenvalues, abar);
            let emp = eps_mse(&model, abar, &x0, &eps).unwrap();
            let z = (emp.mean - analytic) / emp.se;
            assert!(
                z.abs() < 4.0,
                "abar {abar}: {} +- {} vs {analytic} (z = {z})",
                emp.mean,
                emp.se
            );
            // The eigenbasis shortcut gives the same numbers.
            let sig = project(&model, &x0, Some(&model.mean)).unwrap();
            let noi = project(&model, &eps, None).unwrap();
            let fast =
                eps_mse_projected(&model.eigenvalues, abar, sig.as_ref(), noi.as_ref()).unwrap();
            assert!(
                (fast.mean - emp.mean).abs() < 1e-10,
                "{} vs {}",
                fast.mean,
                emp.mean
            );
            assert!((fast.se - emp.se).abs() < 1e-10);
        }
    }

    #[test]
    fn predictor_is_the_linear_formula() {
        // eps_hat = sqrt(1-abar) (abar Sigma + (1-abar) I)^{-1} (x_t - sqrt(abar) mu), solved directly.
        let d = 6;
        let model = synthetic_model(d);
        let abar = 0.4;
        let sigma = model.covariance();
        let a = Mat::from_fn(d, d, |i, j| {
            abar * sigma[(i, j)] + if i == j { 1.0 - abar } else { 0.0 }
        });
        let x_t: Vec<f64> = (0..d).map(|k| 0.3 * k as f64 - 0.5).collect();
        let rhs = Mat::from_fn(d, 1, |k, _| {
            (1.0 - abar).sqrt() * (x_t[k] - abar.sqrt() * model.mean[k])
        });
        let direct = a.as_ref().partial_piv_lu().solve(rhs.as_ref());
        let pred = WienerDenoiser::new(&model, abar).predict_eps(&x_t).unwrap();
        for k in 0..d {
            assert!(
                (pred[k] - direct[(k, 0)]).abs() < 1e-12,
                "{k}: {} vs {}",
                pred[k],
                direct[(k, 0)]
            );
        }
    }
}
