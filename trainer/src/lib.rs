//! shardrec's trainer: data preparation, generated data, the training loop, evaluation
//! and the run folder. The `shardrec` binary is a thin command-line layer over this.

// the run summary is one `json!` object with many keys
#![recursion_limit = "256"]

pub mod bundle;
pub mod checked_file;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod dense_sync;
pub mod device;
pub mod embedding;
pub mod evaluate;
pub mod lockstep;
pub mod model_io;
pub mod optembed;
pub mod progress;
pub mod run_dir;
pub mod search_bench;
pub mod sequence;
pub mod sharding_plan;
pub mod sweep;
pub mod train;

pub use shardrec_data as data;
pub use train::{eval_saved_model, train};

/// Errors of a training or evaluation run; each names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("tables: {0}")]
    Table(#[from] shardrec_tables::TableError),
    #[error(transparent)]
    Model(#[from] shardrec_models::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    ModelIo(#[from] model_io::ModelIoError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}
