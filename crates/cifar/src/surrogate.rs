//! The Gaussian surrogate ("clone") of a data set: samples
//! `mu + V diag(sqrt(lambda)) z`, z ~ N(0, I), with mu, V, lambda from a
//! [`GaussianModel`]. Not clipped to the pixel range.
//!
//! Samples come out one after the other (`out[i * d + k]`). The draws are made
//! sequentially from one Xoshiro256++ generator, so a seed gives the same samples
//! whatever the number of threads.

use faer::{Accum, Mat, MatMut, Par};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::stats::GaussianModel;

/// `len` independent N(0, 1) draws from `rng`.
pub fn standard_normal<R: Rng + ?Sized>(len: usize, rng: &mut R) -> Vec<f64> {
    (0..len)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect()
}

/// `n` surrogate samples drawn with `rng` (n * d values).
pub fn sample_with_rng<R: Rng + ?Sized>(model: &GaussianModel, n: usize, rng: &mut R) -> Vec<f64> {
    let d = model.dim();
    let sqrt_l: Vec<f64> = model
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    // z, column j = sample j, scaled by sqrt(lambda) row-wise.
    let mut z = Mat::<f64>::zeros(d, n);
    for j in 0..n {
        let mut col = z.col_mut(j);
        for k in 0..d {
            col[k] = sqrt_l[k] * rng.sample::<f64, _>(StandardNormal);
        }
    }
    let mut out = vec![0.0; n * d];
    for chunk in out.chunks_exact_mut(d) {
        chunk.copy_from_slice(&model.mean);
    }
    faer::linalg::matmul::matmul(
        MatMut::from_column_major_slice_mut(&mut out, d, n),
        Accum::Add,
        model.eigenvectors.as_ref(),
        z.as_ref(),
        1.0,
        Par::rayon(0),
    );
    out
}

/// `n` surrogate samples from a generator seeded with `seed` (Xoshiro256++).
pub fn sample(model: &GaussianModel, n: usize, seed: u64) -> Vec<f64> {
    sample_with_rng(model, n, &mut Xoshiro256PlusPlus::seed_from_u64(seed))
}

/// [`sample`] converted to f32.
pub fn sample_f32(model: &GaussianModel, n: usize, seed: u64) -> Vec<f32> {
    sample(model, n, seed)
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::mean_and_covariance;

    #[test]
    fn samples_have_the_model_moments() {
        let d = 8;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let base: Vec<f64> = standard_normal(500 * d, &mut rng)
            .iter()
            .enumerate()
            .map(|(i, z)| z * (1.0 + (i % d) as f64) + (i % 3) as f64)
            .collect();
        let model = GaussianModel::fit(&base, d).unwrap();
        let n = 200_000;
        let x = sample(&model, n, 1);
        assert_eq!(x.len(), n * d);
        assert_eq!(x, sample(&model, n, 1), "same seed, same samples");
        let (mu, cov) = mean_and_covariance(&x, d);
        let target = model.covariance();
        for a in 0..d {
            let sd = target[(a, a)].sqrt();
            assert!((mu[a] - model.mean[a]).abs() < 5.0 * sd / (n as f64).sqrt());
            for b in 0..d {
                let tol = 6.0 * (target[(a, a)] * target[(b, b)] / n as f64).sqrt() * 2f64.sqrt();
                assert!((cov[(a, b)] - target[(a, b)]).abs() < tol, "({a},{b})");
            }
        }
    }
}
