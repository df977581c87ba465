//! The embedding features a sequence model reads, and their tables.
//!
//! Each embedding set has an item, a category and a time table (DARE, Feng et al. 2025,
//! arXiv 2410.02604, section 3): `item`, `category`, `time` (TWIN and DIN: the one set;
//! DARE: representation), and DARE's attention set `item_attention`,
//! `category_attention`, `time_attention`. Target and history share a set's tables. Item
//! and category tables have a row per vocabulary id and take every table kind and
//! sharding like any shardrec table (named after the feature in `[sharding]` and
//! `[[embedding.tables]]`); time tables have `L + 1` rows (0 = the target, 1 = the most
//! recent behaviour) and stay plain.

use shardrec_models::ModelConfig;

use crate::config::{EmbeddingConfig, TableConfig, TableKindConfig};
use crate::data::sequence_format::{TARGET_CATEGORY, TARGET_ITEM};
use crate::data::{CategoricalColumn, Schema};

/// Embedding features in the order the model reads them (DARE: all six, else the
/// first three).
pub const TABLE_FEATURES: [&str; 6] = [
    "item",
    "category",
    "time",
    "item_attention",
    "category_attention",
    "time_attention",
];

/// The embedding features (as a schema) and their id counts, for the collection builder.
pub fn sequence_table_schema(model: &ModelConfig, data_vocab: &[u64]) -> (Schema, Vec<u64>) {
    let sets = if model.kind.decoupled() { 2 } else { 1 };
    let rows = [
        data_vocab[TARGET_ITEM],
        data_vocab[TARGET_CATEGORY],
        model.sequence_len as u64 + 1,
    ];
    let n = 3 * sets;
    let schema = Schema {
        dense: vec![],
        categorical: TABLE_FEATURES[..n]
            .iter()
            .map(|name| CategoricalColumn {
                name: name.to_string(),
                multi_valued: false,
            })
            .collect(),
    };
    (schema, (0..n).map(|f| rows[f % 3]).collect())
}

/// `[embedding]` with the entries a sequence model adds unless the config lists the
/// feature itself: time tables plain, attention tables `model.attention_dim` wide.
pub fn sequence_embedding_config(cfg: &EmbeddingConfig, model: &ModelConfig) -> EmbeddingConfig {
    let mut out = cfg.clone();
    let listed = |f: &str| cfg.tables.iter().any(|t| t.features.iter().any(|x| x == f));
    let sets = if model.kind.decoupled() { 2 } else { 1 };
    for (i, f) in TABLE_FEATURES[..3 * sets].iter().enumerate() {
        if listed(f) {
            continue;
        }
        let attention = i >= 3;
        let time = i % 3 == 2;
        if !attention && !time {
            continue;
        }
        out.tables.push(TableConfig {
            name: f.to_string(),
            features: vec![f.to_string()],
            kind: time.then_some(TableKindConfig::Plain),
            dim: if attention { model.attention_dim } else { None },
            buckets: None,
            storage: None,
        });
    }
    out
}
