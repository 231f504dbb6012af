//! The model crate's errors: config parsing, weight loading, and [`ModelError`], which any
//! step of loading or running a model returns. Every message names the file, field or tensor
//! at fault, since the user fixing it usually has only the message to go on.

use std::path::PathBuf;

use qwen3_backend::BackendError;

use crate::quant_config::QuantError;
use crate::weights::DType;

/// Anything that stops a model from loading or a step from running.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{0}")]
    Invalid(String),
}

/// A `config.json` that cannot be used for a Qwen3 model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Any error from a file, with the file's path in front.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },

    #[error("model config is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),

    #[error("{what} must be a JSON object")]
    NotAnObject { what: &'static str },

    #[error("model config field `{field}` is missing (or null), and it is required")]
    MissingField { field: String },

    #[error("model config field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },

    #[error("model config field `{field}` is invalid: {reason}")]
    Invalid { field: String, reason: String },

    #[error("unsupported {what} {name:?}: supported are {supported}")]
    Unsupported {
        /// "model architecture", "model_type" or "rope type".
        what: &'static str,
        name: String,
        supported: &'static str,
    },
}

/// A weight file or tensor that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no safetensors weights in {}: expected model.safetensors, \
         model.safetensors.index.json or *.safetensors files",
        dir.display()
    )]
    NoWeights { dir: PathBuf },

    #[error("weight index {} is invalid: {reason}", path.display())]
    BadIndex { path: PathBuf, reason: String },

    #[error(
        "weight index {} names shard file {file:?} (holding tensor `{tensor}`), \
         which does not exist in the model directory; the download may be incomplete",
        index.display()
    )]
    MissingShard {
        index: PathBuf,
        file: String,
        tensor: String,
    },

    #[error(
        "weight index {} says tensor `{tensor}` is in {file:?}, but that file has no such tensor",
        index.display()
    )]
    IndexMismatch {
        index: PathBuf,
        tensor: String,
        file: String,
    },

    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("tensor `{tensor}` not found in the weights in {}", dir.display())]
    MissingTensor { tensor: String, dir: PathBuf },

    #[error(
        "tensor `{tensor}` in {} has dtype {dtype}, which is not supported \
         (supported: BF16, F16, F32, I32, I64, U8, I8)",
        file.display()
    )]
    UnsupportedDType {
        tensor: String,
        dtype: String,
        file: PathBuf,
    },

    #[error("tensor `{tensor}` has dtype {dtype} and cannot be loaded as floating point")]
    NotFloat { tensor: String, dtype: DType },

    #[error(
        "tensor `{tensor}` in {} has shape {actual:?}, expected {expected:?}; \
         does config.json match these weights?",
        file.display()
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
        file: PathBuf,
    },

    #[error(
        "cannot slice tensor `{tensor}` of shape {shape:?}: {len} items from {start} \
         along dim {dim} are out of range"
    )]
    BadSlice {
        tensor: String,
        shape: Vec<usize>,
        dim: usize,
        start: usize,
        len: usize,
    },
}
