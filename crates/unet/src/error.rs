//! Errors of training and checkpointing.

use std::path::PathBuf;

/// Everything that can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The configuration or the inputs are inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The loss (or gradient norm, or an evaluation loss) became NaN or infinite.
    #[error("non-finite {quantity} at step {step}: {value}")]
    NonFinite {
        /// The training step (1-based; 0 = before training) at which it happened.
        step: u64,
        /// `"loss"`, `"gradient norm"` or `"evaluation loss"`.
        quantity: &'static str,
        /// The offending value.
        value: f64,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path:?}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint file could not be parsed or is incomplete (resuming skips it).
    #[error("unreadable checkpoint {path:?}: {reason}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A valid checkpoint belongs to a different run (configuration, training data
    /// or evaluation sets differ). Resuming refuses to continue from it.
    #[error("checkpoint {path:?} belongs to a different run: {what} differs")]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// Which part differs.
        what: String,
    },
}
