//! `[embedding]` plus the data's schema and vocabulary sizes -> collection specs.
//!
//! Every categorical feature gets exactly one table: its own (named after the feature)
//! unless a `[[embedding.tables]]` entry lists it. A plain table serving several features
//! stacks their vocabularies (each feature at its own row offset, so ids never collide);
//! a hashed table gives each feature its own hash seed. Models with a first-order term
//! get a second collection of one-column tables laid out the same way.

use shardrec_tables::{
    hash_id, mix64, CollectionLayout, CollectionSpec, Combine, FeatureSpec, Probe, RowInit, RowMap,
    TableSpec,
};

use crate::config::{EmbeddingConfig, InitKind, TableKindConfig};
use crate::data::Schema;

/// The collections a model reads.
#[derive(Debug, Clone)]
pub struct Collections {
    pub main: CollectionLayout,
    pub first_order: Option<CollectionLayout>,
}

fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(mix64(seed), |h, b| hash_id(h, u64::from(b)))
}

struct TablePlan {
    name: String,
    kind: TableKindConfig,
    dim: usize,
    buckets: u64,
    features: Vec<usize>,
}

/// Builds the main collection (and the first-order one when the model has that term).
pub fn build_collections(
    cfg: &EmbeddingConfig,
    schema: &Schema,
    vocab_sizes: &[u64],
    seed: u64,
    model: shardrec_models::ModelKind,
) -> Result<Collections, String> {
    let first_order = model.needs_first_order();
    let names: Vec<&str> = schema.categorical.iter().map(|c| c.name.as_str()).collect();
    let mut owner: Vec<Option<usize>> = vec![None; names.len()];
    let mut plans: Vec<TablePlan> = Vec::new();
    for t in &cfg.tables {
        let mut features = Vec::new();
        for f in &t.features {
            let i = names.iter().position(|n| n == f).ok_or_else(|| {
                format!(
                    "embedding.tables `{}`: unknown feature `{f}` (features: {})",
                    t.name,
                    names.join(", ")
                )
            })?;
            if let Some(prev) = owner[i] {
                return Err(format!(
                    "embedding.tables: feature `{f}` is in both `{}` and `{}`",
                    plans[prev].name, t.name
                ));
            }
            owner[i] = Some(plans.len());
            features.push(i);
        }
        plans.push(TablePlan {
            name: t.name.clone(),
            kind: t.kind.unwrap_or(cfg.kind),
            dim: t.dim.unwrap_or(cfg.dim),
            buckets: t.buckets.unwrap_or(cfg.buckets),
            features,
        });
    }
    for (i, n) in names.iter().enumerate() {
        if owner[i].is_none() {
            owner[i] = Some(plans.len());
            plans.push(TablePlan {
                name: n.to_string(),
                kind: cfg.kind,
                dim: cfg.dim,
                buckets: cfg.buckets,
                features: vec![i],
            });
        }
    }
    let mut names_seen = std::collections::HashSet::new();
    for p in &plans {
        if !names_seen.insert(p.name.as_str()) {
            return Err(format!(
                "embedding.tables: table name `{}` is used twice (or equals a feature's own table)",
                p.name
            ));
        }
        if p.kind == TableKindConfig::Hashed && p.buckets == 0 {
            return Err(format!(
                "embedding: hashed table `{}` needs buckets >= 1",
                p.name
            ));
        }
    }
    let make = |dim_override: Option<usize>, suffix: &str| -> Result<CollectionLayout, String> {
        let mut spec = CollectionSpec::default();
        let mut features: Vec<Option<FeatureSpec>> = vec![None; names.len()];
        for p in &plans {
            let table = format!("{}{suffix}", p.name);
            let dim = dim_override.unwrap_or(p.dim);
            let mut rows = 0u64;
            for &f in &p.features {
                let map = match p.kind {
                    TableKindConfig::Plain => {
                        let m = RowMap::Offset {
                            offset: rows,
                            id_rows: vocab_sizes[f],
                        };
                        rows += vocab_sizes[f];
                        m
                    }
                    TableKindConfig::Hashed => RowMap::Hash {
                        seed: name_seed(seed, names[f]),
                    },
                };
                features[f] = Some(FeatureSpec {
                    name: names[f].to_string(),
                    probes: vec![Probe {
                        table: table.clone(),
                        map,
                    }],
                    combine: Combine::Concat,
                    pooling: cfg.pooling,
                });
            }
            if p.kind == TableKindConfig::Hashed {
                rows = p.buckets;
            }
            let init = if dim_override.is_some() {
                RowInit::Zeros
            } else {
                let s = name_seed(seed ^ 0x1417, &table);
                match cfg.init.kind {
                    InitKind::Uniform => RowInit::Uniform {
                        bound: cfg
                            .init
                            .scale
                            .unwrap_or_else(|| (1.0 / rows.max(1) as f64).sqrt() as f32),
                        seed: s,
                    },
                    InitKind::Normal => RowInit::Normal {
                        std: cfg.init.scale.unwrap_or(0.01),
                        seed: s,
                    },
                }
            };
            spec.tables.push(TableSpec {
                name: table,
                rows,
                dim,
                init,
            });
        }
        spec.features = features.into_iter().flatten().collect();
        CollectionLayout::new(spec).map_err(|e| format!("embedding: {e}"))
    };
    Ok(Collections {
        main: make(model.fixed_embedding_width(), "")?,
        first_order: if first_order {
            Some(make(Some(1), ".linear")?)
        } else {
            None
        },
    })
}
