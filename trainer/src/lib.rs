//! shardrec's trainer: data preparation, generated data, the training loop, evaluation
//! and the run folder. The `shardrec` binary is a thin command-line layer over this.

pub mod bundle;
pub mod cluster;
pub mod config;
pub mod curves;
pub mod dense_sync;
pub mod device;
pub mod embedding;
pub mod eval;
pub mod evaluate;
pub mod export;
pub mod job;
pub mod lockstep;
pub mod optembed;
pub mod persist;
pub mod progress;
pub mod run;
pub mod run_dir;
pub mod sequence;
pub mod sharding_plan;
pub mod sweep;
pub mod train;

pub use eval::eval_saved_model;
pub use run::train;
pub use shardrec_data as data;

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
    TableConfig(#[from] embedding::TableConfigError),
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error(transparent)]
    Job(#[from] job::JobError),
    #[error(transparent)]
    Plan(#[from] sharding_plan::PlanError),
    #[error(transparent)]
    RunDir(#[from] run_dir::RunDirError),
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    #[error(transparent)]
    Retrieval(#[from] sequence::RetrievalError),
    #[error(transparent)]
    OptEmbed(#[from] optembed::OptEmbedError),
    #[error(transparent)]
    Sweep(#[from] sweep::SweepError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error("training diverged: loss is {loss} at step {step}; lower optimizer.lr or embedding.optimizer.lr")]
    Diverged { loss: f64, step: usize },
    #[error(transparent)]
    Model(#[from] shardrec_models::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    ModelIo(#[from] persist::ModelIoError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
