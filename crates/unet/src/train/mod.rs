//! DDPM training: the [`Trainer`] (one optimisation step at a time), evaluation of
//! the epsilon-MSE with common random numbers, and the resumable [`train`] loop.
//!
//! Randomness: every draw is a function of `(seed, step)` (see [`crate::rng`]):
//! the epoch permutation of the training images (stream ORDER, index epoch), the
//! flips (FLIP, step), the noise levels (TIME, step), the noise (NOISE, step) and
//! the dropout masks (DROPOUT, step; host generator on the CPU, device generator
//! reseeded per step on CUDA). Resuming therefore needs only the weights, the
//! optimizer moments, the EMA weights and the step, and reproduces an
//! uninterrupted run bit for bit on the CPU.

mod config;
mod eval;
mod run;
mod trainer;

pub use config::TrainConfig;
pub use eval::{
    EvalWeights, LevelStats, eval_eps_mse, eval_eps_mse_per_image, eval_noise, images_to_tensor,
    mean_sem, u8_to_unit,
};
pub use run::{EvalConfig, EvalRecord, EvalSet, SetEval, TrainOutcome, TrainRun, log_spaced_steps, train};
pub use trainer::{StepStats, Trainer};
