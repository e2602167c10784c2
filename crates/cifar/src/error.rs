//! The crate's error type: every variant says what failed and where.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, decoding or analysing CIFAR-10.
#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    /// The Hugging Face hub client could not be built (bad `HF_ENDPOINT`, TLS setup, ...).
    #[error("could not set up the Hugging Face hub client (cache folder {cache_dir})")]
    HubClient {
        cache_dir: PathBuf,
        #[source]
        source: Box<hf_hub::HFError>,
    },

    /// The file is neither in the local hub cache nor downloadable.
    #[error(
        "CIFAR-10 file `{file}` of dataset `{repo}` (revision `{revision}`) is not in the \
         Hugging Face cache at {cache_dir} and could not be fetched ({reason}). \
         Without internet access, point HF_HOME at a prepared cache that holds it \
         (a folder with hub/datasets--uoft-cs--cifar10/...)"
    )]
    NotAvailable {
        file: &'static str,
        repo: &'static str,
        revision: &'static str,
        cache_dir: PathBuf,
        /// One-line summary of the download failure (the full error is the source).
        reason: String,
        #[source]
        source: Box<hf_hub::HFError>,
    },

    /// The parquet file could not be opened.
    #[error("could not open parquet file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Polars could not read the parquet file or one of its columns.
    #[error("could not read parquet file {path}: {what}")]
    Parquet {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<polars::error::PolarsError>,
    },

    /// The parquet file does not have the expected schema or content.
    #[error("parquet file {path}: {what}")]
    Schema { path: PathBuf, what: String },

    /// One image's PNG bytes could not be decoded.
    #[error("parquet file {path}, row {row}: could not decode the PNG image")]
    Png {
        path: PathBuf,
        row: usize,
        #[source]
        source: Box<image::ImageError>,
    },

    /// An image decoded fine but is not 32 x 32.
    #[error("parquet file {path}, row {row}: image is {width}x{height}, expected 32x32")]
    ImageSize {
        path: PathBuf,
        row: usize,
        width: u32,
        height: u32,
    },

    /// A label outside 0..=9 (or a null label).
    #[error("parquet file {path}, row {row}: label {label:?} is not a CIFAR-10 class (0..=9)")]
    Label {
        path: PathBuf,
        row: usize,
        label: Option<i64>,
    },

    /// The symmetric eigendecomposition did not converge.
    #[error("eigendecomposition of the {dim}x{dim} covariance matrix failed: {reason}")]
    Eigen { dim: usize, reason: String },

    /// Arrays of inconsistent sizes were passed in.
    #[error("shape mismatch in {context}: {what}")]
    Shape { context: &'static str, what: String },
}

/// Result alias for this crate.
pub type Result<T, E = CifarError> = std::result::Result<T, E>;
