//! The DDPM U-Net of Ho et al. 2020 in candle, its epsilon-prediction training
//! (resumable, reproducible from a seed) and its evaluation with common random
//! numbers, for claim C1 of Bardone, Merger, Goldt (figure 1: the U-Net's loss on
//! real CIFAR-10 test images against a Gaussian surrogate and the Wiener filter).
//!
//! Everything is f32 (weights, activations, gradients, Adam moments); on CUDA,
//! TF32 matrix multiplies are off unless [`set_tf32`] turns them on ([`precision`]
//! reports it). The caller supplies images (u8 NCHW slices for training, f32
//! tensors in [-1, 1] for evaluation); no data loading, caching or plotting here.
//!
//! Convolutions run as im2col + matrix products by default
//! ([`ConvImpl::Im2col`]). On the CPU (f32) the hot paths of a training step
//! are custom ops in [`kernels`]: convolutions as im2col + one threaded GEMM
//! with their gradients, GroupNorm fused with SiLU, AdamW and EMA in place;
//! other devices use candle's ops. The kernels run on rayon's pool; candle
//! 0.11's own CPU pool spin-waits beside it, so with few cores
//! `CANDLE_NUM_THREADS=1` is faster (`cargo xtask` sets it unless it is set;
//! results do not depend on it).
//!
//! Building blocks, one file each: [`time_embedding`], [`resblock`],
//! [`attention`], [`downsample`], [`upsample`], assembled in [`unet`].

pub mod adam;
pub mod attention;
pub mod checkpoint;
pub mod ddpm;
pub mod device;
pub mod downsample;
pub mod dropout;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod params;
pub mod resblock;
pub mod rng;
pub mod workers;
#[cfg(test)]
mod test_support;
pub mod time_embedding;
pub mod train;
pub mod unet;
pub mod upsample;

pub use adam::{Adam, AdamConfig, clip_coefficient, clip_grad_norm, global_grad_norm};
pub use attention::AttentionBlock;
pub use ddpm::{DdpmConfig, DdpmSchedule, eps_mse, eps_mse_per_image};
pub use device::{DTYPE, Precision, precision, select_device, set_tf32};
pub use dropout::ForwardMode;
pub use error::TrainError;
pub use layers::ConvImpl;
pub use params::ParamStore;
pub use resblock::ResBlock;
pub use time_embedding::TimeEmbedding;
pub use train::{
    EvalConfig, EvalRecord, EvalSet, EvalWeights, LevelStats, SetEval, StepStats, TrainConfig,
    TrainOutcome, TrainRun, Trainer, eval_eps_mse, eval_eps_mse_per_image, eval_noise,
    images_to_tensor, log_spaced_steps, mean_sem, train, u8_to_unit,
};
pub use unet::{UNet, UNetConfig};
