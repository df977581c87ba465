//! Errors of the table layer. Every variant keeps the names and numbers a user needs to
//! find the problem (table, feature, id, sizes).

use thiserror::Error;

/// What can go wrong when building, routing or updating embedding tables.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TableError {
    #[error("table `{table}`: {reason}")]
    InvalidTable { table: String, reason: String },
    #[error("feature `{feature}`: {reason}")]
    InvalidFeature { feature: String, reason: String },
    #[error("feature `{feature}` refers to unknown table `{table}`")]
    UnknownTable { feature: String, table: String },
    #[error("duplicate {what} name `{name}`")]
    DuplicateName { what: &'static str, name: String },
    #[error("feature `{feature}`: id {id} is outside its {rows} rows in table `{table}`")]
    IdOutOfRange {
        feature: String,
        table: String,
        id: u64,
        rows: u64,
    },
    #[error("batch layout: {0}")]
    BadBatch(String),
    #[error("sharding plan: {0}")]
    BadPlan(String),
    #[error("exchange between ranks: {0}")]
    Exchange(String),
    #[error("{path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("buffer size: expected {expected} values for {what}, got {got}")]
    SizeMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
}

/// For writers that stream a table into a file: a table error is the write's error.
impl From<TableError> for std::io::Error {
    fn from(e: TableError) -> Self {
        std::io::Error::other(e)
    }
}
