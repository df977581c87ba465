//! Input data: raw formats in, a prepared binary columnar layout out, batches from it;
//! the generators of data with a known ceiling, and the offline metrics.
//!
//! A crate of its own so that reading, preparing and generating data build and test
//! without libtorch or MPI, as the tables do; the trainer depends on it.
//!
//! `prepare` reads Criteo / Avazu / libFM / delimited / behaviour-sequence files once to build per-feature
//! vocabularies on the training split, then writes one little-endian file per column
//! (labels, dense values, categorical ids) per split, cached under a key of the inputs and
//! options. Training reads those files through memmap2, so memory stays bounded for data
//! larger than RAM, and a loader thread turns rows into batches ahead of the step.
//! Features listed in `data.keyed_features` skip the vocabulary: their values reach the
//! batch as raw 64-bit keys ([`key_of`]) for tables without a vocabulary.

mod bad_rows;
pub mod behaviour_samples;
pub mod config;
mod fast_hash;
mod file_sets;
pub mod fuzzing;
mod keyed_flags;
#[cfg(test)]
mod keyed_tests;
mod keys;
mod loader;
pub mod metrics;
mod parquet_format;
mod prepare;
mod prepared;
mod raw_format;
mod row_copy;
pub mod sequence_format;
pub mod synth;
pub mod synth_days;
pub mod synth_sequence;
mod torchrec_npy;
mod vocab;
mod zipf;

use std::path::PathBuf;

pub use bad_rows::{BadField, BadRow, BadRowCounts, BadRowKind};
pub use config::ConfigKeyError;
pub use fast_hash::FastHashBuilder;
pub use keys::key_of;
pub use loader::{gather, row_order, spawn_loader, Batch, BatchStream, LoaderOptions};
pub use prepare::round_half_even;
pub use prepare::{prepare, prepare_with_vocab};
pub use prepared::{CatValues, PreparedDataset, PreparedMeta, PreparedSplit, SplitName};
pub use raw_format::{CategoricalColumn, ParsedRow, RowParser, Schema};
pub use vocab::{FeatureVocab, Vocab, VocabBuilder};

/// Errors of reading and preparing data; each names the file (and line, for rows).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    BadRow(Box<BadRow>),
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {bad} of its {rows} rows are bad, more than data.max_bad_row_fraction = {max} of them: the file is not in the format the config says (or raise the fraction)")]
    MostRowsBad {
        path: PathBuf,
        bad: u64,
        rows: u64,
        max: f64,
    },
    /// A `[data]` key whose value does not fit the data (found when the data is read).
    #[error(transparent)]
    ConfigKey(#[from] ConfigKeyError),
    /// A reader of vocabulary ids was asked for a feature whose values are raw keys.
    #[error("feature `{feature}` is keyed (data.keyed_features): {message}")]
    KeyedFeature { feature: String, message: String },
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
