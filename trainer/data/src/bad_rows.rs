//! Bad input rows: what is wrong, where, and how many of each kind were skipped.
//!
//! With `on_bad_row = "error"` the first bad row stops preparation with
//! `file:line:column` and the offending text; with `"skip"` each kind is counted and the
//! counts reach the run summary, so no row disappears unreported.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRowKind {
    /// Not the number of columns the format has.
    WrongColumnCount,
    /// A dense column that is not a number.
    UnparsableNumber,
    /// A Criteo categorical value that is not hexadecimal.
    NonHexCategory,
    /// The label column is empty.
    MissingLabel,
    /// The label is not 0/1 (or -1/1), or not a number.
    BadLabel,
    /// A libFM `index:value` pair that is malformed or not binary.
    BadLibfmPair,
    /// A join key (`[[data.joins]]`) with no row in the side file.
    UnknownJoinKey,
    /// Sequence data whose history items and categories differ in length.
    SequenceLengthMismatch,
    /// A null cell of a Parquet file with `data.null_values = "bad_row"`.
    NullValue,
}

impl BadRowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRowKind::WrongColumnCount => "wrong_column_count",
            BadRowKind::UnparsableNumber => "unparsable_number",
            BadRowKind::NonHexCategory => "non_hex_category",
            BadRowKind::MissingLabel => "missing_label",
            BadRowKind::BadLabel => "bad_label",
            BadRowKind::BadLibfmPair => "bad_libfm_pair",
            BadRowKind::UnknownJoinKey => "unknown_join_key",
            BadRowKind::SequenceLengthMismatch => "sequence_length_mismatch",
            BadRowKind::NullValue => "null_value",
        }
    }
}

/// What is wrong with a row, before the file and line are known.
#[derive(Debug, Clone, PartialEq)]
pub struct BadField {
    pub kind: BadRowKind,
    /// 1-based column (field) number.
    pub column: usize,
    /// What was found there.
    pub text: String,
    pub detail: String,
}

impl BadField {
    pub fn new(kind: BadRowKind, column: usize, text: &[u8], detail: impl Into<String>) -> Self {
        let mut text = String::from_utf8_lossy(text).into_owned();
        if text.len() > 80 {
            let mut cut = 77;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        Self {
            kind,
            column,
            text,
            detail: detail.into(),
        }
    }
}

/// A bad row located in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub file: String,
    pub line: u64,
    pub field: BadField,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: bad row ({}): {}: {:?}",
            self.file,
            self.line,
            self.field.column,
            self.field.kind.as_str(),
            self.field.detail,
            self.field.text
        )
    }
}

/// Applies `policy` to a block of rows parsed in parallel: moves the good rows to the
/// front of `rows` and returns how many there are, counting each bad one in `bad`; under
/// `on_bad_row = "error"` the first bad row is the error. Row k of the block is row
/// `first + k + 1` (1-based) of `file`.
pub(crate) fn keep_good_rows<T>(
    file: &std::path::Path,
    policy: crate::config::BadRowPolicy,
    first: u64,
    results: Vec<Result<(), BadField>>,
    rows: &mut [T],
    bad: &mut BadRowCounts,
) -> Result<usize, crate::DataError> {
    let mut kept = 0;
    for (k, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => {
                rows.swap(kept, k);
                kept += 1;
            }
            Err(field) if policy == crate::config::BadRowPolicy::Error => {
                return Err(crate::DataError::BadRow(Box::new(BadRow {
                    file: file.display().to_string(),
                    line: first + k as u64 + 1,
                    field,
                })))
            }
            Err(field) => bad.add(field.kind),
        }
    }
    Ok(kept)
}

/// Counts of skipped rows per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRowCounts(pub BTreeMap<BadRowKind, u64>);

impl BadRowCounts {
    pub fn add(&mut self, kind: BadRowKind) {
        *self.0.entry(kind).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &BadRowCounts) {
        for (k, v) in &other.0 {
            *self.0.entry(*k).or_default() += v;
        }
    }

    /// `{"wrong_column_count": 2, ...}` for the summary.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), (*v).into()))
                .collect(),
        )
    }
}
