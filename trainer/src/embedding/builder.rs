//! `[embedding]` (and `[budget]`) plus the data's schema and vocabulary sizes ->
//! collection specs.
//!
//! Every categorical feature gets exactly one table: its own (named after the feature)
//! unless a `[[embedding.tables]]` entry lists it. By kind:
//! - `plain`: one row per id; a table serving several features stacks their
//!   vocabularies (each feature at its own row offset, so ids never collide);
//! - `hashed`: `buckets` rows, each feature hashing its ids with its own seed;
//! - `qr` (Shi et al. 2020): tables `<name>.q` (`ceil(vocab / m)` rows, indexed by
//!   `id / m`) and `<name>.r` (`m` rows, by `id % m`), combined by product, sum or
//!   concatenation;
//! - `unified` (Coleman et al. 2023): one pool of `T` tables `unified.k` of `B` rows and
//!   `d_c` columns; feature `f`'s chunk `j` hashes with its own salt (f, j) into pool
//!   table `counter % T` (one counter over all features), and the chunks concatenate
//!   (or, multi-probe, add).
//!
//! With a `[budget]`, tables whose size is free are sized to fit it
//! ([`super::budget::allocate`], weights `sqrt(vocabulary)`). Models with a first-order term get a second collection
//! of one-column tables laid out the same way (sums where the main one concatenates).

use shardrec_tables::{
    hash_id, mix64, CollectionLayout, CollectionSpec, Combine, FeatureSpec, Probe, RowInit, RowMap,
    TableSpec,
};

use super::budget::{allocate, Claim};
use crate::config::{BudgetConfig, EmbeddingConfig, InitKind, QrCombine, TableKindConfig};
use crate::data::Schema;

/// The collections a model reads.
#[derive(Debug, Clone)]
pub struct Collections {
    pub main: CollectionLayout,
    pub first_order: Option<CollectionLayout>,
    /// Bytes the main collection's parameters would take with one row per id.
    pub collisionless_bytes: u64,
    /// The budget for the main collection's parameters, when one is set.
    pub budget_bytes: Option<u64>,
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

/// Rows of each sized table, from `[budget]` or the config.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Size {
    /// Plain: the stacked vocabularies.
    Plain,
    Hashed {
        rows: u64,
    },
    Qr {
        m: u64,
    },
}

/// The unified pool's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pool {
    tables: usize,
    rows: u64,
    dim: usize,
}

fn table_vocab(p: &TablePlan, vocab_sizes: &[u64]) -> u64 {
    p.features.iter().map(|&f| vocab_sizes[f]).sum()
}

/// Rows of a QR table pair: quotient `ceil(v / m)` plus remainder `m`.
fn qr_rows(v: u64, m: u64) -> u64 {
    v.div_ceil(m.max(1)) + m
}

/// The smallest `m` (fewest ids per quotient row) whose two tables fit `rows`.
fn qr_m_for(v: u64, rows: u64) -> Option<u64> {
    let best = ((v as f64).sqrt().ceil() as u64).max(1);
    if qr_rows(v, best) > rows {
        return None;
    }
    // qr_rows decreases in m up to sqrt(v): binary search the first m that fits
    let (mut lo, mut hi) = (1u64, best);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if qr_rows(v, mid) <= rows {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// Columns of each QR table.
fn qr_dim(dim: usize, combine: QrCombine) -> usize {
    if combine == QrCombine::Concat {
        dim / 2
    } else {
        dim
    }
}

/// The unified pool's columns per chunk and default chunks per feature.
fn pool_chunk_dim(cfg: &EmbeddingConfig) -> (usize, usize) {
    let u = &cfg.unified;
    let chunks = if u.chunks > 0 { u.chunks } else { 2 };
    let dim = if u.dim > 0 {
        u.dim
    } else {
        (cfg.dim / chunks).max(1)
    };
    (dim, chunks)
}

/// Every table's size, the unified pool's, and the bytes they were sized against.
struct Sizing {
    sizes: Vec<Size>,
    pool: Option<Pool>,
    collisionless: u64,
    budget: Option<u64>,
}

/// Sizes every table: explicit settings first, then `[budget]` for the rest.
fn size_tables(
    cfg: &EmbeddingConfig,
    budget: &BudgetConfig,
    plans: &[TablePlan],
    vocab_sizes: &[u64],
    names: &[&str],
) -> Result<Sizing, String> {
    let collisionless: u64 = plans
        .iter()
        .map(|p| table_vocab(p, vocab_sizes) * p.dim as u64 * 4)
        .sum();
    let total = match (budget.bytes, budget.fraction) {
        (Some(_), Some(_)) => {
            return Err("budget: set bytes or fraction, not both".into());
        }
        (Some(b), None) => Some(b),
        (None, Some(f)) => Some((collisionless as f64 * f).floor() as u64),
        (None, None) => None,
    };
    let (chunk_dim, _) = pool_chunk_dim(cfg);
    let pool_tables = cfg.unified.tables.max(1);
    let unified_features: Vec<usize> = plans
        .iter()
        .filter(|p| p.kind == TableKindConfig::Unified)
        .flat_map(|p| p.features.iter().copied())
        .collect();
    for name in budget.tables.keys() {
        if !plans.iter().any(|p| &p.name == name) {
            return Err(format!(
                "budget.tables: no table `{name}` (tables: {})",
                plans
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let mut sizes = vec![Size::Plain; plans.len()];
    let mut claims: Vec<(Option<usize>, Claim)> = Vec::new();
    let mut fixed_bytes = 0u64;
    let too_small = |name: &str, bytes: u64, min: u64| {
        format!("budget for table `{name}`: {bytes} bytes is below its minimum of {min} bytes")
    };
    for (i, p) in plans.iter().enumerate() {
        let v = table_vocab(p, vocab_sizes);
        let row_bytes = p.dim as u64 * 4;
        let own = budget.tables.get(&p.name).copied();
        match p.kind {
            TableKindConfig::Plain => {
                let bytes = v * row_bytes;
                if let Some(b) = own.filter(|&b| b < bytes) {
                    return Err(format!(
                        "budget for table `{}`: {b} bytes is below the {bytes} bytes of its {v} rows (a plain table has one row per id; make it hashed, qr or unified)",
                        p.name
                    ));
                }
                fixed_bytes += bytes;
            }
            TableKindConfig::Hashed => {
                if let Some(b) = own {
                    if b < row_bytes {
                        return Err(too_small(&p.name, b, row_bytes));
                    }
                    sizes[i] = Size::Hashed {
                        rows: b / row_bytes,
                    };
                    fixed_bytes += b / row_bytes * row_bytes;
                } else if p.buckets > 0 || total.is_none() {
                    sizes[i] = Size::Hashed { rows: p.buckets };
                    fixed_bytes += p.buckets * row_bytes;
                } else {
                    claims.push((
                        Some(i),
                        Claim {
                            name: p.name.clone(),
                            weight: (v as f64).sqrt() * row_bytes as f64,
                            min: row_bytes,
                            max: v * row_bytes,
                        },
                    ));
                }
            }
            TableKindConfig::Qr => {
                if p.features.len() != 1 {
                    return Err(format!(
                        "embedding.tables `{}`: a qr table serves one feature",
                        p.name
                    ));
                }
                let qd = qr_dim(p.dim, cfg.qr.combine);
                if cfg.qr.combine == QrCombine::Concat && p.dim % 2 != 0 {
                    return Err(format!(
                        "embedding: qr table `{}` concatenates two halves, so its dim ({}) must be even",
                        p.name, p.dim
                    ));
                }
                let qrow = qd as u64 * 4;
                let min_rows = qr_rows(v, ((v as f64).sqrt().ceil() as u64).max(1));
                if let Some(b) = own {
                    let m = qr_m_for(v, b / qrow)
                        .ok_or_else(|| too_small(&p.name, b, min_rows * qrow))?;
                    sizes[i] = Size::Qr { m };
                    fixed_bytes += qr_rows(v, m) * qrow;
                } else if let Some(m) = cfg.qr.collisions.or(total.is_none().then_some(4)) {
                    sizes[i] = Size::Qr { m };
                    fixed_bytes += qr_rows(v, m) * qrow;
                } else {
                    claims.push((
                        Some(i),
                        Claim {
                            name: p.name.clone(),
                            weight: (v as f64).sqrt() * row_bytes as f64,
                            min: min_rows * qrow,
                            max: qr_rows(v, 1) * qrow,
                        },
                    ));
                }
            }
            TableKindConfig::Unified => {}
        }
    }
    let mut pool = None;
    if !unified_features.is_empty() {
        let row_bytes = (pool_tables * chunk_dim) as u64 * 4;
        let weight: u64 = unified_features
            .iter()
            .map(|&f| vocab_sizes[f] * cfg.dim as u64 * 4)
            .sum();
        if cfg.unified.buckets > 0 || total.is_none() {
            let rows = if cfg.unified.buckets > 0 {
                cfg.unified.buckets
            } else {
                return Err(format!(
                    "embedding.unified.buckets: the unified pool (features {}) needs its rows, or a [budget] to size it",
                    unified_features.iter().map(|&f| names[f]).collect::<Vec<_>>().join(", ")
                ));
            };
            fixed_bytes += rows * row_bytes;
            pool = Some(Pool {
                tables: pool_tables,
                rows,
                dim: chunk_dim,
            });
        } else {
            let most: u64 = unified_features.iter().map(|&f| vocab_sizes[f]).sum();
            claims.push((
                None,
                Claim {
                    name: "unified pool".into(),
                    weight: weight as f64,
                    min: row_bytes,
                    max: most.max(1) * row_bytes,
                },
            ));
        }
    }
    if let Some(total) = total {
        if fixed_bytes > total {
            return Err(format!(
                "budget of {total} bytes is below the {fixed_bytes} bytes of the tables whose size is fixed (plain tables, set buckets or collisions)"
            ));
        }
        let shares = allocate(
            total - fixed_bytes,
            &claims.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        )
        .map_err(|e| {
            format!(
                "budget of {total} bytes (collisionless: {collisionless}), of which {fixed_bytes} go to tables of fixed size: the remaining {e}"
            )
        })?;
        for ((i, _), share) in claims.iter().zip(shares) {
            match i {
                Some(i) => {
                    let p = &plans[*i];
                    let v = table_vocab(p, vocab_sizes);
                    sizes[*i] = match p.kind {
                        TableKindConfig::Hashed => Size::Hashed {
                            rows: (share / (p.dim as u64 * 4)).clamp(1, v.max(1)),
                        },
                        _ => {
                            let qrow = qr_dim(p.dim, cfg.qr.combine) as u64 * 4;
                            let m = qr_m_for(v, share / qrow).ok_or_else(|| {
                                format!(
                                    "budget: table `{}` got {share} bytes, too few for QR",
                                    p.name
                                )
                            })?;
                            Size::Qr { m }
                        }
                    };
                }
                None => {
                    let row_bytes = (pool_tables * chunk_dim) as u64 * 4;
                    pool = Some(Pool {
                        tables: pool_tables,
                        rows: (share / row_bytes).max(1),
                        dim: chunk_dim,
                    });
                }
            }
        }
    } else if !claims.is_empty() {
        return Err("internal: tables left unsized without a budget".into());
    }
    Ok(Sizing {
        sizes,
        pool,
        collisionless,
        budget: total,
    })
}

fn init_for(cfg: &EmbeddingConfig, seed: u64, table: &str, rows: u64) -> RowInit {
    let s = name_seed(seed ^ 0x1417, table);
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
}

/// Builds the main collection (and the first-order one when the model has that term).
pub fn build_collections(
    cfg: &EmbeddingConfig,
    budget: &BudgetConfig,
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
            // small vocabularies stay collisionless whatever the default kind (as the
            // Unified Embedding paper's experiments keep low-cardinality features)
            let kind = if vocab_sizes[i] < cfg.plain_below {
                TableKindConfig::Plain
            } else {
                cfg.kind
            };
            plans.push(TablePlan {
                name: n.to_string(),
                kind,
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
        if p.kind == TableKindConfig::Hashed
            && p.buckets == 0
            && budget.bytes.is_none()
            && budget.fraction.is_none()
            && !budget.tables.contains_key(&p.name)
        {
            return Err(format!(
                "embedding: hashed table `{}` needs buckets >= 1 (or a [budget] to size it)",
                p.name
            ));
        }
    }
    let Sizing {
        sizes,
        pool,
        collisionless: collisionless_bytes,
        budget: budget_bytes,
    } = size_tables(cfg, budget, &plans, vocab_sizes, &names)?;
    let (_, default_chunks) = pool_chunk_dim(cfg);
    let make = |dim_override: Option<usize>, suffix: &str| -> Result<CollectionLayout, String> {
        let mut spec = CollectionSpec::default();
        let mut features: Vec<Option<FeatureSpec>> = vec![None; names.len()];
        let table = |spec: &mut CollectionSpec, name: String, rows: u64, dim: usize| {
            let init = if dim_override.is_some() {
                RowInit::Zeros
            } else {
                init_for(cfg, seed, &name, rows)
            };
            spec.tables.push(TableSpec {
                name: name.clone(),
                rows,
                dim,
                init,
            });
            name
        };
        let feature = |name: &str, probes: Vec<Probe>, combine: Combine| FeatureSpec {
            name: name.to_string(),
            probes,
            combine,
            pooling: cfg.pooling,
        };
        if let Some(pool) = pool {
            for k in 0..pool.tables {
                table(
                    &mut spec,
                    format!("unified.{k}{suffix}"),
                    pool.rows,
                    dim_override.unwrap_or(pool.dim),
                );
            }
        }
        let mut counter = 0usize;
        for (p, size) in plans.iter().zip(&sizes) {
            let dim = dim_override.unwrap_or(p.dim);
            match (p.kind, size) {
                (TableKindConfig::Plain, _) | (TableKindConfig::Hashed, _) => {
                    let rows = match size {
                        Size::Hashed { rows } => *rows,
                        _ => table_vocab(p, vocab_sizes),
                    };
                    let t = table(&mut spec, format!("{}{suffix}", p.name), rows, dim);
                    let mut offset = 0u64;
                    for &f in &p.features {
                        let map = if p.kind == TableKindConfig::Plain {
                            let m = RowMap::Offset {
                                offset,
                                id_rows: vocab_sizes[f],
                            };
                            offset += vocab_sizes[f];
                            m
                        } else {
                            RowMap::Hash {
                                seed: name_seed(seed, names[f]),
                            }
                        };
                        features[f] = Some(feature(
                            names[f],
                            vec![Probe {
                                table: t.clone(),
                                map,
                            }],
                            Combine::Concat,
                        ));
                    }
                }
                (TableKindConfig::Qr, Size::Qr { m }) => {
                    let f = p.features[0];
                    let v = vocab_sizes[f];
                    let qd = dim_override.unwrap_or(qr_dim(p.dim, cfg.qr.combine));
                    let q = table(
                        &mut spec,
                        format!("{}.q{suffix}", p.name),
                        v.div_ceil(*m),
                        qd,
                    );
                    let r = table(&mut spec, format!("{}.r{suffix}", p.name), *m, qd);
                    let combine = match (dim_override, cfg.qr.combine) {
                        (Some(_), _) | (None, QrCombine::Sum) => Combine::Sum,
                        (None, QrCombine::Mul) => Combine::Mul,
                        (None, QrCombine::Concat) => Combine::Concat,
                    };
                    features[f] = Some(feature(
                        names[f],
                        vec![
                            Probe {
                                table: q,
                                map: RowMap::Quotient { divisor: *m },
                            },
                            Probe {
                                table: r,
                                map: RowMap::Remainder { modulus: *m },
                            },
                        ],
                        combine,
                    ));
                }
                (TableKindConfig::Unified, _) => {
                    let pool = pool.ok_or("internal: unified features without a pool")?;
                    for &f in &p.features {
                        let chunks = cfg
                            .unified
                            .chunks_per_feature
                            .get(names[f])
                            .copied()
                            .unwrap_or(default_chunks)
                            .max(1);
                        let probes = (0..chunks)
                            .map(|j| {
                                let k = counter % pool.tables;
                                counter += 1;
                                Probe {
                                    table: format!("unified.{k}{suffix}"),
                                    map: RowMap::Hash {
                                        seed: hash_id(name_seed(seed, names[f]), j as u64),
                                    },
                                }
                            })
                            .collect();
                        let combine = if dim_override.is_some() || cfg.unified.multi_probe {
                            Combine::Sum
                        } else {
                            Combine::Concat
                        };
                        features[f] = Some(feature(names[f], probes, combine));
                    }
                }
                (TableKindConfig::Qr, _) => return Err("internal: qr table without m".into()),
            }
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
        collisionless_bytes,
        budget_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::CategoricalColumn;
    use shardrec_models::ModelKind;

    fn schema(names: &[&str]) -> Schema {
        Schema {
            dense: vec![],
            categorical: names
                .iter()
                .map(|n| CategoricalColumn {
                    name: n.to_string(),
                    multi_valued: false,
                })
                .collect(),
        }
    }

    fn embedding(text: &str) -> EmbeddingConfig {
        toml::from_str(text).unwrap()
    }

    fn build(
        cfg: &EmbeddingConfig,
        budget: &BudgetConfig,
        names: &[&str],
        vocab: &[u64],
        model: ModelKind,
    ) -> Result<Collections, String> {
        build_collections(cfg, budget, &schema(names), vocab, 1, model)
    }

    #[test]
    fn unified_chunks_go_round_robin_with_own_salts() {
        let mut cfg = embedding(
            "dim = 16\nkind = \"unified\"\n[unified]\ntables = 3\nbuckets = 100\ndim = 4\nchunks = 2\n[unified.chunks_per_feature]\nb = 4",
        );
        let c = build(
            &cfg,
            &BudgetConfig::default(),
            &["a", "b", "c"],
            &[1000, 50, 7],
            ModelKind::Dcnv2,
        )
        .unwrap();
        let spec = c.main.spec();
        let names: Vec<&str> = spec.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["unified.0", "unified.1", "unified.2"]);
        assert!(spec.tables.iter().all(|t| t.rows == 100 && t.dim == 4));
        // a: chunks 0, 1; b: 2, 0, 1, 2; c: 0, 1 (one counter over all features)
        let tables: Vec<Vec<&str>> = spec
            .features
            .iter()
            .map(|f| f.probes.iter().map(|p| p.table.as_str()).collect())
            .collect();
        assert_eq!(
            tables,
            [
                vec!["unified.0", "unified.1"],
                vec!["unified.2", "unified.0", "unified.1", "unified.2"],
                vec!["unified.0", "unified.1"],
            ]
        );
        assert_eq!(c.main.feature_widths(), vec![8, 16, 8]);
        let mut salts: Vec<String> = spec
            .features
            .iter()
            .flat_map(|f| f.probes.iter().map(|p| format!("{:?}", p.map)))
            .collect();
        salts.sort();
        salts.dedup();
        assert_eq!(
            salts.len(),
            8,
            "every (feature, chunk) hashes with its own salt"
        );
        // multi-probe sums the chunks: width d_c
        cfg.unified.multi_probe = true;
        let c = build(
            &cfg,
            &BudgetConfig::default(),
            &["a", "b", "c"],
            &[1000, 50, 7],
            ModelKind::Dcnv2,
        )
        .unwrap();
        assert_eq!(c.main.feature_widths(), vec![4, 4, 4]);
    }

    #[test]
    fn a_budget_sizes_hashed_qr_and_unified_tables_to_fit() {
        let names = ["big", "mid", "tiny"];
        let vocab = [100_000u64, 5_000, 10];
        let collisionless = (100_000 + 5_000 + 10) * 16 * 4;
        for kind in ["hashed", "qr", "unified"] {
            for fraction in [0.5, 0.1, 0.01] {
                let cfg = embedding(&format!("dim = 16\nkind = \"{kind}\""));
                let budget = BudgetConfig {
                    fraction: Some(fraction),
                    ..Default::default()
                };
                let c = build(&cfg, &budget, &names, &vocab, ModelKind::Dlrm).unwrap();
                let bytes = c.main.parameters() * 4;
                let want = (collisionless as f64 * fraction) as u64;
                assert_eq!(c.collisionless_bytes, collisionless);
                // QR moves in steps (m = 1, 2, 3, ... ids per quotient row)
                let least = if kind == "qr" { 0.6 } else { 0.9 };
                assert!(
                    bytes <= want && bytes as f64 >= want as f64 * least,
                    "{kind} at {fraction}: {bytes} bytes for a budget of {want}"
                );
                assert_eq!(c.main.feature_widths(), vec![16, 16, 16]);
            }
        }
        // QR cannot go below two tables of about sqrt(vocab) rows each
        let cfg = embedding("dim = 16\nkind = \"qr\"");
        let e = build(
            &cfg,
            &BudgetConfig {
                bytes: Some(10_000),
                ..Default::default()
            },
            &names,
            &vocab,
            ModelKind::Dlrm,
        )
        .unwrap_err();
        assert!(e.contains("`big`") && e.contains("at least"), "{e}");
        // a plain table above its own budget is named with its bytes
        let cfg = embedding("dim = 16");
        let e = build(
            &cfg,
            &BudgetConfig {
                tables: [("mid".to_string(), 1000u64)].into(),
                ..Default::default()
            },
            &names,
            &vocab,
            ModelKind::Dlrm,
        )
        .unwrap_err();
        assert!(e.contains("`mid`") && e.contains("320000 bytes"), "{e}");
    }

    #[test]
    fn small_vocabularies_stay_plain_below_the_threshold() {
        let cfg =
            embedding("dim = 16\nkind = \"unified\"\nplain_below = 10\n[unified]\nbuckets = 64");
        let c = build(
            &cfg,
            &BudgetConfig::default(),
            &["a", "b", "c"],
            &[1000, 50, 7],
            ModelKind::Dlrm,
        )
        .unwrap();
        let names: Vec<&str> = c
            .main
            .spec()
            .tables
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["unified.0", "unified.1", "c"]);
        assert_eq!(c.main.spec().tables[2].rows, 7);
    }

    #[test]
    fn qr_tables_take_quotient_and_remainder() {
        let cfg = embedding("dim = 8\nkind = \"qr\"\n[qr]\ncollisions = 10\ncombine = \"concat\"");
        let c = build(
            &cfg,
            &BudgetConfig::default(),
            &["x"],
            &[95],
            ModelKind::Dcnv2,
        )
        .unwrap();
        let t: Vec<(&str, u64, usize)> = c
            .main
            .spec()
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.rows, t.dim))
            .collect();
        assert_eq!(t, [("x.q", 10, 4), ("x.r", 10, 4)]);
        assert_eq!(c.main.feature_widths(), vec![8]);
        assert_eq!(qr_m_for(95, 20), Some(8));
        assert_eq!(qr_m_for(95, 19), None);
        assert_eq!(qr_m_for(100, 1000), Some(1));
    }
}
