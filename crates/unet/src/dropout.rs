//! Training/evaluation mode and reproducible dropout.

use std::cell::RefCell;

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::kernels::{self, use_cpu_kernels};
use crate::rng::{rng_for, stream};

enum Source {
    /// Masks drawn on the host from a seeded generator (CPU).
    Host(Box<Xoshiro256PlusPlus>),
    /// Masks drawn by the device generator, reseeded per step (CUDA).
    Device,
}

/// Whether a forward pass trains (dropout on, with its random source) or evaluates.
pub struct ForwardMode {
    dropout: Option<RefCell<Source>>,
}

impl ForwardMode {
    /// Evaluation: dropout off, deterministic.
    pub fn eval() -> Self {
        Self { dropout: None }
    }

    /// Training with dropout masks derived from `(seed, step)`. On the CPU the masks
    /// come from a host `Xoshiro256PlusPlus`; on CUDA the device generator is
    /// reseeded with the derived seed (`Device::set_seed`), so masks are
    /// reproducible per device kind but differ between CPU and CUDA.
    pub fn train(seed: u64, step: u64, device: &Device) -> Result<Self> {
        let source = if device.is_cpu() {
            Source::Host(Box::new(rng_for(seed, stream::DROPOUT, step)))
        } else {
            device.set_seed(crate::rng::derive_seed(seed, stream::DROPOUT, step))?;
            Source::Device
        };
        Ok(Self {
            dropout: Some(RefCell::new(source)),
        })
    }

    /// Whether dropout is active.
    pub fn is_train(&self) -> bool {
        self.dropout.is_some()
    }

    /// Inverted dropout with drop probability `p` (identity in evaluation mode or for p = 0).
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if self.dropout.is_none() {
            return Ok(x.clone());
        }
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p >= 1.0 {
            return x.zeros_like();
        }
        if let Some(values) = self.host_mask(x.elem_count(), p) {
            if use_cpu_kernels(x) {
                return kernels::mask::mask_mul(x, values);
            }
            return x.mul(&Tensor::from_vec(values, x.shape(), x.device())?);
        }
        let scale = 1.0 / (1.0 - p);
        let mask = Tensor::rand(0f32, 1f32, x.shape(), x.device())?
            .ge(p)?
            .to_dtype(DType::F32)?
            .affine(scale, 0.0)?;
        x.mul(&mask)
    }

    /// The next inverted-dropout mask over `n` values (0 or `1 / (1 - p)`,
    /// drawn from the host generator), when training on the CPU with `0 < p
    /// < 1`; `None` otherwise, without drawing. For ops that apply the mask
    /// themselves: [`ForwardMode::dropout`] would have drawn the same one.
    pub fn host_mask(&self, n: usize, p: f64) -> Option<Vec<f32>> {
        self.host_mask_beside(n, p, || ()).0
    }

    /// Whether [`ForwardMode::host_mask`] draws a mask for drop probability `p`.
    pub fn draws_host_masks(&self, p: f64) -> bool {
        p > 0.0
            && p < 1.0
            && self
                .dropout
                .as_ref()
                .is_some_and(|s| matches!(*s.borrow(), Source::Host(_)))
    }

    /// [`ForwardMode::host_mask`], drawn on another rayon worker while
    /// `beside` runs on this thread: the draws are serial by construction,
    /// so they go where a core would otherwise wait. The mask is the same.
    pub fn host_mask_beside<R: Send>(
        &self,
        n: usize,
        p: f64,
        beside: impl FnOnce() -> R + Send,
    ) -> (Option<Vec<f32>>, R) {
        let Some(source) = self.dropout.as_ref().filter(|_| self.draws_host_masks(p)) else {
            return (None, beside());
        };
        let Source::Host(rng) = &mut *source.borrow_mut() else {
            unreachable!("draws_host_masks checked the source")
        };
        let (p32, s32) = (p as f32, (1.0 / (1.0 - p)) as f32);
        let draw = || -> Vec<f32> {
            (0..n)
                .map(|_| if rng.random::<f32>() < p32 { 0.0 } else { s32 })
                .collect()
        };
        let (beside, mask) = rayon::join(beside, draw);
        (Some(mask), beside)
    }
}
