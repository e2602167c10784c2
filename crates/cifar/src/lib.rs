//! CIFAR-10 for the reproduction of Bardone, Merger & Goldt: loading through the
//! Hugging Face hub, image statistics, the DDPM schedule, the Gaussian surrogate
//! and the optimal linear (Wiener) denoiser baseline.
//!
//! Pure science and data loading: no configuration files, no caching of results,
//! no plotting. Images are flattened channel-major (CHW, d = 3072) and scaled to
//! [-1, 1] by `x / 127.5 - 1` wherever they enter a computation.

pub mod baseline;
pub mod ddpm;
pub mod error;
pub mod loader;
pub mod stats;
pub mod surrogate;
pub mod wiener;

pub use baseline::{
    BaselineConfig, BaselineRow, DEFAULT_TS, baseline_rows, baseline_table, baseline_table_data,
    eval_draws,
};
pub use ddpm::DdpmSchedule;
pub use error::CifarError;
pub use loader::{
    CifarImages, HubOptions, Split, load_parquet, load_split, load_split_with, resolve_split_file,
};
pub use stats::{Eigh, GaussianModel, eigh, mean_and_covariance};
pub use wiener::{LossEstimate, WienerDenoiser, mmse_eps};

/// Colour channels (RGB).
pub const CHANNELS: usize = 3;
/// Image height in pixels.
pub const HEIGHT: usize = 32;
/// Image width in pixels.
pub const WIDTH: usize = 32;
/// Values per image: 3 x 32 x 32.
pub const DIM: usize = CHANNELS * HEIGHT * WIDTH;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
