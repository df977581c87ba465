//! The `[data]` section of an experiment file: formats, files, splits, columns, joins,
//! and its range checks. It lives with the data code so that reading data needs no
//! libtorch; the trainer's config embeds it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Criteo TSV: label, 13 integer columns, 26 hex categorical columns, no header.
    Criteo,
    /// Avazu CSV with header (`id,click,hour,...`).
    Avazu,
    /// libFM: `label idx:val ...`, one field per position.
    Libfm,
    /// A delimited file whose columns `data.columns` describes.
    Delimited,
    /// Behaviour sequences (DIN, TWIN, DARE): `label, user_id, target_item,
    /// target_category, hist_items, hist_categories`, tab-separated, histories
    /// comma-separated (see `data::sequence_format`).
    Sequence,
    /// Already prepared by `shardrec prepare` (a folder with `meta.json`).
    Prepared,
    /// Apache Parquet (as NVTabular, Spark or pyarrow write it): the columns
    /// `data.columns` names, by name, in any order in the file; list columns are
    /// multi-valued features. Read by row group, streaming.
    Parquet,
    /// TorchRec's preprocessed Criteo arrays: per day `<stem>_dense.npy` (float32, n x 13,
    /// already log-transformed by TorchRec), `<stem>_sparse.npy` (integer ids, n x 26) and
    /// `<stem>_labels.npy` (n x 1), read through memmap. No vocabulary: id `v` of feature
    /// `f` is row `v mod data.num_embeddings_per_feature[f]`, as TorchRec's loader does.
    TorchrecNpy,
}

/// What a null cell of a Parquet file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    /// A missing value, as an empty cell of a text file: dense 0 (before the
    /// transform), categorical the empty value, a list no values. A null label is a bad
    /// row all the same.
    #[default]
    Missing,
    /// A bad row, handled by `data.on_bad_row`.
    BadRow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DenseTransform {
    /// log(1 + max(x, 0)) (DLRM).
    #[default]
    Log1p,
    /// floor(ln(x)^2) for x > 2, x otherwise (BARS, OptEmbed).
    LnSquared,
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BadRowPolicy {
    /// Stop at the first bad row with file:line:column and its text.
    #[default]
    Error,
    /// Skip bad rows, count each kind, report the counts.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// The last fractions of the rows in file order (valid, then test).
    #[default]
    Tail,
    /// Each row assigned by a seeded hash of its index.
    Random,
}

fn default_max_bad_row_fraction() -> f64 {
    0.5
}

fn default_test_fraction() -> f64 {
    0.2
}
fn default_split_seed() -> u64 {
    42
}

/// How one file is split when `data.valid` / `data.test` are not given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    #[serde(default)]
    pub kind: SplitKind,
    #[serde(default)]
    pub valid: f64,
    #[serde(default = "default_test_fraction")]
    pub test: f64,
    #[serde(default = "default_split_seed")]
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            kind: SplitKind::Tail,
            valid: 0.0,
            test: default_test_fraction(),
            seed: default_split_seed(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnRole {
    Label,
    Dense,
    Categorical,
    Skip,
}

/// One column of a delimited file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    pub role: ColumnRole,
    /// Categorical columns holding several values (e.g. genres "a|b"): their separator.
    #[serde(default)]
    pub separator: Option<String>,
    /// Label column only: label = 1 when the value is >= threshold, else 0. Without a
    /// threshold the value must be 0 or 1 (or -1 for 0).
    #[serde(default)]
    pub threshold: Option<f64>,
}

fn default_min_count() -> u64 {
    1
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("data/prepared")
}

/// `[data]`: where the rows come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub format: DataFormat,
    /// Training file (raw or prepared folder).
    pub train: PathBuf,
    /// Further files in `train`'s format, read after it as one stream: their rows are
    /// split with `train`'s (e.g. Frappe's two libFM files split 8:1:1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_train: Vec<PathBuf>,
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Further validation files after `valid` (a list or a glob in `valid` sets them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_valid: Vec<PathBuf>,
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Further test files after `test` (a list or a glob in `test` sets them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_test: Vec<PathBuf>,
    /// Split of `train` into train/valid/test when those files are not given.
    #[serde(default)]
    pub split: SplitConfig,
    /// Categorical values seen fewer times in the training split share one OOV id.
    #[serde(default = "default_min_count")]
    pub min_count: u64,
    /// Categorical features kept as raw 64-bit keys ([`crate::key_of`]) instead of
    /// vocabulary ids: no vocabulary is counted for them (`min_count` does not apply),
    /// and their batches carry the keys, for tables that map keys to rows themselves.
    /// The trainer fills it with the features of `embedding.kind = "dynamic"` tables;
    /// a user may list features here for `shardrec prepare`. Each name must be a
    /// categorical feature of the data's schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyed_features: Vec<String>,
    #[serde(default)]
    pub dense_transform: DenseTransform,
    /// Turn (transformed) dense columns into categorical features, as BARS does.
    #[serde(default)]
    pub dense_as_categorical: bool,
    #[serde(default)]
    pub on_bad_row: BadRowPolicy,
    /// With `on_bad_row = "skip"`: a file with more than this fraction of bad rows is an
    /// error, not a run on what is left.
    #[serde(default = "default_max_bad_row_fraction")]
    pub max_bad_row_fraction: f64,
    /// Prepared data is cached here, keyed by inputs and options.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Delimited format: field separator (one character; default tab).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Delimited format: the first line is a header.
    #[serde(default)]
    pub header: bool,
    /// Delimited format: every column in order.
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// libFM: fields per row (default: taken from the first row).
    #[serde(default)]
    pub libfm_fields: Option<usize>,
    /// Read at most this many rows of each file (0 = all).
    #[serde(default)]
    pub max_rows: u64,
    /// Delimited format: side files whose categorical columns join each row by a key
    /// (e.g. a user file joined on `user_id`).
    #[serde(default)]
    pub joins: Vec<JoinConfig>,
    /// Parquet: what a null cell is.
    #[serde(default)]
    pub null_values: NullPolicy,
    /// torchrec_npy: rows of each sparse feature's table (TorchRec's
    /// `num_embeddings_per_feature`): one number per feature, or one for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub num_embeddings_per_feature: Vec<u64>,
    /// torchrec_npy: the end of a day's sparse file name (`_sparse_contig_freq.npy` for
    /// the output of TorchRec's `sparse_to_contiguous`).
    #[serde(default = "default_npy_sparse_suffix")]
    pub npy_sparse_suffix: String,
}

fn default_npy_sparse_suffix() -> String {
    "_sparse.npy".into()
}

/// `[[data.joins]]`: a delimited side file, one row per key, whose categorical columns
/// are added to every row of the data with that key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    pub file: PathBuf,
    /// The key: a column of the data and of the side file with this name.
    pub on: String,
    /// The side file's columns in order (categorical ones become features; the key's
    /// role is ignored).
    pub columns: Vec<ColumnConfig>,
    #[serde(default)]
    pub delimiter: Option<String>,
    /// The side file's first line is a header.
    #[serde(default)]
    pub header: bool,
}

/// A value outside its range: the dotted key, the value, the allowed range.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub key: String,
    pub value: String,
    pub range: String,
}

/// Adds a violation to `out` unless `lo <= v <= hi`; the one range check every section
/// of the experiment file uses.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    out: &mut Vec<Violation>,
    key: &str,
    v: T,
    lo: T,
    hi: T,
) {
    if !(v >= lo && v <= hi) {
        out.push(Violation {
            key: key.into(),
            value: v.to_string(),
            range: format!("must be in [{}, {}]", bound(lo), bound(hi)),
        });
    }
}

/// A range's bound as a person reads it: the smallest positive floats would otherwise
/// print as hundreds of decimal digits.
fn bound<T: std::fmt::Display>(v: T) -> String {
    let s = v.to_string();
    if s.len() <= 16 || !s.contains('.') {
        return s;
    }
    match (s.parse::<f32>(), s.parse::<f64>()) {
        (Ok(f), _) if f.to_string() == s => format!("{f:e}"),
        (_, Ok(f)) => format!("{f:e}"),
        _ => s,
    }
}

/// Adds a violation of a rule other than a range.
pub fn violation(
    out: &mut Vec<Violation>,
    key: &str,
    value: impl std::fmt::Display,
    range: impl Into<String>,
) {
    out.push(Violation {
        key: key.into(),
        value: value.to_string(),
        range: range.into(),
    });
}

impl DataConfig {
    /// Whether the run has validation rows: a file, a split fraction, or prepared data
    /// (which may carry a validation split).
    pub fn has_validation(&self) -> bool {
        self.valid.is_some() || self.split.valid > 0.0 || self.format == DataFormat::Prepared
    }

    /// The `[data]` section's range and consistency checks, each naming its key.
    pub fn violations(&self, v: &mut Vec<Violation>) {
        let d = self;
        check_range(v, "data.split.valid", d.split.valid, 0.0, 0.9);
        check_range(v, "data.split.test", d.split.test, 0.0, 0.9);
        if d.split.valid + d.split.test >= 0.95 {
            violation(
                v,
                "data.split.test",
                d.split.test,
                "valid + test fractions must leave rows to train on (sum below 0.95)",
            );
        }
        check_range(v, "data.min_count", d.min_count, 1, u32::MAX as u64);
        check_range(
            v,
            "data.max_bad_row_fraction",
            d.max_bad_row_fraction,
            0.0,
            1.0,
        );
        if let Some(del) = &d.delimiter {
            if del.len() != 1 {
                violation(
                    v,
                    "data.delimiter",
                    format!("{del:?}"),
                    "must be one ASCII character",
                );
            }
        }
        if let Some(n) = d.libfm_fields {
            check_range(v, "data.libfm_fields", n, 1, 4096);
        }
        if matches!(d.format, DataFormat::Delimited | DataFormat::Parquet) {
            d.column_violations(v);
        } else if !d.columns.is_empty() {
            violation(
                v,
                "data.columns",
                format!("{:?}", d.format),
                "columns are only read for format = \"delimited\" or \"parquet\"",
            );
        }
        d.npy_violations(v);
        if !d.joins.is_empty() && d.format != DataFormat::Delimited {
            violation(
                v,
                "data.joins",
                format!("{} file(s)", d.joins.len()),
                "joins need data.format = \"delimited\"",
            );
        }
        if !d.more_train.is_empty() && d.format == DataFormat::Prepared {
            violation(
                v,
                "data.more_train",
                d.more_train.len(),
                "applies to raw files, not to prepared data",
            );
        }
    }

    /// torchrec_npy needs its table sizes, and only it takes them.
    fn npy_violations(&self, v: &mut Vec<Violation>) {
        let sizes = &self.num_embeddings_per_feature;
        if self.format != DataFormat::TorchrecNpy {
            if !sizes.is_empty() {
                violation(
                    v,
                    "data.num_embeddings_per_feature",
                    format!("{} value(s)", sizes.len()),
                    "only format = \"torchrec_npy\" reads it (other formats count a vocabulary)",
                );
            }
            return;
        }
        if self.dense_as_categorical {
            violation(
                v,
                "data.dense_as_categorical",
                true,
                "torchrec_npy has no vocabulary to count dense values with",
            );
        }
        if sizes.is_empty() {
            violation(
                v,
                "data.num_embeddings_per_feature",
                "unset",
                "torchrec_npy has no vocabulary: give each sparse feature's table size (one number for all, or one per feature)",
            );
        }
        for &n in sizes {
            check_range(v, "data.num_embeddings_per_feature", n, 1, u32::MAX as u64);
        }
        if !self.npy_sparse_suffix.ends_with(".npy") {
            violation(
                v,
                "data.npy_sparse_suffix",
                format!("{:?}", self.npy_sparse_suffix),
                "must end in .npy",
            );
        }
    }

    /// The checks of a delimited or Parquet file's `columns`.
    fn column_violations(&self, v: &mut Vec<Violation>) {
        let labels = self
            .columns
            .iter()
            .filter(|c| c.role == ColumnRole::Label)
            .count();
        if labels != 1 {
            violation(
                v,
                "data.columns",
                format!("{labels} label columns"),
                "a delimited file needs exactly one column with role = \"label\"",
            );
        }
        let mut names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            violation(
                v,
                "data.columns",
                format!("`{}` twice", w[0]),
                "column names must be distinct",
            );
        }
        for c in &self.columns {
            if let Some(s) = &c.separator {
                if s.len() != 1 || c.role != ColumnRole::Categorical {
                    violation(
                        v,
                        "data.columns.separator",
                        format!("{s:?} on `{}`", c.name),
                        "one ASCII character, on categorical columns only",
                    );
                }
            }
            if let Some(t) = c.threshold.filter(|t| !t.is_finite()) {
                violation(
                    v,
                    "data.columns.threshold",
                    format!("{t} on `{}`", c.name),
                    "must be a finite number",
                );
            }
            if c.threshold.is_some() && c.role != ColumnRole::Label {
                violation(
                    v,
                    "data.columns.threshold",
                    &c.name,
                    "only the label column takes a threshold",
                );
            }
        }
    }

    /// Parses a TOML text holding a `[data]` section (tests and tools that read data
    /// without a whole experiment), normalised as [`Self::normalize_toml`] says.
    pub fn from_toml_section(text: &str) -> Result<Self, toml::de::Error> {
        #[derive(Deserialize)]
        struct Section {
            data: DataConfig,
        }
        let mut root: toml::Table = toml::from_str(text)?;
        Self::normalize_toml(&mut root).map_err(<toml::de::Error as serde::de::Error>::custom)?;
        Section::deserialize(toml::Value::Table(root)).map(|s| s.data)
    }

    /// Rewrites the spellings of `[data]` that are shorthand for others, in a parsed
    /// experiment file (`root` holds the `data` table) before it is deserialised, so
    /// that every later step (deserialising, the cache key, the saved config) sees one
    /// spelling: `train`, `valid` and `test` given as a list of files or a glob become
    /// their first file, and the files after it in `more_train` / `more_valid` /
    /// `more_test` ([`crate::file_sets`]). A list of one file is the file alone, so it
    /// prepares into the same cache as the plain string. An empty list, a list with its
    /// `more_*` key also given, an item that is not a string and a glob that matches
    /// nothing are refused, naming the key.
    ///
    /// A missing or mistyped `[data]` is left alone for deserialising to report.
    pub fn normalize_toml(root: &mut toml::Table) -> Result<(), ConfigKeyError> {
        let Some(toml::Value::Table(data)) = root.get_mut("data") else {
            return Ok(());
        };
        crate::file_sets::normalize_file_keys(data).map_err(|e| ConfigKeyError {
            key: e.key,
            message: e.message,
        })
    }
}

/// A `[data]` key whose value is refused outside the range checks (a list of training
/// files, a feature name checked against the columns the data has): the dotted key, to
/// find its line, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigKeyError {
    pub key: String,
    pub message: String,
}

impl From<Violation> for ConfigKeyError {
    /// A rule found broken when the data is read (`prepare` checking names against the
    /// schema it reads).
    fn from(v: Violation) -> Self {
        Self {
            key: v.key,
            message: format!("{}: {}", v.value, v.range),
        }
    }
}

/// The `[data]` options that change what a model sees for the same files: saved with
/// every checkpoint and model, so that resuming or evaluating with other preprocessing is
/// refused by name rather than silently wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    pub format: DataFormat,
    pub min_count: u64,
    pub dense_transform: DenseTransform,
    pub dense_as_categorical: bool,
    pub columns: Vec<ColumnConfig>,
    /// Each join's columns, in order.
    pub join_columns: Vec<Vec<ColumnConfig>>,
    /// Features whose values are raw keys rather than vocabulary ids (absent from what
    /// was saved before keys existed, which had none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyed_features: Vec<String>,
    /// torchrec_npy's table sizes, which ids are taken modulo (absent before that
    /// format existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub num_embeddings_per_feature: Vec<u64>,
}

impl DataConfig {
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            format: self.format,
            min_count: self.min_count,
            dense_transform: self.dense_transform,
            dense_as_categorical: self.dense_as_categorical,
            columns: self.columns.clone(),
            join_columns: self.joins.iter().map(|j| j.columns.clone()).collect(),
            keyed_features: self.keyed_features.clone(),
            num_embeddings_per_feature: self.num_embeddings_per_feature.clone(),
        }
    }
}

/// A `[data]` key whose value differs between two [`Preprocessing`]s, with both values
/// as the config spells them.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessingDifference {
    pub key: &'static str,
    pub saved: String,
    pub now: String,
}

fn difference<T: PartialEq + Serialize>(
    key: &'static str,
    saved: &T,
    now: &T,
) -> Option<PreprocessingDifference> {
    let spell = |v: &T| serde_json::to_string(v).unwrap_or_else(|e| e.to_string());
    (saved != now).then(|| PreprocessingDifference {
        key,
        saved: spell(saved),
        now: spell(now),
    })
}

impl Preprocessing {
    /// The first `[data]` key whose value in `now` differs from this (saved) one.
    /// `min_count` only counts when the vocabulary is built again (resume), not when a
    /// saved one is read (eval).
    pub fn first_difference(
        &self,
        now: &Self,
        vocabulary_rebuilt: bool,
    ) -> Option<PreprocessingDifference> {
        difference("data.format", &self.format, &now.format)
            .or_else(|| {
                vocabulary_rebuilt
                    .then(|| difference("data.min_count", &self.min_count, &now.min_count))
                    .flatten()
            })
            .or_else(|| {
                difference(
                    "data.dense_transform",
                    &self.dense_transform,
                    &now.dense_transform,
                )
            })
            .or_else(|| {
                difference(
                    "data.dense_as_categorical",
                    &self.dense_as_categorical,
                    &now.dense_as_categorical,
                )
            })
            .or_else(|| difference("data.columns", &self.columns, &now.columns))
            .or_else(|| difference("data.joins.columns", &self.join_columns, &now.join_columns))
            .or_else(|| {
                difference(
                    "data.keyed_features",
                    &self.keyed_features,
                    &now.keyed_features,
                )
            })
            .or_else(|| {
                difference(
                    "data.num_embeddings_per_feature",
                    &self.num_embeddings_per_feature,
                    &now.num_embeddings_per_feature,
                )
            })
    }
}
