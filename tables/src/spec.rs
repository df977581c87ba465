//! Plain-data description of an embedding collection: the tables (parameter storage) and
//! the features that read them.
//!
//! The split follows TorchRec (`EmbeddingBagConfig`: a table serves one or more features)
//! but generalises how a feature reaches rows, so every table method of the project is a
//! choice of [`Probe`]s and a [`Combine`] rule rather than a new code path:
//!
//! | method | probes | combine |
//! |---|---|---|
//! | plain (one row per vocabulary id) | one `Offset` | - |
//! | hashed (hashing trick) | one `Hash` | - |
//! | unified / multiplexed (Coleman et al. 2023) | `c_f` `Hash` probes with salts (f, j) into a shared pool | `Concat` (or `Sum` for multi-probe) |
//! | quotient-remainder (Shi et al. 2020) | `Quotient(m)` + `Remainder(m)` | `Mul`, `Sum` or `Concat` |
//! | OptEmbed compact export (Lyu et al. 2022) | one `Remap` (pruned rows removed) | - |
//!
//! DARE (Feng et al. 2025) uses two collections (attention and representation) over the
//! same features, each with its own tables and widths.

use serde::{Deserialize, Serialize};

use crate::init::RowInit;

/// One table of parameters: `rows x dim` floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub rows: u64,
    pub dim: usize,
    pub init: RowInit,
}

/// How a feature's id becomes a row of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RowMap {
    /// `row = offset + id`; the id must be below `id_rows` (the feature's vocabulary).
    Offset { offset: u64, id_rows: u64 },
    /// `row = hash(seed, id) % table.rows`.
    Hash { seed: u64 },
    /// `row = id / divisor` (quotient half of a QR embedding).
    Quotient { divisor: u64 },
    /// `row = id % modulus` (remainder half of a QR embedding).
    Remainder { modulus: u64 },
}

/// One lookup of a feature's id in one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub table: String,
    pub map: RowMap,
}

/// How the rows of a feature's probes make one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Concatenate the probes' rows in order (width = sum of table dims).
    Concat,
    /// Add the probes' rows (all tables of equal width).
    Sum,
    /// Multiply two probes' rows element-wise (exactly two probes of equal width).
    Mul,
}

/// How several ids of one feature in one sample make one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Sum,
    Mean,
}

/// A feature: its probes, how they combine, and how multi-valued ids pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub probes: Vec<Probe>,
    pub combine: Combine,
    pub pooling: Pooling,
}

/// Tables plus the features reading them; validated by [`crate::CollectionLayout::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CollectionSpec {
    pub tables: Vec<TableSpec>,
    pub features: Vec<FeatureSpec>,
}

impl CollectionSpec {
    /// One plain table per feature: `vocab_sizes[f]` rows of width `dim`.
    pub fn plain(names: &[String], vocab_sizes: &[u64], dim: usize, init: RowInit) -> Self {
        Self::plain_with_dims(names, vocab_sizes, &vec![dim; names.len()], init)
    }

    /// One plain table per feature: `rows[f]` rows of width `dims[f]`.
    pub fn plain_with_dims(names: &[String], rows: &[u64], dims: &[usize], init: RowInit) -> Self {
        let mut spec = Self::default();
        for ((name, &rows), &dim) in names.iter().zip(rows).zip(dims) {
            spec.tables.push(TableSpec {
                name: name.clone(),
                rows,
                dim,
                init: init.clone(),
            });
            spec.features.push(FeatureSpec {
                name: name.clone(),
                probes: vec![Probe {
                    table: name.clone(),
                    map: RowMap::Offset {
                        offset: 0,
                        id_rows: rows,
                    },
                }],
                combine: Combine::Concat,
                pooling: Pooling::Sum,
            });
        }
        spec
    }
}
