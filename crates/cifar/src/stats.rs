//! Mean, covariance and its eigendecomposition: the Gaussian model of the data.
//!
//! Data sets are `n` vectors of dimension `d`, stored image after image
//! (`data[i * d + k]`), which is faer's column-major layout of a `d x n` matrix
//! whose columns are the images.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;

use crate::DIM;
use crate::error::{CifarError, Result};
use crate::loader::CifarImages;

/// Rows per block when accumulating the covariance (bounds the memory of the
/// centered copy to `d * BLOCK` doubles).
const BLOCK: usize = 4096;

/// View `n` vectors of dimension `d`, stored one after the other, as the `d x n`
/// matrix whose columns are the vectors.
pub fn as_columns(data: &[f64], d: usize, n: usize) -> MatRef<'_, f64> {
    assert_eq!(
        data.len(),
        d * n,
        "data has {} values, expected {d} x {n}",
        data.len()
    );
    MatRef::from_column_major_slice(data, d, n)
}

/// Empirical mean (length d) of `n` vectors of dimension `d`.
pub fn mean(data: &[f64], d: usize) -> Vec<f64> {
    assert!(
        d > 0 && data.len().is_multiple_of(d),
        "data length {} is not a multiple of d = {d}",
        data.len()
    );
    let n = data.len() / d;
    assert!(n > 0, "mean of an empty data set");
    let sum = data
        .par_chunks(d * 256)
        .map(|chunk| {
            let mut acc = vec![0.0f64; d];
            for row in chunk.chunks_exact(d) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
            acc
        })
        .reduce(
            || vec![0.0; d],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        );
    sum.into_iter().map(|s| s / n as f64).collect()
}

/// Empirical mean and covariance (normalised by n - 1) of `n` vectors of dimension
/// `d`, accumulated in f64 by blocks of centered vectors (lower triangle via
/// faer's triangular matmul, then mirrored).
pub fn mean_and_covariance(data: &[f64], d: usize) -> (Vec<f64>, Mat<f64>) {
    let mu = mean(data, d);
    let n = data.len() / d;
    assert!(n >= 2, "the covariance needs at least two vectors, got {n}");
    let mut cov = Mat::<f64>::zeros(d, d);
    let mut centered = Mat::<f64>::zeros(d, BLOCK.min(n));
    let mut first = true;
    for block in data.chunks(d * BLOCK) {
        let m = block.len() / d;
        let xc = centered.as_mut().subcols_mut(0, m);
        xc.par_col_iter_mut().enumerate().for_each(|(j, mut col)| {
            let x = &block[j * d..(j + 1) * d];
            for k in 0..d {
                col[k] = x[k] - mu[k];
            }
        });
        let xc = centered.as_ref().subcols(0, m);
        triangular::matmul(
            cov.as_mut(),
            BlockStructure::TriangularLower,
            if first { Accum::Replace } else { Accum::Add },
            xc,
            BlockStructure::Rectangular,
            xc.transpose(),
            BlockStructure::Rectangular,
            1.0 / (n - 1) as f64,
            Par::rayon(0),
        );
        first = false;
    }
    for j in 0..d {
        for i in 0..j {
            cov[(i, j)] = cov[(j, i)];
        }
    }
    (mu, cov)
}

/// The symmetric eigendecomposition `Sigma = V diag(lambda) V^T`.
#[derive(Debug, Clone)]
pub struct Eigh {
    /// Eigenvalues in decreasing order, negative ones clipped to 0.
    pub values: Vec<f64>,
    /// Orthonormal eigenvectors as columns, in the order of `values`.
    pub vectors: Mat<f64>,
    /// How many eigenvalues were negative before clipping.
    pub n_clipped: usize,
    /// The smallest eigenvalue before clipping.
    pub min_raw: f64,
}

/// Symmetric eigendecomposition of a covariance matrix (faer's self-adjoint
/// solver, lower triangle), eigenvalues sorted decreasingly and clipped at 0.
pub fn eigh(cov: MatRef<'_, f64>) -> Result<Eigh> {
    let d = cov.nrows();
    if cov.ncols() != d {
        return Err(CifarError::Shape {
            context: "eigh",
            what: format!("matrix is {}x{}, expected square", d, cov.ncols()),
        });
    }
    let evd = cov
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| CifarError::Eigen {
            dim: d,
            reason: format!("{e:?}"),
        })?;
    let s = evd.S().column_vector();
    let u = evd.U();
    // faer sorts increasingly; reverse to decreasing.
    let raw: Vec<f64> = (0..d).rev().map(|i| s[i]).collect();
    let min_raw = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let n_clipped = raw.iter().filter(|&&v| v < 0.0).count();
    let values = raw.iter().map(|&v| v.max(0.0)).collect();
    let vectors = Mat::from_fn(d, d, |i, j| u[(i, d - 1 - j)]);
    Ok(Eigh {
        values,
        vectors,
        n_clipped,
        min_raw,
    })
}

/// A Gaussian model of the data: mean and covariance, the latter kept as its
/// eigendecomposition.
#[derive(Debug, Clone)]
pub struct GaussianModel {
    /// Mean vector (length d).
    pub mean: Vec<f64>,
    /// Eigenvalues of the covariance, decreasing, clipped at 0.
    pub eigenvalues: Vec<f64>,
    /// Orthonormal eigenvectors (d x d, columns in the order of `eigenvalues`).
    pub eigenvectors: Mat<f64>,
    /// Number of vectors the moments were estimated from.
    pub n_samples: usize,
}

impl GaussianModel {
    /// Dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Build from a mean and a covariance matrix (eigendecomposes it).
    pub fn from_moments(mean: Vec<f64>, cov: MatRef<'_, f64>, n_samples: usize) -> Result<Self> {
        if cov.nrows() != mean.len() {
            return Err(CifarError::Shape {
                context: "GaussianModel::from_moments",
                what: format!(
                    "mean has length {}, covariance is {}x{}",
                    mean.len(),
                    cov.nrows(),
                    cov.ncols()
                ),
            });
        }
        let e = eigh(cov)?;
        Ok(Self {
            mean,
            eigenvalues: e.values,
            eigenvectors: e.vectors,
            n_samples,
        })
    }

    /// Fit to `n` vectors of dimension `d` stored one after the other.
    pub fn fit(data: &[f64], d: usize) -> Result<Self> {
        let (mu, cov) = mean_and_covariance(data, d);
        Self::from_moments(mu, cov.as_ref(), data.len() / d)
    }

    /// Fit to CIFAR images scaled to [-1, 1] (flattened CHW, d = 3072).
    pub fn fit_images(images: &CifarImages) -> Result<Self> {
        Self::fit(&images.to_f64(), DIM)
    }

    /// The covariance `V diag(lambda) V^T` (d x d), rebuilt from the eigenpairs.
    pub fn covariance(&self) -> Mat<f64> {
        let v = self.eigenvectors.as_ref();
        let scaled = Mat::from_fn(v.nrows(), v.ncols(), |i, j| v[(i, j)] * self.eigenvalues[j]);
        let mut out = Mat::zeros(v.nrows(), v.nrows());
        faer::linalg::matmul::matmul(
            out.as_mut(),
            Accum::Replace,
            scaled.as_ref(),
            v.transpose(),
            1.0,
            Par::rayon(0),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn covariance_matches_naive_formula_across_blocks() {
        // n > BLOCK so that several blocks are accumulated.
        let (d, n) = (5, BLOCK + 123);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let data: Vec<f64> = (0..n * d)
            .map(|i| {
                let z: f64 = StandardNormal.sample(&mut rng);
                z * (1.0 + (i % d) as f64) + (i % d) as f64
            })
            .collect();
        let (mu, cov) = mean_and_covariance(&data, d);
        for k in 0..d {
            let m: f64 = (0..n).map(|i| data[i * d + k]).sum::<f64>() / n as f64;
            assert!((mu[k] - m).abs() < 1e-12);
        }
        for a in 0..d {
            for b in 0..d {
                let c: f64 = (0..n)
                    .map(|i| (data[i * d + a] - mu[a]) * (data[i * d + b] - mu[b]))
                    .sum::<f64>()
                    / (n - 1) as f64;
                assert!(
                    (cov[(a, b)] - c).abs() < 1e-10,
                    "({a},{b}) {} vs {c}",
                    cov[(a, b)]
                );
            }
        }
    }

    #[test]
    fn eigendecomposition_reconstructs_covariance() {
        let (d, n) = (40, 300);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let data: Vec<f64> = (0..n * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let (mu, cov) = mean_and_covariance(&data, d);
        let model = GaussianModel::from_moments(mu, cov.as_ref(), n).unwrap();
        assert!(model.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
        assert!(model.eigenvalues.iter().all(|&l| l >= 0.0));
        let rebuilt = model.covariance();
        let err = (&rebuilt - &cov).norm_max();
        assert!(err < 1e-12, "reconstruction error {err}");
        // V is orthonormal.
        let v = model.eigenvectors.as_ref();
        let vtv = v.transpose() * v;
        let eye = Mat::<f64>::identity(d, d);
        assert!((&vtv - &eye).norm_max() < 1e-12);
    }

    #[test]
    fn rank_deficient_covariance_is_clipped_at_zero() {
        // n < d: at least d - n + 1 zero eigenvalues, some slightly negative.
        let (d, n) = (30, 10);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let data: Vec<f64> = (0..n * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let (_, cov) = mean_and_covariance(&data, d);
        let e = eigh(cov.as_ref()).unwrap();
        assert!(e.values.iter().all(|&l| l >= 0.0));
        assert!(e.values[d - 1] < 1e-12);
        assert!(e.min_raw > -1e-12);
    }
}
