//! The one error type of `idunno-models`.
//!
//! Everything that can go wrong while reading weights, checking inputs or
//! running a network ends up here; nothing in the module panics on a bad file
//! or a bad image. This is not where I/O retries or hub downloads live.

use std::path::PathBuf;

/// Result alias used throughout the models module.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Errors from loading, generating or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An architecture name that is not one of [`crate::Arch::ALL`].
    #[error(transparent)]
    UnknownArch(#[from] idunno_api::arch::UnknownArch),

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The weights file is not a readable safetensors file.
    #[error("invalid weights file {source_name}: {reason}")]
    InvalidWeights { source_name: String, reason: String },

    /// The weights file lacks a tensor the architecture needs.
    #[error("weights {source_name} have no tensor {tensor:?} (needed by {arch})")]
    MissingTensor {
        source_name: String,
        arch: &'static str,
        tensor: String,
    },

    /// A tensor exists but has the wrong shape.
    #[error("tensor {tensor:?} in {source_name} has shape {found:?}, {arch} needs {expected:?}")]
    ShapeMismatch {
        source_name: String,
        arch: &'static str,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor exists but is stored with a dtype that cannot become f32.
    #[error("tensor {tensor:?} in {source_name} has dtype {dtype}, expected a float type")]
    UnsupportedDtype {
        source_name: String,
        tensor: String,
        dtype: String,
    },

    /// An input tensor or image the network cannot take.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Any other failure inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}
