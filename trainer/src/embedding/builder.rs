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

use super::budget::{allocate, BudgetShortfall, Claim};
use crate::config::{BudgetConfig, EmbeddingConfig, InitKind, QrCombine, TableKindConfig};
use crate::data::Schema;

/// Why `[embedding]` and `[budget]` cannot build the tables the data needs; each names
/// the key or table.
#[derive(Debug, thiserror::Error)]
pub enum TableConfigError {
    #[error("budget: set bytes or fraction, not both")]
    BudgetTwice,
    #[error("budget.tables: no table `{name}` (tables: {tables})")]
    UnknownBudgetTable { name: String, tables: String },
    #[error("budget for table `{name}`: {bytes} bytes is below the {needed} bytes of its {rows} rows (a plain table has one row per id; make it hashed, qr or unified)")]
    PlainOverBudget {
        name: String,
        bytes: u64,
        needed: u64,
        rows: u64,
    },
    #[error("budget for table `{name}`: {bytes} bytes is below its minimum of {min} bytes")]
    BelowMinimum { name: String, bytes: u64, min: u64 },
    #[error("embedding.tables `{name}`: a qr table serves one feature")]
    QrSharedTable { name: String },
    #[error(
        "embedding: qr table `{name}` concatenates two halves, so its dim ({dim}) must be even"
    )]
    QrOddDim { name: String, dim: usize },
    #[error("embedding.unified.buckets: the unified pool (features {features}) needs its rows, or a [budget] to size it")]
    PoolUnsized { features: String },
    #[error("budget of {total} bytes is below the {fixed} bytes of the tables whose size is fixed (plain tables, set buckets or collisions)")]
    FixedOverBudget { total: u64, fixed: u64 },
    #[error("budget of {total} bytes (collisionless: {collisionless}), of which {fixed} go to tables of fixed size: the remaining {shortfall}")]
    Allocation {
        total: u64,
        collisionless: u64,
        fixed: u64,
        shortfall: BudgetShortfall,
    },
    #[error("budget: table `{name}` got {bytes} bytes, too few for QR")]
    QrShareTooSmall { name: String, bytes: u64 },
    #[error("embedding.tables `{table}`: unknown feature `{feature}` (features: {features})")]
    UnknownFeature {
        table: String,
        feature: String,
        features: String,
    },
    #[error("embedding.tables: feature `{feature}` is in both `{first}` and `{second}`")]
    FeatureTwice {
        feature: String,
        first: String,
        second: String,
    },
    #[error(
        "embedding.tables: table name `{name}` is used twice (or equals a feature's own table)"
    )]
    NameTwice { name: String },
    #[error("embedding.tables `{name}`: a dynamic table serves one feature (its keys are that feature's)")]
    DynamicSharedTable { name: String },
    #[error("embedding: hashed table `{name}` needs buckets >= 1 (or a [budget] to size it)")]
    HashedUnsized { name: String },
    #[error("embedding: {0}")]
    Layout(#[from] shardrec_tables::TableError),
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl TableConfigError {
    /// The `[budget]` cannot size the tables (a sweep records such a point and goes on).
    pub fn is_budget(&self) -> bool {
        matches!(
            self,
            Self::BudgetTwice
                | Self::UnknownBudgetTable { .. }
                | Self::PlainOverBudget { .. }
                | Self::BelowMinimum { .. }
                | Self::FixedOverBudget { .. }
                | Self::Allocation { .. }
                | Self::QrShareTooSmall { .. }
        )
    }
}

/// A feature whose table is of kind `dynamic`: its keys reach rows through a key map.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicTable {
    /// The feature's index among the categorical features.
    pub feature: usize,
    /// Its table in the main collection, and in the first-order one (same rows).
    pub table: String,
    pub first_order_table: Option<String>,
    /// Rows over all ranks.
    pub capacity: u64,
    /// The capacity was set (rows, bytes or a budget): its memory is taken at start, as
    /// a plain table's. Unset, the default capacity's memory is taken as rows come into
    /// use (and a new row's first touch costs a page fault in the step).
    #[serde(default)]
    pub reserved: bool,
    pub admission: shardrec_tables::Admission,
    pub eviction: shardrec_tables::Eviction,
    /// What keys without a row read (manifests before it: zeros).
    #[serde(default)]
    pub default_row: crate::config::DefaultRowConfig,
    /// Seeds the map's sketch and probability draws.
    pub seed: u64,
}

/// The global row of a dynamic table's learned default row.
const DEFAULT_ROW: u64 = 0;

impl DynamicTable {
    /// The global row its keys without a row read and train (its row 0, kept out of the
    /// key map of the rank whose block starts there), or None: they read zeros.
    pub fn learned_default_row(&self) -> Option<u64> {
        (self.default_row == crate::config::DefaultRowConfig::Learned).then_some(DEFAULT_ROW)
    }

    /// The feature's tables: the main one, and the first-order one when there is one.
    pub fn tables(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.table).chain(self.first_order_table.as_ref())
    }
}

/// The collections a model reads.
#[derive(Debug, Clone)]
pub struct Collections {
    pub main: CollectionLayout,
    pub first_order: Option<CollectionLayout>,
    /// The features of kind `dynamic` (ascending feature index).
    pub dynamic: Vec<DynamicTable>,
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

/// A table's size: fixed (by its settings or its own budget) with its bytes, or a claim
/// on what the `[budget]` leaves.
enum Sized {
    Fixed(Size, u64),
    Claim(Claim),
}

/// What sizing a table needs from the config.
struct SizeInputs<'a> {
    cfg: &'a EmbeddingConfig,
    budget: &'a BudgetConfig,
    /// The whole budget, when one is set.
    total: Option<u64>,
}

fn size_plain(p: &TablePlan, v: u64, own: Option<u64>) -> Result<Sized, TableConfigError> {
    let bytes = v * p.dim as u64 * 4;
    if let Some(b) = own.filter(|&b| b < bytes) {
        return Err(TableConfigError::PlainOverBudget {
            name: p.name.clone(),
            bytes: b,
            needed: bytes,
            rows: v,
        });
    }
    Ok(Sized::Fixed(Size::Plain, bytes))
}

/// The rows a table's own `budget.tables` bytes buy (at least one).
fn rows_of_own_bytes(p: &TablePlan, bytes: u64) -> Result<u64, TableConfigError> {
    let row_bytes = p.dim as u64 * 4;
    if bytes < row_bytes {
        return Err(TableConfigError::BelowMinimum {
            name: p.name.clone(),
            bytes,
            min: row_bytes,
        });
    }
    Ok(bytes / row_bytes)
}

fn size_hashed(
    p: &TablePlan,
    v: u64,
    own: Option<u64>,
    total: Option<u64>,
) -> Result<Sized, TableConfigError> {
    let row_bytes = p.dim as u64 * 4;
    if let Some(b) = own {
        let rows = rows_of_own_bytes(p, b)?;
        return Ok(Sized::Fixed(Size::Hashed { rows }, rows * row_bytes));
    }
    if p.buckets > 0 || total.is_none() {
        let rows = p.buckets;
        return Ok(Sized::Fixed(Size::Hashed { rows }, rows * row_bytes));
    }
    Ok(Sized::Claim(Claim {
        name: p.name.clone(),
        weight: (v as f64).sqrt() * row_bytes as f64,
        min: row_bytes,
        max: v * row_bytes,
    }))
}

/// A dynamic table's rows: its own budget, its `buckets`, `embedding.dynamic.capacity`,
/// an equal claim on the `[budget]`, or the default capacity (taken as used).
fn size_dynamic(
    p: &TablePlan,
    own: Option<u64>,
    x: &SizeInputs,
) -> Result<Sized, TableConfigError> {
    let row_bytes = p.dim as u64 * 4;
    let fixed = |rows: u64| Ok(Sized::Fixed(Size::Hashed { rows }, rows * row_bytes));
    if let Some(b) = own {
        return fixed(rows_of_own_bytes(p, b)?);
    }
    if p.buckets > 0 {
        return fixed(p.buckets);
    }
    if let Some(rows) = x.cfg.dynamic.capacity {
        return fixed(rows);
    }
    if x.total.is_none() {
        return fixed(crate::config::DEFAULT_DYNAMIC_CAPACITY);
    }
    // no vocabulary to weigh by: dynamic tables share the budget by their row bytes
    Ok(Sized::Claim(Claim {
        name: p.name.clone(),
        weight: row_bytes as f64,
        min: row_bytes,
        max: u64::MAX / 4,
    }))
}

fn size_qr(
    p: &TablePlan,
    v: u64,
    own: Option<u64>,
    x: &SizeInputs,
) -> Result<Sized, TableConfigError> {
    let cfg = x.cfg;
    if p.features.len() != 1 {
        return Err(TableConfigError::QrSharedTable {
            name: p.name.clone(),
        });
    }
    let qd = qr_dim(p.dim, cfg.qr.combine);
    if cfg.qr.combine == QrCombine::Concat && !p.dim.is_multiple_of(2) {
        return Err(TableConfigError::QrOddDim {
            name: p.name.clone(),
            dim: p.dim,
        });
    }
    let qrow = qd as u64 * 4;
    let min_rows = qr_rows(v, ((v as f64).sqrt().ceil() as u64).max(1));
    if let Some(b) = own {
        let m = qr_m_for(v, b / qrow).ok_or_else(|| TableConfigError::BelowMinimum {
            name: p.name.clone(),
            bytes: b,
            min: min_rows * qrow,
        })?;
        return Ok(Sized::Fixed(Size::Qr { m }, qr_rows(v, m) * qrow));
    }
    if let Some(m) = cfg.qr.collisions.or(x.total.is_none().then_some(4)) {
        return Ok(Sized::Fixed(Size::Qr { m }, qr_rows(v, m) * qrow));
    }
    Ok(Sized::Claim(Claim {
        name: p.name.clone(),
        weight: (v as f64).sqrt() * (p.dim as u64 * 4) as f64,
        min: min_rows * qrow,
        max: qr_rows(v, 1) * qrow,
    }))
}

/// The unified pool: its set rows, or a claim on the budget (`None` without unified
/// features).
fn size_pool(
    x: &SizeInputs,
    unified_features: &[usize],
    vocab_sizes: &[u64],
    names: &[&str],
) -> Result<Option<Sized>, TableConfigError> {
    if unified_features.is_empty() {
        return Ok(None);
    }
    let cfg = x.cfg;
    let (chunk_dim, _) = pool_chunk_dim(cfg);
    let pool_tables = cfg.unified.tables.max(1);
    let row_bytes = (pool_tables * chunk_dim) as u64 * 4;
    if cfg.unified.buckets > 0 {
        let rows = cfg.unified.buckets;
        return Ok(Some(Sized::Fixed(Size::Hashed { rows }, rows * row_bytes)));
    }
    if x.total.is_none() {
        return Err(TableConfigError::PoolUnsized {
            features: unified_features
                .iter()
                .map(|&f| names[f])
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let weight: u64 = unified_features
        .iter()
        .map(|&f| vocab_sizes[f] * cfg.dim as u64 * 4)
        .sum();
    let most: u64 = unified_features.iter().map(|&f| vocab_sizes[f]).sum();
    Ok(Some(Sized::Claim(Claim {
        name: "unified pool".into(),
        weight: weight as f64,
        min: row_bytes,
        max: most.max(1) * row_bytes,
    })))
}

/// The whole budget: `budget.bytes`, or `budget.fraction` of the collisionless bytes.
fn total_budget(
    budget: &BudgetConfig,
    collisionless: u64,
) -> Result<Option<u64>, TableConfigError> {
    match (budget.bytes, budget.fraction) {
        (Some(_), Some(_)) => Err(TableConfigError::BudgetTwice),
        (Some(b), None) => Ok(Some(b)),
        (None, Some(f)) => Ok(Some((collisionless as f64 * f).floor() as u64)),
        (None, None) => Ok(None),
    }
}

fn check_budget_tables(budget: &BudgetConfig, plans: &[TablePlan]) -> Result<(), TableConfigError> {
    for name in budget.tables.keys() {
        if !plans.iter().any(|p| &p.name == name) {
            return Err(TableConfigError::UnknownBudgetTable {
                name: name.clone(),
                tables: plans
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Sizes every table: explicit settings first, then `[budget]` for the rest.
fn size_tables(
    cfg: &EmbeddingConfig,
    budget: &BudgetConfig,
    plans: &[TablePlan],
    vocab_sizes: &[u64],
    names: &[&str],
) -> Result<Sizing, TableConfigError> {
    let collisionless: u64 = plans
        .iter()
        .map(|p| table_vocab(p, vocab_sizes) * p.dim as u64 * 4)
        .sum();
    let x = SizeInputs {
        cfg,
        budget,
        total: total_budget(budget, collisionless)?,
    };
    check_budget_tables(budget, plans)?;
    let mut sizes = vec![Size::Plain; plans.len()];
    let mut claims: Vec<(Option<usize>, Claim)> = Vec::new();
    let mut fixed_bytes = 0u64;
    for (i, p) in plans.iter().enumerate() {
        let v = table_vocab(p, vocab_sizes);
        let own = x.budget.tables.get(&p.name).copied();
        let sized = match p.kind {
            TableKindConfig::Plain => size_plain(p, v, own)?,
            TableKindConfig::Hashed => size_hashed(p, v, own, x.total)?,
            TableKindConfig::Qr => size_qr(p, v, own, &x)?,
            TableKindConfig::Dynamic => size_dynamic(p, own, &x)?,
            TableKindConfig::Unified => continue,
        };
        match sized {
            Sized::Fixed(size, bytes) => {
                sizes[i] = size;
                fixed_bytes += bytes;
            }
            Sized::Claim(c) => claims.push((Some(i), c)),
        }
    }
    let unified_features: Vec<usize> = plans
        .iter()
        .filter(|p| p.kind == TableKindConfig::Unified)
        .flat_map(|p| p.features.iter().copied())
        .collect();
    let mut pool = None;
    match size_pool(&x, &unified_features, vocab_sizes, names)? {
        Some(Sized::Fixed(Size::Hashed { rows }, bytes)) => {
            fixed_bytes += bytes;
            pool = Some(pool_of(cfg, rows));
        }
        Some(Sized::Claim(c)) => claims.push((None, c)),
        Some(Sized::Fixed(..)) | None => {}
    }
    if let Some(total) = x.total {
        let shares = share_budget(total, collisionless, fixed_bytes, &claims)?;
        for ((i, _), share) in claims.iter().zip(shares) {
            match i {
                Some(i) => sizes[*i] = size_from_share(cfg, &plans[*i], vocab_sizes, share)?,
                None => {
                    let (chunk_dim, _) = pool_chunk_dim(cfg);
                    let row_bytes = (cfg.unified.tables.max(1) * chunk_dim) as u64 * 4;
                    pool = Some(pool_of(cfg, (share / row_bytes).max(1)));
                }
            }
        }
    } else if !claims.is_empty() {
        return Err(TableConfigError::Internal(
            "tables left unsized without a budget",
        ));
    }
    Ok(Sizing {
        sizes,
        pool,
        collisionless,
        budget: x.total,
    })
}

fn pool_of(cfg: &EmbeddingConfig, rows: u64) -> Pool {
    Pool {
        tables: cfg.unified.tables.max(1),
        rows,
        dim: pool_chunk_dim(cfg).0,
    }
}

/// Each claim's bytes of what the budget leaves after the tables of fixed size.
fn share_budget(
    total: u64,
    collisionless: u64,
    fixed: u64,
    claims: &[(Option<usize>, Claim)],
) -> Result<Vec<u64>, TableConfigError> {
    if fixed > total {
        return Err(TableConfigError::FixedOverBudget { total, fixed });
    }
    allocate(
        total - fixed,
        &claims.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
    )
    .map_err(|shortfall| TableConfigError::Allocation {
        total,
        collisionless,
        fixed,
        shortfall,
    })
}

/// A hashed or QR table's size from its share of the budget.
fn size_from_share(
    cfg: &EmbeddingConfig,
    p: &TablePlan,
    vocab_sizes: &[u64],
    share: u64,
) -> Result<Size, TableConfigError> {
    let v = table_vocab(p, vocab_sizes);
    if p.kind == TableKindConfig::Dynamic {
        return Ok(Size::Hashed {
            rows: (share / (p.dim as u64 * 4)).max(1),
        });
    }
    if p.kind == TableKindConfig::Hashed {
        return Ok(Size::Hashed {
            rows: (share / (p.dim as u64 * 4)).clamp(1, v.max(1)),
        });
    }
    let qrow = qr_dim(p.dim, cfg.qr.combine) as u64 * 4;
    let m = qr_m_for(v, share / qrow).ok_or_else(|| TableConfigError::QrShareTooSmall {
        name: p.name.clone(),
        bytes: share,
    })?;
    Ok(Size::Qr { m })
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

/// One table per categorical feature: `[[embedding.tables]]` entries first (each feature
/// in at most one), then each remaining feature's own table.
fn plan_tables(
    cfg: &EmbeddingConfig,
    names: &[&str],
    vocab_sizes: &[u64],
) -> Result<Vec<TablePlan>, TableConfigError> {
    let mut owner: Vec<Option<usize>> = vec![None; names.len()];
    let mut plans: Vec<TablePlan> = Vec::new();
    for t in &cfg.tables {
        let mut features = Vec::new();
        for f in &t.features {
            let i = names.iter().position(|n| n == f).ok_or_else(|| {
                TableConfigError::UnknownFeature {
                    table: t.name.clone(),
                    feature: f.clone(),
                    features: names.join(", "),
                }
            })?;
            if let Some(prev) = owner[i] {
                return Err(TableConfigError::FeatureTwice {
                    feature: f.clone(),
                    first: plans[prev].name.clone(),
                    second: t.name.clone(),
                });
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
            // (a dynamic feature has no vocabulary to measure)
            let kind = if vocab_sizes[i] < cfg.plain_below && cfg.kind != TableKindConfig::Dynamic {
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
    Ok(plans)
}

fn check_plans(plans: &[TablePlan], budget: &BudgetConfig) -> Result<(), TableConfigError> {
    let mut names_seen = std::collections::HashSet::new();
    for p in plans {
        if !names_seen.insert(p.name.as_str()) {
            return Err(TableConfigError::NameTwice {
                name: p.name.clone(),
            });
        }
        if p.kind == TableKindConfig::Dynamic && p.features.len() != 1 {
            return Err(TableConfigError::DynamicSharedTable {
                name: p.name.clone(),
            });
        }
        if p.kind == TableKindConfig::Hashed
            && p.buckets == 0
            && budget.bytes.is_none()
            && budget.fraction.is_none()
            && !budget.tables.contains_key(&p.name)
        {
            return Err(TableConfigError::HashedUnsized {
                name: p.name.clone(),
            });
        }
    }
    Ok(())
}

/// Lays out one collection from the sized tables: the main one (`dim_override` None,
/// each table at its width) or the first-order one (one column, zeros, sums).
struct LayoutBuilder<'a> {
    cfg: &'a EmbeddingConfig,
    seed: u64,
    names: &'a [&'a str],
    vocab_sizes: &'a [u64],
    dim_override: Option<usize>,
    suffix: &'a str,
    spec: CollectionSpec,
    features: Vec<Option<FeatureSpec>>,
    /// The unified pool's round-robin counter over all features' chunks.
    counter: usize,
}

impl LayoutBuilder<'_> {
    fn table(&mut self, name: String, rows: u64, dim: usize) -> String {
        let init = if self.dim_override.is_some() {
            RowInit::Zeros
        } else {
            init_for(self.cfg, self.seed, &name, rows)
        };
        self.spec.tables.push(TableSpec {
            name: name.clone(),
            rows,
            dim,
            init,
        });
        name
    }

    fn feature(&mut self, f: usize, probes: Vec<Probe>, combine: Combine) {
        self.features[f] = Some(FeatureSpec {
            name: self.names[f].to_string(),
            probes,
            combine,
            pooling: self.cfg.pooling,
        });
    }

    fn pool(&mut self, pool: &Pool) {
        for k in 0..pool.tables {
            let name = format!("unified.{k}{}", self.suffix);
            self.table(name, pool.rows, self.dim_override.unwrap_or(pool.dim));
        }
    }

    /// A plain table stacks its features' vocabularies; a hashed one hashes each
    /// feature's ids with its own seed.
    fn plain_or_hashed(&mut self, p: &TablePlan, size: &Size) {
        let rows = match size {
            Size::Hashed { rows } => *rows,
            _ => table_vocab(p, self.vocab_sizes),
        };
        let dim = self.dim_override.unwrap_or(p.dim);
        let t = self.table(format!("{}{}", p.name, self.suffix), rows, dim);
        let mut offset = 0u64;
        for &f in &p.features {
            let map = if p.kind == TableKindConfig::Plain {
                let map = RowMap::Offset {
                    offset,
                    id_rows: self.vocab_sizes[f],
                };
                offset += self.vocab_sizes[f];
                map
            } else {
                RowMap::Hash {
                    seed: name_seed(self.seed, self.names[f]),
                }
            };
            let probe = Probe {
                table: t.clone(),
                map,
            };
            self.feature(f, vec![probe], Combine::Concat);
        }
    }

    fn qr(&mut self, p: &TablePlan, m: u64) {
        let f = p.features[0];
        let v = self.vocab_sizes[f];
        let qd = self
            .dim_override
            .unwrap_or(qr_dim(p.dim, self.cfg.qr.combine));
        let q = self.table(format!("{}.q{}", p.name, self.suffix), v.div_ceil(m), qd);
        let r = self.table(format!("{}.r{}", p.name, self.suffix), m, qd);
        let combine = match (self.dim_override, self.cfg.qr.combine) {
            (Some(_), _) | (None, QrCombine::Sum) => Combine::Sum,
            (None, QrCombine::Mul) => Combine::Mul,
            (None, QrCombine::Concat) => Combine::Concat,
        };
        let probes = vec![
            Probe {
                table: q,
                map: RowMap::Quotient { divisor: m },
            },
            Probe {
                table: r,
                map: RowMap::Remainder { modulus: m },
            },
        ];
        self.feature(f, probes, combine);
    }

    /// A dynamic table: the key map turns a feature's keys into its rows before the
    /// lookup, so the probe reads the row it is given.
    fn dynamic(&mut self, p: &TablePlan, rows: u64) {
        let dim = self.dim_override.unwrap_or(p.dim);
        let t = self.table(format!("{}{}", p.name, self.suffix), rows, dim);
        let map = RowMap::Offset {
            offset: 0,
            id_rows: rows,
        };
        self.feature(
            p.features[0],
            vec![Probe { table: t, map }],
            Combine::Concat,
        );
    }

    /// Each feature's chunks probe the pool's tables round robin, each with its own salt.
    fn unified(&mut self, p: &TablePlan, pool: &Pool) {
        let (_, default_chunks) = pool_chunk_dim(self.cfg);
        for &f in &p.features {
            let chunks = self
                .cfg
                .unified
                .chunks_per_feature
                .get(self.names[f])
                .copied()
                .unwrap_or(default_chunks)
                .max(1);
            let probes = (0..chunks)
                .map(|j| {
                    let k = self.counter % pool.tables;
                    self.counter += 1;
                    Probe {
                        table: format!("unified.{k}{}", self.suffix),
                        map: RowMap::Hash {
                            seed: hash_id(name_seed(self.seed, self.names[f]), j as u64),
                        },
                    }
                })
                .collect();
            let combine = if self.dim_override.is_some() || self.cfg.unified.multi_probe {
                Combine::Sum
            } else {
                Combine::Concat
            };
            self.feature(f, probes, combine);
        }
    }

    fn build(
        mut self,
        plans: &[TablePlan],
        sizing: &Sizing,
    ) -> Result<CollectionLayout, TableConfigError> {
        if let Some(pool) = &sizing.pool {
            self.pool(pool);
        }
        for (p, size) in plans.iter().zip(&sizing.sizes) {
            match (p.kind, size) {
                (TableKindConfig::Plain | TableKindConfig::Hashed, _) => {
                    self.plain_or_hashed(p, size)
                }
                (TableKindConfig::Qr, Size::Qr { m }) => self.qr(p, *m),
                (TableKindConfig::Dynamic, Size::Hashed { rows }) => self.dynamic(p, *rows),
                (TableKindConfig::Dynamic, _) => {
                    return Err(TableConfigError::Internal("dynamic table without rows"))
                }
                (TableKindConfig::Unified, _) => {
                    let pool = sizing.pool.as_ref().ok_or(TableConfigError::Internal(
                        "unified features without a pool",
                    ))?;
                    self.unified(p, pool)
                }
                (TableKindConfig::Qr, _) => {
                    return Err(TableConfigError::Internal("qr table without m"))
                }
            }
        }
        self.spec.features = self.features.into_iter().flatten().collect();
        Ok(CollectionLayout::new(self.spec)?)
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
) -> Result<Collections, TableConfigError> {
    let names: Vec<&str> = schema.categorical.iter().map(|c| c.name.as_str()).collect();
    let plans = plan_tables(cfg, &names, vocab_sizes)?;
    check_plans(&plans, budget)?;
    let sizing = size_tables(cfg, budget, &plans, vocab_sizes, &names)?;
    let layout = |dim_override: Option<usize>, suffix: &str| {
        LayoutBuilder {
            cfg,
            seed,
            names: &names,
            vocab_sizes,
            dim_override,
            suffix,
            spec: CollectionSpec::default(),
            features: vec![None; names.len()],
            counter: 0,
        }
        .build(&plans, &sizing)
    };
    let first_order = model.needs_first_order();
    let mut dynamic = plans
        .iter()
        .zip(&sizing.sizes)
        .filter(|(p, _)| p.kind == TableKindConfig::Dynamic)
        .map(|(p, size)| DynamicTable {
            feature: p.features[0],
            table: p.name.clone(),
            first_order_table: first_order.then(|| format!("{}.linear", p.name)),
            capacity: match size {
                Size::Hashed { rows } => *rows,
                _ => 0,
            },
            reserved: p.buckets > 0
                || cfg.dynamic.capacity.is_some()
                || budget.tables.contains_key(&p.name)
                || budget.bytes.is_some()
                || budget.fraction.is_some(),
            admission: cfg.dynamic.admission(),
            eviction: cfg.dynamic.eviction(),
            default_row: cfg.dynamic.default,
            seed: name_seed(seed ^ 0xD1A, &p.name),
        })
        .collect::<Vec<_>>();
    dynamic.sort_by_key(|d| d.feature);
    Ok(Collections {
        main: layout(model.fixed_embedding_width(), "")?,
        first_order: if first_order {
            Some(layout(Some(1), ".linear")?)
        } else {
            None
        },
        dynamic,
        collisionless_bytes: sizing.collisionless,
        budget_bytes: sizing.budget,
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
        build_collections(cfg, budget, &schema(names), vocab, 1, model).map_err(|e| e.to_string())
    }

    #[test]
    fn dynamic_tables_are_sized_by_capacity_budget_or_default_and_serve_one_feature() {
        let names = ["a", "b"];
        let vocab = [0, 0]; // keyed features have no vocabulary
        let rows = |c: &Collections| -> Vec<(u64, bool)> {
            c.dynamic.iter().map(|d| (d.capacity, d.reserved)).collect()
        };
        let none = BudgetConfig::default();
        let dynamic = embedding("kind = \"dynamic\"\ndim = 4\nplain_below = 10");
        let c = build(&dynamic, &none, &names, &vocab, ModelKind::Deepfm).unwrap();
        // the default capacity, taken as used; plain_below does not apply (no vocabulary)
        assert_eq!(rows(&c), vec![(1 << 20, false); 2]);
        assert_eq!(c.main.table_rows(0), 1 << 20);
        assert_eq!(c.dynamic[1].first_order_table.as_deref(), Some("b.linear"));
        let set = embedding("kind = \"dynamic\"\ndim = 4\ndynamic = { capacity = 300 }");
        let c = build(&set, &none, &names, &vocab, ModelKind::Dlrm).unwrap();
        assert_eq!(rows(&c), vec![(300, true); 2]);
        assert!(c.first_order.is_none() && c.dynamic[0].first_order_table.is_none());
        // a budget splits evenly (16 bytes a row); a table's own bytes override it
        let budget: BudgetConfig = toml::from_str("bytes = 3200\ntables = { b = 800 }").unwrap();
        let c = build(&dynamic, &budget, &names, &vocab, ModelKind::Dlrm).unwrap();
        assert_eq!(rows(&c), vec![(150, true), (50, true)]);
        let shared =
            embedding("kind = \"dynamic\"\n[[tables]]\nname = \"ab\"\nfeatures = [\"a\", \"b\"]");
        let e = build(&shared, &none, &names, &vocab, ModelKind::Dlrm).unwrap_err();
        assert!(e.contains("`ab`") && e.contains("one feature"), "{e}");
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
