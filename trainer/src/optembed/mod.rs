//! OptEmbed (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through
//! Rate Prediction", CIKM 2022; `../shared/design/methods.md` section 2): learned row
//! pruning and per-field width search, exported as a compact table.
//!
//! - [`surrogate`]: the step function with its surrogate gradient;
//! - [`layer`]: the row and dimension masks between the tables and the dense model;
//! - [`row_mask`]: the fixed mask the supernet leaves, computed at the rows' owners;
//! - [`evolution`]: the evolutionary search over widths (and its random baseline);
//! - [`field_tables`]: each field's own plain table, which pruning needs;
//! - [`compact`]: pruned rows removed, ids remapped, each field at its own width;
//! - [`stages`]: supernet, search and retrain, run in order through the training loop.

use std::path::PathBuf;

pub mod compact;
pub mod evolution;
pub mod field_tables;
pub mod layer;
pub mod row_mask;
pub mod stages;
pub mod surrogate;

pub use compact::CompactIds;
pub use layer::{OptEmbedLayer, OptEmbedSetup, RowSelection, Widths};
pub use row_mask::RowMask;
pub use stages::{compact_setup, run_stages};

/// Why an OptEmbed stage cannot run, or a row mask or compact model cannot be used; each
/// names the file, feature or stage.
#[derive(Debug, thiserror::Error)]
pub enum OptEmbedError {
    #[error("[optembed] needs every feature in a plain table of its own, embedding.dim wide; feature `{feature}` {why}")]
    NotAPlainFieldTable { feature: String, why: String },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not found; run --stage {stage} first, with train.run_dir = \"{run}\"")]
    StageMissing {
        path: PathBuf,
        stage: &'static str,
        run: PathBuf,
    },
    #[error(
        "--resume does not apply to OptEmbed stages; rerun a stage with --stage and train.run_dir"
    )]
    NoResume,
    #[error("the OptEmbed search scores widths on the validation split: set data.split.valid or data.valid")]
    NoValidation,
    #[error("{path}: the row mask does not fit this config's vocabulary")]
    MaskDoesNotFit { path: PathBuf },
    #[error("{path}: needs {fields} widths in [1, {dim}], has {widths:?}")]
    BadWidths {
        path: PathBuf,
        fields: usize,
        dim: usize,
        widths: Vec<usize>,
    },
    #[error("{dir}: a compact model whose manifest does not list {file}")]
    CompactMaskUnlisted { dir: PathBuf, file: String },
    #[error("{dir}: {mask} fields in the row mask, {widths} widths in the manifest")]
    CompactFieldsDiffer {
        dir: PathBuf,
        mask: usize,
        widths: usize,
    },
    #[error("optembed: a batch of {batch} features for a row mask of {mask}")]
    BatchFeatures { batch: usize, mask: usize },
    #[error("{path}: not a valid row mask: {why}")]
    BadRowMask { path: PathBuf, why: String },
    #[error("optembed needs one id per field and sample; feature {feature} of a sample has {ids}")]
    MultiValued { feature: usize, ids: usize },
    #[error("compact model of {fields} fields given a batch of {batch}")]
    CompactBatchFeatures { fields: usize, batch: usize },
    #[error("optembed.search: no random candidate scored")]
    NoRandomCandidate,
}
