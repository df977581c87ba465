//! Errors raised while building or running a model.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model.{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
