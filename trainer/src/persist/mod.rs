//! Everything a run keeps on disk and reads back, in one place: the training loop calls
//! it, and it knows nothing of the loop.
//!
//! - [`checked_file`]: files written with their size and CRC32, verified before use;
//! - [`checkpoint`]: checkpoints of any number of ranks, loaded under any other
//!   (resharding), written atomically;
//! - [`model_io`]: a one-process model folder (whole tables), and OptEmbed's compact one;
//! - [`saved`]: loading a checkpoint or model into a fresh bundle (resume, eval, the best
//!   model a resumed run had);
//! - [`run_checkpoints`]: what a run writes as it trains (checkpoints, the best
//!   validation's model, the final model).

use std::path::PathBuf;

pub mod checked_file;
pub mod checkpoint;
mod dynamic_reshard;
pub mod key_map_files;
pub mod model_io;
pub mod run_checkpoints;
pub mod saved;

#[cfg(test)]
mod fuzz;

pub use checkpoint::{CheckpointManifest, Position, ValidationState};
pub use model_io::{CompactModelInfo, ModelIoError, ModelManifest, COMPACT_ROW_MASK};
pub use run_checkpoints::RunCheckpoints;
pub use saved::{best_before, fill_saved, refuse_masked_optembed_model, resume_from, SavedFolder};

/// Why a checkpoint or saved model cannot be written or used; each names the folder.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{what}: another rank failed (its error is above)")]
    OtherRankFailed { what: String },
    #[error("{dir}: out of disk space (or over a quota or file size limit); {resume}")]
    OutOfSpace {
        dir: PathBuf,
        resume: String,
        source: Box<crate::TrainError>,
    },
    #[error("a dense optimizer variable is not in the model")]
    OptimizerVariableMissing,
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{dir}: not a complete checkpoint (no {manifest}){hint}")]
    Incomplete {
        dir: PathBuf,
        manifest: &'static str,
        hint: &'static str,
    },
    #[error("{path}: neither a checkpoint (no {manifest}) nor a run folder with a complete checkpoint in checkpoints/")]
    NoCheckpoint {
        path: PathBuf,
        manifest: &'static str,
    },
    #[error("{dir}: the saved tables have no optimizer state of the kind the config's sparse optimizer keeps")]
    NoOptimizerState { dir: PathBuf },
    #[error("{dir}: table `{table}` has a piece without optimizer state")]
    PieceWithoutState { dir: PathBuf, table: String },
    #[error("{dir}: the checkpoint's {what} differs from this run's; resume with the config and data it was trained with")]
    Differs { dir: PathBuf, what: String },
    #[error("{dir}: a saved model (weights only) cannot resume training; give a checkpoint (train.checkpoint_every)")]
    WeightsOnly { dir: PathBuf },
    #[error("{dir}: an OptEmbed stage's masked model; evaluate the compact export (<run>/retrain/model_compact), which applies the row mask and widths")]
    MaskedOptEmbedModel { dir: PathBuf },
    #[error("one process holds every table, yet one is sharded")]
    ShardedInOneProcess,
    #[error("{dir}: {key} = {now} here, but the saved model was trained with {saved}; set it as it was (the folder's manifest.json records it)")]
    OtherPreprocessing {
        dir: PathBuf,
        key: &'static str,
        saved: String,
        now: String,
    },
    #[error("{dir}: the checkpoint's steps are of {saved} rows (the job's batch), this run's of {now}; its position counts steps, so resume with the batch size it was trained with (train.batch_size, train.batch_size_per_rank)")]
    OtherBatchSize {
        dir: PathBuf,
        saved: usize,
        now: usize,
    },
    #[error("{dir}: the checkpoint holds the state of a {saved:?} dense optimizer, this run's optimizer.kind is {now:?}; resume with the kind it was trained with")]
    OtherDenseOptimizer {
        dir: PathBuf,
        saved: shardrec_models::DenseOptimizerKind,
        now: shardrec_models::DenseOptimizerKind,
    },
}

impl PersistError {
    /// A saved model's or checkpoint's preprocessing against this run's `[data]`.
    pub fn check_preprocessing(
        dir: &std::path::Path,
        saved: Option<&crate::config::Preprocessing>,
        now: &crate::config::Preprocessing,
        vocabulary_rebuilt: bool,
    ) -> Result<(), Self> {
        match saved.and_then(|s| s.first_difference(now, vocabulary_rebuilt)) {
            Some(d) => Err(PersistError::OtherPreprocessing {
                dir: dir.to_path_buf(),
                key: d.key,
                saved: d.saved,
                now: d.now,
            }),
            None => Ok(()),
        }
    }
}
