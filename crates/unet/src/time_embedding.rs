//! Sinusoidal timestep embedding followed by two dense layers (Ho et al. 2020).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Dense;

/// The sinusoidal embedding of Ho et al. (as in their `get_timestep_embedding`):
/// for `half = dim / 2` frequencies `f_k = exp(-ln(10000) k / (half - 1))`, the
/// embedding of step `s` is `[sin(s f_0..), cos(s f_0..)]`. `steps`: (B,) f32.
pub fn sinusoidal_embedding(steps: &Tensor, dim: usize) -> Result<Tensor> {
    if dim < 4 || !dim.is_multiple_of(2) {
        candle_core::bail!("timestep embedding dimension must be even and >= 4, got {dim}")
    }
    let half = dim / 2;
    let scale = (10000f64).ln() / (half - 1) as f64;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(k as f64) * scale).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), steps.device())?;
    let args = steps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[&args.sin()?, &args.cos()?], 1)
}

/// Timestep embedding: sinusoidal(width) -> dense(width, 4 width) -> SiLU ->
/// dense(4 width, 4 width). Parameters under `dense0`, `dense1`.
#[derive(Clone, Debug)]
pub struct TimeEmbedding {
    dim: usize,
    dense0: Dense,
    dense1: Dense,
}

impl TimeEmbedding {
    /// `dim`: the U-Net base width; the output has `4 dim` features.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dim,
            dense0: Dense::new(dim, 4 * dim, vb.pp("dense0"))?,
            dense1: Dense::new(4 * dim, 4 * dim, vb.pp("dense1"))?,
        })
    }

    /// Output width (4 x base width).
    pub fn out_dim(&self) -> usize {
        4 * self.dim
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.dense0.param_count() + self.dense1.param_count()
    }

    /// `steps`: (B,) f32 timestep values (0-based as in Ho et al.) -> (B, 4 dim).
    pub fn forward(&self, steps: &Tensor) -> Result<Tensor> {
        let e = sinusoidal_embedding(steps, self.dim)?;
        self.dense1.forward(&self.dense0.forward(&e)?.silu()?)
    }
}
